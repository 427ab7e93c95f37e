"""scripts/bench.py: it times a preset's configs through the composer and projects its sweep."""

import math
import runpy
import time
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
                 "2", "--out", str(out), f"paths.cifar10_folder={image_folder}", f"paths.cache_dir={tmp_path}",
                 "runtime.threads=1"]) == 0
    text = out.read_text()
    assert "| bn " in text and "eager ms/step" in text and "device ms/step" in text
    header, rule, *rows = [line for line in text.splitlines() if line.startswith("|")]
    evaluation = [cell.strip() for cell in header.split("|")].index("evaluation s")
    assert all(float(row.split("|")[evaluation]) > 0 for row in rows)  # each cell's test-set evaluation, timed
    fill = [cell.strip() for cell in header.split("|")].index("fill s/epoch")
    assert all(float(row.split("|")[fill]) > 0 for row in rows)  # and its epoch's augmentation fill
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
    evaluated = table.assign(**{bench["EVAL"]: [2.0, 3.0]})  # one evaluation per job (smoke: 1 epoch)
    minutes = bench["projected_minutes"](evaluated, jobs, data)
    assert minutes["one job at a time, at the faster step"] == pytest.approx(((125 * 5 + 3 * 40) / 1000 + 5) / 60)
    assert minutes["all 2 jobs side by side, device step"] == pytest.approx(max(125 * 20 / 1000 + 2,
                                                                                3 * 80 / 1000 + 3) / 60)
    filled = evaluated.assign(**{bench["FILL"]: [1.0, 4.0]})  # one epoch's fill per job (smoke: 1 epoch)
    minutes = bench["projected_minutes"](filled, jobs, data)
    assert minutes["one job at a time, at the faster step"] == pytest.approx(((125 * 5 + 3 * 40) / 1000 + 10) / 60)
    table.loc[1, bench["SIDE"]] = float("nan")  # a cell that finished no epoch inside the window
    assert list(bench["projected_minutes"](table, jobs, data)) == ["one job at a time, at the faster step"]


def _side_by_side_with(bench: dict, epoch_of_cell) -> list[float]:
    """`side_by_side_ms` on two smoke cells whose loops are `epoch_of_cell(i)` (no training)."""
    fn = bench["side_by_side_ms"]
    cells = [compose(["experiment=smoke", "norm=bn", f"data.batch_size={b}"]) for b in (2, 64)]
    loops = iter(range(len(cells)))
    fn.__globals__["normexp_loop"] = lambda *args, **kwargs: epoch_of_cell(next(loops))
    return fn(cells, SimpleNamespace(train_labels=torch.arange(1000) % 10), 2, torch.device("cpu"), 0.3)


def test_side_by_side_counts_the_epochs_inside_the_window_and_raises_a_cells_error():
    bench = runpy.run_path(str(BENCH.with_name("step_bench.py")))

    def paced(seconds: float):
        def epoch(e: int) -> SimpleNamespace:
            if e > 1:
                time.sleep(seconds)
            return SimpleNamespace(diverged=[None])
        return epoch

    fast, slow = _side_by_side_with(bench, lambda i: paced([0.01, 0.5][i]))
    assert 5 <= fast < 25  # ms per step: 2 steps per epoch of at least 10 ms
    assert math.isnan(slow)  # its first timed epoch ended after the 0.3 s window

    def failing(i: int):
        def epoch(e: int) -> SimpleNamespace:
            if e > 1 and i == 1:
                raise ValueError("out of memory")
            return paced(0.01)(e)
        return epoch

    with pytest.raises(ValueError, match="out of memory"):
        _side_by_side_with(bench, failing)
