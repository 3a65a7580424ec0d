#!/usr/bin/env bash
# GPU check on an offline machine (one H100/H200): installs the carried wheels (.whl/, made by
# ../shared/device/make-wheels.sh plus tokenizers), then in one command
#   1. the step-time benchmark: BERT-base shape, bf16, ZeRO-1/2/3 against plain PyTorch,
#      k = 0, 3, 6, 9, 12 active layers (a fresh random subset each step);
#   2. a short megaraptr.train run (BERT-base, bf16, ZeRO-2, RAPTR 6-8-10-12) on the sample.
# Writes JSON and logs under $OUT and prints the tables last.
# CPU dry run (an environment with megaraptr installed, wheels not used):
#   PYTHON=.venv/bin/python WHEELS=0 DEVICE=cpu SIZE=tiny KS=0,2,4 OUT=/tmp/gc bash launch/gpu_check.sh
set -uo pipefail
OUT=${OUT:-out}; SIZE=${SIZE:-base}; DEVICE=${DEVICE:-cuda}; KS=${KS:-0,3,6,9,12}
STEPS=${STEPS:-10}; WARMUP=${WARMUP:-3}; ZERO=${ZERO:-1,2,3}; PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
if [ "${WHEELS:-1}" = 1 ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .whl/*.whl 2>&1 | tail -2
  export PYTHONPATH=/tmp/site:$PWD
fi
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 MEGARAPTR_CACHE=${MEGARAPTR_CACHE:-/tmp/mrcache}
[ "$DEVICE" = cpu ] && export DS_ACCELERATOR=cpu OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
SECONDS=0
timeout ${BENCH_TIMEOUT:-240} "$PYTHON" -m megaraptr.bench.step_time --model bert --size "$SIZE" \
  --zero "$ZERO" --precision bf16 --device "$DEVICE" --ks "$KS" --steps "$STEPS" \
  --warmup "$WARMUP" --out "$OUT/step_time.json" > "$OUT/step_time.log" 2>&1
echo "step_time rc=$? ${SECONDS}s"
SECONDS=0
"$PYTHON" - "$OUT/train_config.json" "$SIZE" <<'PY'
import json, sys
name = "bert_base_raptr_zero2" if sys.argv[2] == "base" else "tiny_raptr_cpu"
c = json.load(open(f"ds_configs/{name}.json"))
c["tensorboard"]["enabled"] = False
c["zero_optimization"] = {"stage": 2}
c["bf16"] = {"enabled": True}
json.dump(c, open(sys.argv[1], "w"))
PY
timeout ${TRAIN_TIMEOUT:-90} "$PYTHON" -m megaraptr.train --deepspeed_config "$OUT/train_config.json" \
  --model bert --size "$SIZE" --seq-len 128 --train-steps 40 --eval-interval 20 \
  --summary "$OUT/train_summary.json" > "$OUT/train.log" 2>&1
echo "train rc=$? ${SECONDS}s"
grep -E "^megaraptr" "$OUT/train.log" | tail -3
grep -E "^Traceback|Error" "$OUT/step_time.log" "$OUT/train.log" | grep -v -i warn | tail -5
sed -n '/^device:/,$p' "$OUT/step_time.log" | grep -v "^\[" | grep -v "return func\|Warning"
