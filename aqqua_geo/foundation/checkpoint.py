"""Training checkpoints that resume *exactly*: weights, optimizer, position, RNG streams.

A checkpoint holds the SSL model (student, EMA teacher, loss centres), the AdamW state, the
global step (every schedule is a closed-form function of it), the sampler state and the
random-number states of python, numpy and torch (CPU and CUDA) **of every rank**, so that
stopping after step *k* and resuming gives the same parameters as never stopping.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_VERSION = 1
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def rng_state() -> dict[str, Any]:
    """Random states of this process (python, numpy, torch CPU and CUDA)."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states saved by :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write *payload* atomically (temporary file + rename): a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save({"checkpoint_version": CHECKPOINT_VERSION, **payload}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (on CPU)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    # RNG states hold numpy arrays and python tuples: not loadable with weights_only.
    payload = torch.load(path, map_location="cpu", weights_only=False)
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
