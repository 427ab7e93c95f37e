"""The pooling guard: runs pooled as seeds may differ in their swept settings and in nothing else,
and no run may be repeated. No training and no torch."""

import pandas as pd
import pytest

from normexp.analysis.pooling import PoolingError, check_poolable


def identity(norm: dict, batch: int, seed: int, epochs: int = 5) -> dict:
    return {"data": {"batch_size": batch, "devices": 64 // batch, "train_subset": 8000},
            "model": {"depth": 8}, "norm": norm, "optim": {"lr": 0.1, "milestones": [30, 60]},
            "trainer": {"epochs": epochs}, "seed": seed}


def pool(epochs=lambda i: 5, digest=lambda i: "abc", seeds=lambda i: i % 3) -> pd.DataFrame:
    rows = []
    for i, (tag, norm, batch) in enumerate((t, n, b)
                                           for t, n in (("bn", {"name": "bn"}), ("gn8", {"name": "gn", "groups": 8}))
                                           for b in (2, 32) for _ in range(3)):
        rows.append({"run": f"run{i}", "norm": tag, "batch_size": batch, "seed": seeds(i),
                     "identity": identity(norm, batch, seeds(i), epochs(i)), "data_digest": digest(i)})
    return pd.DataFrame(rows)


VARYING = ("norm", "data.batch_size", "data.devices", "seed")


def test_swept_fields_may_differ():
    check_poolable(pool(), VARYING)


def test_other_differences_are_refused_by_name():
    with pytest.raises(PoolingError, match=r"runs differ in trainer.epochs: 5 \(8 runs\), 10 \(4 runs\)"):
        check_poolable(pool(epochs=lambda i: 10 if i >= 8 else 5), VARYING)
    with pytest.raises(PoolingError, match="data_digest: abc"):
        check_poolable(pool(digest=lambda i: "abc" if i else "xyz"), VARYING)
    with pytest.raises(PoolingError, match="data.devices"):
        check_poolable(pool(), ("norm", "data.batch_size", "seed"))


def test_repeated_runs_are_refused_by_name():
    with pytest.raises(PoolingError, match="runs repeat bn 2 0: run0, run1"):
        check_poolable(pool(seeds=lambda i: 0 if i < 2 else i % 3), VARYING)
