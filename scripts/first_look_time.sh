#!/usr/bin/env bash
# Times the README's first look on this machine: `normexp-train -m experiment=first_look
# hydra/launcher=joblib` and `normexp-analyze` into a temporary folder, and when its first progress
# line and its first ETA appear. Run it on quiet cores (nothing else training) to check the promise.
# Usage: bash scripts/first_look_time.sh   (extra arguments go to normexp-train)
set -euo pipefail
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
start=$(date +%s)
stamp() { while IFS= read -r line; do printf '%5ds %s\n' "$(( $(date +%s) - start ))" "$line"; done; }
normexp-train -m experiment=first_look hydra/launcher=joblib paths.results_root="$out/runs" "$@" 2>&1 \
  | stamp | tee "$out/train.log"
trained=$(( $(date +%s) - start ))
normexp-analyze "$out/runs" > /dev/null
analysed=$(( $(date +%s) - start ))
first() { grep -m1 -E "$1" "$out/train.log" | awk '{print $1}' || true; }
echo "first look on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores:"
echo "  first progress line at $(first 'img/s'), first ETA at $(first 'ETA [0-9]')"
echo "  trained in $(( trained / 60 )) min $(( trained % 60 )) s; analysed by $(( analysed / 60 )) min $(( analysed % 60 )) s"
