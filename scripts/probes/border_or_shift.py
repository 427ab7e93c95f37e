"""Is GN's gain on cropped test images the crop's black border, or its shift? `fit_in_eval_mode.py`
found that GN's final weights score about 1.6 points higher on test images cropped as in training
(zero-padded by 4 pixels, then a random 32x32 crop) than on the plain ones, and BN's do not; a crop
both shifts the image and gives it a black border. This probe evaluates each finished run's final
weights in eval mode on the test images under transforms that separate the two, all drawn with the
same seed, so the same rows and columns are border in each:

- plain; crop, black border (the training crop; its numbers repeat fit_in_eval_mode's "test, crop");
- black border in place: the plain image, unshifted, with those border pixels blackened (so it
  occludes content at the border's side, where the crop loses the opposite side's);
- crop, mean-colour border / mean-colour border in place: the border filled with the training
  set's mean colour (about zero after normalization) instead of black.

Expectation, written before the first run: if the gain comes from the border's pixels (GN normalizes
each image over its own pixels, and trained on images that nearly all had a black border), "black
border, no shift" keeps most of it and the mean-colour border loses most of it; if it comes from the
shift, the reverse. (Since renamed "black border in place"; the expectation is as first committed.)

Run:  python scripts/probes/border_or_shift.py RUN_DIR [RUN_DIR ...] --out results/converged/border_or_shift [--jobs 2]
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from final_weights import SEED, load_final, probe_runs  # a sibling

from normexp.data.loader import random_crop_flip
from normexp.train.engine import evaluate

Transform = Callable[[torch.Tensor], torch.Tensor]


def border_transforms(padding: int, mean: torch.Tensor) -> dict[str, Transform]:
    """The transforms of the module's docstring on uint8 images; `mean` is the per-channel mean colour
    on a 0..1 scale."""
    mean_colour = (mean * 255).round().to(torch.uint8).view(1, 3, 1, 1)

    def crop(images: torch.Tensor) -> torch.Tensor:
        return random_crop_flip(images, padding, False, torch.Generator().manual_seed(SEED))

    def border(images: torch.Tensor) -> torch.Tensor:  # True where the crop shows padding
        return crop(torch.ones_like(images[:, :1])) == 0

    return {"plain": lambda images: images, "crop, black border": crop,
            "black border in place": lambda images: images.masked_fill(border(images), 0),
            "crop, mean-colour border": lambda images: torch.where(border(images), mean_colour, crop(images)),
            "mean-colour border in place": lambda images: torch.where(border(images), mean_colour, images)}


def border_row(directory: Path) -> dict[str, object]:
    """One run's test accuracy (%) in eval mode under each transform."""
    run = load_final(directory)
    row = run.columns()
    for name, transform in border_transforms(run.cfg.data.crop_padding, run.data.mean).items():
        batches = run.batches(transform(run.data.test_images), run.data.test_labels)
        row[f"test, {name}"] = evaluate(run.model, batches)[1]
    run.check(row["test, plain"])  # type: ignore[arg-type]
    return row


def main() -> None:
    probe_runs(__doc__, border_row, "border")


if __name__ == "__main__":
    main()
