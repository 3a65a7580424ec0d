#!/usr/bin/env bash
# megaraptr quickstart: install what is missing, then pretrain a tiny BERT with RAPTR on the
# built-in sample.
# Works on CPU (a few minutes) or one GPU. Creates .venv unless a virtualenv is active.
#   STEPS=300 (optimizer steps)  OUT=runs/quickstart (checkpoints, summary, TensorBoard)
#   TORCH_SPEC: what pip installs when torch is missing (default torch==2.13.0 without a GPU,
#   torch with one)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
STEPS=${STEPS:-300}
OUT=${OUT:-runs/quickstart}
start=$(date +%s)
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi
if ! python -c "import torch" 2>/dev/null; then
  if nvidia-smi -L >/dev/null 2>&1; then default_torch=torch; else default_torch=torch==2.13.0; fi
  python -m pip install -q "${TORCH_SPEC:-$default_torch}"
fi
# It runs megaraptr from this checkout; pip installs it (with its requirements) only when a
# requirement is missing (pip install -e . yourself for the megaraptr-* commands).
if ! python -c "import deepspeed, numpy, pydantic, tensorboard, tokenizers, tqdm" 2>/dev/null; then
  python -m pip install -q -e .
fi
if ! nvidia-smi -L >/dev/null 2>&1; then
  export DS_ACCELERATOR=cpu OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
fi
export TOKENIZERS_PARALLELISM=false
rm -rf "$OUT"
config="$OUT/ds_config.json"
mkdir -p "$OUT"
python - "$config" "$OUT" <<'PY'
import json, sys
config = json.load(open("ds_configs/tiny_raptr_cpu.json"))
config["tensorboard"]["output_path"] = sys.argv[2] + "/tensorboard"
json.dump(config, open(sys.argv[1], "w"), indent=2)
PY
python -m megaraptr.train --deepspeed_config "$config" --model bert --size tiny \
  --train-steps "$STEPS" --eval-interval 50 --save "$OUT/checkpoints" \
  --summary "$OUT/summary.json"
python - "$OUT/summary.json" "$start" <<'PY'
import json, sys, time
s = json.load(open(sys.argv[1]))
print(f"quickstart: eval loss {s['initial_eval_loss']:.4f} at step 0 -> {s['final_eval_loss']:.4f} "
      f"at step {s['steps']}; layer FLOPs {s['layer_flops_fraction']:.3f} of full-model training; "
      f"TensorBoard: tensorboard --logdir {s['tensorboard_dir']}; "
      f"{time.time() - float(sys.argv[2]):.0f} s in all")
PY
