"""Training checkpoints that resume *exactly*: weights, optimizer, position, RNG streams.

A checkpoint holds the SSL model (student, EMA teacher, loss centres), the AdamW state, the
global step (every schedule is a closed-form function of it), the sampler state and the
random-number states of python, numpy and torch (CPU and CUDA) **of every rank**, so that
stopping after step *k* and resuming gives the same parameters as never stopping.

Checkpoints are shared and ``--resume`` reads one from disk, so they are read with
``torch.load(weights_only=True)``: only tensors and plain containers/numbers/strings are
unpickled, never code. RNG states are therefore saved as tensors, lists and numbers (the
numpy MT19937 key as an int64 tensor, python's state as a list), not as numpy/python objects.
"""

from __future__ import annotations

import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_VERSION = 1
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")

from aqqua_geo._io import atomic_path


def rng_state() -> dict[str, Any]:
    """Random states of this process (python, numpy, torch CPU and CUDA), as tensors, lists
    and numbers only (loadable with ``weights_only=True``)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss},
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states saved by :func:`rng_state` (also the tuple/ndarray form of older checkpoints)."""
    py = state["python"]
    if isinstance(py, dict):
        py = (py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"])
    random.setstate(py)
    npy = state["numpy"]
    if isinstance(npy, dict):
        npy = (npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    np.random.set_state(npy)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write *payload* atomically (temporary file + rename): a kill never leaves half a file."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"checkpoint_version": CHECKPOINT_VERSION, **payload}, tmp)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (on CPU)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    # weights_only: a crafted file cannot run code (RNG states are saved as tensors/lists)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path}: refused to load: the checkpoint holds objects other than tensors and plain "
            "data, and loading those could run code (written by an older aqqua, or crafted). "
            f"Resume from a checkpoint written by this version. ({str(err).splitlines()[0]})") from None
    if not isinstance(payload, dict) or payload.get("checkpoint_version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: not a version-{CHECKPOINT_VERSION} aqqua training checkpoint")
    return payload


def prune_step_checkpoints(directory: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the newest *keep* ``step_<n>.pt`` files; returns the deleted paths."""
    files = sorted(
        (int(m.group(1)), p) for p in Path(directory).iterdir() if (m := _STEP_FILE.match(p.name))
    )
    doomed = [p for _, p in files[: max(len(files) - keep, 0)]]
    for p in doomed:
        p.unlink()
    return doomed
