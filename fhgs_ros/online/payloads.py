"""Checks of untrusted message payloads before they are decoded (ROS-free).

- :func:`probe_image_size`: width and height declared by a PNG (IHDR) or JPEG (SOFn) header,
  read from the bytes without decoding, so a decompression bomb (a 600-byte JPEG declaring
  65000 x 65000) is refused by the pixel cap before PIL allocates anything;
- :func:`pointcloud_layout`: the fields of a PointCloud2 checked against ``point_step``,
  ``row_step`` and the data size (unique names, known types, each field inside the point,
  bounded point count) -> a numpy structured dtype that cannot read out of bounds.
"""

from __future__ import annotations

import struct
from typing import Any, Sequence

import numpy as np

from fhgs_ros.online.guard import Rejected

# sensor_msgs/PointField datatypes -> numpy little-endian types
POINTFIELD_TYPES = {1: "i1", 2: "u1", 3: "<i2", 4: "<u2", 5: "<i4", 6: "<u4", 7: "<f4", 8: "<f8"}
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def probe_image_size(data: bytes | bytearray | memoryview) -> tuple[str, int, int] | None:
    """("png" | "jpeg", width, height) from the header, or None when it is neither / unreadable."""
    b = bytes(data[:65536]) if not isinstance(data, bytes) else data
    if b[:8] == _PNG_SIG:
        if len(b) < 24 or b[12:16] != b"IHDR":
            return None
        w, h = struct.unpack(">II", b[16:24])
        return "png", int(w), int(h)
    if b[:2] != b"\xff\xd8":
        return None
    i = 2
    n = min(len(b), 1 << 20)  # the frame header of a real JPEG comes early
    while i + 4 <= n:
        if b[i] != 0xFF:
            return None
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        (seg,) = struct.unpack(">H", b[i + 2:i + 4])
        if seg < 2:
            return None
        if marker in _SOF:
            if i + 9 > len(b):
                return None
            h, w = struct.unpack(">HH", b[i + 5:i + 9])
            return "jpeg", int(w), int(h)
        i += 2 + seg
    return None


def check_compressed(data: Any, max_pixels: int, what: str = "compressed image") -> tuple[str, int, int]:
    """Refuse a CompressedImage payload whose declared size is unknown, empty or above ``max_pixels``."""
    raw = bytes(data) if not isinstance(data, (bytes, bytearray)) else data
    if len(raw) > 4 * max_pixels + 65536:
        raise Rejected("image_too_large", f"{what}: payload of {len(raw)} bytes exceeds 4 bytes x "
                                          f"node.max_input_pixels")
    p = probe_image_size(raw)
    if p is None:
        raise Rejected("decode_error", f"{what}: not a png or jpeg stream (no readable size in its header)")
    fmt, w, h = p
    if w <= 0 or h <= 0:
        raise Rejected("bad_image", f"{what}: header declares an empty {w}x{h} image")
    if w * h > max_pixels:
        raise Rejected("image_too_large", f"compressed image {w}x{h} ({w * h / 1e6:.1f} MP) exceeds "
                                          f"node.max_input_pixels={max_pixels}; dropped")
    return fmt, w, h


def pointcloud_layout(fields: Sequence[Any], point_step: int, row_step: int, width: int, height: int,
                      data_len: int, is_bigendian: bool, max_points: int) -> np.dtype:
    """Structured dtype of a PointCloud2's count-1 fields, after checking the layout (module docstring).

    fields: objects with ``name``, ``offset``, ``datatype``, ``count``.
    """
    bad = "bad_pointcloud"
    if is_bigendian:
        raise Rejected(bad, "big-endian point clouds are not supported")
    ps, w, h = int(point_step), int(width), int(height)
    n = w * h
    if ps <= 0 or ps > 65536:
        raise Rejected(bad, f"point_step {ps} must be in 1..65536")
    if w < 0 or h < 0 or n > max_points:
        raise Rejected(bad, f"{w}x{h} points exceed the limit of {max_points}")
    if h > 1 and int(row_step) < w * ps:
        raise Rejected(bad, f"row_step {row_step} is smaller than width x point_step = {w * ps}")
    rs = int(row_step) if h > 1 else w * ps
    need = rs * (h - 1) + w * ps if n else 0
    if int(data_len) < need:
        raise Rejected(bad, f"point cloud data has {data_len} bytes, {w}x{h} points of {ps} bytes need {need}")
    names, formats, offsets, seen = [], [], [], set()
    for f in fields:
        name = str(f.name)
        if name in seen:
            raise Rejected(bad, f"duplicate field name '{name[:32]}'")
        seen.add(name)
        if f.datatype not in POINTFIELD_TYPES:
            raise Rejected(bad, f"field '{name[:32]}' has unknown datatype {f.datatype}")
        size = np.dtype(POINTFIELD_TYPES[f.datatype]).itemsize * max(1, int(f.count))
        if int(f.offset) < 0 or int(f.offset) + size > ps:
            raise Rejected(bad, f"field '{name[:32]}' (offset {f.offset}, {size} bytes) does not fit in point_step "
                                f"{ps}")
        if int(f.count) != 1:
            continue
        names.append(name)
        formats.append(POINTFIELD_TYPES[f.datatype])
        offsets.append(int(f.offset))
    try:
        return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": ps})
    except (ValueError, TypeError) as exc:
        raise Rejected(bad, f"unusable field layout ({exc})") from None


__all__ = ["probe_image_size", "check_compressed", "pointcloud_layout", "POINTFIELD_TYPES"]
