"""Classifier bundles on disk without pickle: JSON for structure, ``.npy`` for arrays, one zip.

Users share classifier files, and unpickling a file (``joblib.load``, ``pickle.load``,
``torch.load(weights_only=False)``) runs whatever code its author put in it. A bundle here is
a zip archive holding

* ``bundle.json`` — the payload as JSON; numbers, strings, lists and dicts as themselves,
  NumPy arrays as references to ``arrays/<n>.npy``, objects of the classes in
  :data:`TRUSTED_TYPES` as ``{"__object__": "<module>.<class>", "state": {attribute: value}}``;
* ``arrays/<n>.npy`` — every array, read back with ``numpy.load(allow_pickle=False)``
  (so an object array cannot be smuggled in).

Objects are saved generically from their ``__dict__`` (their fitted numpy/scalar attributes),
so a head that gains or loses an attribute needs no change here. Loading never imports or
calls anything but the classes named in :data:`TRUSTED_TYPES`, rebuilt with
``cls.__new__(cls)`` and their saved attributes: no ``__init__``, ``__setstate__`` or
``__reduce__`` of the file's choosing runs. An unknown type, a pickle file (the format of
bundles before this one) or a malformed archive is refused with a message saying why.
"""

from __future__ import annotations

import importlib
import io
import json
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from aqqua_geo._io import atomic_path

#: The only classes a bundle may contain (``module.qualname``). Add a head here to save it.
TRUSTED_TYPES: frozenset[str] = frozenset({
    "aqqua_geo.downstream.probes.KNNClassifier",
    "aqqua_geo.downstream.probes.LinearProbe",
    "aqqua_geo.downstream.novelty.NoveltyScorer",
})

CONTAINER = "aqqua-bundle"
CONTAINER_VERSION = 1
MAX_MEMBER_BYTES = 2 << 30  # a single array or the JSON; larger entries are refused (zip bombs)
_PICKLE_MAGIC = (b"\x80", )  # pickle protocol 2+ opcode PROTO


class UnsafeBundleError(ValueError):
    """A file that is not a safe aqqua bundle (pickle, unknown type, malformed archive)."""


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class _Encoder:
    def __init__(self) -> None:
        self.arrays: list[np.ndarray] = []

    def __call__(self, obj: Any, where: str) -> Any:
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, int) and not isinstance(obj, bool):
            return obj
        if isinstance(obj, float):
            return obj if math.isfinite(obj) else {"__float__": repr(obj)}
        if isinstance(obj, np.ndarray):
            arr = obj
            if arr.dtype == object:
                if all(isinstance(v, str) for v in arr.ravel()):
                    arr = arr.astype(str)
                else:
                    raise TypeError(f"{where}: object array with non-string items cannot be saved without pickle")
            self.arrays.append(np.ascontiguousarray(arr))
            return {"__ndarray__": len(self.arrays) - 1}
        if isinstance(obj, np.generic):
            return {"__npscalar__": obj.dtype.str, "value": self(obj.item(), where)}
        if isinstance(obj, tuple):
            return {"__tuple__": [self(v, f"{where}[{i}]") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [self(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        if isinstance(obj, dict):
            if all(isinstance(k, str) for k in obj) and not any(k.startswith("__") and k.endswith("__") for k in obj):
                return {k: self(v, f"{where}.{k}") for k, v in obj.items()}
            return {"__items__": [[self(k, f"{where} key"), self(v, f"{where}[{k!r}]")] for k, v in obj.items()]}
        name = _type_name(type(obj))
        if name in TRUSTED_TYPES:
            return {"__object__": name, "state": self(dict(vars(obj)), f"{where}<{type(obj).__name__}>")}
        raise TypeError(f"{where}: a {name} cannot be saved in a classifier bundle; allowed objects are "
                        f"{sorted(TRUSTED_TYPES)} (add a class to aqqua_geo.downstream.bundle_io.TRUSTED_TYPES "
                        "if its attributes are plain numbers, strings and arrays)")


def _decode(obj: Any, arrays: dict[int, np.ndarray], where: str) -> Any:
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, list):
        return [_decode(v, arrays, where) for v in obj]
    if not isinstance(obj, dict):
        raise UnsafeBundleError(f"{where}: unexpected JSON value {type(obj).__name__}")
    if "__ndarray__" in obj:
        try:
            return arrays[int(obj["__ndarray__"])]
        except (KeyError, ValueError, TypeError):
            raise UnsafeBundleError(f"{where}: array {obj['__ndarray__']!r} missing from the bundle") from None
    if "__float__" in obj:
        value = str(obj["__float__"])
        if value not in ("nan", "inf", "-inf"):
            raise UnsafeBundleError(f"{where}: bad float {value!r}")
        return float(value)
    if "__npscalar__" in obj:
        dtype = np.dtype(str(obj["__npscalar__"]))
        if dtype.kind not in "biufcSU":
            raise UnsafeBundleError(f"{where}: numpy scalar of dtype {dtype} refused")
        return dtype.type(_decode(obj["value"], arrays, where))
    if "__tuple__" in obj:
        return tuple(_decode(v, arrays, where) for v in obj["__tuple__"])
    if "__items__" in obj:
        out = {}
        for pair in obj["__items__"]:
            k = _decode(pair[0], arrays, where)
            if isinstance(k, list):
                raise UnsafeBundleError(f"{where}: unhashable key")
            out[k] = _decode(pair[1], arrays, f"{where}[{k!r}]")
        return out
    if "__object__" in obj:
        name = str(obj["__object__"])
        if name not in TRUSTED_TYPES:
            raise UnsafeBundleError(f"{where}: type {name!r} is not one a classifier bundle may contain "
                                    f"(allowed: {sorted(TRUSTED_TYPES)}); the file was not loaded")
        module, _, qualname = name.rpartition(".")
        cls = getattr(importlib.import_module(module), qualname)
        state = _decode(obj.get("state", {}), arrays, f"{where}<{qualname}>")
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise UnsafeBundleError(f"{where}: state of {qualname} is not a dict of attributes")
        inst = cls.__new__(cls)
        inst.__dict__.update(state)
        return inst
    return {k: _decode(v, arrays, f"{where}.{k}") for k, v in obj.items()}


def save_bundle(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write *payload* (a dict) as a pickle-free bundle at *path*, atomically."""
    enc = _Encoder()
    doc = {"container": CONTAINER, "container_version": CONTAINER_VERSION, "payload": enc(payload, "bundle")}
    path = Path(path)
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr("bundle.json", json.dumps(doc, allow_nan=False))
            for i, arr in enumerate(enc.arrays):
                buf = io.BytesIO()
                np.save(buf, arr, allow_pickle=False)
                z.writestr(f"arrays/{i}.npy", buf.getvalue())
    return path


def _read_member(z: zipfile.ZipFile, name: str, path: Path) -> bytes:
    try:
        info = z.getinfo(name)
    except KeyError:
        raise UnsafeBundleError(f"{path}: {name} missing from the bundle") from None
    if info.file_size > MAX_MEMBER_BYTES:
        raise UnsafeBundleError(f"{path}: {name} is {info.file_size} bytes decompressed; refused")
    with z.open(info) as fh:
        return fh.read(MAX_MEMBER_BYTES + 1)


def load_bundle(path: str | Path) -> dict[str, Any]:
    """Read a bundle written by :func:`save_bundle`; nothing in the file is executed.

    Raises :class:`UnsafeBundleError` for a pickle/joblib file, an unknown type or a
    malformed archive, and FileNotFoundError if *path* does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classifier file not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head.startswith(b"PK"):
        kind = "a pickle/joblib file" if head[:1] in _PICKLE_MAGIC or head[:2] in (b"\x1f\x8b", b"x\x9c") \
            or head[:1] in (b"(", b"}", b"]") else "not an aqqua bundle"
        raise UnsafeBundleError(
            f"{path}: {kind}. Classifier files are no longer pickles, because loading a pickle runs "
            "code chosen by whoever wrote the file; it was NOT loaded. Re-train the classifier with "
            "this version (aqqua classify train / ClassifierBundle.save), which writes the safe format.")
    try:
        z = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise UnsafeBundleError(f"{path}: not a readable bundle archive ({err})") from None
    with z:
        try:
            doc = json.loads(_read_member(z, "bundle.json", path))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise UnsafeBundleError(f"{path}: bundle.json is not valid JSON ({err})") from None
        if not isinstance(doc, dict) or doc.get("container") != CONTAINER:
            raise UnsafeBundleError(f"{path}: not an aqqua bundle (no {CONTAINER!r} header)")
        if doc.get("container_version") != CONTAINER_VERSION:
            raise UnsafeBundleError(f"{path}: bundle container version {doc.get('container_version')!r}, "
                                    f"this aqqua reads {CONTAINER_VERSION}")
        arrays: dict[int, np.ndarray] = {}
        for name in z.namelist():
            if name.startswith("arrays/") and name.endswith(".npy"):
                try:
                    idx = int(name[len("arrays/"):-4])
                    arrays[idx] = np.load(io.BytesIO(_read_member(z, name, path)), allow_pickle=False)
                except ValueError as err:
                    raise UnsafeBundleError(f"{path}: {name}: not a plain numpy array ({err})") from None
        try:
            payload = _decode(doc.get("payload"), arrays, "bundle")
        except RecursionError:
            raise UnsafeBundleError(f"{path}: bundle.json is nested too deeply") from None
    if not isinstance(payload, dict):
        raise UnsafeBundleError(f"{path}: bundle payload is not a dict")
    return payload
