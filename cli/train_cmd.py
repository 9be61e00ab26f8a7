"""``reformer-retrieval train``: self-supervised near-duplicate training of an encoder on a Parquet corpus."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click
from reformer_retrieval.cli.options import device_option

__all__ = ["train"]

_EPILOG = """\b
Examples:
  reformer-retrieval train corpus/ -o runs/smoke --config configs/smoke.json
  reformer-retrieval train corpus/ -o runs/default --config configs/default_model.json \\
      --labelled dev/wiki_versions/corpus.parquet
  reformer-retrieval train corpus/ -o runs/default --resume          # continue after an interruption

\b
CORPUS is a Parquet, JSON Lines or CSV file (plain or compressed), a quoted glob, or a directory of
train-* shards (all its corpus files if none is so named); columns id and text (the config's
id_column / text_column; dotted names reach nested fields). MODEL_DIR receives
the model (config.json, model.safetensors, tokenizer.json, training.json; refreshed at every checkpoint),
train_config.json, metrics.jsonl and checkpoints/. --resume continues exactly where the newest checkpoint
left off (batches, learning rate, optimizer state). With max_minutes in the config the run stops in time
to validate and save within that budget; with auto_steps it first measures this machine's speed and picks
the number of steps that fills the budget. A checkpoint is written at least every checkpoint_seconds
(120 s by default; and every checkpoint_every steps if set), so an interruption loses about that much.
"""


@click.command("train", epilog=_EPILOG)
@click.argument("corpus", metavar="CORPUS")
@click.option("-o", "--output", "output", required=True, type=click.Path(file_okay=False, path_type=Path),
              metavar="MODEL_DIR", help="Directory for the model, logs and checkpoints.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              metavar="FILE", help="Training config (JSON; see configs/). Default: built-in defaults.")
@click.option("--resume", is_flag=True, help="Continue the run in MODEL_DIR from its newest checkpoint.")
@click.option("--labelled", type=click.Path(exists=True, path_type=Path), default=None, metavar="FILE",
              help="Labelled Parquet (id, text, cluster): pair ROC-AUC and best F1 at every validation.")
@click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Override the config's wall-clock budget (minutes).")
@device_option(default=None, help="Override the config's device.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Override the number of batch-building processes.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def train(
    corpus: str,
    output: Path,
    config_path: Path | None,
    resume: bool,
    labelled: Path | None,
    max_minutes: float | None,
    device: str | None,
    workers: int | None,
    quiet: bool,
) -> None:
    """Train an encoder on CORPUS (two augmented views per document, symmetric InfoNCE) into MODEL_DIR."""
    from reformer_retrieval.checkpoint import ModelDirectoryError
    from reformer_retrieval.train import TrainConfig, TrainError
    from reformer_retrieval.train.data import CorpusError
    from reformer_retrieval.train.trainer import Trainer

    command = "reformer-retrieval " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        config = TrainConfig.from_json(config_path) if config_path is not None else None
        overrides = {
            k: v
            for k, v in {"max_minutes": max_minutes, "device": device, "num_workers": workers}.items()
            if v is not None
        }
        if quiet:
            overrides["progress"] = False
        if overrides:
            if config is None:  # no --config: the run's saved settings when resuming, else the defaults
                from reformer_retrieval.train.trainer import CONFIG_FILE

                saved = output / CONFIG_FILE
                config = TrainConfig.from_json(saved) if resume and saved.is_file() else TrainConfig()
            config = config.replace(**overrides)
        record = Trainer(config, corpus, output, labelled=labelled, resume=resume, command=command).run()
    except (TrainError, CorpusError, ModelDirectoryError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{record['status']}: {record['steps']['done']}/{record['steps']['planned']} steps, "
               f"{record['tokens_seen']:,} tokens in {record['wall_seconds']:.0f} s -> {output}")
    val = record.get("validation") or {}
    shown = {k: v for k, v in val.items() if k.startswith(("recall@1", "labelled_roc_auc", "labelled_best_f1"))}
    if shown:
        click.echo("validation: " + ", ".join(f"{k}={v:.4f}" for k, v in shown.items()))
