"""scripts/bench.py: it times a preset's configs through the composer and projects its sweep."""

import runpy
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from normexp.compose import compose

BENCH = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


@pytest.mark.slow
def test_the_bench_times_a_preset_and_projects_its_sweep(image_folder, tmp_path):
    main = runpy.run_path(str(BENCH))["main"]
    out = tmp_path / "bench.md"
    assert main(["--project", "smoke", "--norms", "bn", "--batch-sizes", "2", "--images", "16", "--out", str(out),
                 f"paths.cifar10_folder={image_folder}", f"paths.cache_dir={tmp_path}", "runtime.threads=1"]) == 0
    text = out.read_text()
    assert "| bn " in text and "normexp img/s" in text
    # the preset's grid, expanded by the composer, holds batch 64, which was not timed: no projection
    assert "No `smoke` projection: the table lacks bn at 64 images/device" in text


@pytest.mark.slow
def test_the_step_bench_times_eager_device_and_side_by_side_steps(image_folder, tmp_path):
    main = runpy.run_path(str(BENCH.with_name("step_bench.py")))["main"]
    out = tmp_path / "steps.md"
    assert main(["--project", "smoke", "--norms", "bn", "--batch-sizes", "2", "4", "--steps", "2", "--side-by-side",
                 "0.5", "--out", str(out), f"paths.cifar10_folder={image_folder}", f"paths.cache_dir={tmp_path}",
                 "runtime.threads=1"]) == 0
    text = out.read_text()
    assert "| bn " in text and "eager ms/step" in text and "device ms/step" in text
    header, rule, *rows = [line for line in text.splitlines() if line.startswith("|")]
    side = [cell.strip() for cell in header.split("|")].index("side-by-side ms/step")
    assert len(rows) == 2 and all(float(row.split("|")[side]) > 0 for row in rows)  # both cells ran at once
    assert "Side by side: all 2 cells' device steps at once" in text
    assert "No `smoke` projection" in text  # its batch 64 was not timed


def test_the_step_bench_projects_one_at_a_time_and_side_by_side():
    bench = runpy.run_path(str(BENCH.with_name("step_bench.py")))
    jobs = [compose(["experiment=smoke", f"norm={norm}", f"data.batch_size={batch}"])
            for norm, batch in (("bn", 2), ("bn", 64))]
    table = pd.DataFrame({"norm": ["bn", "bn"], "images/device": [2, 64], "eager ms/step": [10.0, 40.0],
                          "device ms/step": [5.0, 50.0], bench["SIDE"]: [20.0, 80.0]})
    data = SimpleNamespace(train_labels=torch.zeros(50_000))
    # smoke: 500 training images, 1 epoch: 125 steps at 2 x 2 images, 3 at 2 x 64
    minutes = bench["projected_minutes"](table, jobs, data)
    assert minutes["one job at a time, at the faster step"] == pytest.approx((125 * 5 + 3 * 40) / 1000 / 60)
    assert minutes["all 2 jobs side by side, device step"] == pytest.approx(max(125 * 20, 3 * 80) / 1000 / 60)
    assert bench["projected_minutes"](table[table["images/device"] == 2], jobs, data) == {}
