#!/usr/bin/env bash
# The whole method on one GPU in ONE command (offline H100/H200, about 5-6 minutes in all):
#   bash launch/gpu_check.sh                      # from the repo root; results under $OUT (out/)
# It installs the carried wheels (.whl/), then runs python -m megaraptr.bench.gpu: the Triton
# residual-add check, the step-time benchmark of BERT-base and GPT-medium (k = 0, L/2, L; plain
# PyTorch and ZeRO-2/1/3; eager vs auto kernels; bf16) and RAPTR 6-8-10-12 against full
# training end to end, three times, the order alternating (full, RAPTR; RAPTR, full; full,
# RAPTR), with the spread of the three speedups and achieved/ideal (BERT-base, ZeRO-2 or ZeRO-1
# as measured faster, ~200 steps each, real tokens; the ideal from the same run's plain PyTorch
# t(k)). Each part has its own deadline inside BUDGET seconds (default 400, counted from this
# script's start); the table comes last, JSON and logs are under $OUT (commit all the JSON).
# Carry two git-ignored folders, made on a machine with the registry and your corpus:
#   bash launch/gpu_wheels.sh                          # .whl/: deepspeed, pydantic, hjson (5 MB)
#   python -m megaraptr.bench.gpu_data --corpus DIR    # .gpudata/: pre-tokenized slice (29 MB)
# CPU dry run (tiny sizes, no wheels; an environment with megaraptr's requirements):
#   PYTHON=python WHEELS=0 DEVICE=cpu OUT=/tmp/gc bash launch/gpu_check.sh
set -uo pipefail
START=$(date +%s)
OUT=${OUT:-out}; DEVICE=${DEVICE:-cuda}; BUDGET=${BUDGET:-400}; PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
if [ "${WHEELS:-1}" = 1 ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .whl/*.whl 2>&1 | tail -2
  export PYTHONPATH=/tmp/site:$PWD
else
  [ "${WHEELS:-1}" = 1 ] && echo "gpu_check: no .whl/ here (bash launch/gpu_wheels.sh)"
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
[ -f .gpudata/bert-mlm/index.json ] || \
  echo "gpu_check: no .gpudata/ (python -m megaraptr.bench.gpu_data --corpus DIR); using the built-in sample"
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 MEGARAPTR_CACHE=${MEGARAPTR_CACHE:-/tmp/mrcache}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}  # should DeepSpeed JIT-build an op
ARGS=(--out "$OUT" --deadline $((START + BUDGET)))
if [ "$DEVICE" = cpu ]; then
  export DS_ACCELERATOR=cpu OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
  ARGS+=(--dry-run)
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | \
    tee "$OUT/nvidia-smi.txt"
fi
"$PYTHON" -m megaraptr.bench.gpu "${ARGS[@]}" "$@"
rc=$?
echo "gpu_check: rc=$rc, $(( $(date +%s) - START )) s; JSON: $OUT/gpu_bench.json"
exit $rc
