"""Distillation of the contextual channel: teacher cache, window pooling, the loss going down, resume."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reformer_retrieval import ReformerConfig, ReformerEncoder
from reformer_retrieval.checkpoint import load_model
from reformer_retrieval.tokenizer import ByteTokenizer
from reformer_retrieval.train.distill import DistillConfig, distil, student_from
from reformer_retrieval.train.teacher import (
    TeacherPlan,
    build_teacher_cache,
    read_teacher_cache,
    window_texts,
)


class WordTeacher:
    """A stand-in teacher: the normalised mean of fixed random vectors of the words of a text (a bag of words)."""

    dim = 384

    def encode(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.split():
                seed = int.from_bytes(hashlib.sha1(word.encode()).digest()[:4], "little")
                out[i] += np.random.default_rng(seed).standard_normal(self.dim)
            out[i] /= max(np.linalg.norm(out[i]), 1e-9)
        return out


def _corpus(n: int = 24) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(60)]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(60, 200)))) for _ in range(n)]
    return [f"doc{i}" for i in range(n)], texts


def test_window_texts_cut_bytes_and_drop_split_characters() -> None:
    assert window_texts(b"abcdef", 4) == ["abcd", "ef"]
    assert window_texts("aé".encode(), 2) == ["a", ""]  # é's two bytes fall in two windows: dropped from both


def test_teacher_cache_is_seeded_resumable_and_plan_checked(tmp_path: Path) -> None:
    ids, texts = _corpus()
    plan = TeacherPlan(crops=20, windows=2, width=64, crops_per_doc=1, shard_crops=8, seed=3)
    tok = ByteTokenizer()
    build_teacher_cache(texts, ids, tmp_path / "c", tok.normalize, plan, teacher=WordTeacher(), show_progress=False)
    got_plan, crops, vectors = read_teacher_cache(tmp_path / "c")
    assert got_plan == plan and len(crops) == 20 and {v.shape[1] for v in vectors} == {384}
    for blob, vec in zip(crops, vectors):
        assert len(blob) <= 128 and vec.shape[0] == len(window_texts(blob, 64))
        np.testing.assert_allclose(vec, WordTeacher().encode(window_texts(blob, 64)), atol=1e-6)
    shard = tmp_path / "c" / "shard-00001.parquet"
    shard.unlink()  # a killed build: the rerun writes the missing shard only, with the same crops
    first = (tmp_path / "c" / "shard-00000.parquet").stat().st_mtime_ns
    build_teacher_cache(texts, ids, tmp_path / "c", tok.normalize, plan, teacher=WordTeacher(), show_progress=False)
    assert (tmp_path / "c" / "shard-00000.parquet").stat().st_mtime_ns == first
    assert read_teacher_cache(tmp_path / "c")[1] == crops
    with pytest.raises(ValueError, match="another plan"):
        build_teacher_cache(texts, ids, tmp_path / "c", tok.normalize, TeacherPlan(crops=5), teacher=WordTeacher())


def test_window_pooling_is_the_mean_of_window_vectors(one_thread) -> None:
    config = ReformerConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, embedding_dim=24, chunk_size=16,
                            max_len=4096, axial_pos_shape=(64, 64), context_window=32)
    torch.manual_seed(0)
    model = ReformerEncoder(config).eval()
    ids = torch.randint(4, 200, (1, 100))
    with torch.no_grad():
        emb, states = model(ids, return_token_states=True)
        windows = (torch.arange(100) // 32).unsqueeze(0)
        vectors, present = model.window_vectors(states, torch.ones(1, 100, dtype=torch.bool), windows)
    assert present.tolist() == [[True] * 4]
    manual = torch.stack([model.projection(states[0, k * 32 : (k + 1) * 32].mean(0)) for k in range(4)])
    manual = torch.nn.functional.normalize(manual, dim=-1)
    torch.testing.assert_close(vectors[0], manual, atol=1e-5, rtol=0)
    torch.testing.assert_close(emb[0], torch.nn.functional.normalize(manual.sum(0), dim=0), atol=1e-5, rtol=0)
    assert "context_window" not in ReformerConfig().to_dict()  # older models keep their config text and id
    with pytest.raises(ValueError, match="context_window"):
        ReformerConfig(context_window=-1)


def test_distillation_lowers_the_holdout_loss_and_resumes(tmp_path: Path, one_thread) -> None:
    ids, texts = _corpus(40)
    plan = TeacherPlan(crops=60, windows=2, width=64, crops_per_doc=2, shard_crops=30, seed=0)
    build_teacher_cache(texts, ids, tmp_path / "cache", ByteTokenizer().normalize, plan, teacher=WordTeacher(),
                        show_progress=False)
    base = ReformerConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, embedding_dim=16, chunk_size=16,
                          max_len=4096, axial_pos_shape=(64, 64), ngram_size=3, ngram_buckets=512, ngram_dim=8,
                          ngram_weight=0.5)
    torch.manual_seed(0)
    ReformerEncoder(base).save_pretrained(tmp_path / "init", tokenizer=ByteTokenizer())
    config = DistillConfig(teacher_cache=str(tmp_path / "cache"), init_from=str(tmp_path / "init"), context_dim=384,
                           context_window=64, steps=30, batch_crops=8, lr=3e-3, holdout_crops=16,
                           checkpoint_seconds=0.0, noise_prob=0.5, max_minutes=5)
    final = distil(config, tmp_path / "run", log=lambda _: None)
    record = json.loads((final / "training.json").read_text())
    first, last = record["history"][0]["holdout"], record["history"][-1]["holdout"]
    assert last["cosine"] < first["cosine"] * 0.9 and last["doc"] < first["doc"]
    student = load_model(final)
    assert student.config.context_window == 64 and student.config.embedding_dim == 384 + 8
    initial = student_from(tmp_path / "init", 384, 64)  # every weight but the pooling kept from the start model
    torch.testing.assert_close(initial.ngrams.log_weight, student.ngrams.log_weight)
    with pytest.raises(FileExistsError, match="--resume"):
        distil(config, tmp_path / "run", log=lambda _: None)
    longer = DistillConfig(**{**config.__dict__, "steps": 34})
    logs: list[str] = []
    distil(longer, tmp_path / "run", resume=True, log=logs.append)
    assert any("resumed at step 30" in line for line in logs)
    assert json.loads((tmp_path / "run" / "model" / "training.json").read_text())["steps_done"] == 34


def test_channel_record_names_both_channels() -> None:
    config = ReformerConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, embedding_dim=24, chunk_size=16,
                            max_len=4096, axial_pos_shape=(64, 64), ngram_size=3, ngram_buckets=512, ngram_dim=8,
                            ngram_weight=0.75)
    record = ReformerEncoder(config).channel_record()
    assert record["contextual"]["columns"] == [0, 16] and record["lexical"]["columns"] == [16, 24]
    assert (record["contextual"]["share"], record["lexical"]["share"]) == (0.25, 0.75)
    assert "no neural network" in record["lexical"]["what"] and "Reformer" in record["contextual"]["what"]
    shipped = load_model(Path(__file__).resolve().parents[2] / "reformer_retrieval" / "assets" / "default")
    assert json.loads((Path(__file__).resolve().parents[2] / "reformer_retrieval" / "assets" / "default"
                       / "training.json").read_text())["channels"] == shipped.channel_record()


def test_fit_projection_recovers_a_linear_read_out(one_thread) -> None:
    from reformer_retrieval.train.distill import fit_projection

    config = ReformerConfig(d_model=16, n_layers=2, n_heads=2, d_ff=32, embedding_dim=384, chunk_size=16,
                            max_len=4096, axial_pos_shape=(64, 64), context_window=64)
    torch.manual_seed(0)
    model = ReformerEncoder(config).eval()
    rng = np.random.default_rng(0)
    crops = [bytes(rng.integers(97, 123, size=int(rng.integers(130, 256))).astype(np.uint8)) for _ in range(40)]
    tok = ByteTokenizer()
    teachers = []
    with torch.no_grad():  # the teacher is the model's own (unnormalised) projection of each window's mean state
        for blob in crops:
            ids = torch.as_tensor(tok.encode(blob.decode())[0]).reshape(1, -1)
            states = model(ids, return_token_states=True)[1][0]
            teachers.append(np.stack([model.projection(states[k : k + 64].mean(0)).numpy()
                                      for k in range(0, states.shape[0], 64)]))
        torch.nn.init.normal_(model.projection.weight, std=1.0)  # forget it
    stats = fit_projection(model, crops, teachers, tok, 64, ridge=1e-8)
    assert stats["windows"] == sum(len(t) for t in teachers)
    assert stats["r2"] > 0.999 and stats["cosine"] > 0.999


def test_warm_start_fits_the_projection_before_the_first_step(tmp_path: Path, one_thread) -> None:
    ids, texts = _corpus(30)
    plan = TeacherPlan(crops=40, windows=2, width=64, crops_per_doc=2, shard_crops=40, seed=1)
    build_teacher_cache(texts, ids, tmp_path / "cache", ByteTokenizer().normalize, plan, teacher=WordTeacher(),
                        show_progress=False)
    base = ReformerConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, embedding_dim=16, chunk_size=16,
                          max_len=4096, axial_pos_shape=(64, 64))
    torch.manual_seed(0)
    ReformerEncoder(base).save_pretrained(tmp_path / "init", tokenizer=ByteTokenizer())
    common = {"teacher_cache": str(tmp_path / "cache"), "init_from": str(tmp_path / "init"), "context_dim": 384,
              "context_window": 64, "steps": 0, "batch_crops": 8, "holdout_crops": 8, "noise_prob": 0.0}
    logs: list[str] = []
    cold = distil(DistillConfig(**common), tmp_path / "cold", log=lambda _: None)
    warm = distil(DistillConfig(**common, warm_start=True), tmp_path / "warm", log=logs.append)
    assert any(line.startswith("warm start: projection fitted to ") for line in logs)
    before = json.loads((cold / "training.json").read_text())["history"][0]["holdout"]["cosine"]
    after = json.loads((warm / "training.json").read_text())["history"][0]["holdout"]["cosine"]
    assert after < before - 0.05  # the fitted read-out is closer to the teacher than a random projection


def _reference_loss(model, batch, config):
    """distillation_loss as it was before devices and autocast (CPU, float32): the reference of the CPU path."""
    ids, mask, windows, targets, present = batch
    states = model._contextual(ids, mask, None)[1]
    vectors, has_text = model.window_vectors(states, mask, windows)
    n = min(vectors.shape[1], targets.shape[1])
    vectors, targets = vectors[:, :n], targets[:, :n]
    both = present[:, :n] & has_text[:, :n]
    student, teacher = vectors[both], targets[both]
    cosine = (1.0 - (student * teacher).sum(-1)).mean()
    nce = torch.nn.functional.cross_entropy(student @ teacher.T / config.temperature, torch.arange(len(student)))
    doc_s = torch.nn.functional.normalize((vectors * both.unsqueeze(-1)).sum(1), dim=-1)
    doc_t = torch.nn.functional.normalize((targets * both.unsqueeze(-1)).sum(1), dim=-1)
    doc = (1.0 - (doc_s * doc_t).sum(-1)).mean()
    return cosine + config.nce_weight * nce + config.doc_weight * doc


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_the_cpu_path_keeps_the_losses_and_bf16_is_ignored_there(tmp_path: Path, device: str, one_thread) -> None:
    from reformer_retrieval.encode import resolve_device
    from reformer_retrieval.train.distill import _batch, distillation_loss

    if device == "auto" and torch.cuda.is_available():
        pytest.skip("'auto' is CUDA on this machine")
    assert resolve_device(device) == torch.device("cpu")
    ids, texts = _corpus(12)
    plan = TeacherPlan(crops=12, windows=2, width=64, crops_per_doc=1, shard_crops=12, seed=0)
    build_teacher_cache(texts, ids, tmp_path / "cache", ByteTokenizer().normalize, plan, teacher=WordTeacher(),
                        show_progress=False)
    _, crops, teachers = read_teacher_cache(tmp_path / "cache")
    config = DistillConfig(teacher_cache=str(tmp_path / "cache"), device=device, bf16=True, noise_prob=0.5)
    model = student_from(None, 384, 64).to(resolve_device(config.device))
    batch = _batch(crops, teachers, np.arange(6), ByteTokenizer(), 64, config, np.random.default_rng(0))
    with torch.no_grad():
        total, parts = distillation_loss(model, batch, config)
        expected = _reference_loss(model, batch, config)
    assert total.item() == expected.item()  # bit for bit: no autocast, no cast on the CPU
    assert set(parts) == {"cosine", "nce", "doc"}


def test_the_schedule_is_fitted_to_the_time_budget_and_kept_on_resume(tmp_path: Path, one_thread) -> None:
    ids, texts = _corpus(30)
    plan = TeacherPlan(crops=40, windows=2, width=64, crops_per_doc=2, shard_crops=40, seed=0)
    build_teacher_cache(texts, ids, tmp_path / "cache", ByteTokenizer().normalize, plan, teacher=WordTeacher(),
                        show_progress=False)
    base = ReformerConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, embedding_dim=16, chunk_size=16,
                          max_len=4096, axial_pos_shape=(64, 64))
    torch.manual_seed(0)
    ReformerEncoder(base).save_pretrained(tmp_path / "init", tokenizer=ByteTokenizer())
    config = DistillConfig(teacher_cache=str(tmp_path / "cache"), init_from=str(tmp_path / "init"), context_dim=384,
                           context_window=64, steps=100_000, max_minutes=0.05, batch_crops=4, holdout_crops=8,
                           fit_steps_to_time=3, checkpoint_seconds=1e9, device="auto")
    logs: list[str] = []
    final = distil(config, tmp_path / "run", log=logs.append)
    record = json.loads((final / "training.json").read_text())
    planned = record["steps_planned"]
    assert any(f"the schedule is now {planned} steps long" in line for line in logs)
    assert 8 <= planned < 100_000 and record["steps_done"] <= planned and record["device"] == "cpu"
    longer = DistillConfig(**{**config.__dict__, "max_minutes": 0.02})
    logs.clear()
    distil(longer, tmp_path / "run", resume=True, log=logs.append)
    assert not any("the schedule is now" in line for line in logs)  # fitted once, kept in the checkpoint
    assert json.loads((tmp_path / "run" / "model" / "training.json").read_text())["steps_planned"] == planned


def test_the_shipped_distillation_configs_load() -> None:
    root = Path(__file__).resolve().parents[2] / "configs"
    stage = DistillConfig.from_json(root / "distill_stage.json")
    gpu = DistillConfig.from_json(root / "distill_gpu.json")
    assert (stage.device, stage.bf16, stage.fit_steps_to_time) == ("cpu", False, 0)
    assert (gpu.device, gpu.bf16, gpu.fit_steps_to_time, gpu.warm_start) == ("auto", True, 20, True)
    assert gpu.context_dim == stage.context_dim and gpu.context_window == stage.context_window
