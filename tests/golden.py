"""The golden run: the first steps' losses of tiny fixed runs, pinned to tests/golden_numerics.json.

Each run is the tests' tiny run (conf/experiment/debug.yaml) on the generated image folder, one
torch thread, on a CPU held to AVX2 kernels (torch's dispatch, oneDNN and MKL: PINNED_ISA). Held
so, two processor models still gave different last digits from the same code (an AMD EPYC and an
Intel Xeon, 2026-12-02: the per-device BN run and GN's epoch-2 train loss; the cause was not
tested), so the numbers are kept
per processor model (`cpus`, by /proc/cpuinfo's model name) and a model without its own is skipped.
Any change to the code that moves these numbers must bump the numerics version
(normexp.record.identity.NUMERICS) and re-record on each model at hand (the others are dropped):

    python -m tests.golden --record
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).with_name("golden_numerics.json")
VERSION = ("numerics", "torch")  # what the numbers are of, beside the processor
PINNED_ISA = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2", "OMP_NUM_THREADS": "1"}
# BN on 2 virtual devices (the per-device split; width 16, channels_last; with BN's extra evaluations) and GN,
# 2 epochs of 15 steps, the loss every 5 steps
RUNS = {"bn-2-devices": ["norm=bn", "data.devices=2", "data.batch_size=4", "model.base_width=16",
                         "evaluation.precise_images=4096", "evaluation.batch_statistics=true"],
        "gn": ["norm=gn", "norm.groups=2"]}


def golden_numbers() -> dict[str, Any]:
    """Train RUNS here (the current process's ISA and threads) and return their numbers."""
    import torch

    from normexp import record
    from normexp.compose import compose
    from normexp.train.conductor import train_job
    from tests.helpers import make_image_folder, record_numbers, run_dir, tiny_run

    numbers: dict[str, Any] = {"numerics": record.NUMERICS, "torch": torch.__version__.split("+")[0]}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = make_image_folder(root / "images")
        for name, overrides in RUNS.items():
            cfg = compose(tiny_run(folder, root) + overrides)
            train_job(cfg)
            directory = run_dir(cfg)
            numbers[name] = {"losses": [row["loss"] for row in record.read_jsonl(directory / record.TRAIN_LOSS)],
                             "epochs": record_numbers(directory)}
    return numbers


def pinned_numbers() -> dict[str, Any]:
    """golden_numbers() in a fresh process held to PINNED_ISA."""
    out = subprocess.run([sys.executable, "-m", "tests.golden"], capture_output=True, text=True, check=True,
                         env={**os.environ, **PINNED_ISA}, cwd=Path(__file__).resolve().parents[1])
    return json.loads(out.stdout.splitlines()[-1])


def recorded(golden: dict[str, Any], pinned: dict[str, Any]) -> dict[str, Any]:
    """`golden` with this CPU model's entry set to `pinned`'s runs; the other models' entries are
    kept only if they are of the same numerics version and torch."""
    from normexp.train.runtime import cpu_name

    same = {k: golden.get(k) for k in VERSION} == {k: pinned[k] for k in VERSION}
    cpus = golden.get("cpus", {}) if same else {}
    return {**{k: pinned[k] for k in VERSION},
            "cpus": {**cpus, cpu_name(): {k: v for k, v in pinned.items() if k not in VERSION}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", action="store_true", help=f"write this CPU's pinned numbers to {GOLDEN}")
    if parser.parse_args().record:
        GOLDEN.write_text(json.dumps(recorded(json.loads(GOLDEN.read_text()), pinned_numbers()), indent=1) + "\n")
        print(f"wrote {GOLDEN}")
    else:
        print(json.dumps(golden_numbers()))


if __name__ == "__main__":
    main()
