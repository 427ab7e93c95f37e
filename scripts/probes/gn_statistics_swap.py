"""Does a black border lift GN through GN's per-image statistics? `border_or_shift.py` found that
GN's final weights score higher on test images with the training crop's black border than on plain
ones, and BN's do not. GN normalizes each image's channel groups by their own mean and variance, so
a border moves those statistics in every GN layer; it also changes the pixels the convolutions see.
This probe separates the two on each finished GN run's final weights, in eval mode on the test
images: every GN layer normalizes one image (the content) with the group means and variances that
the same layer computed, in a first pass, on another version of it (the statistics' source):

- plain content, statistics of its black-bordered version (the training crop; or the border
  blackened in place), and the converse: bordered content, statistics of the plain image;
- each content with its own statistics taken by the same hooks (for plain content this must repeat
  the recorded accuracy, and every hooked layer must repeat the layer's own output: checks of the
  hooks).

Expectation, written before the first run: if the border acts through GN's statistics, plain
content with bordered statistics gains most of what the border gives, and bordered content with
plain statistics loses most of it; if it acts through the pixels the convolutions see, the reverse.

Added after the first run, as a control for the converse (which may only show that any mismatch of
statistics and pixels costs): plain content with the statistics of its mean-colour-bordered version.

Run:  python scripts/probes/gn_statistics_swap.py GN_RUN_DIR [...] --out results/converged/gn_statistics_swap [--jobs 2]
"""

from __future__ import annotations

from pathlib import Path

import torch
from border_or_shift import border_transforms  # siblings
from final_weights import load_final, probe_runs
from torch import Tensor, nn

from normexp.data import EvalBatches

SWAPS = {  # column: (content, statistics' source), names of border_or_shift.border_transforms
    "plain, own statistics (hooks)": ("plain", "plain"),
    "plain, statistics of the crop": ("plain", "crop, black border"),
    "crop, own statistics (hooks)": ("crop, black border", "crop, black border"),
    "crop, statistics of plain": ("crop, black border", "plain"),
    "plain, statistics of black border in place": ("plain", "black border in place"),
    "black border in place, own statistics (hooks)": ("black border in place", "black border in place"),
    "black border in place, statistics of plain": ("black border in place", "plain"),
    "plain, statistics of mean-colour border in place": ("plain", "mean-colour border in place")}
HOOK_TOLERANCE = 1e-4  # largest difference between a hooked layer's own normalization and its output


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
            if (self.normalize(layer, groups, x.shape) - output).abs().max() > HOOK_TOLERANCE:
                raise SystemExit("the hooks' group normalization does not repeat GroupNorm's output")
            return None
        return self.normalize(layer, groups, x.shape)

    def normalize(self, layer: nn.GroupNorm, groups: Tensor, shape: torch.Size) -> Tensor:
        """`groups` (images, groups, values) normalized with the kept statistics, then the layer's affine map."""
        mean, var = self.kept[layer]
        normalized = ((groups - mean) / torch.sqrt(var + layer.eps)).reshape(shape)
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
    """One GN run's test accuracy (%) in eval mode under each swap of SWAPS."""
    run = load_final(directory)
    needed = {name for pair in SWAPS.values() for name in pair}
    batches = {name: run.batches(transform(run.data.test_images), run.data.test_labels)
               for name, transform in border_transforms(run.cfg.data.crop_padding, run.data.mean).items()
               if name in needed}
    row = run.columns()
    swap = StatisticsSwap(run.model)
    for column, (content, source) in SWAPS.items():
        row[f"test, {column}"] = swapped_accuracy(run.model, swap, batches[content], batches[source])
    run.check(row["test, plain, own statistics (hooks)"])  # type: ignore[arg-type]
    return row


def main() -> None:
    probe_runs(__doc__, swap_row, "swap")


if __name__ == "__main__":
    main()
