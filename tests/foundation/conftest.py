"""Fixtures for the foundation training tests: a tiny real UVP6 store and a tiny config."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def uvp6_store(tmp_path_factory):
    """The bundled UVP6 vignettes ingested into a store (630 objects, 8 classes)."""
    from aqqua_geo.data import write_uvp6_store

    return write_uvp6_store(tmp_path_factory.mktemp("uvp6") / "store")


@pytest.fixture
def tiny_cfg():
    """The tiny config shrunk further for unit tests (a step takes well under a second)."""
    from aqqua_geo.foundation.config import load_config

    def make(*overrides: str) -> dict:
        base = ["train.batch_size_per_gpu=8", "crops.n_local_crops=2", "train.max_steps=4",
                "train.checkpoint_every=2", "train.log_every=1"]
        return load_config("tiny", [*base, *overrides])

    return make
