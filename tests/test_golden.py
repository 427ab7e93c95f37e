"""Any change to the training numerics fails here: tiny fixed runs' losses and metrics, on a CPU
held to AVX2 kernels, equal the committed ones bit for bit (tests/golden.py)."""

from __future__ import annotations

import json

import pytest
import torch

from normexp import record
from tests.golden import GOLDEN, pinned_numbers

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
    assert pinned_numbers() == golden, (
        "the training numerics moved: bump normexp.record.identity.NUMERICS (new run names; say what changed "
        "in README.md's numerics versions) and re-record with python -m tests.golden --record")
