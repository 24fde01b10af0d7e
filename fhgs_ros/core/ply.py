"""The package's one PLY codec (numpy only; no trimesh / plyfile dependency).

Meshes (``core.mesh``), map export (``core.storage.export_ply``) and the dataset point clouds and
ground-truth meshes (``datasets``) are thin adapters on :func:`write_ply` / :func:`read_ply`.

Writes ``binary_little_endian`` (default) or ``ascii`` PLY; reads both plus
``binary_big_endian``. Elements are given as ``{name: {property: array}}`` in order; a property
whose array is 2-D (N, k) with an integer dtype and whose name is ``vertex_indices`` or
``vertex_index`` is written as a list property (``uchar`` count). Everything else is a scalar
property whose PLY type follows the numpy dtype.

Reading returns the same structure: ``{element: {property: ndarray}}``. A list property whose
rows all have the same length comes back as an (N, k) array, otherwise as an object array of
1-D arrays.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

_PLY_TO_NP = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_NP_TO_PLY = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort", "i4": "int", "u4": "uint",
              "f4": "float", "f8": "double"}
_LIST_NAMES = ("vertex_indices", "vertex_index")


class PlyError(ValueError):
    """Malformed or unsupported PLY file; the message names the file and what is wrong."""


def _np_kind(a: np.ndarray) -> str:
    dt = a.dtype
    if dt == np.bool_:
        return "u1"
    if dt.kind == "i" and dt.itemsize == 8:
        return "i4"
    if dt.kind == "u" and dt.itemsize == 8:
        return "u4"
    key = f"{dt.kind}{dt.itemsize}"
    if key not in _NP_TO_PLY:
        raise PlyError(f"unsupported dtype {dt} for a PLY property")
    return key


def encode_ply(elements: dict[str, dict[str, np.ndarray]], binary: bool = True,
               comments: list[str] | None = None) -> bytes:
    """PLY file contents for ``elements`` (see module docstring)."""
    header = ["ply", "format binary_little_endian 1.0" if binary else "format ascii 1.0"]
    for c in comments or []:
        header.append("comment " + str(c).replace("\n", " "))
    prepared = []
    for ename, props in elements.items():
        n = None
        cols = []
        for pname, arr in props.items():
            a = np.asarray(arr)
            is_list = pname in _LIST_NAMES and a.ndim == 2
            if not is_list and a.ndim != 1:
                raise PlyError(f"PLY element '{ename}' property '{pname}': expected a 1-D array, got {a.shape}")
            if n is None:
                n = a.shape[0]
            elif a.shape[0] != n:
                raise PlyError(f"PLY element '{ename}': property '{pname}' has {a.shape[0]} rows, expected {n}")
            cols.append((pname, a, is_list, _np_kind(a)))
        n = 0 if n is None else int(n)
        header.append(f"element {ename} {n}")
        for pname, a, is_list, kind in cols:
            if is_list:
                header.append(f"property list uchar {_NP_TO_PLY[kind]} {pname}")
            else:
                header.append(f"property {_NP_TO_PLY[kind]} {pname}")
        prepared.append((n, cols))
    header.append("end_header")
    out = io.BytesIO()
    out.write(("\n".join(header) + "\n").encode("ascii"))
    for n, cols in prepared:
        if n == 0:
            continue
        if binary:
            fields = []
            for pname, a, is_list, kind in cols:
                if is_list:
                    fields.append((pname + "__n", "u1"))
                    fields.append((pname, "<" + kind, (a.shape[1],)))
                else:
                    fields.append((pname, "<" + kind))
            rec = np.empty(n, dtype=np.dtype(fields))
            for pname, a, is_list, kind in cols:
                if is_list:
                    rec[pname + "__n"] = a.shape[1]
                rec[pname] = a.astype(np.dtype(kind), copy=False)
            out.write(rec.tobytes())
        else:
            parts = []
            for pname, a, is_list, kind in cols:
                a = a.astype(np.dtype(kind), copy=False)
                fmt = "%.9g" if kind[0] == "f" else "%d"
                if is_list:
                    parts.append(np.full((n, 1), a.shape[1], dtype=np.int64).astype(str))
                    parts.append(np.char.mod(fmt, a))
                else:
                    parts.append(np.char.mod(fmt, a)[:, None])
            table = np.concatenate(parts, axis=1)
            out.write(("\n".join(" ".join(r) for r in table) + "\n").encode("ascii"))
    return out.getvalue()


def write_ply(path: str | os.PathLike, elements: dict[str, dict[str, np.ndarray]], binary: bool = True,
              comments: list[str] | None = None) -> None:
    """Write a PLY file atomically."""
    from fhgs_ros.core.fileio import atomic_write_bytes

    atomic_write_bytes(path, encode_ply(elements, binary=binary, comments=comments))


def write_point_ply(path: str | os.PathLike, xyz, rgb=None, extra: dict[str, np.ndarray] | None = None,
                    binary: bool = True, comments: list[str] | None = None) -> None:
    """Points as PLY: float x, y, z; uchar red, green, blue (``rgb`` in [0, 1]); extra scalar properties."""
    xyz = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
    props = {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]}
    if rgb is not None:
        c = np.round(np.clip(np.asarray(rgb, dtype=np.float64).reshape(-1, 3), 0, 1) * 255).astype(np.uint8)
        props.update(red=c[:, 0], green=c[:, 1], blue=c[:, 2])
    for k, v in (extra or {}).items():
        props[k] = np.asarray(v)
    write_ply(path, {"vertex": props}, binary=binary, comments=comments)


def write_mesh_ply(path: str | os.PathLike, vertices, faces, face_labels=None, vertex_rgb=None,
                   binary: bool = True, comments: list[str] | None = None) -> None:
    """Triangle mesh as PLY: float x, y, z (+ uchar rgb); faces as ``vertex_indices`` (+ ``label``)."""
    v = np.asarray(vertices, dtype=np.float32).reshape(-1, 3)
    f = np.asarray(faces, dtype=np.int32).reshape(-1, 3)
    vp = {"x": v[:, 0], "y": v[:, 1], "z": v[:, 2]}
    if vertex_rgb is not None:
        c = np.round(np.clip(np.asarray(vertex_rgb, dtype=np.float64).reshape(-1, 3), 0, 1) * 255).astype(np.uint8)
        vp.update(red=c[:, 0], green=c[:, 1], blue=c[:, 2])
    fp = {"vertex_indices": f}
    if face_labels is not None:
        fp["label"] = np.asarray(face_labels).astype(np.int32)
    write_ply(path, {"vertex": vp, "face": fp}, binary=binary, comments=comments)


def _parse_header(data: bytes, name: str):
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise PlyError(f"{name}: not a PLY file (missing 'ply' magic or 'end_header')")
    nl = data.find(b"\n", end)
    body_start = len(data) if nl < 0 else nl + 1
    lines = data[:end].decode("ascii", errors="replace").splitlines()
    fmt = None
    elements = []  # (name, count, [(prop, type) or (prop, ('list', count_type, item_type))])
    for ln in lines[1:]:
        t = ln.split()
        if not t or t[0] in ("comment", "obj_info"):
            continue
        if t[0] == "format":
            if len(t) < 2 or t[1] not in ("ascii", "binary_little_endian", "binary_big_endian"):
                raise PlyError(f"{name}: unsupported PLY format line '{ln.strip()}'")
            fmt = t[1]
        elif t[0] == "element":
            if len(t) != 3 or not t[2].isdigit():
                raise PlyError(f"{name}: malformed header line '{ln.strip()}'")
            elements.append((t[1], int(t[2]), []))
        elif t[0] == "property":
            if not elements:
                raise PlyError(f"{name}: property before any element in the header")
            if len(t) == 5 and t[1] == "list":
                if t[2] not in _PLY_TO_NP or t[3] not in _PLY_TO_NP:
                    raise PlyError(f"{name}: unknown PLY type in '{ln.strip()}'")
                elements[-1][2].append((t[4], ("list", _PLY_TO_NP[t[2]], _PLY_TO_NP[t[3]])))
            elif len(t) == 3 and t[1] in _PLY_TO_NP:
                elements[-1][2].append((t[2], _PLY_TO_NP[t[1]]))
            else:
                raise PlyError(f"{name}: malformed or unknown property line '{ln.strip()}'")
    if fmt is None:
        raise PlyError(f"{name}: PLY header has no 'format' line")
    return fmt, elements, body_start


def _read_binary_element(buf: memoryview, pos: int, count: int, props, endian: str, name: str, ename: str):
    has_list = any(isinstance(t, tuple) for _, t in props)
    if not has_list:
        dt = np.dtype([(p, endian + t) for p, t in props])
        need = dt.itemsize * count
        if pos + need > len(buf):
            raise PlyError(f"{name}: file is truncated in element '{ename}'")
        rec = np.frombuffer(buf, dtype=dt, count=count, offset=pos)
        return {p: rec[p].copy() for p, _ in props}, pos + need
    # Fast path: every list has the same length as the first row's.
    if count > 0:
        fields, off, ok = [], pos, True
        for p, t in props:
            if isinstance(t, tuple):
                _, ct, it = t
                if off + np.dtype(ct).itemsize > len(buf):
                    ok = False
                    break
                k = int(np.frombuffer(buf, dtype=endian + ct, count=1, offset=off)[0])
                fields.append((p + "__n", endian + ct))
                fields.append((p, endian + it, (k,)))
                off += np.dtype(ct).itemsize + k * np.dtype(it).itemsize
            else:
                fields.append((p, endian + t))
                off += np.dtype(t).itemsize
        if ok:
            dt = np.dtype(fields)
            if pos + dt.itemsize * count <= len(buf):
                rec = np.frombuffer(buf, dtype=dt, count=count, offset=pos)
                uniform = all(np.all(rec[p + "__n"] == rec.dtype[p].shape[0]) for p, t in props if isinstance(t, tuple))
                if uniform:
                    return {p: rec[p].copy() for p, _ in props}, pos + dt.itemsize * count
    # Slow path: variable-length lists.
    out = {p: [] for p, _ in props}
    for _ in range(count):
        for p, t in props:
            if isinstance(t, tuple):
                _, ct, it = t
                k = int(np.frombuffer(buf, dtype=endian + ct, count=1, offset=pos)[0])
                pos += np.dtype(ct).itemsize
                out[p].append(np.frombuffer(buf, dtype=endian + it, count=k, offset=pos).copy())
                pos += k * np.dtype(it).itemsize
            else:
                out[p].append(np.frombuffer(buf, dtype=endian + t, count=1, offset=pos)[0])
                pos += np.dtype(t).itemsize
    return {p: _finish(out[p], t) for p, t in props}, pos


def _finish(values: list, t):
    if not isinstance(t, tuple):
        return np.asarray(values, dtype=np.dtype(t))
    lens = {len(v) for v in values}
    if len(lens) <= 1:
        k = lens.pop() if lens else 0
        return np.asarray(values, dtype=np.dtype(t[2])).reshape(len(values), k)
    arr = np.empty(len(values), dtype=object)
    arr[:] = [np.asarray(v, dtype=np.dtype(t[2])) for v in values]
    return arr


def read_ply(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """Read a PLY file into ``{element: {property: array}}``. Raises PlyError / OSError."""
    name = str(path)
    data = Path(path).read_bytes()
    fmt, elements, pos = _parse_header(data, name)
    result: dict[str, dict[str, np.ndarray]] = {}
    if fmt == "ascii":
        tokens = data[pos:].split()
        ti = 0
        for ename, count, props in elements:
            cols = {p: [] for p, _ in props}
            try:
                for _ in range(count):
                    for p, t in props:
                        if isinstance(t, tuple):
                            k = int(tokens[ti])
                            cols[p].append([float(x) for x in tokens[ti + 1: ti + 1 + k]])
                            if len(cols[p][-1]) != k:
                                raise IndexError
                            ti += 1 + k
                        else:
                            cols[p].append(float(tokens[ti]))
                            ti += 1
            except (IndexError, ValueError):
                raise PlyError(f"{name}: ascii PLY body is truncated or malformed in element '{ename}'") from None
            result[ename] = {p: _finish(cols[p], t) for p, t in props}
        return result
    endian = "<" if fmt == "binary_little_endian" else ">"
    buf = memoryview(data)
    for ename, count, props in elements:
        try:
            result[ename], pos = _read_binary_element(buf, pos, count, props, endian, name, ename)
        except (ValueError, IndexError) as exc:
            if isinstance(exc, PlyError):
                raise
            raise PlyError(f"{name}: file is truncated or malformed in element '{ename}'") from None
    return result
