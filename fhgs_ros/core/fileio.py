"""Crash-safe file output shared by every writer (maps, meshes, PLY, JSON, PNG).

Every write goes to a temporary file in the destination directory. The temporary file is
flushed and fsynced, then ``os.replace``-d over the destination, and the directory is
fsynced. A reader therefore sees either the old complete file or the new complete file,
never a partial one. If anything fails before the rename (an exception inside the
``with`` block, a full disk, a failing fsync), the temporary file is deleted, the
destination is left untouched and the exception propagates.

Temporary names look like ``.<name>.<random>.tmp`` and sit in the destination directory,
so the rename never crosses file systems. New files get the usual ``0o666 & ~umask``
permissions; a replaced file keeps its previous mode.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np


def _umask() -> int:
    """The process umask, read without changing it (Linux /proc); 0o022 when unknown."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _fsync(fd: int) -> None:
    """fsync a file descriptor (module-level so tests can inject failures)."""
    os.fsync(fd)


def fsync_dir(directory: str | os.PathLike) -> None:
    """fsync a directory so a rename inside it is durable. Ignored where unsupported."""
    try:
        fd = os.open(os.fspath(directory), os.O_RDONLY)
    except OSError:
        return
    try:
        _fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Context manager that yields a file object and publishes it atomically at ``path``.

    ``mode`` is "wb" (the default) or "w" (text, UTF-8 unless ``encoding`` is given). The
    destination is replaced only if the block finishes without an exception.

        with atomic_writer("map.json", "w") as f:
            f.write(text)
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_writer: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(f"cannot write '{path}': directory '{directory}' does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"cannot write '{path}': it is a directory")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        try:
            target_mode = os.stat(path).st_mode & 0o7777
        except OSError:
            target_mode = 0o666 & ~_umask()
        os.fchmod(fd, target_mode)
        if mode == "w":
            f = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline="")
        else:
            f = os.fdopen(fd, "wb")
        fd = -1  # owned by f now
        with f:
            yield f
            f.flush()
            _fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_dir(directory)
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes | bytearray | memoryview) -> None:
    """Write ``data`` to ``path`` atomically (see module docstring)."""
    with atomic_writer(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode(encoding))


def to_jsonable(obj: Any) -> Any:
    """Convert numpy / torch scalars and arrays, Paths, sets, tuples and objects with ``to_dict`` to JSON types.

    Non-finite floats become None (JSON has no NaN). Raises TypeError naming the type otherwise.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    mod = type(obj).__module__
    if mod.startswith("torch") and hasattr(obj, "detach"):
        t = obj.detach().cpu()
        return to_jsonable(t.item() if t.dim() == 0 else t.tolist())
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return to_jsonable(obj.to_dict())
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as UTF-8 JSON atomically (numpy / torch values converted, NaN -> null)."""
    text = json.dumps(to_jsonable(obj), indent=indent, allow_nan=False, ensure_ascii=False)
    atomic_write_text(path, text + "\n")


def _to_hwc_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach") and type(array).__module__.startswith("torch"):
        a = array.detach().cpu()
        if a.dim() == 3 and a.shape[0] in (1, 3, 4):  # torch convention in this package: (C, H, W)
            a = a.permute(1, 2, 0)
        return a.numpy()
    return np.asarray(array)


def save_png(path: str | os.PathLike, array: Any) -> None:
    """Save an image as PNG atomically.

    ``array``: numpy (H, W), (H, W, 1|3|4) or torch (H, W) / (C, H, W) (channels first, the
    torch convention of this package). dtypes: uint8 (L / RGB / RGBA), uint16 (single channel
    only, e.g. depth in mm), bool (0/255), or float, taken as [0, 1], clipped and rounded to uint8.
    """
    from PIL import Image

    a = _to_hwc_numpy(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"save_png('{path}'): expected (H, W) or (H, W, 3|4) image, got shape {a.shape}")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        a = np.round(np.clip(np.nan_to_num(a, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    if a.dtype == np.uint16:
        if a.ndim != 2:
            raise ValueError(f"save_png('{path}'): uint16 PNG must be single-channel, got shape {a.shape}")
        img = Image.fromarray(np.ascontiguousarray(a))
    elif a.dtype == np.uint8:
        img = Image.fromarray(np.ascontiguousarray(a))
    else:
        raise ValueError(f"save_png('{path}'): unsupported dtype {a.dtype} (use uint8, uint16, bool or float)")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
