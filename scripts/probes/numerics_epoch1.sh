#!/usr/bin/env bash
# Epoch 1 of claim's bn_b16x8_s0 (BN, 16 images per device on 8 devices, seed 0) trained by the code
# at COMMIT, in a worktree of its own; prints that epoch's metrics row and stops the run.
# Usage: bash scripts/probes/numerics_epoch1.sh COMMIT   (CIFAR-10 at ../shared/data/cifar10-jpeg or
#        $NORMEXP_CIFAR10_FOLDER; about 3-6 minutes on one core)
set -euo pipefail
commit=${1:?usage: bash scripts/probes/numerics_epoch1.sh COMMIT}
root=$(git rev-parse --show-toplevel)
work=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$work/code" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git -C "$root" worktree add -q --detach "$work/code" "$commit"
export NORMEXP_CIFAR10_FOLDER=${NORMEXP_CIFAR10_FOLDER:-$(readlink -f "$root/../shared/data/cifar10-jpeg")}
cd "$work/code"
PYTHONPATH="$work/code" python -c "from normexp.cli.train import main; main()" experiment=claim norm=bn \
  data.batch_size=16 seed=0 runtime.threads=1 "paths.results_root=$work/runs" hydra/launcher=basic \
  >"$work/train.log" 2>&1 &
pid=$!
until [ -s "$(ls "$work"/runs/*/metrics.jsonl 2>/dev/null | head -n 1)" ]; do
  kill -0 "$pid" 2>/dev/null || { tail -n 5 "$work/train.log"; exit 1; }
  sleep 5
done
kill "$pid"
head -n 1 "$work"/runs/*/metrics.jsonl
