#!/usr/bin/env bash
# The GPU engine's first minutes on a lent GPU, in one go (about 6 minutes): the GPU tests, the step
# bench on `claim_gpu`'s 12 jobs (eager / captured / all side by side; ms per step, TFLOP/s, the
# projected `claim_gpu` time), and a tiny end-to-end threaded sweep (hydra/launcher=threads: bn, gn, brn
# and FrozenBN at 2 and 64 images per device, 2 seeds packed, 5 epochs on 5,000 training images)
# with its analysis. Self-contained on a machine without internet: it installs the wheels and
# unpacks the data that `bash scripts/gpu_pack.sh` put in .travel/ (carry .travel), and imports
# normexp from this folder. Writes $OUT (default results/bench): gpu_tests.txt, steps_gpu.md,
# e2e.txt. Every part runs even if an earlier one fails; the exit status is the first failure's.
# Arguments go to the bench as Hydra overrides. Rehearsed on CPU: GPU_CHECK_DEVICE=cpu (few steps).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-results/bench}
device=${GPU_CHECK_DEVICE:-cuda}
mkdir -p "$out"
if [ -d .travel/wheels ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/normexp-site \
    .travel/wheels/*.whl || exit 2
  export PYTHONPATH=/tmp/normexp-site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ -z "${NORMEXP_CIFAR10_FOLDER:-}" ] && [ -f .travel/cifar10-jpeg.tar.gz ]; then
  mkdir -p /tmp/normexp-data && tar -xzf .travel/cifar10-jpeg.tar.gz -C /tmp/normexp-data || exit 2
  export NORMEXP_CIFAR10_FOLDER=/tmp/normexp-data/cifar10-jpeg
fi
python3 -m normexp.cli.preflight || exit 2  # one line naming what is missing, before any test
[ "$device" = cpu ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
status=0
failed() { [ "$status" -ne 0 ] || status=$1; }  # the exit status is the first failure's
python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_step.py tests/test_threads_launcher.py 2>&1 | tee "$out/gpu_tests.txt"
rc=${PIPESTATUS[0]}
[ "$rc" -eq 0 ] || [ "$rc" -eq 5 ] || failed "$rc"  # 5: no test collected
steps=32; [ "$device" = cpu ] && steps=2
python3 scripts/step_bench.py --project claim_gpu --device "$device" --steps "$steps" --side-by-side 10 \
  --out "$out/steps_gpu.md" runtime.compile=false "$@" || failed $?
e2e=$(mktemp -d)
subset=5000; tests=null; [ "$device" = cpu ] && { subset=1024; tests=500; }  # FrozenBN (0.8) freezes epoch 5
python3 -m normexp.cli.train -m experiment=claim_gpu hydra/launcher=threads "runtime.device=$device" \
  norm=bn,gn,brn,bn_frozen data.batch_size=2,64 'seed=[0,1]' trainer.epochs=5 optim.schedule=cosine \
  "data.train_subset=$subset" "data.test_subset=$tests" paths.results_root="$e2e/runs" 2>&1 | tee "$out/e2e.txt"
rc=${PIPESTATUS[0]}
[ "$rc" -eq 0 ] || failed "$rc"
python3 -m normexp.cli.analyze "$e2e/runs" --set min_seeds=2 --set min_reference_accuracy=0 \
  --set reference_batch=64 2>&1 | tee -a "$out/e2e.txt"
rc=${PIPESTATUS[0]}
[ "$rc" -eq 0 ] || failed "$rc"
exit $status
