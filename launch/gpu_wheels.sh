#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with what an offline GPU machine lacks to run megaraptr: deepspeed
# 0.19.8 (pure Python) and pydantic/hjson with their needs, built for Python 3.12 on x86_64.
# Run it from the repository root on a machine that reaches PyPI, then carry .whl/ along with
# the checkout; launch/gpu_check.sh installs it into /tmp/site on the GPU machine:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
# The GPU machine must already have torch (CUDA), triton, numpy, tensorboard and tqdm.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p .whl
if ! ls .whl/deepspeed-0.19.8-*.whl >/dev/null 2>&1; then
  python3 -m pip wheel -q --no-deps --no-cache-dir deepspeed==0.19.8 -w .whl
fi
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
  typing-inspection==0.4.5 typing-extensions==4.16.0
ls -1 .whl
du -sh .whl
