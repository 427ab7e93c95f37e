#!/usr/bin/env bash
# The captured step on a GPU, in one go of a few minutes (a lent GPU's first call): the GPU tests
# (a captured CUDA graph trains as the eager loop does, for bn, gn, brn and frn), then the step bench
# on `claim_gpu`'s 12 jobs (ResNet-20, 8 devices, its 5 seeds packed, 2..64 images per device): ms
# per step eager (uncompiled) / captured / captured with all 12 side by side, sustained TFLOP/s, and
# the projected `claim_gpu` time. Writes $OUT/gpu_tests.txt and $OUT/steps_gpu.md (default
# results/bench); the bench runs even if a test fails, and the script then exits with the tests'
# status. Arguments go to the bench as Hydra overrides, e.g. the data:
# `bash scripts/gpu_check.sh paths.cifar10_folder=DIR`. Needs normexp importable (pip install -e .,
# or PYTHONPATH=. with its dependencies installed).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-results/bench}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_step.py 2>&1 | tee "$out/gpu_tests.txt"
tests=$?
python3 scripts/step_bench.py --project claim_gpu --device cuda --steps 32 --side-by-side 10 \
  --out "$out/steps_gpu.md" runtime.compile=false "$@" || exit
exit $tests
