"""Issue 15: ``--resume`` must not run code from a crafted ``checkpoints/last.pt``.
Checkpoints are read with ``torch.load(weights_only=True)``; RNG states are tensors/lists."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from aqqua_geo.foundation import checkpoint as ckpt


class _Marker:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_crafted_checkpoint_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "last.pt"
    torch.save({"checkpoint_version": ckpt.CHECKPOINT_VERSION, "step": 3, "rng": [_Marker(marker)]}, path)
    with pytest.raises(ValueError, match="refused to load"):
        ckpt.load_checkpoint(path)
    assert not marker.exists()  # was: torch.load(weights_only=False) ran the payload


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # a cached gaussian in numpy's state
    payload = {"step": 5, "rng": [ckpt.rng_state()], "config": {"train": {"lr": 1e-3, "betas": (0.9, 0.99)}},
               "model": {"w": torch.ones(2)}}
    expected = (random.random(), float(np.random.rand()), float(np.random.randn()), torch.rand(2).tolist())
    path = ckpt.save_checkpoint(tmp_path / "c.pt", payload)
    torch.load(path, weights_only=True)  # loadable without unpickling arbitrary objects
    state = ckpt.load_checkpoint(path)
    ckpt.set_rng_state(state["rng"][0])
    assert (random.random(), float(np.random.rand()), float(np.random.randn()), torch.rand(2).tolist()) == expected
    assert state["config"]["train"]["betas"] == (0.9, 0.99) and state["step"] == 5


def test_older_tuple_rng_states_still_restore():
    random.seed(4)
    np.random.seed(5)
    old = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    expected = (random.random(), float(np.random.rand()))
    ckpt.set_rng_state(old)
    assert (random.random(), float(np.random.rand())) == expected
