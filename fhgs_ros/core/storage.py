"""Versioned map files and 3DGS-style PLY export.

Map file layout (one file, format ``fhgs_map``, version 1): a safetensors file.
- Tensors: every tensor field of ``SurfelMap`` under its own name (``means``, ``quats``,
  ``log_scales``, ``opacity_logit``, ``sh_dc``, ``sh_rest``, ``features_raw``,
  ``features_unit``, ``uid``, ``parent_uid``), stored bit-for-bit with their dtypes, plus any
  ``extra_tensors`` (for example ``pca_mean`` (D,) and ``pca_basis`` (D, 3)).
- safetensors ``__metadata__`` (string -> string): ``format`` = "fhgs_map", ``version`` = "1",
  and ``fhgs_meta`` = one JSON document holding the caller's ``meta`` (keyframe cameras
  converted with ``Camera.to_dict()``) and the reserved keys written by ``save_map``:
  ``feature_dim``, ``feature_extractor``, ``sh_degree``, ``next_uid``, ``num_surfels``,
  ``surfel_meta`` (``SurfelMap.meta``), ``extra_tensors`` (their names) and ``crc32`` (a CRC-32
  of every tensor's bytes, so that damaged data is detected as well as truncation).

Compact layout (format version 2, the default of ``save_map``; for D = 256 about 675 bytes per
surfel instead of 1784): the features are stored once, exactly as ``SurfelMap`` holds them, as
float16 unit vectors ``features_unit16`` (N, D) plus the float32 norm of the raw feature
``features_norm`` (N,), and ``sh_rest`` is stored as float16; every other field as in version 1.
The features round-trip bit-for-bit; the only loss is ``sh_rest`` (<= 2^-11 relative).
``save_map(..., compact=False)`` writes version 1 (the float32 ``features_unit`` and float16
``features_raw`` computed from the map's float16 features; reading it back gives the same unit
features and a norm within 1e-3 relative). Both versions are read.

Nothing is ever pickled, and ``torch.load`` is never used. Loading parses and checks the
header itself before it hands the bytes to safetensors. Any problem raises ``MapFileError``,
whose message names the file and the fault.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from fhgs_ros.core.camera import Camera, CameraError
from fhgs_ros.core.fileio import atomic_write_bytes, to_jsonable
from fhgs_ros.core.geometry import quat_wxyz_to_matrix
from fhgs_ros.core.mapfile_schema import (HEADER_SCHEMA, MAX_MAP_BYTES, META_SCHEMA, bounded_json,
                                          read_regular_file, validate)
from fhgs_ros.core.ply import write_ply
from fhgs_ros.core.surfels import SH_COEFFS, TRAINABLE, SurfelMap

FORMAT_NAME = "fhgs_map"
FORMAT_VERSION = 1

# name -> (dtype, shape template); "N" = number of surfels, "D" = feature width.
MAP_FIELDS: dict[str, tuple[torch.dtype, tuple]] = {
    "means": (torch.float32, ("N", 3)),
    "quats": (torch.float32, ("N", 4)),
    "log_scales": (torch.float32, ("N", 2)),
    "opacity_logit": (torch.float32, ("N", 1)),
    "sh_dc": (torch.float32, ("N", 1, 3)),
    "sh_rest": (torch.float32, ("N", SH_COEFFS - 1, 3)),
    "features_raw": (torch.float16, ("N", "D")),
    "features_unit": (torch.float32, ("N", "D")),
    "uid": (torch.int64, ("N",)),
    "parent_uid": (torch.int64, ("N",)),
}
# Version 2 (compact) fields that differ from version 1: features once (fp16 unit + fp32 norm), sh_rest fp16.
COMPACT_VERSION = 2
COMPACT_FIELDS: dict[str, tuple[torch.dtype, tuple]] = {
    **{k: v for k, v in MAP_FIELDS.items() if k not in ("features_raw", "features_unit", "sh_rest")},
    "sh_rest": (torch.float16, ("N", SH_COEFFS - 1, 3)),
    "features_unit16": (torch.float16, ("N", "D")),
    "features_norm": (torch.float32, ("N",)),
}
RESERVED_META = ("format", "version", "feature_dim", "sh_degree", "next_uid", "num_surfels", "surfel_meta",
                 "extra_tensors", "crc32")
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors limit
_ST_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
              "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


class MapFileError(ValueError):
    """An unreadable, corrupt, foreign or incompatible map file; the message names the file."""


# ---------------------------------------------------------------------------------------- save
def tensor_checksums(tensors: dict[str, torch.Tensor]) -> dict[str, int]:
    """CRC-32 of each tensor's raw bytes (as stored by safetensors: contiguous, little-endian)."""
    out = {}
    for name, t in tensors.items():
        b = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy() if t.numel() else b""
        out[name] = zlib.crc32(b)  # numpy arrays expose their buffer: no copy
    return out


def compact_tensors(surfels: SurfelMap) -> dict[str, torch.Tensor]:
    """The version-2 (compact) tensors of a map: see the module docstring."""
    out: dict[str, torch.Tensor] = {}
    for name in COMPACT_FIELDS:
        t = getattr(surfels, name).detach()
        out[name] = t.to("cpu", COMPACT_FIELDS[name][0]).contiguous().clone()
    return out


def build_map_payload(surfels: SurfelMap, meta: dict | None = None,
                      extra_tensors: dict[str, torch.Tensor] | None = None, compact: bool = True
                      ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, safetensors metadata) that ``save_map`` writes. Exposed for tests and tools.

    meta: JSON-serializable dict (Camera objects, numpy / torch values are converted). Useful
    keys: ``feature_extractor`` (str id), ``keyframes`` (list of Camera or Camera dicts).
    The reserved keys listed in RESERVED_META are overwritten with values taken from ``surfels``.
    Raises ValueError / TypeError (before anything is written) on unserializable meta, bad
    extra tensors or a map with NaNs.
    """
    meta = dict(meta or {})
    extra_tensors = dict(extra_tensors or {})
    tensors: dict[str, torch.Tensor] = {}
    for name, value in ({} if compact else {k: getattr(surfels, k) for k in MAP_FIELDS}).items():
        want = MAP_FIELDS[name][0]
        t = value.detach().to("cpu")
        if t.dtype != want:
            t = t.to(want)
        tensors[name] = t.contiguous().clone()  # own, unshared storage (safetensors refuses shared)
    if compact:
        tensors = compact_tensors(surfels)
    fields = COMPACT_FIELDS if compact else MAP_FIELDS
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"save_map: refusing to save a map whose '{name}' holds NaN/Inf")
    d = surfels.feature_dim
    for name, value in extra_tensors.items():
        if name in MAP_FIELDS or name in fields:
            raise ValueError(f"save_map: extra tensor name '{name}' collides with a map field")
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(np.asarray(value))
        tensors[name] = value.detach().to("cpu").contiguous().clone()
    _check_pca(tensors, d, lambda msg: ValueError(f"save_map: {msg}"))

    if "keyframes" in meta:
        meta["keyframes"] = [k.to_dict() if isinstance(k, Camera) else k for k in meta["keyframes"]]
    version = COMPACT_VERSION if compact else FORMAT_VERSION
    meta.update(format=FORMAT_NAME, version=version, feature_dim=d, sh_degree=int(surfels.sh_degree),
                next_uid=int(surfels.next_uid), num_surfels=len(surfels), surfel_meta=surfels.meta or {},
                extra_tensors=sorted(extra_tensors), crc32=tensor_checksums(tensors))
    meta.setdefault("feature_extractor", "")
    try:
        doc = json.dumps(to_jsonable(meta), allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"save_map: metadata is not JSON-serializable ({exc})") from exc
    header = {"format": FORMAT_NAME, "version": str(version), "fhgs_meta": doc,
              "fhgs_meta_crc32": str(zlib.crc32(doc.encode("utf-8")))}  # the metadata is checked like the tensors
    return tensors, header


def save_map(path: str | os.PathLike, surfels: SurfelMap, meta: dict | None = None,
             extra_tensors: dict[str, torch.Tensor] | None = None, compact: bool = True) -> None:
    """Save ``surfels`` (+ ``meta`` and ``extra_tensors``) to one safetensors file, atomically.

    compact: write the version-2 layout (default; ``sh_rest`` in float16, see the module docstring);
    False writes the version-1 layout that older fhgs_ros releases read.

    The file is written to a temporary name in the same directory, fsynced, renamed over
    ``path`` and the directory fsynced: an interrupted save leaves the previous file intact.
    """
    from safetensors.torch import save as st_save

    tensors, header = build_map_payload(surfels, meta, extra_tensors, compact)
    data = st_save(tensors, metadata=header)
    atomic_write_bytes(path, data)


# ---------------------------------------------------------------------------------------- load
def _check_pca(tensors: dict[str, torch.Tensor], d: int, err) -> None:
    if "pca_mean" in tensors and tuple(tensors["pca_mean"].shape) != (d,):
        raise err(f"'pca_mean' has shape {tuple(tensors['pca_mean'].shape)}, expected ({d},)")
    if "pca_basis" in tensors and tuple(tensors["pca_basis"].shape) != (d, 3):
        raise err(f"'pca_basis' has shape {tuple(tensors['pca_basis'].shape)}, expected ({d}, 3)")
    for name in ("pca_mean", "pca_basis"):
        t = tensors.get(name)
        if t is not None and (not t.is_floating_point() or not torch.isfinite(t).all()):
            raise err(f"'{name}' must be a finite floating-point tensor")


def _tname(name: str) -> str:
    """A tensor name for a message: only plain identifiers of up to 64 characters are quoted."""
    return name if re.fullmatch(r"[A-Za-z0-9_.]{1,64}", name) else "<unnamed>"


def _read_header(path: Path, data: bytes) -> dict:
    """Parse and check the safetensors header against the file size (truncation, overlaps)."""
    def fail(msg: str) -> MapFileError:
        return MapFileError(f"map file '{path}': {msg}")

    if len(data) < 8:
        raise fail(f"not a safetensors file (only {len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n < 2 or n > _MAX_HEADER:
        raise fail("not a safetensors file (implausible header length field)")
    if 8 + n > len(data):
        raise fail(f"truncated: header needs {n} bytes but the file has {len(data) - 8} after the length field")
    header = bounded_json(data[8:8 + n], "not a safetensors file or corrupt header: the header", fail,
                          max_bytes=_MAX_HEADER)
    if not isinstance(header, dict):
        raise fail("corrupt safetensors header (not a JSON object)")
    validate(header, HEADER_SCHEMA, "corrupt safetensors header: entry", fail)
    body = len(data) - 8 - n
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise fail("corrupt safetensors header ('__metadata__' must map strings to strings)")
            continue
        try:
            dtype, shape, (a, b) = info["dtype"], info["shape"], info["data_offsets"]
            numel = math.prod(int(s) for s in shape)
            if dtype not in _ST_DTYPES or any(int(s) < 0 for s in shape) or not 0 <= int(a) <= int(b):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise fail(f"corrupt safetensors header (bad entry for tensor '{_tname(name)}')") from None
        if b - a != numel * _ST_DTYPES[dtype]:
            raise fail(f"corrupt: tensor '{_tname(name)}' spans {b - a} bytes but its shape {shape} needs "
                       f"{numel * _ST_DTYPES[dtype]}")
        if b > body:
            raise fail(f"truncated: tensor '{_tname(name)}' ends at byte {b} of the data section, which has only {body} "
                       f"bytes")
        spans.append((a, b))
    spans.sort()
    end = 0
    for a, b in spans:
        if a != end:
            raise fail("corrupt safetensors header (tensor data overlaps or has gaps)")
        end = b
    if end != body:
        raise fail(f"corrupt: {body - end} unexpected trailing bytes after the tensor data")
    return header


def load_map(path: str | os.PathLike, device: str | torch.device = "cpu", max_bytes: int = MAX_MAP_BYTES
             ) -> tuple[SurfelMap, dict, dict[str, torch.Tensor]]:
    """Load a map written by ``save_map``: (SurfelMap, meta, extra_tensors).

    ``meta`` is the saved JSON document. Its ``keyframes`` entry comes back as ``Camera``
    objects, and ``format``, ``version``, ``feature_dim``, ``feature_extractor``, ``sh_degree``,
    ``next_uid`` and ``num_surfels`` are always present. Raises MapFileError for a missing,
    unreadable, truncated, corrupt or foreign file, for a newer format version, for
    inconsistent shapes or dtypes, and for NaN/Inf values. The file is untrusted: only a regular
    file of at most ``max_bytes`` is read (without blocking), header and metadata are validated
    against schemas with bounded size and depth (fhgs_ros.core.mapfile_schema), and no message
    quotes the file's content.
    """
    from safetensors.torch import load as st_load

    path = Path(path)

    def fail(msg: str) -> MapFileError:
        return MapFileError(f"map file '{path}': {msg}")

    data = read_regular_file(path, max_bytes, fail)

    header = _read_header(path, data)
    md = header.get("__metadata__") or {}
    fmt = md.get("format")
    if fmt is None:
        raise fail(f"not an fhgs map: a safetensors file without a 'format' entry (expected '{FORMAT_NAME}')")
    if fmt != FORMAT_NAME:
        raise fail(f"not an fhgs map: its format is '{_tname(str(fmt))}', expected '{FORMAT_NAME}'")
    try:
        version = int(str(md.get("version", ""))[:12])
    except ValueError:
        raise fail("invalid format version (not an integer)") from None
    if version > COMPACT_VERSION:
        raise fail(f"written by a newer fhgs_ros (format version {version}); this reader supports versions up to "
                   f"{COMPACT_VERSION}. Upgrade fhgs_ros to load it")
    if version < 1:
        raise fail(f"invalid format version {version}")
    meta_crc = md.get("fhgs_meta_crc32")
    if meta_crc is not None and meta_crc != str(zlib.crc32(md.get("fhgs_meta", "").encode("utf-8", "replace"))):
        raise fail("corrupt: the metadata fails its CRC-32 check (file damaged)")
    meta = bounded_json(md.get("fhgs_meta", ""), "corrupt metadata: 'fhgs_meta'", fail)
    if not isinstance(meta, dict):
        raise fail("corrupt metadata ('fhgs_meta' is not a JSON object)")
    validate(meta, META_SCHEMA, "invalid metadata: 'fhgs_meta'", fail)

    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise fail(f"corrupt safetensors data ({type(exc).__name__})") from None

    # ---- fields, dtypes, shapes
    fields = COMPACT_FIELDS if version == COMPACT_VERSION else MAP_FIELDS
    missing = [k for k in fields if k not in tensors]
    if missing:
        raise fail(f"missing tensor field(s): {', '.join(missing)}")
    n = int(tensors["means"].shape[0]) if tensors["means"].dim() > 0 else -1
    try:
        d = int(meta["feature_dim"])
        sh_degree = int(meta["sh_degree"])
        next_uid = int(meta["next_uid"])
    except (KeyError, TypeError, ValueError) as exc:
        raise fail(f"metadata lacks a valid {exc} entry") from None
    dims = {"N": n, "D": d}
    for name, (dtype, shape) in fields.items():
        t = tensors[name]
        want = tuple(dims[s] if isinstance(s, str) else s for s in shape)
        if t.dtype != dtype:
            raise fail(f"tensor '{name}' has dtype {t.dtype}, expected {dtype}")
        if tuple(t.shape) != want:
            raise fail(f"inconsistent shapes: tensor '{name}' has shape {tuple(t.shape)}, expected {want} "
                       f"(N={n} surfels from 'means', D={d} from the metadata)")
    if "num_surfels" in meta and int(meta["num_surfels"]) != n:
        raise fail(f"inconsistent: metadata says {meta['num_surfels']} surfels but the tensors hold {n}")
    crc = meta.get("crc32")
    if crc is not None:
        if not isinstance(crc, dict) or set(crc) != set(tensors):
            raise fail("corrupt metadata (the 'crc32' table does not list exactly the stored tensors)")
        actual = tensor_checksums(tensors)
        bad = [k for k in sorted(tensors) if int(crc[k]) != actual[k]]
        if bad:
            raise fail(f"corrupt: the data of tensor(s) {', '.join(bad)} fails its CRC-32 check (file damaged)")
    for name, t in tensors.items():
        if t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise fail(f"tensor '{name}' contains {bad} NaN/Inf value(s)")
    if not 0 <= sh_degree <= 3:
        raise fail(f"sh_degree {sh_degree} is outside 0..3")
    uid = tensors["uid"]
    if n and int(torch.unique(uid).numel()) != n:
        raise fail("surfel uids are not unique")
    if n and next_uid <= int(uid.max()):
        raise fail(f"next_uid {next_uid} is not above the largest uid {int(uid.max())}")
    extra = {k: v for k, v in tensors.items() if k not in fields}
    _check_pca(extra, d, fail)

    keyframes = []
    for i, kf in enumerate(meta.get("keyframes") or []):
        try:
            keyframes.append(Camera.from_dict(kf))
        except (CameraError, KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise fail(f"keyframe {i} has an invalid camera ({type(exc).__name__})") from None
    meta["keyframes"] = keyframes
    meta["format"], meta["version"] = fmt, version
    meta.setdefault("feature_extractor", "")

    if version == COMPACT_VERSION:
        tensors["sh_rest"] = tensors["sh_rest"].float()
    else:  # version 1: the features in the in-memory layout (float16 unit vector + float32 norm)
        tensors["features_unit16"] = tensors["features_unit"].half()
        tensors["features_norm"] = tensors["features_raw"].float().norm(dim=-1)
    dev = torch.device(device)
    p = lambda t: torch.nn.Parameter(t.to(dev).contiguous())  # noqa: E731
    surfels = SurfelMap(*(p(tensors[k]) for k in TRAINABLE),
                        features_unit16=tensors["features_unit16"].to(dev).contiguous(),
                        features_norm=tensors["features_norm"].to(dev).contiguous(),
                        uid=tensors["uid"].to(dev).contiguous(), parent_uid=tensors["parent_uid"].to(dev).contiguous(),
                        next_uid=next_uid, sh_degree=sh_degree,
                        meta=dict(meta.get("surfel_meta") or {}))
    extra = {k: v.to(dev) for k, v in extra.items()}
    return surfels, meta, extra


# ---------------------------------------------------------------------------------------- PLY
def export_ply(path: str | os.PathLike, surfels: SurfelMap, include_features: bool = True) -> None:
    """3DGS/2DGS-style binary PLY of the surfels, written atomically.

    Per vertex (all float32): x y z; nx ny nz (the surfel normal t_w, world frame; 3DGS writes
    zeros there); f_dc_0..2; f_rest_0..44 (channel-major as in 3DGS: the 15 coefficients of R,
    then G, then B); opacity (logit); scale_0, scale_1 (log scales); rot_0..3 (raw quaternion
    w, x, y, z); and, with ``include_features``, feat_0..feat_{D-1} (raw frozen features).
    """
    n = len(surfels)
    with torch.no_grad():
        cols = [("x", surfels.means[:, 0]), ("y", surfels.means[:, 1]), ("z", surfels.means[:, 2])]
        normals = quat_wxyz_to_matrix(surfels.quats)[:, :, 2] if n else surfels.means.new_zeros(0, 3)
        cols += [(f"n{a}", normals[:, i]) for i, a in enumerate("xyz")]
        dc = surfels.sh_dc.reshape(n, 3)
        cols += [(f"f_dc_{i}", dc[:, i]) for i in range(3)]
        rest = surfels.sh_rest.transpose(1, 2).reshape(n, -1)
        cols += [(f"f_rest_{i}", rest[:, i]) for i in range(rest.shape[1])]
        cols += [("opacity", surfels.opacity_logit[:, 0])]
        cols += [(f"scale_{i}", surfels.log_scales[:, i]) for i in range(2)]
        cols += [(f"rot_{i}", surfels.quats[:, i]) for i in range(4)]
        if include_features:
            cols += [(f"feat_{i}", surfels.features_raw[:, i]) for i in range(surfels.feature_dim)]
        vertex = {name: v.detach().float().cpu().numpy() for name, v in cols}
    write_ply(path, {"vertex": vertex}, comments=["fhgs_ros surfel map (2DGS layout + frozen features)"])


def file_size_mb(path: str | os.PathLike) -> float:
    """Size of a file in MB (10^6 bytes), for the storage column of benchmark tables."""
    return os.path.getsize(path) / 1e6


__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "COMPACT_VERSION", "MAP_FIELDS", "COMPACT_FIELDS", "compact_tensors", "MapFileError", "build_map_payload", "tensor_checksums",
           "save_map",
           "load_map", "export_ply", "file_size_mb"]
