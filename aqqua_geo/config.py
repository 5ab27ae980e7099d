"""One strict configuration system for every YAML the package reads (pretraining, mapping).

A config is a plain nested ``dict``: a *defaults* YAML that documents every key, a user YAML
merged over it, then ``key.sub=value`` overrides whose values are parsed as YAML 1.2
(``optim.base_lr=1e-3`` is a float, ``crops.local_size_um=[100,400]`` a list,
``train.max_minutes=null`` None). A key that the defaults do not define is an error with a
did-you-mean hint, so a typo never silently becomes a no-op; only the mappings named in
``open_sections`` accept new keys (e.g. per-instrument augmentation profiles).

Configs given by bare name (``"tiny"``, ``"demo"``) are looked up first in the package
(``aqqua_geo/<kind>/configs``, so a wheel install can run them) and then in the current
directory's ``<kind>/configs`` (the repository's cluster recipes).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_KINDS = ("foundation", "mapping")

__all__ = ["ConfigError", "load_config", "resolve_config_path", "config_search_path", "dump_config",
           "yaml_load"]


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


def yaml_load(text: str) -> Any:
    """Parse YAML safely, with YAML 1.2 floats (``1e-3`` → 0.001, not the string PyYAML gives)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass


class ConfigError(ValueError):
    """A config file or override names an unknown key or has a malformed value."""


def load_config(
    defaults: str | Path,
    path_or_name: str | Path | Mapping | None = None,
    overrides: Iterable[str] = (),
    *,
    kind: str | None = None,
    open_sections: Iterable[str] = (),
) -> dict:
    """Load a config: *defaults* YAML, then a user config, then dotted overrides.

    Args:
        defaults: the YAML that defines (and documents) every valid key.
        path_or_name: a YAML path, a bare name resolved by :func:`resolve_config_path` for
            *kind*, an already-parsed mapping, or ``None`` for the defaults alone.
        overrides: ``"dotted.key=value"`` strings; values are YAML.
        kind: ``"foundation"`` or ``"mapping"``: where bare names are looked up.
        open_sections: dotted names of mappings that accept keys the defaults do not list.

    Raises:
        ConfigError: unknown key, missing file or malformed override (one-line message).
    """
    opened = frozenset(open_sections)
    cfg = _read_yaml(Path(defaults))
    if isinstance(path_or_name, Mapping):
        _merge(cfg, path_or_name, source="config", open_sections=opened)
    elif path_or_name is not None:
        path = resolve_config_path(path_or_name, kind)
        _merge(cfg, _read_yaml(path), source=str(path), open_sections=opened)
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(cfg, key, value, source=f"override {item!r}", open_sections=opened)
    return cfg


def config_search_path(kind: str | None) -> list[Path]:
    """Directories searched for bare config names of *kind*: package first, then ``./<kind>/configs``."""
    if kind is None:
        return []
    if kind not in CONFIG_KINDS:
        raise ValueError(f"config kind must be one of {CONFIG_KINDS}, got {kind!r}")
    return [PACKAGE_DIR / kind / "configs", Path.cwd() / kind / "configs"]


def resolve_config_path(path_or_name: str | Path, kind: str | None = None) -> Path:
    """Path of a config given as a file path or as a bare name (see :func:`config_search_path`)."""
    path = Path(path_or_name)
    if path.suffix in {".yaml", ".yml"} or path.parent != Path("."):
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path
    dirs = config_search_path(kind)
    for directory in dirs:
        named = directory / f"{path}.yaml"
        if named.is_file() and named.stem != "default":
            return named
    available = sorted({p.stem for d in dirs for p in d.glob("*.yaml")} - {"default"})
    where = ", ".join(str(d) for d in dirs) or "(no search path: give a file)"
    raise ConfigError(f"no {kind or ''} config named {str(path)!r} in {where} (available: {available})")


def dump_config(cfg: Mapping, path: str | Path) -> None:
    """Write *cfg* as YAML atomically (the resolved config saved beside a run)."""
    from aqqua_geo._io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(dict(cfg), sort_keys=False))


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _merge(base: dict, update: Mapping, source: str, prefix: str = "",
           open_sections: frozenset[str] = frozenset()) -> None:
    """Recursively merge *update* into *base* in place, refusing unknown keys."""
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            if not _is_open(prefix.rstrip("."), open_sections):
                raise ConfigError(f"{source}: unknown config key {dotted!r}{_suggest(base, key, prefix)}")
            base[key] = copy.deepcopy(value)
        elif isinstance(base[key], dict) and base[key] and isinstance(value, Mapping):
            _merge(base[key], value, source, prefix=f"{dotted}.", open_sections=open_sections)
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
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"override {item!r}: value is not valid YAML") from None
    return key, value


def _set_dotted(cfg: dict, key: str, value: Any, source: str,
                open_sections: frozenset[str] = frozenset()) -> None:
    parts = key.split(".")
    node = cfg
    for depth, part in enumerate(parts[:-1]):
        prefix = ".".join(parts[:depth])
        if part not in node:
            if not _is_open(prefix, open_sections):
                raise ConfigError(f"{source}: unknown config key {key!r}{_suggest(node, part, prefix)}")
            node[part] = {}
        if not isinstance(node[part], dict):
            raise ConfigError(f"{source}: {'.'.join(parts[: depth + 1])!r} is a value, not a section")
        node = node[part]
    leaf, prefix = parts[-1], ".".join(parts[:-1])
    if leaf not in node and not _is_open(prefix, open_sections):
        raise ConfigError(f"{source}: unknown config key {key!r}{_suggest(node, leaf, prefix)}")
    if isinstance(node.get(leaf), dict) and node[leaf]:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {key!r} is a section; set its keys ({sorted(node[leaf])})")
        _merge(node[leaf], value, source, prefix=f"{key}.", open_sections=open_sections)
    else:
        node[leaf] = value


def _is_open(prefix: str, open_sections: frozenset[str]) -> bool:
    """True when keys below the dotted *prefix* are free (inside an open section)."""
    return any(prefix == s or prefix.startswith(f"{s}.") for s in open_sections)


def _suggest(node: Mapping, key: str, prefix: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, [str(k) for k in node], n=1)
    where = f" under {prefix.rstrip('.')!r}" if prefix else ""
    return f" (did you mean {close[0]!r}?)" if close else f" (valid keys{where}: {sorted(node)})"
