"""Exact resume: a run killed after a checkpoint and resumed ends bitwise where an
uninterrupted run ends (weights, teacher, optimizer moments, log)."""

from __future__ import annotations

import csv

import pytest
import torch

from aqqua_geo.foundation import train
from aqqua_geo.foundation.train import pretrain


class _Killed(Exception):
    pass


def _rows(path):
    with path.open() as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted(uvp6_store, tiny_cfg, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    # drop-path on: the student's torch RNG stream must be restored too
    cfg = tiny_cfg("train.max_steps=6", "train.checkpoint_every=3", "model.drop_path_rate=0.1",
                   "optim.freeze_last_layer_fraction=0.3")
    full = pretrain(cfg, uvp6_store, tmp_path / "full", progress=False)

    # second run: "killed" in the middle of step 5, after the step-3 checkpoint
    calls = {"n": 0}
    original = train._set_hyperparameters

    def kill_at_step_5(optimizer, values):
        calls["n"] += 1
        if calls["n"] == 5:
            raise _Killed
        original(optimizer, values)

    monkeypatch.setattr(train, "_set_hyperparameters", kill_at_step_5)
    with pytest.raises(_Killed):
        pretrain(cfg, uvp6_store, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(train, "_set_hyperparameters", original)
    assert torch.load(tmp_path / "resumed/checkpoints/last.pt", weights_only=False)["step"] == 3
    pretrain(cfg, uvp6_store, tmp_path / "resumed", resume=True, progress=False)

    a = torch.load(full / "checkpoints/last.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed/checkpoints/last.pt", weights_only=False)
    assert a["step"] == b["step"] == 6
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for pid, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg"], b["optimizer"]["state"][pid]["exp_avg"])
    assert a["sampler"] == b["sampler"]
    losses_a = [r["loss"] for r in _rows(full / "log.csv")]
    losses_b = [r["loss"] for r in _rows(tmp_path / "resumed/log.csv")]
    assert losses_a == losses_b and len(losses_a) == 6
    # and resuming from scratch-equivalent state really continued (not restarted)
    assert [int(r["step"]) for r in _rows(tmp_path / "resumed/log.csv")] == [1, 2, 3, 4, 5, 6]


def test_data_loader_workers_do_not_change_the_run(uvp6_store, tiny_cfg, tmp_path):
    """Augmentations and masks are seeded per sample, not per worker: 0 or 2 workers, same losses."""
    torch.set_num_threads(1)
    runs = []
    for workers in (0, 2):
        out = pretrain(tiny_cfg("train.max_steps=2", f"train.num_workers={workers}"), uvp6_store,
                       tmp_path / f"w{workers}", progress=False)
        runs.append([r["loss"] for r in _rows(out / "log.csv")])
    assert runs[0] == runs[1]
