"""Pretraining configuration: YAML files merged over the packaged defaults.

A config is a plain nested ``dict``. :func:`load_config` reads the packaged
``aqqua_geo/foundation/configs/default.yaml`` (DINOv2-like defaults), merges a user YAML over
it and then applies ``key.sub=value`` overrides whose values are parsed as YAML
(``optim.base_lr=1e-3``, ``crops.local_size_um=[100,400]``, ``train.max_minutes=null``).
Any key that the defaults do not define is an error, so a typo never silently becomes a
no-op; the only open mappings are listed in ``OPEN_SECTIONS`` (e.g. per-instrument
augmentation profiles).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

PACKAGED_DEFAULT = Path(__file__).resolve().parent / "configs" / "default.yaml"
# Bare config names ("tiny") resolve here: the repository's top-level foundation/configs.
REPO_CONFIG_DIR = Path(__file__).resolve().parents[2] / "foundation" / "configs"
# Mappings that accept new keys (their entries are validated where they are used).
OPEN_SECTIONS = frozenset({"augment.profiles"})


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a float (YAML 1.2), not as the string PyYAML gives."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass


class ConfigError(ValueError):
    """A config file or override names an unknown key or has a malformed value."""


def load_config(path_or_name: str | Path | None = None, overrides: Iterable[str] = ()) -> dict:
    """Load a pretraining config as a plain dict.

    Args:
        path_or_name: a YAML path, a bare name (``"tiny"`` → ``foundation/configs/tiny.yaml``
            of the repository), or ``None`` for the packaged defaults alone.
        overrides: ``"dotted.key=value"`` strings; values are YAML (numbers, lists, null).

    Raises:
        ConfigError: unknown key, missing file or malformed override (one-line message).
    """
    cfg = _read_yaml(PACKAGED_DEFAULT)
    if path_or_name is not None:
        path = resolve_config_path(path_or_name)
        _merge(cfg, _read_yaml(path), source=str(path))
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(cfg, key, value, source=f"override {item!r}")
    return cfg


def resolve_config_path(path_or_name: str | Path) -> Path:
    """Path of a config given as a file path or as a bare name in ``foundation/configs``."""
    path = Path(path_or_name)
    if path.suffix in {".yaml", ".yml"} or path.parent != Path("."):
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path
    named = REPO_CONFIG_DIR / f"{path}.yaml"
    if not named.is_file():
        available = sorted(p.stem for p in REPO_CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"no config named {str(path)!r} in {REPO_CONFIG_DIR} (available: {available})")
    return named


def dump_config(cfg: Mapping, path: str | Path) -> None:
    """Write *cfg* as YAML (the resolved config saved beside a run)."""
    Path(path).write_text(yaml.safe_dump(dict(cfg), sort_keys=False))


def _read_yaml(path: Path) -> dict:
    try:
        data = _yaml_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _merge(base: dict, update: Mapping, source: str, prefix: str = "") -> None:
    """Recursively merge *update* into *base* in place, refusing unknown keys."""
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            if not _is_open(prefix.rstrip(".")):
                raise ConfigError(f"{source}: unknown config key {dotted!r}{_suggest(base, key, prefix)}")
            base[key] = copy.deepcopy(value)
        elif isinstance(base[key], dict) and base[key] and isinstance(value, Mapping):
            _merge(base[key], value, source, prefix=f"{dotted}.")
        elif isinstance(base[key], dict) and base[key] and value is not None:
            raise ConfigError(f"{source}: {dotted!r} is a section; set its keys ({sorted(base[key])})")
        else:
            base[key] = copy.deepcopy(value)


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form key.sub=value")
    try:
        value = _yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"override {item!r}: value is not valid YAML") from None
    return key, value


def _set_dotted(cfg: dict, key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    node = cfg
    for depth, part in enumerate(parts[:-1]):
        prefix = ".".join(parts[:depth])
        if part not in node:
            if not _is_open(prefix):
                raise ConfigError(f"{source}: unknown config key {key!r}{_suggest(node, part, prefix)}")
            node[part] = {}
        if not isinstance(node[part], dict):
            raise ConfigError(f"{source}: {'.'.join(parts[: depth + 1])!r} is a value, not a section")
        node = node[part]
    leaf, prefix = parts[-1], ".".join(parts[:-1])
    if leaf not in node and not _is_open(prefix):
        raise ConfigError(f"{source}: unknown config key {key!r}{_suggest(node, leaf, prefix)}")
    if isinstance(node.get(leaf), dict) and node[leaf]:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {key!r} is a section; set its keys ({sorted(node[leaf])})")
        _merge(node[leaf], value, source, prefix=f"{key}.")
    else:
        node[leaf] = value


def _is_open(prefix: str) -> bool:
    """True when keys below the dotted *prefix* are free (inside an open section)."""
    return any(prefix == s or prefix.startswith(f"{s}.") for s in OPEN_SECTIONS)


def _suggest(node: Mapping, key: str, prefix: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, [str(k) for k in node], n=1)
    where = f" under {prefix.rstrip('.')!r}" if prefix else ""
    return f" (did you mean {close[0]!r}?)" if close else f" (valid keys{where}: {sorted(node)})"
