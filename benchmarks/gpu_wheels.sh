#!/usr/bin/env bash
# The packages tinylm needs that the lent GPU machine lacks (its image has torch, accelerate,
# tokenizers, safetensors, pyarrow, pandas, xxhash, fsspec, huggingface-hub... but not these),
# as Python 3.12 wheels in .whl/ (git-ignored locally via .git/info/exclude). Then, in the ONE
# device command:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && \
#     python3 benchmarks/gpu.py
# (carry: [".whl"]). Versions are the ones the CPU install resolves (pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl datasets==5.2.0 omegaconf==2.4.0 dill==0.4.1 multiprocess==0.70.19
ls .whl
