"""Pretraining configs: the strict :mod:`aqqua_geo.config` over the packaged defaults.

``aqqua_geo/foundation/configs/default.yaml`` documents every key (DINOv2-like defaults);
bare names (``"tiny"``) resolve to the package's configs, then to ``./foundation/configs``
(the cluster recipes ``vit_s14``, ``vit_b14``, ``vit_l14`` of a repository checkout).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from aqqua_geo import config as _config
from aqqua_geo.config import ConfigError, dump_config

PACKAGED_DEFAULT = Path(__file__).resolve().parent / "configs" / "default.yaml"
# Mappings that accept new keys (their entries are validated where they are used).
OPEN_SECTIONS = frozenset({"augment.profiles"})

__all__ = ["ConfigError", "PACKAGED_DEFAULT", "dump_config", "load_config", "packaged_defaults",
           "resolve_config_path"]


@functools.cache
def _packaged() -> dict[str, Any]:
    return _config.yaml_load(PACKAGED_DEFAULT.read_text())


def packaged_defaults(section: str) -> dict[str, Any]:
    """A section of the packaged ``default.yaml`` (read once): the one place defaults live."""
    return copy.deepcopy(_packaged()[section])


def load_config(path_or_name: str | Path | Mapping | None = None, overrides: Iterable[str] = ()) -> dict:
    """Load a pretraining config as a plain dict (defaults ← file or name ← overrides).

    Raises:
        ConfigError: unknown key, missing file or malformed override (one-line message).
    """
    return _config.load_config(PACKAGED_DEFAULT, path_or_name, overrides, kind="foundation",
                               open_sections=OPEN_SECTIONS)


def resolve_config_path(path_or_name: str | Path) -> Path:
    """Path of a pretraining config given as a file or as a bare name."""
    return _config.resolve_config_path(path_or_name, "foundation")
