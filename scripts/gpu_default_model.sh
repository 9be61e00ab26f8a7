#!/usr/bin/env bash
# The default model's GPU stage, as one prepared command for a lent GPU machine (see docs/training.md, "Reproducing
# the default model"). It reads the corpus copy made by scripts/cap_corpus.py (.gpu/train.parquet), the labelled
# dev set (.gpu/wiki_dev.parquet) and the stage-1 CPU model (runs/cpu_stage; the shipped CPU model is copied
# there when the directory is missing), and writes the model files and the log to $OUT.
# The device tool returns at most 8 files of 16 MiB each from $OUT: the model's tokenizer.json and train_config.json
# stay behind (the tokenizer is init_from's or the config's, the config is in the repo), weights above 15 MB are
# split, and the encodes' skipped-row lists are removed.
#   1. installs the package (no dependencies: the machine has torch, pyarrow, click, tqdm, safetensors);
#   2. SMOKE=1: a 4-step smoke run of the whole training path on CUDA (bf16 autocast, gradient caching, hard
#      negatives); if bf16 fails there, the main run goes without it and the log says so;
#   3. the training run, $CONFIG (default configs/default_model.json; its max_minutes bounds it);
#   4. EVAL=1: the new model encodes the labelled dev set and its OCR-noised copy into
#      $OUT/emb_{clean,ocr}.parquet, for the quality table (make the copy first, exactly as the benchmark does:
#      python benchmarks/model_quality.py --data .gpu/wiki_dev.parquet --write-noisy .gpu/wiki_dev_ocr.parquet);
#   5. BENCH=1 and time left: the GPU rows of benchmarks/encoder_speed.py.
# DRY=1 runs the same steps on CPU with the smoke config (a check of this script on any machine).
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT/model"
export PYTHONUNBUFFERED=1
START=$(date +%s)
DATA=.gpu
CONFIG=${CONFIG:-configs/default_model.json}
if [ "${DRY:-0}" = 1 ]; then CONFIG=configs/smoke.json; fi
if [ ! -d runs/cpu_stage ]; then mkdir -p runs && cp -r reformer_retrieval/assets/default runs/cpu_stage; fi
log() { echo "[$(( $(date +%s) - START )) s] $*"; }
{
  log "machine"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tail -n +1
  if [ "${DRY:-0}" != 1 ]; then
    python3 -m pip install -q --no-deps --no-build-isolation --no-index . 2>&1 | grep -v "^WARNING" | tail -3
  fi
  python3 -c "import torch, reformer_retrieval; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

  log "smoke run"
  python3 - "$CONFIG" <<'PY'
import json, sys
d = json.load(open("configs/smoke.json")); d.pop("_comment", None)
d.update(steps=4, device="auto", bf16=True, same_doc_negatives=0.25, progress=False, eval_every=2, checkpoint_every=2)
json.dump(d, open("/tmp/smoke_bf16.json", "w"))
d["bf16"] = False
json.dump(d, open("/tmp/smoke_fp32.json", "w"))
m = json.load(open(sys.argv[1])); m.pop("_comment", None); m["bf16"] = False
json.dump(m, open("/tmp/main_fp32.json", "w"))
PY
  MAIN=$CONFIG
  smoke() {  # smoke NAME: a 4-step run of /tmp/NAME.json; true when it saved a model
    timeout 150 reformer-retrieval train $DATA/wiki_dev.parquet -o "/tmp/$1" --config "/tmp/$1.json" \
        --labelled $DATA/wiki_dev.parquet 2>&1 | tr '\r' '\n' | grep -v "^train: " | tail -5
    test -f "/tmp/$1/model.safetensors"
  }
  if [ "${SMOKE:-1}" = 1 ] && ! smoke smoke_bf16; then
    log "smoke run with bf16 FAILED; trying fp32"
    if smoke smoke_fp32; then MAIN=/tmp/main_fp32.json; log "main run without bf16"; else log "both smoke runs failed"; fi
  fi

  log "training run ($MAIN)"
  timeout -s INT "${TRAIN_TIMEOUT:-440}" reformer-retrieval train $DATA/train.parquet -o /tmp/run --config "$MAIN" \
      --labelled $DATA/wiki_dev.parquet 2>&1 | tr '\r' '\n' | grep -v "^train: " 
  log "training run exit ${PIPESTATUS[0]}"
  if [ -f /tmp/run/model.safetensors ]; then SRC=/tmp/run; else SRC=/tmp/run/checkpoints/$(python3 -c "import json; print(json.load(open('/tmp/run/checkpoints/latest.json'))['dir'])"); fi
  for f in model.safetensors config.json training.json; do cp "$SRC/$f" "$OUT/model/" 2>/dev/null; done
  cp /tmp/run/metrics.jsonl "$OUT/model/" 2>/dev/null
  # the device tool returns files of at most 16 MiB: split larger weights (join: cat model.safetensors.part.* >
  # model.safetensors; the sha256 printed here checks the join)
  if [ "$(stat -c %s "$OUT/model/model.safetensors" 2>/dev/null || echo 0)" -gt 15000000 ]; then
    sha256sum "$OUT/model/model.safetensors"
    split -b 12m "$OUT/model/model.safetensors" "$OUT/model/model.safetensors.part." && rm "$OUT/model/model.safetensors"
  fi
  ls -la "$OUT/model"

  if [ "${EVAL:-0}" = 1 ] && [ -f /tmp/run/model.safetensors ]; then
    for kind in clean ocr; do
      src=$DATA/wiki_dev.parquet; [ $kind = ocr ] && src=$DATA/wiki_dev_ocr.parquet
      log "encode $src"
      timeout 150 reformer-retrieval encode "$src" -o "$OUT/emb_$kind.parquet" --model /tmp/run --device cuda -q 2>&1 | tail -4
    done
    rm -f "$OUT"/*.skipped.parquet
  fi

  LEFT=$(( 530 - ($(date +%s) - START) ))
  if [ "${DRY:-0}" != 1 ] && [ "${BENCH:-1}" = 1 ] && [ $LEFT -gt 45 ]; then
    log "GPU encoder benchmark (${LEFT} s left)"
    timeout $(( LEFT - 5 )) python3 benchmarks/encoder_speed.py --quick-gpu --no-rev-check --json "$OUT/gpu_encoder.json" 2>&1 | tail -25
  fi
  log "done"
} 2>&1 | tee "$OUT/gpu.log"
