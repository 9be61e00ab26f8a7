"""The Ray engine reads every corpus format the local engine reads, with the same rows, clusters and vectors.

Skipped only when the ``ray`` extra is missing (``pip install 'reformer-retrieval[ray]'``); CI installs it.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'reformer-retrieval[ray]'")
pytest.importorskip("ray.data", reason="the ray extra is not installed: pip install 'reformer-retrieval[ray]'")

from reformer_retrieval.corpus import CorpusError, read_embeddings, read_skipped  # noqa: E402
from reformer_retrieval.corpus_formats import iter_record_batches  # noqa: E402
from reformer_retrieval.encode import Encoder  # noqa: E402
from reformer_retrieval.pipeline import dedup_pipeline  # noqa: E402
from reformer_retrieval.ray_engine import RayEngine, encode_corpus  # noqa: E402
from reformer_retrieval.ray_read import read_corpus  # noqa: E402

_spec = importlib.util.spec_from_file_location("_pipeline_conftest", Path(__file__).parent / "pipeline" / "conftest.py")
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)
planted_texts = _helpers.planted_texts

pytestmark = pytest.mark.slow
SHORT = {"max_tokens": 64}
N = 240


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def _rows(n: int, seed: int) -> tuple[list[str], list[str | None]]:
    texts = list(planted_texts(n, seed=seed)[1])
    texts[7] = None  # a null text: skipped by every engine, listed with its file and row
    return [f"{i:06d}" for i in range(n)], texts  # zero-padded ids: CSV must keep them as written


def _jsonl(path: Path, ids: list, texts: list, nested: bool = False, compression: str | None = None) -> Path:
    lines = "".join(json.dumps({"meta": {"id": i}, "body": {"text": t}} if nested else {"id": i, "text": t}) + "\n"
                    for i, t in zip(ids, texts))
    if compression == "gzip":
        path.write_bytes(gzip.compress(lines.encode()))
    else:
        with pa.output_stream(str(path), compression=compression) as out:
            out.write(lines.encode())
    return path


def _csv(path: Path, ids: list, texts: list, delimiter: str = ",", compression: str | None = None) -> Path:
    with pa.output_stream(str(path), compression=compression) as out:
        pa_csv.write_csv(pa.table({"id": ids, "text": texts}), out,
                         write_options=pa_csv.WriteOptions(delimiter=delimiter))
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """name -> (corpus argument, id column, text column): every input kind the toolkit reads."""
    root = tmp_path_factory.mktemp("formats")
    ids, texts = _rows(N, seed=21)
    pq.write_table(pa.table({"meta": [{"id": i} for i in ids], "body": [{"text": t} for t in texts]}),
                   root / "nested.parquet", row_group_size=60)
    mixed = root / "mixed"
    mixed.mkdir()
    third = N // 3
    pq.write_table(pa.table({"id": ids[:third], "text": texts[:third]}), mixed / "a.parquet", row_group_size=50)
    _jsonl(mixed / "b.jsonl.zst", ids[third:2 * third], texts[third:2 * third], compression="zstd")
    _csv(mixed / "c.csv", ids[2 * third:], texts[2 * third:])
    (mixed / "_SUCCESS").write_text("")
    return {
        "parquet-dotted": (root / "nested.parquet", "meta.id", "body.text"),
        "jsonl": (_jsonl(root / "c.jsonl", ids, texts), "id", "text"),
        "jsonl.gz-dotted": (_jsonl(root / "c.jsonl.gz", ids, texts, nested=True, compression="gzip"),
                            "meta.id", "body.text"),
        "csv": (_csv(root / "c.csv", ids, texts), "id", "text"),
        "tsv.gz": (_csv(root / "c.tsv.gz", ids, texts, delimiter="\t", compression="gzip"), "id", "text"),
        "directory": (mixed, "id", "text"),
        "glob": (str(mixed / "*.*"), "id", "text"),
        "file-uri": (mixed.as_uri(), "id", "text"),
    }


FORMATS = ["parquet-dotted", "jsonl", "jsonl.gz-dotted", "csv", "tsv.gz", "directory", "glob", "file-uri"]


def test_read_corpus_gives_the_local_readers_rows_in_order(ray_cluster, sources):
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    for name in FORMATS:
        source, id_column, text_column = sources[name]
        got = pa.concat_tables(read_corpus(source, id_column, text_column, shard_rows=50)
                               .iter_batches(batch_format="pyarrow", batch_size=None))
        want = pa.Table.from_batches([b for _, _, b in iter_record_batches(
            source, {id_column: id_column, text_column: text_column})])
        assert got.column_names == [id_column, text_column], name
        assert got.column(id_column).to_pylist() == want.column(id_column).to_pylist(), name
        assert got.column(text_column).to_pylist() == want.column(text_column).to_pylist(), name
        assert got.column(id_column)[0].as_py() == "000000", name  # CSV ids kept as written, not as 0


def test_rows_per_block_cuts_a_shard_into_blocks_an_actor_pool_shares(ray_cluster, sources):
    source, id_column, text_column = sources["jsonl"]  # one file: one shard, one read task
    ds = read_corpus(source, id_column, text_column, rows_per_block=32, num_cpus=0)
    blocks = list(ds.iter_batches(batch_format="pyarrow", batch_size=None))
    assert len(blocks) == -(-N // 32) and max(b.num_rows for b in blocks) <= 32
    got = [i for b in blocks for i in b.column("id").to_pylist()]
    assert got == [f"{i:06d}" for i in range(N)]
    with pytest.raises(ValueError, match="rows_per_block"):
        read_corpus(source, rows_per_block=0)


@pytest.mark.parametrize("name", FORMATS)
def test_minhash_dedup_on_ray_equals_local_for_every_format(ray_cluster, sources, name, tmp_path):
    source, id_column, text_column = sources[name]
    common = {"method": "minhash", "threshold": 0.5, "id_column": id_column, "text_column": text_column,
              "shard_rows": 50}
    local = dedup_pipeline(source, tmp_path / "local", **common)
    remote = dedup_pipeline(source, tmp_path / "ray", engine=RayEngine(), **common)
    for file in ("clusters.parquet", "pairs.parquet", "skipped.parquet"):
        assert pq.read_table(tmp_path / "local" / file).equals(pq.read_table(tmp_path / "ray" / file)), file
    assert remote.summary["engine"] == "ray" and remote.summary["duplicate_clusters"] > 5
    assert len(local.ids) == N - 1  # the null text is skipped, not clustered


@pytest.mark.parametrize("name", ["parquet-dotted", "directory"])  # the directory mixes Parquet, JSON Lines, CSV
def test_embedding_dedup_on_ray_equals_local(ray_cluster, sources, name, tiny_dir, tmp_path):
    source, id_column, text_column = sources[name]
    common = {"method": "hybrid", "threshold": 0.9995, "minhash_threshold": 0.5, "model": tiny_dir, "device": "cpu",
              "encoder_options": SHORT, "id_column": id_column, "text_column": text_column, "shard_rows": 120}
    dedup_pipeline(source, tmp_path / "local", **common)
    dedup_pipeline(source, tmp_path / "ray", engine=RayEngine(), **common)
    for file in ("clusters.parquet", "pairs.parquet"):
        assert pq.read_table(tmp_path / "local" / file).equals(pq.read_table(tmp_path / "ray" / file)), file
    embed = [pq.read_table(tmp_path / e / "stages" / "embed" / "part-00000.parquet") for e in ("local", "ray")]
    assert embed[0].equals(embed[1])  # the vectors, bit for bit


@pytest.mark.parametrize("name", FORMATS)
def test_encode_on_ray_equals_local_for_every_format(ray_cluster, sources, name, tiny_dir, tmp_path):
    source, id_column, text_column = sources[name]
    lines = encode_corpus(source, tmp_path / "ray.parquet", model=tiny_dir, id_column=id_column,
                          text_column=text_column, actors=None if name == "directory" else 1, **SHORT)
    # actors=None: one actor per CPU, every CPU taken; the read tasks must still run (they reserve none)
    assert lines[0].startswith(f"encoded {N - 1:,} documents"), lines
    Encoder.load(tiny_dir, device="cpu", **SHORT).encode_parquet(
        source, tmp_path / "local.parquet", id_column=id_column, text_column=text_column, show_progress=False)
    got, want = read_embeddings(tmp_path / "ray.parquet"), read_embeddings(tmp_path / "local.parquet")
    assert got.ids == want.ids and got.model_id == want.model_id
    np.testing.assert_allclose(got.vectors, want.vectors, atol=1e-6)  # batches differ: float32 rounding only
    assert np.array_equal(got.n_tokens, want.n_tokens) and np.array_equal(got.truncated, want.truncated)
    skipped = [[(r.id, r.reason, Path(r.file).name, r.row) for r in read_skipped(tmp_path / f"{e}.skipped.parquet")]
               for e in ("ray", "local")]
    assert skipped[0] == skipped[1] and [r[0] for r in skipped[0]] == ["000007"]  # CSV: an empty text, else null


def _corrupt_parquet(path: Path) -> Path:
    """A Parquet file whose footer reads but whose second row group's data does not decode."""
    ids, texts = _rows(200, seed=5)
    pq.write_table(pa.table({"id": ids, "text": texts}), path, row_group_size=100, compression="snappy")
    meta = pq.ParquetFile(path).metadata.row_group(1).column(1)
    data = bytearray(path.read_bytes())
    start = meta.dictionary_page_offset + 40  # inside the text column's dictionary page
    data[start:start + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    return path


def test_bad_input_is_one_line_naming_the_file(ray_cluster, tmp_path):
    ids, texts = _rows(50, seed=6)
    missing = tmp_path / "missing"
    missing.mkdir()
    _jsonl(missing / "a.jsonl", ids, texts)
    (missing / "b.jsonl").write_text(json.dumps({"id": "x", "body": "no text column"}) + "\n")
    corrupt = _corrupt_parquet(tmp_path / "corrupt.parquet")
    cases = ((missing, "b.jsonl", "no text column 'text'"), (corrupt, "corrupt.parquet", "cannot read row groups"))
    for source, file, what in cases:
        for run in (lambda s=source: dedup_pipeline(s, tmp_path / "o", method="minhash", shard_rows=100,
                                                    engine=RayEngine()),
                    lambda s=source: encode_corpus(s, tmp_path / "e.parquet", actors=1, **SHORT)):
            with pytest.raises(CorpusError) as info:
                run()
            message = str(info.value)
            assert "\n" not in message and file in message and what in message, message
            assert not (tmp_path / "e.parquet").exists()
