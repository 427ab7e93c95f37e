"""The learning-rate schedule that every preset relies on (claim's cosine, claim_gpu's steps)."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from normexp.train.optim import lr_factor


def optim(**settings) -> object:
    base = {"schedule": "cosine", "warmup_epochs": 0, "milestones": [], "gamma": 0.1}
    return OmegaConf.create({**base, **settings})


def test_step_decay_divides_at_each_milestone_epoch():
    cfg = optim(schedule="step", milestones=[30, 60, 90])  # claim_gpu: LR / 10 at 30, 60, 90 of 100
    factors = [lr_factor(cfg, epoch * 10, 10, 100) for epoch in (0, 29, 30, 59, 60, 90, 99)]
    assert factors == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.001, 0.001])


def test_cosine_falls_from_one_to_zero_over_the_run():
    cfg = optim()
    assert lr_factor(cfg, 0, 10, 5) == 1.0 and lr_factor(cfg, 25, 10, 5) == pytest.approx(0.5)
    assert lr_factor(cfg, 50, 10, 5) == pytest.approx(0.0, abs=1e-12)


def test_warmup_rises_linearly_then_the_schedule_starts():
    cfg = optim(warmup_epochs=1)
    assert [lr_factor(cfg, s, 4, 3) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lr_factor(cfg, 8, 4, 3) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(optim(schedule="constant"), 1000, 10, 5) == 1.0


def test_the_scheduler_reads_a_plain_copy_of_the_schedule_with_the_same_factors():
    from normexp.compose import compose
    from normexp.train.optim import build_scheduler

    cfg = compose(["experiment=claim_gpu"]).optim  # step decay at 30, 60, 90
    schedule = build_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), cfg, 10, 100)
    assert [schedule.lr_lambdas[0](s) for s in range(0, 1001, 7)] == [lr_factor(cfg, s, 10, 100)
                                                                      for s in range(0, 1001, 7)]
