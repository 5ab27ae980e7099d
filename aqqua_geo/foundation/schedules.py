"""Per-step training schedules (DINOv2 ``build_schedulers``), evaluated in closed form.

Every schedule is a pure function of the global step, so resuming at step *k* needs no
scheduler state beyond *k* itself. Lengths are fractions of the total number of steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CosineSchedule:
    """Linear warmup from ``warmup_start`` to ``base``, then half-cosine ``base`` → ``final``.

    Past ``total_steps`` the schedule stays at ``final``.
    """

    base: float
    final: float
    total_steps: int
    warmup_steps: int = 0
    warmup_start: float = 0.0

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must lie in [0, total_steps={self.total_steps}]")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_start + (self.base - self.warmup_start) * step / self.warmup_steps
        step -= self.warmup_steps
        cosine_steps = self.total_steps - self.warmup_steps
        if cosine_steps <= 0 or step >= cosine_steps:
            return self.final
        return self.final + 0.5 * (self.base - self.final) * (1 + math.cos(math.pi * step / cosine_steps))


@dataclass(frozen=True)
class WarmupConstant:
    """Linear ramp ``start`` → ``end`` over ``warmup_steps``, then constant (teacher temperature)."""

    start: float
    end: float
    warmup_steps: int

    def __call__(self, step: int) -> float:
        if step >= self.warmup_steps:
            return self.end
        return self.start + (self.end - self.start) * step / self.warmup_steps


@dataclass(frozen=True)
class FrozenThen:
    """``inner`` with its first ``freeze_steps`` values set to 0."""

    inner: CosineSchedule
    freeze_steps: int

    def __call__(self, step: int) -> float:
        return 0.0 if step < self.freeze_steps else self.inner(step)


@dataclass(frozen=True)
class Schedules:
    """All the per-step values the training loop sets."""

    lr: CosineSchedule
    last_layer_lr: FrozenThen
    weight_decay: CosineSchedule
    momentum: CosineSchedule
    teacher_temp: WarmupConstant

    def at(self, step: int) -> dict[str, float]:
        """Values at global *step* (0-based), keyed as they appear in ``log.csv``."""
        return {
            "lr": self.lr(step),
            "last_layer_lr": self.last_layer_lr(step),
            "wd": self.weight_decay(step),
            "momentum": self.momentum(step),
            "teacher_temp": self.teacher_temp(step),
        }


def scaled_lr(base_lr: float, total_batch_size: int, rule: str) -> float:
    """Learning rate for *total_batch_size* images per step under DINOv2's scaling rules."""
    if rule == "sqrt_wrt_1024":
        return base_lr * math.sqrt(total_batch_size / 1024)
    if rule == "linear_wrt_256":
        return base_lr * total_batch_size / 256
    if rule == "none":
        return base_lr
    raise ValueError(f"optim.scaling_rule must be sqrt_wrt_1024, linear_wrt_256 or none; got {rule!r}")


def build_schedules(cfg: dict, world_size: int = 1) -> Schedules:
    """The schedules of a config (``optim``, ``teacher``, ``train.max_steps``)."""
    optim, teacher = cfg["optim"], cfg["teacher"]
    total = int(cfg["train"]["max_steps"])
    lr = scaled_lr(float(optim["base_lr"]), int(cfg["train"]["batch_size_per_gpu"]) * world_size,
                   optim["scaling_rule"])
    warmup = round(float(optim["warmup_fraction"]) * total)
    lr_schedule = CosineSchedule(lr, float(optim["min_lr"]), total, warmup_steps=warmup)
    # The head's last layer learns nothing during the freeze, then follows the same curve.
    freeze = round(float(optim["freeze_last_layer_fraction"]) * total)
    last_layer = FrozenThen(lr_schedule, freeze)
    return Schedules(
        lr=lr_schedule,
        last_layer_lr=last_layer,
        weight_decay=CosineSchedule(float(optim["weight_decay"]), float(optim["weight_decay_end"]), total),
        momentum=CosineSchedule(float(teacher["momentum_teacher"]), float(teacher["final_momentum_teacher"]), total),
        teacher_temp=WarmupConstant(
            float(teacher["warmup_teacher_temp"]),
            float(teacher["teacher_temp"]),
            round(float(teacher["warmup_teacher_temp_fraction"]) * total),
        ),
    )
