"""Any change to the training numerics fails here: tiny fixed runs' losses and metrics, on a CPU
held to AVX2 kernels, equal the committed ones bit for bit (tests/golden.py)."""

from __future__ import annotations

import json

import pytest
import torch

from normexp import record
from normexp.train.runtime import cpu_name
from tests.golden import GOLDEN, VERSION, pinned_numbers

pytestmark = pytest.mark.slow


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
                    reason="the golden numbers are pinned to AVX2 kernels, which this CPU lacks")
def test_the_golden_runs_train_to_the_committed_numbers():
    golden = json.loads(GOLDEN.read_text())
    if golden["torch"] != torch.__version__.split("+")[0]:
        pytest.skip(f"the golden numbers are torch {golden['torch']}'s (another torch rounds otherwise); "
                    f"record this one's with python -m tests.golden --record")
    assert golden["numerics"] == record.NUMERICS, (
        "record.NUMERICS was bumped: re-record the golden numbers (python -m tests.golden --record)")
    if cpu_name() not in golden["cpus"]:
        pytest.skip(f"no golden numbers of a {cpu_name()} (recorded: {', '.join(golden['cpus'])}; processor models "
                    f"differ in the last digits): record this one's with python -m tests.golden --record")
    pinned = pinned_numbers()
    assert {k: v for k, v in pinned.items() if k not in VERSION} == golden["cpus"][cpu_name()], (
        "the training numerics moved: bump normexp.record.identity.NUMERICS (new run names; say what changed "
        "in docs/protocol.md's numerics versions) and re-record with python -m tests.golden --record")
