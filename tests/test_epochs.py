"""The epoch loop's hook: a new per-epoch behaviour plugs in beside FrozenBN's switch, the loop and
the conductor untouched."""

from __future__ import annotations

from normexp import record
from normexp.train import epochs
from normexp.train.conductor import train_job
from tests.helpers import run_dir


def test_a_per_epoch_hook_runs_around_each_epoch_and_its_columns_are_recorded(make_cfg, monkeypatch):
    seen = []

    class Marking(epochs.EpochHook):
        def before(self, epoch, pack):
            seen.append(epoch.number)

        def after(self, epoch, pack, tested):
            for row in tested:  # empty where the epoch was not evaluated
                row["test_marked"] = epoch.number

    configured = epochs.hooks
    monkeypatch.setattr(epochs, "hooks", lambda *args: [*configured(*args), Marking()])
    cfg = make_cfg("trainer.epochs=3", "trainer.eval_every=2")
    train_job(cfg)
    rows = record.read_jsonl(run_dir(cfg) / record.METRICS)
    assert seen == [1, 2, 3] and [row.get("test_marked") for row in rows] == [None, 2, 3]
