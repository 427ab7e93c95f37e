"""Does a black border lift GN through GN's per-image statistics? `border_or_shift.py` found that
GN's final weights score higher on test images with the training crop's black border than on plain
ones, and BN's do not. GN normalizes each image's channel groups by their own mean and variance, so
a border moves those statistics in every GN layer; it also changes the pixels the convolutions see.
This probe separates the two on each finished GN run's final weights, in eval mode on the test
images: every GN layer normalizes one image (the content) with the group means and variances that
the same layer computed, in a first pass, on another version of it (the statistics' source):

- plain content, statistics of its black-bordered version (the training crop; or the border
  blackened in place, no shift), and the converse: bordered content, statistics of the plain image;
- plain content with its own statistics taken by the same hooks, which must repeat the plain
  accuracy (a check of the hooks).

Expectation, written before the first run: if the border acts through GN's statistics, plain
content with bordered statistics gains most of what the border gives, and bordered content with
plain statistics loses most of it; if it acts through the pixels the convolutions see, the reverse.

Run:  python scripts/probes/gn_statistics_swap.py GN_RUN_DIR [...] --out results/converged/gn_statistics_swap [--jobs 2]
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import torch
from border_or_shift import border_transforms
from fit_in_eval_mode import by_norm, check_final, final_model, run_columns
from probe_output import publish  # a sibling: probes run as `python scripts/probes/NAME.py`
from torch import Tensor, nn

from normexp.data import EvalBatches, load_cifar10

SWAPS = {  # column: (content, statistics' source), names of border_transforms
    "plain, own statistics (hooks)": ("plain", "plain"),
    "plain, statistics of the crop": ("plain", "crop, black border"),
    "crop, statistics of plain": ("crop, black border", "plain"),
    "plain, statistics of black border, no shift": ("plain", "black border, no shift"),
    "black border, no shift, statistics of plain": ("black border, no shift", "plain")}


class StatisticsSwap:
    """Forward hooks on a model's GroupNorm layers: while `recording`, each layer keeps its input's
    per-image group mean and variance; otherwise it normalizes its input with the kept ones."""

    def __init__(self, model: nn.Module) -> None:
        self.kept: dict[nn.GroupNorm, tuple[Tensor, Tensor]] = {}
        self.recording = True
        layers = [module for module in model.modules() if isinstance(module, nn.GroupNorm)]
        if not layers:
            raise SystemExit("the run's model has no GroupNorm layer: give GN runs")
        for layer in layers:
            layer.register_forward_hook(self.hook)

    def hook(self, layer: nn.GroupNorm, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
        x = inputs[0]
        groups = x.reshape(x.shape[0], layer.num_groups, -1)
        if self.recording:
            self.kept[layer] = groups.mean(-1, keepdim=True), groups.var(-1, unbiased=False, keepdim=True)
            return None
        mean, var = self.kept[layer]
        normalized = ((groups - mean) / torch.sqrt(var + layer.eps)).reshape(x.shape)
        return normalized * layer.weight[:, None, None] + layer.bias[:, None, None]


def swapped_accuracy(model: nn.Module, swap: StatisticsSwap, content: EvalBatches, source: EvalBatches) -> float:
    """Accuracy (%) on `content` with each GN layer's statistics taken from `source` (same images, same order)."""
    correct = 0
    with torch.no_grad():
        for (x_content, y), (x_source, _) in zip(content, source):
            swap.recording = True
            model(x_source)
            swap.recording = False
            correct += int((model(x_content).argmax(1) == y).sum())
    return 100.0 * correct / content.images


def swap_row(directory: Path) -> dict[str, object]:
    """One GN run's test accuracy (%) in eval mode: plain, and under each swap of SWAPS."""
    cfg, model, fmt, summary = final_model(directory)
    model.eval()
    data = load_cifar10(cfg.data.source, cfg.paths, False)
    mean_colour = (data.mean * 255).round().to(torch.uint8).view(1, 3, 1, 1)
    batches = {name: EvalBatches(transform(data.test_images), data.test_labels, 1000, data.mean, data.std,
                                 memory_format=fmt)
               for name, transform in border_transforms(cfg.data.crop_padding, mean_colour).items()}
    row = run_columns(directory, cfg, summary)
    swap = StatisticsSwap(model)
    for column, (content, source) in SWAPS.items():
        row[f"test, {column}"] = swapped_accuracy(model, swap, batches[content], batches[source])
    check_final(directory, row["test, plain, own statistics (hooks)"], summary)  # type: ignore[arg-type]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="finished GN run folders that kept checkpoint.pt")
    parser.add_argument("--out", type=Path, help="folder for swap.csv and swap.md")
    parser.add_argument("--jobs", type=int, default=1, help="runs evaluated at once, one torch thread each")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with ProcessPoolExecutor(args.jobs, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        table = pd.DataFrame(list(pool.map(swap_row, args.runs)))
    publish(f"{table.to_markdown(index=False, floatfmt='.2f')}\n\nMean over seeds ({len(table)} runs):\n\n"
            f"{by_norm(table).to_markdown(floatfmt='.2f')}\n", table, args.out, "swap")


if __name__ == "__main__":
    main()
