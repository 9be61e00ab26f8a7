"""The `Encoder`: batching, batch invariance, long documents, Parquet pipeline, resume after a kill."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from reformer_retrieval import Encoder, ReformerEncoder
from reformer_retrieval.corpus import CorpusError, read_embeddings, read_skipped
from reformer_retrieval.encode import (
    DEFAULT_MODEL_DIR,
    _windows,
    default_skipped_path,
    parts_dir_for,
    plan_batches,
    resolve_device,
    resolve_dtype,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def encoder(tiny_dir) -> Encoder:
    return Encoder.load(tiny_dir, device="cpu", max_tokens=256)


def _texts(n: int, seed: int = 0, lo: int = 1, hi: int = 400) -> list[str]:
    rng = np.random.default_rng(seed)
    words = ["lorem", "ipsum", "dolor", "sit", "amet", "ünïcødé", "数据", "near", "duplicate", "42"]
    out = []
    for length in rng.integers(lo, hi, n):
        out.append(" ".join(rng.choice(words, size=max(1, int(length) // 6)))[: int(length)])
    return out


def _corpus(path: Path, n: int = 40, seed: int = 0, **extra) -> tuple[list[str], list[str]]:
    texts = _texts(n, seed)
    ids = [f"doc-{i:03d}" for i in range(n)]
    pq.write_table(pa.table({"id": ids, "text": texts, **extra}), path, row_group_size=16)
    return ids, texts


# ------------------------------------------------------------------------------------------- pieces
def test_plan_batches_respects_budget_and_covers_everything():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 500, 200).tolist()
    batches = plan_batches(lengths, batch_tokens=1024, pad_multiple=16)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(200))
    for b in batches:
        width = -(-max(lengths[i] for i in b) // 16) * 16
        assert len(b) == 1 or len(b) * width <= 1024
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
    assert plan_batches([5000, 3], batch_tokens=100, pad_multiple=16) == [[0], [1]]  # oversize: alone
    with pytest.raises(ValueError):
        plan_batches([1], 0)


@pytest.mark.parametrize(("n", "size", "overlap"), [(10, 4, 1), (100, 40, 10), (41, 40, 10), (40, 40, 5), (7, 3, 0)])
def test_windows_cover_every_token(n, size, overlap):
    ids = np.arange(n)
    wins = list(_windows(ids, size, overlap))
    assert all(1 <= len(w) <= size for w in wins)
    assert np.array_equal(np.unique(np.concatenate(wins)), ids)
    for a, b in itertools.pairwise(wins):
        assert a[-1] - b[0] + 1 == overlap  # consecutive windows share exactly `overlap` tokens


def test_device_and_dtype_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype(None, torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("int8", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_bad_encoder_arguments(tiny_dir):
    with pytest.raises(ValueError, match="long_docs"):
        Encoder.load(tiny_dir, long_docs="chunk")
    with pytest.raises(ValueError, match="max_tokens"):
        Encoder.load(tiny_dir, max_tokens=0)
    with pytest.raises(ValueError, match="window_overlap"):
        Encoder.load(tiny_dir, max_tokens=64, window_overlap=64)
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        Encoder.load(tiny_dir.parent / "missing")


# ------------------------------------------------------------------------------------------- encode
def test_encode_shapes_order_and_unit_length(encoder, tiny_dir):
    texts = _texts(12)
    vectors = encoder.encode(texts)
    assert vectors.shape == (12, 16) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    again = encoder.encode(texts[::-1])[::-1]
    assert np.allclose(vectors, again, atol=1e-5)
    assert encoder.model_id == ReformerEncoder.from_pretrained(tiny_dir).model_id


def test_batch_invariance(tiny_dir):
    """A document's vector is the same alone or in any batch (within 1e-5, float32)."""
    texts = _texts(16, seed=3, hi=700)
    enc = Encoder.load(tiny_dir, device="cpu", max_tokens=512)
    alone = np.stack([enc.encode([t])[0] for t in texts])
    for batch_tokens, order_seed in [(65_536, 1), (1_024, 2), (300, 3)]:
        enc.batch_tokens = batch_tokens
        order = np.random.default_rng(order_seed).permutation(len(texts))
        batched = enc.encode([texts[i] for i in order])
        assert np.abs(batched - alone[order]).max() < 1e-5


def test_n_tokens_truncation_and_empty(encoder):
    short = "héllo"
    long = "x" * 300
    vectors, n_tokens, truncated = encoder.encode_with_info([short, long, ""])
    assert n_tokens.tolist() == [6, 256, 0] and n_tokens.dtype == np.int32
    assert truncated.tolist() == [False, True, False]
    assert np.allclose(vectors[2], 0.0) and np.isclose(np.linalg.norm(vectors[0]), 1.0)


def test_truncate_makes_shared_prefixes_identical_but_window_does_not(tiny_dir):
    prefix = "shared prefix " * 30
    a, b = prefix + "ending one " * 20, prefix + "a different ending " * 20
    trunc = Encoder.load(tiny_dir, device="cpu", max_tokens=128)
    va, vb = trunc.encode([a, b])
    assert np.allclose(va, vb, atol=1e-6)  # both cut inside the shared prefix
    win = Encoder.load(tiny_dir, device="cpu", max_tokens=128, long_docs="window", window_overlap=32)
    vectors, n_tokens, truncated = win.encode_with_info([a, b])
    assert n_tokens.tolist() == [len(a.encode()), len(b.encode())] and not truncated.any()
    assert np.abs(vectors[0] - vectors[1]).max() > 1e-3
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_window_pooling_is_token_weighted_mean_of_windows(tiny_dir):
    text = "".join(chr(97 + (i * 7) % 26) for i in range(300))
    win = Encoder.load(tiny_dir, device="cpu", max_tokens=128, long_docs="window", window_overlap=28)
    got = win.encode([text])[0]
    ids, _ = win.tokenizer.encode(text, 10_000)
    pieces = list(_windows(ids, 128, 28))
    assert [len(p) for p in pieces] == [128, 128, 100]  # starts 0, 100, 200
    model = ReformerEncoder.from_pretrained(tiny_dir)
    with torch.inference_mode():
        vecs = [model(torch.from_numpy(p)[None], torch.ones(1, len(p), dtype=torch.long))[0].numpy() for p in pieces]
    pooled = sum(len(p) * v for p, v in zip(pieces, vecs))
    assert np.allclose(got, pooled / np.linalg.norm(pooled), atol=1e-5)
    # documents that fit in one window get exactly the truncate-mode vector
    trunc = Encoder.load(tiny_dir, device="cpu", max_tokens=128)
    assert np.array_equal(win.encode(["short text"]), trunc.encode(["short text"]))


def test_encode_rejects_non_text(encoder):
    with pytest.raises(TypeError, match="single str"):
        encoder.encode("just one")
    with pytest.raises(TypeError, match="item 1 is NoneType"):
        encoder.encode(["ok", None])


def test_truncation_is_logged(encoder, caplog):
    with caplog.at_level("WARNING"):
        encoder.encode(["y" * 1000, "short"])
    assert "1 of 2 texts were longer than max_tokens=256" in caplog.text


def test_bundled_default_model_on_short_texts():
    enc = Encoder.load(device="cpu")
    vectors = enc.encode(["a short text", "another short text", "a short text"])
    assert vectors.shape == (3, enc.dim) and enc.dim == 1280
    assert np.array_equal(vectors[0], vectors[2])
    assert enc.model_id == ReformerEncoder.from_pretrained(DEFAULT_MODEL_DIR).model_id == "aaa7ca85767a"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_bfloat16_matches_cpu(tiny_dir):
    texts = _texts(20, seed=5, hi=2000)
    cpu = Encoder.load(tiny_dir, device="cpu").encode(texts)
    gpu_enc = Encoder.load(tiny_dir, device="auto")
    assert gpu_enc.device.type == "cuda" and gpu_enc.dtype == torch.bfloat16
    gpu = gpu_enc.encode(texts)
    assert gpu.dtype == np.float32 and (np.sum(cpu * gpu, axis=1) > 0.98).all()
    fp32 = Encoder.load(tiny_dir, device="cuda", dtype="float32").encode(texts)
    assert np.abs(fp32 - cpu).max() < 1e-4


# ------------------------------------------------------------------------------------------- Parquet
def test_encode_parquet_matches_encode_and_reports_skips(tmp_path, encoder):
    src = tmp_path / "corpus.parquet"
    ids = [f"d{i}" for i in range(10)] + ["null", "empty"]
    texts = [*_texts(10, seed=7), None, ""]
    pq.write_table(pa.table({"id": ids, "text": texts}), src)
    dst = tmp_path / "out" / "emb.parquet"
    summary = encoder.encode_parquet(src, dst, show_progress=False, part_docs=3)
    table = read_embeddings(dst)
    assert table.ids == ids[:10] and table.model_id == encoder.model_id and table.dim == 16
    expected, n_tokens, truncated = encoder.encode_with_info(texts[:10])
    assert np.abs(table.vectors - expected).max() < 1e-5
    assert table.n_tokens.tolist() == n_tokens.tolist() and table.truncated.tolist() == truncated.tolist()
    skipped = read_skipped(default_skipped_path(dst))
    assert [(s.id, s.reason) for s in skipped] == [("null", "null text"), ("empty", "empty text")]
    assert summary.documents == 10 and summary.skipped == 2 and summary.tokens == int(n_tokens.sum())
    assert summary.truncated == int(truncated.sum()) and summary.skip_reasons == {"null text": 1, "empty text": 1}
    assert summary["documents"] == 10 and summary.output == dst
    assert any("skipped 2 rows (1 empty text, 1 null text)" in line for line in summary.lines())
    assert sorted(os.listdir(dst.parent)) == ["emb.parquet", "emb.skipped.parquet"]  # parts folder removed


def test_encode_parquet_integer_ids_and_directory(tmp_path, encoder):
    d = tmp_path / "shards"
    d.mkdir()
    pq.write_table(pa.table({"key": [3, 1], "body": ["three", "one"]}), d / "a.parquet")
    pq.write_table(pa.table({"key": [2], "body": ["two"]}), d / "b.parquet")
    dst = tmp_path / "emb.parquet"
    encoder.encode_parquet(d, dst, id_column="key", text_column="body", show_progress=False)
    table = read_embeddings(dst)
    assert table.ids == [3, 1, 2] and pq.read_schema(dst).field("id").type == pa.int64()
    assert np.abs(table.vectors - encoder.encode(["three", "one", "two"])).max() < 1e-5


def test_encode_parquet_bad_corpus_leaves_no_output(tmp_path, encoder):
    src = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": ["a", "a"], "text": ["x", "y"]}), src)
    dst = tmp_path / "emb.parquet"
    with pytest.raises(CorpusError, match="duplicate id 'a'"):
        encoder.encode_parquet(src, dst, show_progress=False)
    assert not dst.exists()
    summary = encoder.encode_parquet(src, dst, show_progress=False, on_duplicate="keep_first", resume=True)
    assert summary.documents == 1 and summary.skip_reasons == {"duplicate id": 1}


def test_interrupted_run_resumes_to_identical_output(tmp_path, tiny_dir, monkeypatch, capsys):
    src = tmp_path / "corpus.parquet"
    _corpus(src, n=30)
    ref = tmp_path / "ref.parquet"
    enc = Encoder.load(tiny_dir, device="cpu", max_tokens=256)
    enc.encode_parquet(src, ref, show_progress=False, part_docs=4)

    dst = tmp_path / "emb.parquet"
    calls = {"n": 0}
    original = Encoder._launch

    def failing(self, segments):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(self, segments)

    monkeypatch.setattr(Encoder, "_launch", failing)
    with pytest.raises(KeyboardInterrupt):
        enc.encode_parquet(src, dst, show_progress=False, part_docs=4)
    monkeypatch.setattr(Encoder, "_launch", original)
    parts = parts_dir_for(dst)
    done = sorted(p.name for p in parts.glob("part-*.parquet") if "skipped" not in p.name)
    assert not dst.exists() and done and not any(n.startswith(".") for n in os.listdir(parts))
    with pytest.raises(CorpusError, match="interrupted run: pass resume=True"):
        enc.encode_parquet(src, dst, show_progress=False, part_docs=4)
    with pytest.raises(CorpusError, match="other settings \\(part_docs"):
        enc.encode_parquet(src, dst, show_progress=False, part_docs=5, resume=True)
    capsys.readouterr()
    summary = enc.encode_parquet(src, dst, show_progress=True, part_docs=4, resume=True)
    assert summary.parts_resumed == len(done)
    reused = 4 * len(done)
    assert (f"resuming {dst}: reusing {len(done)} finished part(s) ({reused} documents, {reused} rows) from "
            f"{parts}; {30 - reused} rows left") in capsys.readouterr().err
    assert dst.read_bytes() != b"" and not parts.exists()
    a, b = read_embeddings(ref), read_embeddings(dst)
    assert a.ids == b.ids and np.array_equal(a.vectors, b.vectors)
    assert np.array_equal(a.n_tokens, b.n_tokens) and np.array_equal(a.truncated, b.truncated)


class _Interrupt(Exception):
    """Stands for a kill part-way through a run."""


@pytest.mark.parametrize("cut", ["docs", "time"])
def test_resume_after_interruptions_at_30_and_70_percent_encodes_only_the_rest(tmp_path, tiny_dir, monkeypatch, cut):
    """Interrupted at ~30 %, resumed and interrupted again at ~70 %, resumed to the end: every id once, the
    same vectors and bytes as a clean run, and each resumed run encodes only the documents it lacks. With
    ``cut="time"`` parts close by the clock (one tick per reading), so they end elsewhere than the clean run's."""
    import reformer_retrieval.encode as encode_module

    n = 30
    src = tmp_path / "corpus.parquet"
    ids, _ = _corpus(src, n=n)
    enc = Encoder.load(tiny_dir, device="cpu", max_tokens=256, batch_tokens=64)  # chunks of <= 512 tokens
    kwargs = {"part_docs": 10**6} if cut == "time" else {"part_docs": 3}
    ref = tmp_path / "ref.parquet"
    enc.encode_parquet(src, ref, show_progress=False, **kwargs)  # one part, or parts of 3 documents
    if cut == "time":  # the clock moves 1 s per reading: a part closes after two chunks
        ticks = itertools.count()
        monkeypatch.setattr(encode_module, "_clock", lambda: float(next(ticks)))
        kwargs["part_seconds"] = 2.0

    encoded: list[list[str]] = []  # documents of each call of _run, per run
    original = Encoder._run

    def run(fail_after: int | None):
        encoded.append([])
        calls = {"n": 0}

        def counting(self, prepared, progress):
            if fail_after is not None and sum(len(x) for x in encoded[-1]) >= fail_after:
                raise _Interrupt
            calls["n"] += 1
            out = original(self, prepared, progress)
            encoded[-1].append(list(range(prepared.n_docs)))
            return out

        monkeypatch.setattr(Encoder, "_run", counting)
        return enc.encode_parquet(src, dst, show_progress=False, resume=True, **kwargs)

    dst = tmp_path / "emb.parquet"
    with pytest.raises(_Interrupt):
        run(fail_after=int(0.3 * n))
    first = sum(len(x) for x in encoded[-1])
    parts = parts_dir_for(dst)
    done1 = sum(pq.ParquetFile(p).metadata.num_rows for p in parts.glob("part-?????.parquet"))
    assert 0.2 * n <= done1 <= first <= 0.5 * n, (done1, first)
    with pytest.raises(_Interrupt):
        run(fail_after=int(0.7 * n) - done1)
    done2 = sum(pq.ParquetFile(p).metadata.num_rows for p in parts.glob("part-?????.parquet"))
    assert 0.5 * n <= done2 <= 0.85 * n, done2
    summary = run(fail_after=None)
    assert sum(len(x) for x in encoded[-1]) == n - done2  # only what the finished parts lacked
    assert summary.parts_resumed > 0 and summary.documents_resumed == done2 and summary.documents == n
    assert f"reused {summary.parts_resumed} part(s) of an earlier run ({done2:,} documents)" in str(summary)
    a, b = read_embeddings(ref), read_embeddings(dst)
    assert b.ids == ids and len(set(b.ids)) == n
    assert np.array_equal(a.vectors, b.vectors) and np.array_equal(a.n_tokens, b.n_tokens)
    assert dst.read_bytes() == ref.read_bytes() and not parts.exists()


def test_parts_close_by_time(tmp_path, tiny_dir, monkeypatch):
    """With huge document and token limits, parts still close every ``part_seconds`` of work (at chunk ends)."""
    import reformer_retrieval.encode as encode_module

    src = tmp_path / "corpus.parquet"
    _corpus(src, n=12)
    enc = Encoder.load(tiny_dir, device="cpu", max_tokens=256, batch_tokens=32)  # chunks of <= 256 tokens
    now = {"t": 0.0}

    def clock() -> float:
        now["t"] += 30.0  # every reading is 30 s later: a part closes after its second chunk
        return now["t"]

    monkeypatch.setattr(encode_module, "_clock", clock)
    closed = []
    original = encode_module._PartWriter._close

    def spy(self):
        closed.append(len(self.ids) + len(self.chunk_ids))
        original(self)

    monkeypatch.setattr(encode_module._PartWriter, "_close", spy)
    dst = tmp_path / "emb.parquet"
    enc.encode_parquet(src, dst, show_progress=False, part_docs=10**6, part_seconds=60.0)
    assert len(closed) >= 3 and sum(closed) == 12 and max(closed) < 12
    assert read_embeddings(dst).ids == [f"doc-{i:03d}" for i in range(12)]
    with pytest.raises(ValueError, match="part_seconds"):
        enc.encode_parquet(src, tmp_path / "x.parquet", show_progress=False, part_seconds=-1)


def test_resume_from_an_older_parts_layout_is_refused(tmp_path, encoder):
    src = tmp_path / "corpus.parquet"
    _corpus(src, n=3)
    dst = tmp_path / "emb.parquet"
    parts = parts_dir_for(dst)
    parts.mkdir()
    (parts / "progress.json").write_text(json.dumps({"format": 1, "settings": {}}))
    with pytest.raises(CorpusError, match="format 1 of an older version"):
        encoder.encode_parquet(src, dst, show_progress=False, resume=True)


_CHILD = textwrap.dedent(
    """
    import sys, time
    from reformer_retrieval.encode import Encoder
    model, src, dst, delay = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    original = Encoder._launch
    def slow(self, segments):  # throttled so the parent can kill the run part-way
        time.sleep(delay)
        return original(self, segments)
    Encoder._launch = slow
    enc = Encoder.load(model, device="cpu", max_tokens=256, batch_tokens=1024)
    enc.encode_parquet(src, dst, show_progress=False, part_docs=3, resume=True)
    print("finished")
    """
)


@pytest.mark.slow
def test_subprocess_killed_mid_run_then_resumed(tmp_path, tiny_dir):
    """SIGKILL a real encoding process at several moments; the resumed result equals an uninterrupted run."""
    src = tmp_path / "corpus.parquet"
    _corpus(src, n=24, seed=11)
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    ref = tmp_path / "ref.parquet"  # uninterrupted, in this process (one thread, like the child)
    Encoder.load(tiny_dir, device="cpu", max_tokens=256, batch_tokens=1024).encode_parquet(
        src, ref, show_progress=False, part_docs=3
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    dst = tmp_path / "emb.parquet"
    parts = parts_dir_for(dst)
    kills = 0
    for wait_parts in (1, 4):  # kill after this many parts are committed (and mid-way through the next)
        proc = subprocess.Popen(
            [sys.executable, str(script), str(tiny_dir), str(src), str(dst), "0.05"], env=env, stdout=subprocess.PIPE
        )
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if len(list(parts.glob("part-*.skipped.parquet"))) > wait_parts:
                break
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        assert not dst.exists() or proc.returncode == 0
    assert kills == 2
    settings = json.loads((parts / "progress.json").read_text())["settings"]
    assert settings["part_docs"] == 3
    final = subprocess.run(
        [sys.executable, str(script), str(tiny_dir), str(src), str(dst), "0"], env=env, capture_output=True, text=True
    )
    assert final.returncode == 0 and "finished" in final.stdout
    a, b = read_embeddings(ref), read_embeddings(dst)
    assert a.ids == b.ids and len(a.ids) == 24 and len(set(b.ids)) == 24
    assert np.array_equal(a.vectors, b.vectors) and np.array_equal(a.n_tokens, b.n_tokens)
    assert dst.read_bytes() == ref.read_bytes()
    assert not parts.exists()


def test_encode_shows_progress_only_for_long_work(encoder, monkeypatch, capsys):
    """``show_progress=None`` (the default): a bar for long work, none for a short call; True / False force it."""
    import reformer_retrieval.encode as encode_module

    monkeypatch.setattr(encode_module, "AUTO_PROGRESS_DOCS", 6)
    monkeypatch.setattr(encode_module, "AUTO_PROGRESS_TOKENS", 400)
    cases = [
        (["short text"] * 5, None, False),  # 5 texts, 50 tokens: short
        (["short text"] * 6, None, True),  # as many texts as the threshold
        (["x" * 250] * 2, None, True),  # few texts but many tokens
        (["short text"] * 6, False, False),
        (["short"], True, True),
    ]
    for texts, show, shown in cases:
        capsys.readouterr()
        encoder.encode(texts, show_progress=show)
        err = capsys.readouterr().err
        assert ("encode: " in err) == shown, (len(texts), show, err)


def test_model_identity_reads_dim_and_id_without_building_the_network(tiny_dir, monkeypatch):
    from reformer_retrieval import checkpoint
    from reformer_retrieval.encode import DEFAULT_MODEL_DIR, model_identity

    want = {(path, channels): (enc.dim, enc.model_id)
            for path, channels in ((tiny_dir, "both"), (None, "both"), (None, "contextual"), (None, "lexical"))
            for enc in [Encoder.load(path, device="cpu", channels=channels)]}

    def no_load(*args, **kwargs):
        raise AssertionError("model_identity built the network")

    monkeypatch.setattr(checkpoint, "load_model", no_load)
    for (path, channels), expected in want.items():
        assert model_identity(path, channels) == expected
    assert model_identity(DEFAULT_MODEL_DIR) == want[(None, "both")]
    with pytest.raises(ValueError, match="no lexical"):
        model_identity(tiny_dir, "lexical")
    with pytest.raises(checkpoint.ModelDirectoryError, match=r"config\.json"):
        model_identity(tiny_dir.parent)
