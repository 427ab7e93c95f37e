#!/usr/bin/env bash
# Every committed analysis regenerated from its committed run records, with the commands the
# results READMEs give; `git status` afterwards shows what today's code changes in them.
# Usage: bash scripts/regenerate_results.sh [RESULTS]  (default: results; tests/test_committed.py
# passes a copy and compares its tables and verdicts with the committed bytes)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
results=${1:-results}
for sweep in claim claim_seeds_3-5 claim_gpu_5ep bn_stats norms groups fixes; do
  normexp-analyze "$results/$sweep"
done
normexp-analyze "$results/claim" "$results/claim_seeds_3-5" --out "$results/claim_pooled"
against=$(mktemp -d)  # of the analysis against 64, the decomposition table is what is kept
normexp-analyze "$results/bn_stats" --set reference_batch=64 --out "$against"
cp "$against"/tables/bn_decomposition.{csv,md} "$results/bn_stats/against_64/tables/"
rm -rf "$against"
normexp-analyze "$results/budget" "$results/claim" --vary trainer.epochs --out "$results/budget/analysis"
normexp-analyze "$results/frn_ablation" --versus frn
normexp-analyze "$results/bf16_check" --vary trainer.precision
normexp-analyze "$results/converged_bf16"
normexp-analyze "$results/converged"
normexp-analyze "$results/converged_200"
normexp-analyze "$results/parity_figure"
normexp-analyze "$results/budget" "$results/claim" "$results/converged" "$results/converged_200" --vary trainer.epochs --vary numerics \
  --set require_parity=true --set max_parity_gap=1.0 --out "$results/converged/by_budget"
python scripts/parity_screen.py --screen "$results/parity_screen" --reference "$results/converged" >/dev/null
