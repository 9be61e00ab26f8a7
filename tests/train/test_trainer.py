"""The training loop on CPU with a tiny model: the loss falls, resume is exact, budgets stop cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from reformer_retrieval import ReformerEncoder
from reformer_retrieval.checkpoint import load_tokenizer, read_training
from reformer_retrieval.train import CurriculumPhase, TrainConfig, Trainer, TrainError, info_nce
from reformer_retrieval.train.data import collate


def _losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"}


def _fixed_batch_loss(model: ReformerEncoder, trainer: Trainer, step: int) -> float:
    batch = trainer.builder.build(step)
    model.eval()
    with torch.no_grad():
        a = model(*collate(batch.views_a))
        b = model(*collate(batch.views_b))
    return float(info_nce(a, b, trainer.config.temperature))


@pytest.mark.slow
def test_tiny_model_trains_and_its_loss_falls(corpus_dir: Path, tmp_path: Path, tiny_train_config: TrainConfig) -> None:
    cfg = tiny_train_config.replace(
        steps=24, lr=2e-3, val_docs=0, augment_strength=0.5,
        curriculum=(CurriculumPhase(until=1.0, max_tokens=96, batch_size=12, position_offset_prob=0.5),),
    )
    initial = Trainer(cfg, corpus_dir, tmp_path / "unused")
    initial._load_data()
    initial._build_model()
    initial.builder = initial._make_builder()
    before = _fixed_batch_loss(initial.model, initial, 10_000)

    trainer = Trainer(cfg, corpus_dir, tmp_path / "run")
    record = trainer.run()
    after = _fixed_batch_loss(trainer.model, initial, 10_000)
    assert record["status"] == "complete" and record["steps"] == {"planned": 24, "done": 24}
    assert after < 0.9 * before
    losses = _losses(tmp_path / "run")
    assert np.mean([losses[s] for s in range(20, 25)]) < np.mean([losses[s] for s in range(1, 6)])
    model = ReformerEncoder.from_pretrained(tmp_path / "run")
    assert model.model_id == trainer.model.model_id
    assert load_tokenizer(tmp_path / "run").config.lowercase  # the run's tokenizer settings are recorded


@pytest.mark.slow
def test_resume_gives_the_same_state_as_an_uninterrupted_run(
    corpus_dir: Path, tmp_path: Path, tiny_train_config: TrainConfig
) -> None:
    # Dropout on and a micro-batched (gradient-cached) phase: both must replay exactly after a resume.
    model = {**tiny_train_config.model, "dropout": 0.1, "attention_dropout": 0.1}
    cfg = tiny_train_config.replace(model=model, val_docs=0)
    before = torch.get_rng_state()
    straight = Trainer(cfg, corpus_dir, tmp_path / "straight").run()
    assert torch.equal(torch.get_rng_state(), before)  # the caller's global random state is untouched

    first = Trainer(cfg, corpus_dir, tmp_path / "resumed").run(stop_at=3)
    assert first["status"] == "paused at step 3" and first["steps"]["done"] == 3
    resumed = Trainer(None, corpus_dir, tmp_path / "resumed", resume=True).run()
    assert resumed["status"] == "complete" and resumed["steps"]["done"] == straight["steps"]["done"] == 6

    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    opt_a = load_file(str(tmp_path / "straight" / "checkpoints" / "step-000006" / "optimizer.safetensors"))
    opt_b = load_file(str(tmp_path / "resumed" / "checkpoints" / "step-000006" / "optimizer.safetensors"))
    assert all(torch.equal(opt_a[k], opt_b[k]) for k in opt_a)
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "resumed")
    assert straight["tokens_seen"] == resumed["tokens_seen"]


def test_worker_processes_build_the_same_batches(corpus_dir: Path, tmp_path: Path, tiny_train_config: TrainConfig) -> None:
    cfg = tiny_train_config.replace(steps=3)
    inline = Trainer(cfg, corpus_dir, tmp_path / "inline").run()
    pooled = Trainer(cfg.replace(num_workers=2, prefetch=2), corpus_dir, tmp_path / "pooled").run()
    a = load_file(str(tmp_path / "inline" / "model.safetensors"))
    b = load_file(str(tmp_path / "pooled" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert inline["validation"] == {**pooled["validation"], "eval_seconds": inline["validation"]["eval_seconds"]}


@pytest.mark.slow
@pytest.mark.parametrize("eval_at_start", [True, False])
def test_max_minutes_stops_cleanly_and_saves(
    corpus_dir: Path, tmp_path: Path, tiny_train_config: TrainConfig, eval_at_start: bool
) -> None:
    cfg = tiny_train_config.replace(steps=100_000, max_minutes=0.15, checkpoint_every=2, eval_at_start=eval_at_start)
    record = Trainer(cfg, corpus_dir, tmp_path / "run").run()
    assert record["status"] == "stopped at max_minutes"
    assert 0 < record["steps"]["done"] < 100_000
    assert record["wall_seconds"] < 0.15 * 60 + 3
    saved = read_training(tmp_path / "run")
    assert saved["status"] == "stopped at max_minutes" and saved["validation"]["step"] == record["steps"]["done"]
    ReformerEncoder.from_pretrained(tmp_path / "run")  # the final model is complete and loads
    latest = json.loads((tmp_path / "run" / "checkpoints" / "latest.json").read_text())
    assert latest["step"] == record["steps"]["done"]
    assert [h["step"] for h in record["validation_history"]] == ([0] if eval_at_start else []) + [latest["step"]]


@pytest.mark.slow
def test_auto_steps_fill_the_budget(corpus_dir: Path, tmp_path: Path, tiny_train_config: TrainConfig) -> None:
    cfg = tiny_train_config.replace(steps=100_000, auto_steps=True, max_minutes=0.12)
    record = Trainer(cfg, corpus_dir, tmp_path / "run").run()
    chosen = record["calibration"]["chosen_steps"]
    assert 1 <= chosen < 100_000 and record["steps"]["planned"] == chosen
    assert [row["phase"] for row in record["calibration"]["phases"]] == [0, 1]
    assert record["wall_seconds"] < 0.12 * 60 + 5
    saved = TrainConfig.from_json(tmp_path / "run" / "train_config.json")
    assert saved.steps == chosen and not saved.auto_steps  # a resume keeps the chosen schedule


def test_training_record_and_labelled_validation(
    corpus_dir: Path, labelled_file: Path, tmp_path: Path, tiny_train_config: TrainConfig
) -> None:
    cfg = tiny_train_config.replace(steps=2, eval_every=1)
    record = Trainer(cfg, corpus_dir, tmp_path / "run", labelled=labelled_file, command="unit test").run()
    assert record["command"] == "unit test"
    assert record["data"]["n_documents"] == 56 and record["data"]["n_validation"] == 8
    assert [f["name"] for f in record["data"]["files"]] == ["train-00000.parquet", "train-00001.parquet"]
    assert record["hardware"]["device"] == "cpu" and record["wall_seconds"] > 0
    val = record["validation"]
    assert 0.0 <= val["labelled_roc_auc"] <= 1.0 and val["labelled_n_docs"] == 24
    assert 0.0 <= val["recall@1/64"] <= 1.0 and 0.0 <= val["recall@1/256"] <= 1.0 and val["n_val"] == 8
    assert [h["step"] for h in record["validation_history"]] == [0, 1, 2]
    held_out = set(json.loads((tmp_path / "run" / "training.json").read_text())["data"].keys())
    assert {"corpus", "files", "n_train"} <= held_out


def test_long_validation_lengths_use_the_long_documents_only(
    corpus_dir: Path, tmp_path: Path, tiny_train_config: TrainConfig
) -> None:
    cfg = tiny_train_config.replace(steps=1, eval_all_max_tokens=100, eval_lengths=(64, 1024), val_long_docs=3)
    trainer = Trainer(cfg, corpus_dir, tmp_path / "run")
    val = trainer.run()["validation"]
    long_docs = [i for i in trainer.val_idx if trainer.corpus.n_bytes[i] >= 1024]
    assert len(long_docs) >= 3 and val["n_long"] == len(long_docs) and val["n_val"] == 8
    assert "recall@1/64" in val and "recall@1/1024" not in val  # 1024 > eval_all_max_tokens: long ones only
    assert {"recall@1_long/64", "recall@1_long/1024"} <= set(val)
    assert len(trainer.val_sets[1024]["originals"]) == len(long_docs)


def test_output_directory_guards(corpus_dir: Path, tmp_path: Path, tiny_train_config: TrainConfig) -> None:
    cfg = tiny_train_config.replace(steps=1, val_docs=0)
    with pytest.raises(TrainError, match="no checkpoint"):
        Trainer(cfg, corpus_dir, tmp_path / "run", resume=True).run()
    Trainer(cfg, corpus_dir, tmp_path / "run").run()
    with pytest.raises(TrainError, match="--resume"):
        Trainer(cfg, corpus_dir, tmp_path / "run").run()
    with pytest.raises(TrainError, match="lr"):
        Trainer(cfg.replace(lr=0.5), corpus_dir, tmp_path / "run", resume=True).run()


@pytest.mark.parametrize("prob", [0.0, 1.0])
def test_random_position_offsets_train_the_far_position_rows(
    corpus_dir: Path, tmp_path: Path, tiny_train_config: TrainConfig, prob: float
) -> None:
    cfg = tiny_train_config.replace(
        steps=2, val_docs=0,
        curriculum=(CurriculumPhase(until=1.0, max_tokens=64, batch_size=6, position_offset_prob=prob),),
    )
    fresh = Trainer(cfg, corpus_dir, tmp_path / "unused")
    fresh._build_model()
    start = fresh.model.position_embedding.weight_row.detach().clone()
    trainer = Trainer(cfg, corpus_dir, tmp_path / "run")
    trainer.run()
    end = trainer.model.position_embedding.weight_row.detach()
    n_col = trainer.model.config.axial_pos_shape[1]
    near = 64 // n_col + 1  # rows a 64-token crop at position 0 reaches
    far_changed = (start[near:] != end[near:]).any(dim=1).sum().item()
    if prob == 0.0:
        assert not torch.equal(start[:near], end[:near])
        assert far_changed == 0  # without offsets the far rows never see a gradient
    else:
        assert far_changed > 5  # with offsets, short crops train rows only long documents reach


def test_train_config_json_round_trip_and_errors(tmp_path: Path, tiny_train_config: TrainConfig) -> None:
    path = tmp_path / "c.json"
    path.write_text(tiny_train_config.to_json())
    assert TrainConfig.from_json(path) == tiny_train_config
    path.write_text(json.dumps({"steps": 3, "bogus": 1}))
    with pytest.raises(ValueError, match="bogus"):
        TrainConfig.from_json(path)
    with pytest.raises(ValueError, match="until"):
        tiny_train_config.replace(curriculum=(CurriculumPhase(0.5, 64, 4),))
    with pytest.raises(ValueError, match="max_len"):
        tiny_train_config.replace(curriculum=(CurriculumPhase(1.0, 4096, 4),))
    with pytest.raises(ValueError, match="auto_steps"):
        tiny_train_config.replace(auto_steps=True)
    with pytest.raises(ValueError, match="ngram_idf_docs"):
        tiny_train_config.replace(ngram_idf_docs=0)
    with pytest.raises(ValueError, match="ngram_idf_power"):
        tiny_train_config.replace(ngram_idf_power=-1.0)
    for name in ("configs/smoke.json", "configs/default_model.json", "configs/ngram_stage.json"):
        shipped = Path(__file__).resolve().parents[2] / name
        assert TrainConfig.from_json(shipped).steps >= 1


def test_init_from_starts_at_a_saved_model_and_checks_it_matches(
    corpus_dir: Path, tmp_path: Path, tiny_train_config: TrainConfig
) -> None:
    base = tiny_train_config.replace(steps=2, val_docs=0)
    first = Trainer(base, corpus_dir, tmp_path / "first")
    first.run()
    start_id = first.model.model_id

    tuned = base.replace(init_from=str(tmp_path / "first"), model={}, seed=9)
    paused = Trainer(tuned, corpus_dir, tmp_path / "paused")
    paused.run(stop_at=0)  # no step taken: the saved model is the initial one, not a fresh random one
    assert ReformerEncoder.from_pretrained(tmp_path / "paused").model_id == start_id

    record = Trainer(tuned, corpus_dir, tmp_path / "tuned").run()
    assert record["init_from"] == {"path": str(tmp_path / "first"), "model_id": start_id}
    assert record["model_id"] != start_id  # the two steps moved the weights

    wrong = base.replace(init_from=str(tmp_path / "first"), model={**base.model, "d_model": 48})
    with pytest.raises(TrainError, match=r"differs from the config's in \['d_model'"):
        Trainer(wrong, corpus_dir, tmp_path / "wrong").run()
    with pytest.raises(TrainError, match="cannot load a model"):
        Trainer(base.replace(init_from=str(tmp_path / "nowhere")), corpus_dir, tmp_path / "none").run()


def test_init_from_adds_the_ngram_channel_to_a_model_without_it(
    corpus_dir: Path, tmp_path: Path, tiny_train_config: TrainConfig
) -> None:
    base = tiny_train_config.replace(steps=2, val_docs=0)
    Trainer(base, corpus_dir, tmp_path / "first").run()
    start = ReformerEncoder.from_pretrained(tmp_path / "first")
    dim = start.config.embedding_dim
    ngram = {"ngram_size": 3, "ngram_buckets": 256, "ngram_dim": 8, "ngram_weight": 0.5, "embedding_dim": dim + 8}
    grafted = base.replace(init_from=str(tmp_path / "first"), model=ngram, ngram_idf_docs=5, ngram_idf_tokens=200)
    trainer = Trainer(grafted, corpus_dir, tmp_path / "paused")
    record = trainer.run(stop_at=0)
    assert record["init_from"]["model_id"] == start.model_id
    model = ReformerEncoder.from_pretrained(tmp_path / "paused")
    assert model.config.ngram_size == 3 and model.config.context_dim == dim
    for name, tensor in start.state_dict().items():  # every loaded weight kept
        assert torch.equal(model.state_dict()[name], tensor), name
    # the n-gram weights start at idf^2 over the seeded sample of training documents
    order = np.random.default_rng([grafted.seed, 0x1DF]).permutation(trainer.train_idx)[:5]
    seqs = [trainer.tokenizer.encode(trainer.corpus.texts[i], 200)[0] for i in order.tolist()]
    from reformer_retrieval.model.ngram_hash import idf_log_weights

    expected = idf_log_weights(model.ngrams, seqs, 2.0)
    assert np.allclose(model.ngrams.log_weight.detach().numpy(), expected) and expected.max() > 0
    # the contextual half of the embedding is the loaded model's embedding, scaled
    ids = torch.randint(4, 260, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(ids)[:, :dim], start(ids) * 0.5**0.5, atol=1e-5)
    # any other architecture change is still refused, and the widths must add up
    wrong = grafted.replace(model={**ngram, "d_ff": 32})
    with pytest.raises(TrainError, match="differs from the config's"):
        Trainer(wrong, corpus_dir, tmp_path / "wrong").run()
    with pytest.raises(TrainError, match=f"embedding_dim must be {dim + 8}"):
        Trainer(grafted.replace(model={**ngram, "embedding_dim": dim + 16}), corpus_dir, tmp_path / "w2").run()


def test_init_from_replaces_an_ngram_channel_and_keeps_the_contextual_weights(
    corpus_dir: Path, tmp_path: Path, tiny_train_config: TrainConfig
) -> None:
    base = tiny_train_config.replace(steps=2, val_docs=0, ngram_idf_docs=5, ngram_idf_tokens=200)
    dim = base.model_config().embedding_dim
    table = {"ngram_size": 3, "ngram_buckets": 256, "ngram_dim": 8, "ngram_weight": 0.5, "embedding_dim": dim + 8}
    Trainer(base.replace(model={**base.model, **table}), corpus_dir, tmp_path / "first").run()
    start = ReformerEncoder.from_pretrained(tmp_path / "first")
    sketch = {**table, "ngram_buckets": 4096, "ngram_dim": 24, "ngram_tf": "log", "ngram_projection": "sketch",
              "embedding_dim": dim + 24}
    replaced = base.replace(init_from=str(tmp_path / "first"), model=sketch, ngram_idf_power=1.0)
    logs: list[str] = []
    trainer = Trainer(replaced, corpus_dir, tmp_path / "paused", log=logs.append)
    trainer.run(stop_at=0)
    model = ReformerEncoder.from_pretrained(tmp_path / "paused")
    assert model.config.ngram_projection == "sketch" and model.config.context_dim == dim
    assert any("3-grams replaced in model " + start.model_id in line for line in logs)
    for name, tensor in start.state_dict().items():  # every contextual weight kept, the old channel dropped
        if not name.startswith("ngrams."):
            assert torch.equal(model.state_dict()[name], tensor), name
    assert "ngrams.embedding.weight" not in model.state_dict()
    order = np.random.default_rng([replaced.seed, 0x1DF]).permutation(trainer.train_idx)[:5]
    seqs = [trainer.tokenizer.encode(trainer.corpus.texts[i], 200)[0] for i in order.tolist()]
    from reformer_retrieval.model.ngram_hash import idf_log_weights

    assert np.allclose(model.ngrams.log_weight.detach().numpy(), idf_log_weights(model.ngrams, seqs, 1.0))
    # only the weight of the channel changes: every weight is kept, the channel's too
    reweighted = base.replace(init_from=str(tmp_path / "first"), model={**table, "ngram_weight": 0.8})
    Trainer(reweighted, corpus_dir, tmp_path / "reweighted").run(stop_at=0)
    again = ReformerEncoder.from_pretrained(tmp_path / "reweighted")
    assert again.config.ngram_weight == 0.8
    for name, tensor in start.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
    with pytest.raises(TrainError, match=f"embedding_dim must be {dim + 24}"):
        Trainer(replaced.replace(model={**sketch, "embedding_dim": dim + 40}), corpus_dir, tmp_path / "w").run()


@pytest.mark.slow
def test_a_grafted_run_resumes_exactly(corpus_dir: Path, tmp_path: Path, tiny_train_config: TrainConfig) -> None:
    base = tiny_train_config.replace(steps=2, val_docs=0)
    Trainer(base, corpus_dir, tmp_path / "first").run()
    dim = ReformerEncoder.from_pretrained(tmp_path / "first").config.embedding_dim
    ngram = {"ngram_size": 3, "ngram_buckets": 256, "ngram_dim": 8, "embedding_dim": dim + 8}
    cfg = base.replace(init_from=str(tmp_path / "first"), model=ngram, steps=4, checkpoint_every=2,
                       ngram_idf_docs=5, ngram_idf_tokens=200)
    whole = Trainer(cfg, corpus_dir, tmp_path / "whole").run()
    Trainer(cfg, corpus_dir, tmp_path / "split").run(stop_at=2)
    logs: list[str] = []
    resumed = Trainer(cfg, corpus_dir, tmp_path / "split", resume=True, log=logs.append).run()
    assert resumed["model_id"] == whole["model_id"]
    assert not any("n-grams added" in line or "idf" in line for line in logs)  # neither redone on resume


def test_checkpoints_are_written_by_time_as_well(
    corpus_dir: Path, tmp_path: Path, tiny_train_config: TrainConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no step cadence, a checkpoint is still written once ``checkpoint_seconds`` have passed since the
    last one (the clock here moves 50 s per reading: the loop's start, then once after each step)."""
    import reformer_retrieval.train.trainer as trainer_module

    saved: list[tuple[str, int]] = []
    original = Trainer._save

    def spy(self: Trainer, status: str, checkpoint: bool) -> None:
        saved.append((status, self.step))
        original(self, status, checkpoint)

    monkeypatch.setattr(Trainer, "_save", spy)
    for seconds, expected in ((120.0, [("in progress", 3)]), (0.0, [])):
        ticks = iter(range(50, 10_000, 50))
        monkeypatch.setattr(trainer_module, "_clock", lambda ticks=ticks: float(next(ticks)))
        saved.clear()
        cfg = tiny_train_config.replace(val_docs=0, checkpoint_seconds=seconds)
        Trainer(cfg, corpus_dir, tmp_path / f"run-{seconds:g}").run()
        assert saved == [*expected, ("complete", 6)]
    with pytest.raises(ValueError, match="checkpoint_seconds"):
        tiny_train_config.replace(checkpoint_seconds=-1)
