"""Schedules: cosine with warmup, last-layer freeze, teacher temperature, LR scaling rule."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aqqua_geo.foundation.config import load_config
from aqqua_geo.foundation.schedules import CosineSchedule, WarmupConstant, build_schedules, scaled_lr


def test_cosine_with_warmup_values():
    s = CosineSchedule(base=1.0, final=0.1, total_steps=110, warmup_steps=10)
    assert s(0) == 0.0 and s(5) == pytest.approx(0.5) and s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))  # half-way down
    assert s(110) == pytest.approx(0.1) and s(10_000) == pytest.approx(0.1)


@given(st.floats(0.0, 10.0), st.floats(0.0, 10.0), st.integers(1, 500), st.data())
def test_cosine_stays_between_base_and_final_after_warmup(base, final, total, data):
    warmup = data.draw(st.integers(0, total))
    s = CosineSchedule(base, final, total, warmup_steps=warmup)
    values = [s(k) for k in range(warmup, total + 1)]
    lo, hi = min(base, final), max(base, final)
    assert all(lo - 1e-12 <= v <= hi + 1e-12 for v in values)
    steps = [b - a for a, b in zip(values, values[1:])]
    assert all(d <= 1e-12 for d in steps) if base >= final else all(d >= -1e-12 for d in steps)


def test_teacher_temperature_warmup_then_constant():
    t = WarmupConstant(0.04, 0.07, 30)
    assert t(0) == 0.04 and t(15) == pytest.approx(0.055) and t(30) == 0.07 and t(1000) == 0.07


def test_lr_scaling_rules():
    assert scaled_lr(0.004, 1024, "sqrt_wrt_1024") == pytest.approx(0.004)
    assert scaled_lr(0.004, 256, "sqrt_wrt_1024") == pytest.approx(0.002)
    assert scaled_lr(1e-3, 512, "linear_wrt_256") == pytest.approx(2e-3)
    with pytest.raises(ValueError, match="optim.scaling_rule"):
        scaled_lr(1.0, 1, "cubic")


def test_build_schedules_from_config():
    cfg = load_config(None, ["train.max_steps=1000", "train.batch_size_per_gpu=64", "optim.warmup_fraction=0.1",
                             "optim.freeze_last_layer_fraction=0.05", "teacher.warmup_teacher_temp_fraction=0.3"])
    s = build_schedules(cfg, world_size=4)  # 256 images per step: lr = 0.004 * sqrt(1/4)
    assert s.lr(100) == pytest.approx(0.002)
    assert s.last_layer_lr(49) == 0.0 and s.last_layer_lr(50) == s.lr(50) > 0
    assert s.weight_decay(0) == pytest.approx(0.04) and s.weight_decay(1000) == pytest.approx(0.4)
    assert s.momentum(0) == pytest.approx(0.992) and s.momentum(1000) == pytest.approx(1.0)
    assert s.teacher_temp(0) == 0.04 and s.teacher_temp(300) == 0.07
    assert set(s.at(10)) == {"lr", "last_layer_lr", "wd", "momentum", "teacher_temp"}
