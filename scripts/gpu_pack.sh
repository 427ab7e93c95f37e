#!/usr/bin/env bash
# What a GPU machine without internet needs beside the repo, put in git-ignored folders that travel
# with it (the device tool's `carry`: .travel): wheels of the packages such a machine lacks
# (hydra-core, omegaconf, antlr4, hydra-joblib-launcher; its image has torch, pandas, scipy,
# matplotlib, tqdm, pyyaml, tabulate, pillow, joblib and pytest) for its Python, and CIFAR-10 as a
# gzipped tarball of the JPEG folder (about 19 MB). Run it here, once: bash scripts/gpu_pack.sh
# Then on the GPU machine: bash scripts/gpu_check.sh (which installs them and unpacks the data).
set -euo pipefail
cd "$(dirname "$0")/.."
python_version=${GPU_PYTHON:-3.12}
folder=.travel
mkdir -p "$folder/wheels"
rm -f "$folder"/wheels/*.whl
here() { python3 -c "from importlib.metadata import version; print('$1==' + version('$1'))"; }  # the versions tested here
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" --implementation py \
  -d "$folder/wheels" "$(here hydra-core)" "$(here omegaconf)" "$(here hydra-joblib-launcher)"
python3 -m pip wheel -q --no-deps -w "$folder/wheels" "$(here antlr4-python3-runtime)"  # a source archive only on PyPI
data=${NORMEXP_CIFAR10_FOLDER:-../shared/data/cifar10-jpeg}
# stored as cifar10-jpeg/ whatever the folder's own name (gpu_check.sh unpacks that); made anew each time
tar -czf "$folder/cifar10-jpeg.tar.gz" -C "$(dirname "$data")" --transform "s,^$(basename "$data"),cifar10-jpeg," \
  "$(basename "$data")"
du -sh "$folder"/wheels "$folder/cifar10-jpeg.tar.gz"
