"""scripts/bench.py: it times a preset's configs through the composer and projects its sweep."""

import runpy
from pathlib import Path

import pytest

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
def test_the_step_bench_times_eager_and_device_steps(image_folder, tmp_path):
    main = runpy.run_path(str(BENCH.with_name("step_bench.py")))["main"]
    out = tmp_path / "steps.md"
    assert main(["--project", "smoke", "--norms", "bn", "--batch-sizes", "2", "--steps", "4", "--out", str(out),
                 f"paths.cifar10_folder={image_folder}", f"paths.cache_dir={tmp_path}", "runtime.threads=1"]) == 0
    text = out.read_text()
    assert "| bn " in text and "eager ms/step" in text and "device ms/step" in text
    assert "No `smoke` projection" in text  # its batch 64 was not timed
