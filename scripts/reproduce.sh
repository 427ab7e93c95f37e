#!/usr/bin/env bash
# Reproduce the headline result: set up, run the `claim` sweep (BN vs GN, 2..64 images per device on
# 8 virtual devices, 3 seeds), analyze it, print the verdict. Runs and analysis go to $OUT, by default
# the preset's own paths.results_root (runs/claim; the committed ones are in results/claim), so
# `normexp-train -m experiment=...` and this script share one folder and neither retrains the other's
# runs. Resumable: rerun after an interruption and it finishes what is missing. Extra arguments go to
# normexp-train, e.g. `bash scripts/reproduce.sh seed=[3,4,5]`.
# EXPERIMENT=first_look runs the first look instead (about 10 minutes on 2 cores) (results in runs/first_look).
# Data: ../shared/data/cifar10-jpeg by default; NORMEXP_CIFAR10_FOLDER points elsewhere, or set
# NORMEXP_DATA_SOURCE=torchvision (official CIFAR-10; add runtime.download=true the first time).
# A run that diverged or a job that failed makes the sweep exit 1: the analysis still runs (it lists
# them), and this script exits with the sweep's status.
set -euo pipefail
cd "$(dirname "$0")/.."
# install only when this checkout is not already the installed normexp (the first call)
if ! python -I -c "import normexp, pathlib, sys; sys.exit(pathlib.Path(normexp.__file__).parent.parent.resolve() != pathlib.Path.cwd().resolve())" 2>/dev/null \
    || ! command -v normexp-train >/dev/null; then
  python -m pip install -q -e .
fi
experiment=${EXPERIMENT:-claim}
[ -z "${OUT:-}" ] || set -- paths.results_root="$OUT" "$@"
status=0
normexp-train -m experiment="$experiment" hydra/launcher=joblib "$@" || status=$?
[ "$status" -le 1 ] || exit "$status"  # bad input (2) or Ctrl-C (130): nothing to analyze yet
# the folder the sweep wrote: its paths.results_root, as normexp-train composed it
out=$(python -c 'import sys; from normexp.compose import compose, sweep_grid
print(compose(sweep_grid(sys.argv[1:])[0]).paths.results_root)' experiment="$experiment" "$@")
normexp-analyze "$out"
echo "table: $out/tables/error_by_batch.md  figure: $out/figures/error_vs_batch.png  report: $out/report.html"
exit "$status"
