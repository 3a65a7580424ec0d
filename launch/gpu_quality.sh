#!/usr/bin/env bash
# The GPU quality study in ONE command, from a bare offline H100/H200 (at most BUDGET seconds):
#   bash launch/gpu_quality.sh                    # from the repo root; results under $OUT (out/)
# It installs the carried wheels into /tmp/site, unpacks the carried pre-tokenized data into
# /tmp, then runs python -m megaraptr.bench.gpu_quality: BERT (12 x 256, masked LM) and GPT
# (12 x 176, causal LM), each to 20 tokens per non-embedding parameter, every method's training
# a process of its own sharing the one GPU (bf16, compiled kernels where they help), the corpus
# without one source (moby), evaluated on val and on that source. Everything ends by BUDGET
# seconds from this script's start (default 470; if the sweep would run over, the
# lowest-priority runs are stopped first). Reports, PNGs, runs.json and logs land in
# $OUT/<model>/; the short table comes last.
# Carry ONE git-ignored folder, made on a machine with the registry and the corpus:
#   bash launch/gpu_wheels.sh                    # .whl/: deepspeed, pydantic, hjson (cp312)
#   python -m megaraptr.bench.gpu_quality_data --corpus CORPUS   # .gpuquality/: whl/ + data
# CPU dry run (tiny sizes, no wheels; an environment with megaraptr's requirements):
#   PYTHON=python WHEELS=0 DEVICE=cpu OUT=/tmp/gq bash launch/gpu_quality.sh
set -uo pipefail
START=$(date +%s)
OUT=${OUT:-out}; DEVICE=${DEVICE:-cuda}; BUDGET=${BUDGET:-470}; PYTHON=${PYTHON:-python3}
CARRY=${CARRY:-.gpuquality}; WORK=${WORK:-/tmp/gq-work}; UNPACK=${UNPACK:-/tmp/gq-data}
mkdir -p "$OUT"
if [ ! -f "$CARRY/data.tar.xz" ]; then
  echo "gpu_quality: no $CARRY/data.tar.xz (python -m megaraptr.bench.gpu_quality_data)" >&2
  exit 2
fi
if [ "${WHEELS:-1}" = 1 ] && ls "$CARRY"/whl/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    "$CARRY"/whl/*.whl 2>&1 | tail -2
  export PYTHONPATH=/tmp/site:$PWD
else
  [ "${WHEELS:-1}" = 1 ] && echo "gpu_quality: no $CARRY/whl/ (fill .whl/, then make $CARRY again)"
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
rm -rf "$UNPACK" "$WORK" && mkdir -p "$UNPACK"
"$PYTHON" -c "import sys, tarfile; kw = {'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}; tarfile.open(sys.argv[1]).extractall(sys.argv[2], **kw)" \
  "$CARRY/data.tar.xz" "$UNPACK" || exit 1
echo "gpu_quality: wheels and data ready after $(( $(date +%s) - START )) s"
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 MEGARAPTR_CACHE=${MEGARAPTR_CACHE:-/tmp/mrcache}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} TORCHINDUCTOR_COMPILE_THREADS=1
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/gq-inductor}
ARGS=(--out "$OUT" --work "$WORK" --data "$UNPACK/data" --deadline $((START + BUDGET)))
if [ "$DEVICE" = cpu ]; then
  export DS_ACCELERATOR=cpu OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  ARGS+=(--dry-run)
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | \
    tee "$OUT/nvidia-smi.txt"
fi
"$PYTHON" -m megaraptr.bench.gpu_quality "${ARGS[@]}" "$@"
rc=$?
echo "gpu_quality: rc=$rc, $(( $(date +%s) - START )) s; reports: $OUT/<model>/report.md"
exit $rc
