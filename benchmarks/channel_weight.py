"""Choose the share of the lexical channel in the cosine on labelled dev sets, instead of fixing it by hand.

A model's embedding is ``[sqrt(1 - w) * contextual; sqrt(w) * lexical]``, so its cosine is ``(1 - w) * cos_c + w *
cos_l``. This benchmark encodes each dev set (clean and OCR-noised copies) once per channel, scores every ``w`` of
a grid by best pairwise F1, and reports, per set, each channel alone and the mix at the chosen ``w``: the grid
point with the largest worst-case gain over the lexical channel alone across all sets (ties: the larger mean
F1). With ``--write DIR`` it saves the model with that ``ngram_weight`` (a new config, so a new model id).

Examples::

    python benchmarks/channel_weight.py --max-clusters 60                     # wiki_versions, clean + OCR
    python benchmarks/channel_weight.py --data a.parquet --data b.parquet --json w.json --write runs/weighted
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_json
from model_quality import DEFAULT_DATA, load_labelled, noisy_copy

__all__ = ["choose_weight", "main"]


def choose_weight(
    sims: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], grid: np.ndarray, min_gain: float = 0.005
) -> tuple[float, dict[str, dict[str, float]]]:
    """The lexical share ``w`` of ``grid`` with the largest worst-case best-F1 gain over the lexical channel alone.

    Args:
        sims: Per dev set, ``(contextual cosines, lexical cosines, cluster labels)``.
        grid: Candidate shares in [0, 1].
        min_gain: A mix must beat the lexical channel alone by this much on every set, or ``w`` is 1 (the
            lexical channel alone): smaller gains are within what a threshold's luck gives.

    Returns:
        ``(w, per-set {"contextual", "lexical", "mixed"} best F1 at w)``.
    """
    from reformer_retrieval.train import pair_metrics

    def f1(similarity: np.ndarray, labels: np.ndarray) -> float:
        return float(pair_metrics(similarity, labels)["best_f1"])

    lexical = {name: f1(sl, labels) for name, (_, sl, labels) in sims.items()}
    scores = {}
    for w in grid:
        per_set = {name: f1((1 - w) * sc + w * sl, labels) for name, (sc, sl, labels) in sims.items()}
        gains = [per_set[name] - lexical[name] for name in sims]
        scores[float(w)] = (min(gains), float(np.mean(list(per_set.values()))), per_set)
    best = max(scores, key=lambda w: (scores[w][0], scores[w][1]))
    if scores[best][0] < min_gain:
        best = 1.0
        scores[best] = (0.0, float(np.mean(list(lexical.values()))), dict(lexical))
    table = {
        name: {"contextual": f1(sc, labels), "lexical": lexical[name], "mixed": scores[best][2][name]}
        for name, (sc, _, labels) in sims.items()
    }
    return best, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, action="append", default=None,
                        help="labelled Parquet (id, text, cluster); repeat for several (default: wiki_versions)")
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: the bundled model)")
    parser.add_argument("--max-clusters", type=int, default=0, help="seeded subset of whole clusters per set")
    parser.add_argument("--noise-preset", default="ocr")
    parser.add_argument("--noise-strength", type=float, default=0.5)
    parser.add_argument("--step", type=float, default=0.05, help="grid step of the lexical share")
    parser.add_argument("--min-gain", type=float, default=0.005,
                        help="smallest worst-case F1 gain over the lexical channel alone for a mix to be chosen")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--write", type=Path, default=None, help="save the model with the chosen ngram_weight here")
    args = parser.parse_args(argv)

    from reformer_retrieval.checkpoint import load_model, load_tokenizer, read_training
    from reformer_retrieval.encode import DEFAULT_MODEL_DIR, Encoder

    directory = DEFAULT_MODEL_DIR if args.model is None else args.model
    model, tokenizer = load_model(directory), load_tokenizer(directory)
    if not model.config.ngram_size:
        print(f"{directory}: the model has no lexical channel; nothing to weigh", file=sys.stderr)
        return 2
    encoders = {ch: Encoder(model, tokenizer, device="cpu", channels=ch) for ch in ("contextual", "lexical")}
    sims: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for path in args.data or [DEFAULT_DATA]:
        if not path.is_file():
            print(f"no labelled data at {path} (pass --data)", file=sys.stderr)
            return 2
        data = load_labelled(path, args.max_clusters, 0, 0)
        noisy = noisy_copy(data["texts"], data["rows"], args.noise_strength, 0, args.noise_preset)
        for condition, texts in (("clean", data["texts"]), ("noisy", noisy)):
            vc, vl = (encoders[ch].encode(texts) for ch in ("contextual", "lexical"))
            sims[f"{path.stem} {condition}"] = (vc @ vc.T, vl @ vl.T, data["clusters"])
    grid = np.round(np.arange(0.0, 1.0 + 1e-9, args.step), 6)
    best, table = choose_weight(sims, grid, args.min_gain)
    print(f"model {model.model_id} (shipped lexical share {model.config.ngram_weight}); chosen share w = {best:.2f} "
          f"(largest worst-case gain over the lexical channel alone, grid step {args.step})")
    print(markdown_table(
        ["dev set", "contextual alone", "lexical alone", f"mixed (w={best:.2f})", "gain"],
        [[name, f"{r['contextual']:.4f}", f"{r['lexical']:.4f}", f"{r['mixed']:.4f}", f"{r['mixed'] - r['lexical']:+.4f}"]
         for name, r in table.items()],
        align="lrrrr",
    ))
    out: dict[str, Any] = {"model_id": model.model_id, "chosen_lexical_share": best, "sets": table}
    if args.write is not None:
        if not 0.0 < best < 1.0:
            print(f"not written: the chosen share {best} leaves one channel out (encode --channels does that)")
        else:
            weighted = type(model)(model.config.replace(ngram_weight=best))
            weighted.load_state_dict(model.state_dict())
            training = read_training(directory)
            training["channel_weight"] = out
            weighted.save_pretrained(args.write, tokenizer=tokenizer, training=training)
            out["written"] = {"dir": str(args.write), "model_id": weighted.model_id}
            print(f"wrote {args.write} (model {weighted.model_id}, ngram_weight {best})")
    if args.json is not None:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
