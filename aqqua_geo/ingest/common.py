"""Pieces shared by the ingestors: source trees (folder or zip), items, image decoding,
date/number parsing and per-instrument constants."""

from __future__ import annotations

import io
import math
import os
import re
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from aqqua_geo.store.schema import InvalidRecord

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")

#: Largest file (or zip entry, decompressed) an ingestor reads into memory.
MAX_FILE_BYTES = 256 << 20
#: Largest decoded image (height × width × channels bytes); EcoTaxa takes ≤ 20000×20000 px.
MAX_IMAGE_BYTES = 100 << 20
#: Longest field of a table (characters); longer ones reject their record.
MAX_FIELD_CHARS = 100_000

#: Pixel sizes (µm/px) used when a source does not give one, with where they come from.
KNOWN_PIXEL_SIZE_UM: dict[str, tuple[float, str]] = {
    # iRfcb `micron_factor = 1/3.4` (3.4 px per µm), the IFCB community default
    "IFCB": (1 / 3.4, "IFCB default 1/3.4 um/px (iRfcb micron_factor)"),
    # ZooScan at 2400 dpi: 25.4 mm / 2400 = 10.58 µm (ZooProcess `process_pixel` 10.6)
    "ZooScan": (25400 / 2400, "ZooScan 2400 dpi = 10.58 um/px"),
    # UVP6-LP: 73 µm pixels (Picheral et al. 2022, Limnol. Oceanogr. Methods 20:115-129)
    "UVP6": (73.0, "UVP6 73 um/px (Picheral et al. 2022, L&O Methods 20:115)"),
}

_INSTRUMENT_PATTERNS = (
    ("uvp6", "UVP6"), ("uvp5", "UVP5"), ("uvp", "UVP5"), ("zooscan", "ZooScan"), ("flowcam", "FlowCam"),
    ("ifcb", "IFCB"), ("loki", "LOKI"), ("isiis", "ISIIS"), ("zoocam", "ZooCam"), ("planktoscope", "PlanktoScope"),
)


def canonical_instrument(value: str | None) -> str | None:
    """Canonical spelling of an instrument name (``"uvp6"`` → ``"UVP6"``), else the stripped input."""
    if value is None or not str(value).strip():
        return None
    low = str(value).strip().lower()
    for pattern, name in _INSTRUMENT_PATTERNS:
        if pattern in low:
            return name
    return str(value).strip()


@dataclass
class Item:
    """One record of a source: harmonised fields so far, original columns, a lazy image.

    ``errors`` holds problems found while parsing (field → InvalidRecord); a user constant
    for that field (``--set``) clears it, otherwise the record is rejected with it.
    """

    file: str
    record: str
    object_id: str | None
    fields: dict[str, Any]
    raw: dict[str, str]
    image: Callable[[], np.ndarray] | None = None
    errors: dict[str, InvalidRecord] = field(default_factory=dict)


@dataclass
class FileProblem:
    """A whole file that could not be read (empty, not UTF-8, malformed)."""

    file: str
    reason: str | None  # None: a note (e.g. an empty IFCB bin), not a rejection
    detail: str
    record: str = ""
    raw: dict[str, str] | None = None  # the record's original fields, when it has some
    object_id: str | None = None


class SourceTree:
    """Uniform read access to files in a folder or a .zip archive (paths are POSIX, relative).

    Hostile input: a zip entry (or file) larger than :data:`MAX_FILE_BYTES` decompressed is
    not read (:class:`InvalidRecord` ``too_large``); in a folder, a symbolic link that leads
    out of the folder is refused unless *follow_symlinks*, and a dangling one is reported,
    never skipped silently (both are listed by :meth:`files` and raise on :meth:`read_bytes`).
    """

    def __init__(self, src: str | Path, *, follow_symlinks: bool = False, max_file_bytes: int | None = None):
        self.src = Path(src)
        self.max_file_bytes = int(MAX_FILE_BYTES if max_file_bytes is None else max_file_bytes)
        self.refused: dict[str, InvalidRecord] = {}
        if not self.src.exists():
            raise FileNotFoundError(f"{src}: no such file or folder")
        self._zip = zipfile.ZipFile(self.src) if self.src.is_file() and zipfile.is_zipfile(self.src) else None
        if self._zip is None and not self.src.is_dir():
            raise ValueError(f"{src}: expected a folder or a .zip archive")
        self._entries: dict[str, str] | None = None  # archive: normalised name → entry name
        if self._zip is not None:
            self._names = sorted({_normalise(n) for n in self._zip.namelist() if not n.endswith("/")} - {""})
            self._entries = {_normalise(n): n for n in self._zip.namelist() if not n.endswith("/")}
        else:
            self._names = self._walk(follow_symlinks)
        self._name_set = set(self._names)

    def __getstate__(self) -> dict:
        """The listing without the open archive (a parallel ingest ships the tree to its
        workers once instead of every worker listing the folder again)."""
        state = self.__dict__.copy()
        state["_zip"] = None
        del state["_name_set"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._name_set = set(self._names)
        if self._entries is not None:
            self._zip = zipfile.ZipFile(self.src)

    def _walk(self, follow_symlinks: bool) -> list[str]:
        # os.scandir's entries know their type without a stat: listing 100 000 files took 2.0 s
        # through os.walk + Path.relative_to + is_symlink/is_file per file (measured 2026-12-03)
        root = self.src.resolve()
        names: list[str] = []
        stack = [(os.fspath(self.src), "")]
        while stack:
            folder, prefix = stack.pop()
            try:
                entries = os.scandir(folder)
            except OSError:
                continue  # as os.walk: a folder that cannot be read is not listed
            with entries:
                for entry in entries:
                    rel = prefix + entry.name
                    if entry.is_symlink():
                        self._link(Path(entry.path), rel, root, follow_symlinks, names)
                    elif entry.is_dir(follow_symlinks=False):
                        stack.append((entry.path, rel + "/"))
                    elif entry.is_file(follow_symlinks=False):
                        names.append(rel)
        return sorted(set(names) | set(self.refused))

    def _link(self, p: Path, rel: str, root: Path, follow_symlinks: bool, names: list[str]) -> None:
        """A symbolic link: a linked folder is refused (outside) or skipped (inside: seen
        anyway) unless *follow_symlinks*; a linked file is listed, refused or reported."""
        if p.is_dir():
            target = p.resolve()
            if follow_symlinks:
                for sub in sorted(target.rglob("*")):
                    if sub.is_file():
                        names.append(f"{rel}/{sub.relative_to(target).as_posix()}")
            elif not (target == root or root in target.parents):
                self.refused[rel] = InvalidRecord("missing_image", f"{p}: symbolic link to a folder outside "
                                                  f"{self.src} ({target}) not followed (use --follow-symlinks)")
            return
        target = Path(os.path.realpath(p))
        if not target.exists():
            self.refused[rel] = InvalidRecord("missing_image", f"{p}: dangling symbolic link (to {os.readlink(p)})")
        elif not follow_symlinks and not (root in target.parents):
            self.refused[rel] = InvalidRecord("missing_image", f"{p}: symbolic link to {target}, outside "
                                              f"{self.src}: not followed (use --follow-symlinks to allow)")
        elif target.is_file():
            names.append(rel)

    def files(self, suffixes: tuple[str, ...] | None = None) -> list[str]:
        """Relative paths of the files (optionally only those with one of *suffixes*)."""
        if suffixes is None:
            return list(self._names)
        return [n for n in self._names if n.lower().endswith(suffixes)]

    def exists(self, name: str) -> bool:
        return name in self._name_set

    def read_bytes(self, name: str, limit: int | None = None) -> bytes:
        """The file's bytes; raises :class:`InvalidRecord` for a refused link or a file over
        :attr:`max_file_bytes` (checked before reading: a zip bomb is never inflated)."""
        if name in self.refused:
            raise self.refused[name]
        cap = self.max_file_bytes if limit is None else min(limit, self.max_file_bytes)
        size = self.size(name)
        if size > cap:
            raise InvalidRecord("too_large", f"{self.display(name)}: {size} bytes "
                                             f"({'decompressed' if self._zip is not None else 'on disk'}), more than "
                                             f"the {cap} bytes an ingestor reads for it")
        if self._zip is not None:
            try:
                with self._zip.open(self._entries.get(name, name)) as fh:  # stops at the declared size
                    data = fh.read(cap + 1)
            except (zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError, OSError, zlib.error) as err:
                raise InvalidRecord("corrupt_image" if name.lower().endswith(IMAGE_SUFFIXES) else "bad_row",
                                    f"{self.display(name)}: cannot be read from the archive "
                                    f"({type(err).__name__}: {err})") from None
            if len(data) > cap:
                raise InvalidRecord("too_large", f"{self.display(name)}: more than {cap} bytes decompressed")
            return data
        try:
            return (self.src / name).read_bytes()
        except OSError as err:
            raise InvalidRecord("missing_image" if name.lower().endswith(IMAGE_SUFFIXES) else "bad_row",
                                f"{self.display(name)}: cannot be read ({err.strerror or err})") from None

    def size(self, name: str) -> int:
        if name in self.refused:
            return 0
        if self._zip is not None:
            return self._zip.getinfo(self._entries.get(name, name)).file_size
        try:
            return (self.src / name).stat().st_size
        except OSError:
            return 0

    def display(self, name: str) -> str:
        """A path a user can find: ``folder/name`` or ``archive.zip!name``."""
        return f"{self.src}!{name}" if self._zip is not None else str(self.src / name)

    @staticmethod
    def join(base: str, name: str) -> str:
        """POSIX join of a file's folder and a relative name, normalised."""
        return _normalise(str(PurePosixPath(base).parent / name.replace("\\", "/")))


def _normalise(name: str) -> str:
    """``./a/../b.png`` → ``b.png``; a leading dot of a *name* (``.a.png``) is kept."""
    parts: list[str] = []
    for part in PurePosixPath(name.replace("\\", "/")).parts:
        if part == "..":
            if parts:
                parts.pop()
        elif part not in (".", "", "/"):
            parts.append(part)
    return "/".join(parts)


def normalise_path(name: str) -> str:
    """A table's relative image path in the form :meth:`SourceTree.files` lists it."""
    return _normalise(str(name).strip())


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode image bytes to uint8 H×W (grey) or H×W×3/4; raise InvalidRecord.

    Colour images whose channels are all equal (grey saved as RGB, common for vignettes)
    are stored as one channel; an all-opaque alpha channel is dropped. So the same picture
    saved as grey PNG, RGB JPEG (lossless) or TIFF decodes to the same pixels and hash.
    """
    if not data:
        raise InvalidRecord("empty_image", f"{name}: image file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                bands = len(im.getbands())
                w, h = im.size
                if w * h * max(bands, 1) > image_cap() or max(w, h) > 0xFFFF:
                    raise InvalidRecord("too_large", f"{name}: image of {w}×{h} px × {bands} channel(s) is larger than "
                                                     f"the store takes ({image_cap()} bytes, 65535 px a side)")
                im.load()
                if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                    raise InvalidRecord("corrupt_image", f"{name}: {im.mode} (16/32-bit) images are not supported; convert to 8-bit")
                if im.mode == "1":
                    im = im.convert("L")
                elif im.mode in ("P", "PA", "LA", "CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
                arr = np.asarray(im, dtype=np.uint8)
    except InvalidRecord:
        raise
    except UnidentifiedImageError:
        raise InvalidRecord("corrupt_image", f"{name}: not a readable image (unknown format or corrupt header)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError) as err:
        raise InvalidRecord("too_large", f"{name}: image too large to decode safely ({type(err).__name__}: {err})") from None
    except Exception as err:  # noqa: BLE001 - a crafted file can make any decoder raise anything: one record
        raise InvalidRecord("corrupt_image", f"{name}: cannot decode image ({type(err).__name__}: {err})") from None
    if arr.size == 0:
        raise InvalidRecord("empty_image", f"{name}: image has no pixels")
    if arr.ndim == 3 and arr.shape[2] == 4 and (arr[..., 3] == 255).all():
        arr = arr[..., :3]
    if arr.ndim == 3 and arr.shape[2] == 3 and (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all():
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] == 2:  # LA converted above; defensive
        arr = arr[..., 0]
    return np.ascontiguousarray(arr)


_DATE_RE = re.compile(r"^(\d{4})-?/?(\d{2})-?/?(\d{2})$")


def parse_date_time(date: str | None, time: str | None, object_id: str) -> datetime:
    """EcoTaxa-style date (``YYYYMMDD``/``YYYY-MM-DD``) + time (``HHMM[SS]``/``HH:MM[:SS]``) → UTC.

    Raises InvalidRecord ``missing_datetime``/``bad_datetime``.
    """
    date = (date or "").strip()
    time = (time or "").strip()
    if not date:
        raise InvalidRecord("missing_datetime", f"{object_id}: date is missing")
    if not time:
        raise InvalidRecord("missing_datetime", f"{object_id}: time is missing (date {date})")
    m = _DATE_RE.match(date.replace("/", "-"))
    if not m:
        raise InvalidRecord("bad_datetime", f"{object_id}: date {date!r} is not YYYYMMDD or YYYY-MM-DD")
    micro = 0
    frac = re.fullmatch(r"(.*\d)[.,](\d{1,6})", time)
    if frac and (":" in frac[1] or len(frac[1]) == 6):  # fractional seconds: 020139.315, 02:01:39.315
        time, micro = frac[1], int(frac[2].ljust(6, "0"))
    if ":" in time:
        parts = time.split(":")
        if len(parts) not in (2, 3) or not all(p.strip().isdigit() for p in parts):
            raise InvalidRecord("bad_datetime", f"{object_id}: time {time!r} is not HH:MM[:SS[.fff]]")
        hh, mm, ss = (int(p) for p in (parts + ["0"])[:3])
    elif time.isdigit() and len(time) <= 6:
        digits = time.zfill(4) if len(time) <= 4 else time.zfill(6)
        digits = digits.ljust(6, "0")
        hh, mm, ss = int(digits[:2]), int(digits[2:4]), int(digits[4:6])
    else:
        raise InvalidRecord("bad_datetime", f"{object_id}: time {time!r} is not HHMM[SS[.fff]] or HH:MM[:SS[.fff]]")
    try:
        return datetime(int(m[1]), int(m[2]), int(m[3]), hh, mm, ss, micro, tzinfo=timezone.utc)
    except ValueError as err:
        raise InvalidRecord("bad_datetime", f"{object_id}: date/time {date!r} {time!r} is not valid ({err})") from None


def parse_float(value: str | None, name: str, object_id: str, reason: str) -> float | None:
    """Parse a number; empty → None; garbage → InvalidRecord(*reason*)."""
    if value is None or not str(value).strip() or str(value).strip().lower() in ("nan", "na"):
        return None
    try:
        out = float(str(value).strip())
    except ValueError:
        raise InvalidRecord(reason, f"{object_id}: {name}={value!r} is not a number") from None
    return out if math.isfinite(out) else None


def decode_text(data: bytes, name: str) -> str:
    """Text of a table: UTF-8 (with or without BOM), else Latin-1 (as EcoTaxa reads it).

    See :func:`decode_text_with_encoding` for which one was used.
    """
    return decode_text_with_encoding(data, name)[0]


def decode_text_with_encoding(data: bytes, name: str) -> tuple[str, str]:
    """``(text, encoding)`` with encoding ``utf-8-sig`` (BOM), ``utf-8`` or ``latin-1``.

    EcoTaxa reads a TSV as Latin-1 unless it starts with a UTF-8 BOM; a file without a BOM
    that is valid UTF-8 is read as UTF-8 here (ASCII and UTF-8 tables are the common case),
    any other is Latin-1 (every byte is a Latin-1 character, so nothing is refused).
    """
    if data.startswith(b"\xef\xbb\xbf"):
        try:
            return data[3:].decode("utf-8"), "utf-8-sig"
        except UnicodeDecodeError as err:
            at = err.start + 3
            line = data[:at].count(b"\n") + 1
            raise ValueError(f"{name}: line {line}: starts with a UTF-8 BOM but is not UTF-8 "
                             f"(byte 0x{data[at]:02x} at offset {at})") from None
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"


def image_cap() -> int:
    """Largest image file read (bytes): the decoded-size cap (this module's, read at call time)."""
    return MAX_IMAGE_BYTES


def read_image(tree: SourceTree, name: str) -> np.ndarray:
    """Read and decode one image file of *tree* (size-capped before reading)."""
    return decode_image(tree.read_bytes(name, limit=image_cap()), tree.display(name))
