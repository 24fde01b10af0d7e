"""ROS-free input processing of the online pipeline: image decoding, resizing, validated poses.

Nothing here imports rclpy or message types, so it runs in tests, notebooks and batch jobs.
``fhgs_ros.ros.conversions`` wraps these functions for ROS messages.

Conventions: images come out as (H, W, 3) uint8 RGB numpy arrays; depth as (H, W) float32
metres with 0 where unknown; poses as (4, 4) float64 homogeneous matrices; quaternions in ROS
order (x, y, z, w). Camera frames are optical frames (x right, y down, z forward: REP 103 and
OpenCV), so a camera pose T_map_cam gives ``world_to_cam = inv(T_map_cam)`` directly.

Every rejection raises :class:`InputError` with a short ``kind`` (a diagnostics counter name)
and a human-readable reason.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from fhgs_ros.core.camera import DISTORTION_MODELS, Intrinsics
from fhgs_ros.core.geometry import pose_from_translation_quat_xyzw

# Encodings accepted for colour images and for depth (sensor_msgs/image_encodings.hpp names).
COLOR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16")
DEPTH_ENCODINGS = ("16UC1", "32FC1", "mono16")
LABEL_ENCODINGS = ("16UC1", "mono16", "8UC1", "mono8")
_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "mono16": 1, "16UC1": 1, "32FC1": 1, "8UC1": 1}
_ITEMSIZE = {"rgb8": 1, "bgr8": 1, "rgba8": 1, "bgra8": 1, "mono8": 1, "mono16": 2, "16UC1": 2, "32FC1": 4, "8UC1": 1}


class InputError(ValueError):
    """A rejected input. ``kind`` names the diagnostics counter, the message gives the reason."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


_PNG_SIG = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- raw images
def _as_array(encoding: str, height: int, width: int, step: int, data, is_bigendian: bool,
              what: str) -> np.ndarray:
    """Checked view of a raw image buffer as (H, W, C) of the encoding's dtype (no copy)."""
    if encoding not in _CHANNELS:
        raise InputError("bad_encoding", f"{what}: unsupported encoding '{encoding}'")
    h, w = int(height), int(width)
    if h <= 0 or w <= 0:
        raise InputError("bad_image", f"{what}: empty image ({w}x{h})")
    c, isz = _CHANNELS[encoding], _ITEMSIZE[encoding]
    row = w * c * isz
    if int(step) < row:
        raise InputError("bad_image", f"{what}: step {step} is smaller than width*channels*bytes = {row}")
    if isinstance(data, np.ndarray):
        buf = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    else:
        buf = np.frombuffer(data, dtype=np.uint8)
    need = int(step) * (h - 1) + row
    if buf.size < need:
        raise InputError("bad_image", f"{what}: data has {buf.size} bytes, {w}x{h} {encoding} with step {step} "
                                      f"needs {need}")
    rows = np.lib.stride_tricks.as_strided(buf, shape=(h, row), strides=(int(step), 1))
    if isz == 1:
        return rows.reshape(h, w, c)
    dt = np.dtype("f4" if encoding == "32FC1" else "u2").newbyteorder(">" if is_bigendian else "<")
    return np.ascontiguousarray(rows).view(dt).reshape(h, w, c)


def decode_color(encoding: str, height: int, width: int, step: int, data, is_bigendian: bool = False,
                 what: str = "image") -> np.ndarray:
    """Raw colour image -> (H, W, 3) uint8 RGB. mono16 is mapped linearly (value >> 8)."""
    if encoding not in COLOR_ENCODINGS:
        raise InputError("bad_encoding", f"{what}: unsupported encoding '{encoding}' for a colour image "
                                         f"(accepted: {', '.join(COLOR_ENCODINGS)})")
    a = _as_array(encoding, height, width, step, data, is_bigendian, what)
    if encoding == "rgb8":
        return np.ascontiguousarray(a, dtype=np.uint8)
    if encoding == "mono16":
        a = (a >> 8).astype(np.uint8)
    code = {"bgr8": cv2.COLOR_BGR2RGB, "rgba8": cv2.COLOR_RGBA2RGB, "bgra8": cv2.COLOR_BGRA2RGB,
            "mono8": cv2.COLOR_GRAY2RGB, "mono16": cv2.COLOR_GRAY2RGB}[encoding]
    a = np.ascontiguousarray(a)
    return np.ascontiguousarray(cv2.cvtColor(a[:, :, 0] if a.shape[2] == 1 else a, code), dtype=np.uint8)


def decode_compressed(fmt: str, data, what: str = "compressed image") -> np.ndarray:
    """CompressedImage payload (jpeg / png; ``fmt`` as image_transport writes it) -> (H, W, 3) uint8 RGB.

    Decoded by OpenCV (``cv2.imdecode``); the format is taken from the payload's signature, not from
    ``fmt``. 16-bit PNGs are mapped linearly (value >> 8), grey and alpha images converted to RGB."""
    f = (fmt or "").lower()
    if "compresseddepth" in f:
        raise InputError("bad_encoding", f"{what}: compressedDepth is not a colour image format ('{fmt}')")
    raw = bytes(data)
    if not raw:
        raise InputError("bad_image", f"{what}: empty payload")
    if not (raw[:8] == _PNG_SIG or raw[:3] == b"\xff\xd8\xff"):
        raise InputError("decode_error", f"{what}: cannot decode ('{fmt}'): not a jpeg or png payload")
    try:
        im = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise InputError("decode_error", f"{what}: cannot decode ('{fmt}'): {str(exc).strip()[:200]}") from None
    if im is None or im.size == 0:
        raise InputError("decode_error", f"{what}: cannot decode ('{fmt}'): corrupt or truncated data")
    if im.dtype == np.uint16:
        im = (im >> 8).astype(np.uint8)
    elif im.dtype != np.uint8:
        raise InputError("bad_encoding", f"{what}: unsupported sample type {im.dtype} ('{fmt}')")
    if im.ndim == 3 and im.shape[2] == 1:
        im = im[:, :, 0]
    code = cv2.COLOR_GRAY2RGB if im.ndim == 2 else {3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}.get(im.shape[2])
    if code is None:
        raise InputError("bad_encoding", f"{what}: {im.shape[2]} channels ('{fmt}')")
    return np.ascontiguousarray(cv2.cvtColor(np.ascontiguousarray(im), code))


def encode_compressed(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> bytes:
    """(H, W, 3) uint8 RGB -> jpeg or png bytes (OpenCV ``imencode``; test publishers, bag writers)."""
    bgr = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2BGR)
    if fmt.lower() in ("jpeg", "jpg"):
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    else:
        ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise ValueError(f"cannot encode a {rgb.shape} image as {fmt}")
    return buf.tobytes()


def decode_depth(encoding: str, height: int, width: int, step: int, data, is_bigendian: bool = False,
                 what: str = "depth") -> np.ndarray:
    """Depth image -> (H, W) float32 metres, 0 where unknown (0 mm, NaN, Inf, negative).

    16UC1 (and mono16) are millimetres (REP 118), 32FC1 metres.
    """
    if encoding not in DEPTH_ENCODINGS:
        raise InputError("bad_encoding", f"{what}: unsupported depth encoding '{encoding}' (accepted: 16UC1 in mm, "
                                         f"32FC1 in m)")
    a = _as_array(encoding, height, width, step, data, is_bigendian, what)[:, :, 0]
    if encoding == "32FC1":
        d = a.astype(np.float32)
    else:
        d = a.astype(np.float32) * 1e-3
    d = np.where(np.isfinite(d) & (d > 0), d, 0.0).astype(np.float32)
    return d


def decode_labels(encoding: str, height: int, width: int, step: int, data, is_bigendian: bool = False,
                  what: str = "labels") -> np.ndarray:
    """Label image (one integer id per pixel, e.g. a semantic segmentation) -> (H, W) int64."""
    if encoding not in LABEL_ENCODINGS:
        raise InputError("bad_encoding", f"{what}: unsupported label encoding '{encoding}' (accepted: "
                                         f"{', '.join(LABEL_ENCODINGS)})")
    return _as_array(encoding, height, width, step, data, is_bigendian, what)[:, :, 0].astype(np.int64)


# ----------------------------------------------------------------------------- intrinsics
def make_intrinsics(width: int, height: int, k, d, model: str, what: str = "camera_info") -> Intrinsics:
    """Validate camera_info fields (k row-major 3x3) -> Intrinsics."""
    w, h = int(width), int(height)
    if w <= 0 or h <= 0:
        raise InputError("bad_camera_info", f"{what}: image size {w}x{h} is not positive")
    k = [float(v) for v in k]
    if len(k) != 9 or not all(math.isfinite(v) for v in k):
        raise InputError("bad_camera_info", f"{what}: K must hold 9 finite numbers")
    fx, fy, cx, cy = k[0], k[4], k[2], k[5]
    if fx <= 0 or fy <= 0:
        raise InputError("bad_camera_info", f"{what}: focal lengths must be positive (fx={fx}, fy={fy})")
    d = tuple(float(v) for v in d)
    if not all(math.isfinite(v) for v in d):
        raise InputError("bad_camera_info", f"{what}: distortion coefficients are not finite")
    model = (model or "").strip()
    if any(abs(v) > 0 for v in d):
        if model not in DISTORTION_MODELS:
            raise InputError("bad_camera_info", f"{what}: unsupported distortion model '{model}' (supported: "
                                                f"{', '.join(DISTORTION_MODELS)})")
        need = 4 if model == "equidistant" else 5
        if len(d) < need:
            raise InputError("bad_camera_info", f"{what}: distortion model '{model}' needs {need} coefficients, "
                                                f"got {len(d)}")
    return Intrinsics(w, h, fx, fy, cx, cy, model or "plumb_bob", d)


# ----------------------------------------------------------------------------- resizing
def fit_size(width: int, height: int, max_long_side: int) -> tuple[int, int]:
    """(w, h) scaled so that the long side is at most ``max_long_side`` (0 = unchanged)."""
    if max_long_side <= 0 or max(width, height) <= max_long_side:
        return width, height
    s = max_long_side / max(width, height)
    return max(1, int(round(width * s))), max(1, int(round(height * s)))


def resize_rgb(rgb: np.ndarray, w: int, h: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w, 3): OpenCV area averaging when shrinking (antialiased), bilinear when growing."""
    if rgb.shape[1] == w and rgb.shape[0] == h:
        return rgb
    shrink = w <= rgb.shape[1] and h <= rgb.shape[0]
    return cv2.resize(np.ascontiguousarray(rgb), (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_depth(depth: np.ndarray, w: int, h: int) -> np.ndarray:
    """Nearest-neighbour resize, pixel centres aligned (``cv2.INTER_NEAREST_EXACT``): no mixing of
    foreground and background depths or of label ids. Any numeric dtype (int64 labels included)."""
    if depth.shape[1] == w and depth.shape[0] == h:
        return depth
    a = np.ascontiguousarray(depth)
    if a.dtype in (np.uint8, np.int8, np.uint16, np.int16, np.int32, np.float32, np.float64):
        return cv2.resize(a, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    # other dtypes (int64, bool, ...): the same nearest-exact indices applied directly
    H, W = a.shape[:2]
    ys = np.minimum(np.floor((np.arange(h) + 0.5) * H / h).astype(np.int64), H - 1)
    xs = np.minimum(np.floor((np.arange(w) + 0.5) * W / w).astype(np.int64), W - 1)
    return np.ascontiguousarray(a[ys][:, xs])


# ----------------------------------------------------------------------------- poses
def check_quat_xyzw(q, tolerance: float = 1e-2, what: str = "quaternion") -> np.ndarray:
    """Validate an untrusted (x, y, z, w) quaternion: rejects NaN/Inf, zero and non-normalized ones.

    A quaternion whose norm differs from 1 by more than ``tolerance`` is rejected (it usually
    means a wrong field order or garbage); smaller deviations are normalized by the conversion.
    """
    q = np.asarray(q, dtype=np.float64).reshape(4)
    if not np.isfinite(q).all():
        raise InputError("pose_nan", f"{what} contains NaN or Inf ({q.tolist()})")
    n = float(np.linalg.norm(q))
    if n < 1e-9:
        raise InputError("quaternion_not_normalized", f"{what} is zero")
    if abs(n - 1.0) > tolerance:
        raise InputError("quaternion_not_normalized", f"{what} is not normalized (norm {n:.4g}, tolerance "
                                                      f"{tolerance})")
    return q


def stamp_to_sec(stamp) -> float:
    """builtin_interfaces/Time (rclpy or rosbags message) -> seconds."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def pose_to_matrix(pose, tolerance: float = 1e-2, what: str = "pose") -> np.ndarray:
    """geometry_msgs/Pose (rclpy or rosbags message) -> 4x4, validated like :func:`pose_matrix`."""
    p, q = pose.position, pose.orientation
    return pose_matrix((p.x, p.y, p.z), (q.x, q.y, q.z, q.w), tolerance, what)


def transform_to_matrix(tr, tolerance: float = 1e-2, what: str = "transform") -> np.ndarray:
    """geometry_msgs/Transform (rclpy or rosbags message) -> 4x4 (T_parent_child), validated."""
    t, q = tr.translation, tr.rotation
    return pose_matrix((t.x, t.y, t.z), (q.x, q.y, q.z, q.w), tolerance, what)


def pose_matrix(t, q, tolerance: float = 1e-2, what: str = "pose") -> np.ndarray:
    """Translation (3,) + quaternion (x, y, z, w) -> 4x4, validated (NaN, norm)."""
    t = np.asarray(t, dtype=np.float64).reshape(3)
    if not np.isfinite(t).all():
        raise InputError("pose_nan", f"{what}: translation contains NaN or Inf ({t.tolist()})")
    return pose_from_translation_quat_xyzw(t, check_quat_xyzw(q, tolerance, f"{what}: quaternion"))
