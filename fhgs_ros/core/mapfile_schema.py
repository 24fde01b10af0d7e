"""Untrusted map files: safe reading, bounded JSON and schemas of the safetensors header and metadata.

A map file path comes from a peer (``load_map``), so the file may be anything: ``/dev/zero``, a
FIFO, a huge file, a header nested 200k levels deep, ``1e999`` or a list where a number belongs.
- :func:`read_regular_file`: opens with ``O_NONBLOCK`` (a FIFO does not block), checks with
  ``fstat`` that it is a regular file and not larger than the cap *before* reading;
- :func:`bounded_json`: size and nesting depth checked before ``json.loads``; NaN, Infinity and
  numbers that overflow to inf are refused;
- :data:`HEADER_SCHEMA` / :data:`META_SCHEMA`: JSON Schemas (validated with ``jsonschema``) of
  the safetensors header and of the ``fhgs_meta`` document (types, ranges, lengths).
Every failure is a ``MapFileError`` (from :mod:`fhgs_ros.core.storage`) whose message names the
file and the fault but never quotes the file's content.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from typing import Any, Callable

import numpy as np

MAX_MAP_BYTES = 8 * 2 ** 30        # default cap of a map file (node.max_map_file_mb overrides)
MAX_HEADER_BYTES = 64 * 2 ** 20    # safetensors header (JSON) cap
MAX_JSON_DEPTH = 16                # the deepest legitimate document (meta -> keyframes -> camera -> matrix) is 5
MAX_KEYFRAMES = 1_000_000
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)

_INT = {"type": "integer", "minimum": 0, "maximum": 2 ** 62}
_NUM = {"type": "number"}
_ST_DTYPE = {"enum": ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "U16", "U32", "U64",
                      "F8_E4M3", "F8_E5M2"]}
HEADER_SCHEMA: dict = {
    "type": "object",
    "maxProperties": 4096,
    "properties": {"__metadata__": {"type": "object", "maxProperties": 1024,
                                    "additionalProperties": {"type": "string"}}},
    "additionalProperties": {
        "type": "object",
        "required": ["dtype", "shape", "data_offsets"],
        "properties": {"dtype": _ST_DTYPE,
                       "shape": {"type": "array", "maxItems": 8, "items": _INT},
                       "data_offsets": {"type": "array", "minItems": 2, "maxItems": 2, "items": _INT}},
    },
}
CAMERA_SCHEMA: dict = {
    "type": "object",
    "required": ["width", "height", "fx", "fy", "cx", "cy", "world_to_cam"],
    "properties": {
        "width": {"type": "integer", "minimum": 1, "maximum": 65535},
        "height": {"type": "integer", "minimum": 1, "maximum": 65535},
        "fx": {"type": "number", "exclusiveMinimum": 0, "maximum": 1e7},
        "fy": {"type": "number", "exclusiveMinimum": 0, "maximum": 1e7},
        "cx": {"type": "number", "minimum": -1e7, "maximum": 1e7},
        "cy": {"type": "number", "minimum": -1e7, "maximum": 1e7},
        "near": {"type": "number", "exclusiveMinimum": 0, "maximum": 1e7},
        "far": {"type": "number", "exclusiveMinimum": 0, "maximum": 1e9},
        "name": {"type": "string", "maxLength": 1024},
        "world_to_cam": {"type": "array", "minItems": 4, "maxItems": 4,
                         "items": {"type": "array", "minItems": 4, "maxItems": 4,
                                   "items": {"type": "number", "minimum": -1e7, "maximum": 1e7}}},
    },
}
META_SCHEMA: dict = {
    "type": "object",
    "required": ["feature_dim", "sh_degree", "next_uid"],
    "properties": {
        "format": {"type": "string", "maxLength": 64},
        "version": {"type": "integer", "minimum": 1, "maximum": 2 ** 31},
        "feature_dim": {"type": "integer", "minimum": 1, "maximum": 65536},
        "sh_degree": {"type": "integer", "minimum": 0, "maximum": 3},
        "next_uid": _INT,
        "num_surfels": _INT,
        "feature_extractor": {"type": "string", "maxLength": 1024},
        "feature_model": {"type": "string", "maxLength": 1024},
        "surfel_meta": {"type": "object", "maxProperties": 256},
        "extra_tensors": {"type": "array", "maxItems": 256, "items": {"type": "string", "maxLength": 256}},
        "crc32": {"type": "object", "maxProperties": 4096,
                  "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 2 ** 32 - 1}},
        "keyframes": {"type": "array", "maxItems": MAX_KEYFRAMES, "items": CAMERA_SCHEMA},
        "node": {"type": "object", "properties": {
            "iteration": _INT, "keyframes_total": _INT,
            "stamp": {"type": "number", "minimum": 0, "maximum": 1e12},
            "map_frame": {"type": "string", "maxLength": 256},
            "saved_unix_time": {"type": "number"}}},
    },
}
_KNOWN_NAMES = {"__metadata__", "dtype", "shape", "data_offsets"} | set(META_SCHEMA["properties"]) \
    | set(CAMERA_SCHEMA["properties"]) | set(META_SCHEMA["properties"]["node"]["properties"])


def read_regular_file(path: str | os.PathLike, max_bytes: int, fail: Callable[[str], Exception]) -> bytes:
    """The whole content of a regular file of at most ``max_bytes``; never blocks on FIFOs or devices."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(os.fspath(path), flags)
    except FileNotFoundError:
        raise fail("does not exist") from None
    except IsADirectoryError:
        raise fail("is a directory, not a map file") from None
    except OSError as exc:
        raise fail(f"cannot be opened ({exc.strerror or type(exc).__name__})") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise fail("is a directory, not a map file")
        if not stat.S_ISREG(st.st_mode):
            raise fail("is not a regular file (device, FIFO or socket); refused")
        if st.st_size > max_bytes:
            raise fail(f"is {st.st_size} bytes, larger than the limit of {max_bytes} bytes")
        chunks, left = [], st.st_size
        while left > 0:
            b = os.read(fd, min(left, 1 << 24))
            if not b:
                break
            chunks.append(b)
            left -= len(b)
        if os.read(fd, 1):
            raise fail("grew while it was read; refused")
        return b"".join(chunks)
    except BlockingIOError:
        raise fail("cannot be read without blocking; refused") from None
    except OSError as exc:
        raise fail(f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    finally:
        os.close(fd)


def json_depth(raw: bytes) -> int:
    """Maximum nesting depth of a JSON text (brackets outside strings), computed without recursion."""
    s = _STRINGS.sub(b'""', raw)
    a = np.frombuffer(s, dtype=np.uint8)
    step = np.zeros(a.shape, dtype=np.int64)
    step[(a == ord("[")) | (a == ord("{"))] = 1
    step[(a == ord("]")) | (a == ord("}"))] = -1
    return int(np.cumsum(step).max(initial=0))


def _finite_float(s: str) -> float:
    v = float(s)
    if not math.isfinite(v):
        raise ValueError("a number overflows to infinity")
    return v


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def bounded_json(raw: bytes | str, what: str, fail: Callable[[str], Exception], max_bytes: int = MAX_HEADER_BYTES,
                 max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` after size and depth checks; NaN / Infinity / overflowing numbers refused."""
    b = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    if len(b) > max_bytes:
        raise fail(f"{what} is {len(b)} bytes, more than {max_bytes}")
    if json_depth(b) > max_depth:
        raise fail(f"{what} is nested deeper than {max_depth} levels")
    try:
        return json.loads(b.decode("utf-8"), parse_float=_finite_float, parse_constant=_no_constant,
                          parse_int=_bounded_int)
    except UnicodeDecodeError:
        raise fail(f"{what} is not UTF-8 text") from None
    except (json.JSONDecodeError, ValueError, RecursionError) as exc:
        where = f" at character {exc.pos}" if isinstance(exc, json.JSONDecodeError) else ""
        kind = "not valid JSON" if isinstance(exc, json.JSONDecodeError) else str(exc)[:80]
        raise fail(f"{what} is {kind}{where}") from None


def _bounded_int(s: str) -> int:
    if len(s) > 40:
        raise ValueError("an integer has more than 40 digits")
    return int(s)


def validate(doc: Any, schema: dict, what: str, fail: Callable[[str], Exception]) -> None:
    """jsonschema validation; the reason names the schema rule and a path of known field names only."""
    import jsonschema

    try:
        err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(doc))
    except RecursionError:
        raise fail(f"{what} is nested too deeply") from None
    if err is None:
        return
    path = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if p in _KNOWN_NAMES else ".<key>")
                   for p in err.absolute_path)
    ap = list(err.absolute_path)
    kf = f" (keyframe {ap[1]} has an invalid camera)" if len(ap) >= 2 and ap[0] == "keyframes" else ""
    raise fail(f"{what}{path or ' (top level)'} fails the schema rule '{err.validator}'{kf}")


def fhgs_header_format(path: str | os.PathLike, max_bytes: int = MAX_HEADER_BYTES + 8) -> str | None:
    """The ``format`` entry of a safetensors file's metadata (None: not a readable safetensors file).

    Reads only the header, from a regular file (used before overwriting a file: is it one of ours?)."""
    class _E(Exception):
        pass

    def fail(msg: str) -> _E:
        return _E(msg)

    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(os.fspath(path), flags)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        head = os.read(fd, 8)
        if len(head) < 8:
            return None
        n = int.from_bytes(head, "little")
        if n < 2 or n > max_bytes:
            return None
        raw = b""
        while len(raw) < n:
            b = os.read(fd, n - len(raw))
            if not b:
                return None
            raw += b
        doc = bounded_json(raw, "header", fail)
        md = doc.get("__metadata__") if isinstance(doc, dict) else None
        fmt = md.get("format") if isinstance(md, dict) else None
        return fmt if isinstance(fmt, str) else None
    except (OSError, _E):
        return None
    finally:
        os.close(fd)


__all__ = ["read_regular_file", "bounded_json", "json_depth", "validate", "fhgs_header_format", "HEADER_SCHEMA",
           "META_SCHEMA", "CAMERA_SCHEMA", "MAX_MAP_BYTES", "MAX_HEADER_BYTES", "MAX_JSON_DEPTH"]
