"""ROS-free input processing for the mapping node: image decoding, depth, undistortion, poses.

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

import io
import math
from dataclasses import dataclass

import numpy as np

# Encodings accepted for colour images and for depth (sensor_msgs/image_encodings.hpp names).
COLOR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16")
DEPTH_ENCODINGS = ("16UC1", "32FC1", "mono16")
LABEL_ENCODINGS = ("16UC1", "mono16", "8UC1", "mono8")
_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "mono16": 1, "16UC1": 1, "32FC1": 1, "8UC1": 1}
_ITEMSIZE = {"rgb8": 1, "bgr8": 1, "rgba8": 1, "bgra8": 1, "mono8": 1, "mono16": 2, "16UC1": 2, "32FC1": 4, "8UC1": 1}
DISTORTION_MODELS = ("plumb_bob", "rational_polynomial", "equidistant")


class InputError(ValueError):
    """A rejected input. ``kind`` names the diagnostics counter, the message gives the reason."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


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
        out = a
    elif encoding == "bgr8":
        out = a[:, :, ::-1]
    elif encoding == "rgba8":
        out = a[:, :, :3]
    elif encoding == "bgra8":
        out = a[:, :, 2::-1]
    elif encoding == "mono8":
        out = np.repeat(a, 3, axis=2)
    else:  # mono16
        out = np.repeat((a >> 8).astype(np.uint8), 3, axis=2)
    return np.ascontiguousarray(out, dtype=np.uint8)


def decode_compressed(fmt: str, data, what: str = "compressed image") -> np.ndarray:
    """CompressedImage payload (jpeg / png; ``fmt`` as image_transport writes it) -> (H, W, 3) uint8 RGB."""
    from PIL import Image, UnidentifiedImageError

    f = (fmt or "").lower()
    if "compresseddepth" in f:
        raise InputError("bad_encoding", f"{what}: compressedDepth is not a colour image format ('{fmt}')")
    raw = bytes(data)
    if not raw:
        raise InputError("bad_image", f"{what}: empty payload")
    try:
        with Image.open(io.BytesIO(raw)) as im:
            if im.format not in ("JPEG", "PNG"):
                raise InputError("bad_encoding", f"{what}: format {im.format} is not jpeg or png ('{fmt}')")
            im.load()
            if im.mode in ("I;16", "I;16B", "I"):
                arr = np.asarray(im).astype(np.uint32)
                arr = (arr >> 8).clip(0, 255).astype(np.uint8)
                return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
            return np.ascontiguousarray(np.asarray(im.convert("RGB")))
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InputError("decode_error", f"{what}: cannot decode ('{fmt}'): {exc}") from None
    except Exception as exc:  # noqa: BLE001 - PIL's DecompressionBombError and anything else a payload triggers
        raise InputError("decode_error", f"{what}: cannot decode ('{fmt}'): {type(exc).__name__}") from None


def encode_compressed(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> bytes:
    """(H, W, 3) uint8 RGB -> jpeg or png bytes (test publishers, bag writers)."""
    from PIL import Image

    b = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(b, format="JPEG" if fmt.lower() in ("jpeg", "jpg") else "PNG",
                                                    **({"quality": quality} if fmt.lower() in ("jpeg", "jpg") else {}))
    return b.getvalue()


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
@dataclass
class Intrinsics:
    """Pinhole intrinsics plus distortion of a camera_info (OpenCV pixel convention)."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    model: str = "plumb_bob"
    d: tuple[float, ...] = ()

    @property
    def has_distortion(self) -> bool:
        return any(abs(v) > 0 for v in self.d)

    def scaled(self, w: int, h: int) -> "Intrinsics":
        """Intrinsics of the image resized to w x h (pixel centres kept aligned, like Camera.scaled)."""
        sx, sy = w / self.width, h / self.height
        return Intrinsics(w, h, self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5,
                          self.model, self.d)

    def key(self) -> tuple:
        return (self.width, self.height, self.fx, self.fy, self.cx, self.cy, self.model, tuple(self.d))


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


# ----------------------------------------------------------------------------- undistortion
def distort_normalized(x: np.ndarray, y: np.ndarray, model: str, d) -> tuple[np.ndarray, np.ndarray]:
    """Apply a distortion model to normalized pinhole coordinates (x, y) (OpenCV formulas)."""
    d = list(d) + [0.0] * 8
    if model == "equidistant":
        k1, k2, k3, k4 = d[:4]
        r = np.sqrt(x * x + y * y)
        th = np.arctan(r)
        th2 = th * th
        thd = th * (1 + th2 * (k1 + th2 * (k2 + th2 * (k3 + th2 * k4))))
        s = np.where(r > 1e-12, thd / np.maximum(r, 1e-12), 1.0)
        return x * s, y * s
    k1, k2, p1, p2, k3, k4, k5, k6 = d[:8]
    r2 = x * x + y * y
    radial = (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return xd, yd


class Undistorter:
    """Remaps images of one camera_info to the undistorted pinhole camera with the same K and size.

    For each output pixel (u, v): normalized (x, y) = ((u - cx) / fx, (v - cy) / fy), distorted
    with the model, and looked up in the input image (bilinear for colour, nearest for depth).
    Output pixels whose source falls outside the input get 0 (black, unknown depth).
    The maps are computed once per camera_info (cached by ``key``).
    """

    def __init__(self, intr: Intrinsics):
        self.intr = intr
        w, h = intr.width, intr.height
        u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
        x, y = (u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy
        xd, yd = distort_normalized(x, y, intr.model, intr.d)
        self.map_x = (xd * intr.fx + intr.cx).astype(np.float32)
        self.map_y = (yd * intr.fy + intr.cy).astype(np.float32)
        self.valid = (self.map_x >= -0.5) & (self.map_x <= w - 0.5) & (self.map_y >= -0.5) & (self.map_y <= h - 0.5)

    def undistort_rgb(self, rgb: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        h, w = rgb.shape[:2]
        t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
        gx = torch.from_numpy(2 * (self.map_x + 0.5) / w - 1)
        gy = torch.from_numpy(2 * (self.map_y + 0.5) / h - 1)
        out = F.grid_sample(t, torch.stack([gx, gy], -1)[None], mode="bilinear", padding_mode="zeros",
                            align_corners=False)
        out = out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
        out[~self.valid] = 0
        return np.ascontiguousarray(out)

    def undistort_depth(self, depth: np.ndarray) -> np.ndarray:
        h, w = depth.shape
        xi = np.clip(np.rint(self.map_x).astype(np.int64), 0, w - 1)
        yi = np.clip(np.rint(self.map_y).astype(np.int64), 0, h - 1)
        out = depth[yi, xi]
        out[~self.valid] = 0
        return out.astype(np.float32)

    def undistort_labels(self, labels: np.ndarray, unknown: int = 65535) -> np.ndarray:
        """Nearest lookup of a label image (integer ids); pixels outside the input get ``unknown``."""
        h, w = labels.shape
        xi = np.clip(np.rint(self.map_x).astype(np.int64), 0, w - 1)
        yi = np.clip(np.rint(self.map_y).astype(np.int64), 0, h - 1)
        out = labels[yi, xi].copy()
        out[~self.valid] = unknown
        return out


# ----------------------------------------------------------------------------- resizing
def fit_size(width: int, height: int, max_long_side: int) -> tuple[int, int]:
    """(w, h) scaled so that the long side is at most ``max_long_side`` (0 = unchanged)."""
    if max_long_side <= 0 or max(width, height) <= max_long_side:
        return width, height
    s = max_long_side / max(width, height)
    return max(1, int(round(width * s))), max(1, int(round(height * s)))


def resize_rgb(rgb: np.ndarray, w: int, h: int) -> np.ndarray:
    if rgb.shape[1] == w and rgb.shape[0] == h:
        return rgb
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR, reducing_gap=2.0))


def resize_depth(depth: np.ndarray, w: int, h: int) -> np.ndarray:
    """Nearest-neighbour resize (no mixing of foreground and background depths)."""
    if depth.shape[1] == w and depth.shape[0] == h:
        return depth
    H, W = depth.shape
    ys = np.clip(((np.arange(h) + 0.5) * H / h - 0.5).round().astype(np.int64), 0, H - 1)
    xs = np.clip(((np.arange(w) + 0.5) * W / w - 0.5).round().astype(np.int64), 0, W - 1)
    return np.ascontiguousarray(depth[ys][:, xs])


# ----------------------------------------------------------------------------- poses
def quat_to_matrix(q, tolerance: float = 1e-2, what: str = "quaternion") -> np.ndarray:
    """(x, y, z, w) -> 3x3 rotation. Rejects NaN/Inf, zero and non-normalized quaternions.

    A quaternion whose norm differs from 1 by more than ``tolerance`` is rejected (it usually
    means a wrong field order or garbage); smaller deviations are normalized.
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
    x, y, z, w = q / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quat(r: np.ndarray) -> np.ndarray:
    """3x3 rotation -> (x, y, z, w) unit quaternion with w >= 0."""
    m = np.asarray(r, dtype=np.float64)
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    if tr > 0:
        s = math.sqrt(tr + 1.0) * 2
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2]) * 2
        q = [0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] > m[2, 2]:
        s = math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2]) * 2
        q = [(m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1]) * 2
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


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
    m = np.eye(4)
    m[:3, :3] = quat_to_matrix(q, tolerance, f"{what}: quaternion")
    m[:3, 3] = t
    return m


def invert(m: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform."""
    out = np.eye(4)
    r = m[:3, :3]
    out[:3, :3] = r.T
    out[:3, 3] = -r.T @ m[:3, 3]
    return out


def slerp(q0: np.ndarray, q1: np.ndarray, a: float) -> np.ndarray:
    q0, q1 = np.asarray(q0, float), np.asarray(q1, float)
    dot = float(np.dot(q0, q1))
    if dot < 0:
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + a * (q1 - q0)
        return q / np.linalg.norm(q)
    th = math.acos(min(1.0, dot))
    s = math.sin(th)
    return (math.sin((1 - a) * th) * q0 + math.sin(a * th) * q1) / s


def interpolate_pose(m0: np.ndarray, t0: float, m1: np.ndarray, t1: float, t: float) -> np.ndarray:
    """Rigid transform at time t between (t0, m0) and (t1, m1): linear translation, slerp rotation."""
    if t1 <= t0:
        return m0.copy()
    a = min(1.0, max(0.0, (t - t0) / (t1 - t0)))
    out = np.eye(4)
    out[:3, 3] = (1 - a) * m0[:3, 3] + a * m1[:3, 3]
    q = slerp(matrix_to_quat(m0[:3, :3]), matrix_to_quat(m1[:3, :3]), a)
    out[:3, :3] = quat_to_matrix(q, 1e-3)
    return out


def rotation_angle_deg(r_a: np.ndarray, r_b: np.ndarray) -> float:
    """Angle of the relative rotation r_a^T r_b in degrees."""
    c = (np.trace(r_a.T @ r_b) - 1) / 2
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


# ----------------------------------------------------------------------------- keyframes
class KeyframeSelector:
    """A frame becomes a keyframe when the camera moved ``min_translation`` metres or turned
    ``min_rotation_deg`` degrees since the last keyframe, or ``max_interval`` seconds passed
    (0 = never by time); never sooner than ``min_interval`` seconds. The first frame always is one."""

    def __init__(self, min_translation: float = 0.1, min_rotation_deg: float = 10.0, max_interval: float = 5.0,
                 min_interval: float = 0.0):
        self.min_translation = min_translation
        self.min_rotation_deg = min_rotation_deg
        self.max_interval = max_interval
        self.min_interval = min_interval
        self.last: tuple[float, np.ndarray] | None = None

    def reset(self) -> None:
        self.last = None

    def check(self, stamp: float, c2w: np.ndarray) -> tuple[bool, str]:
        """(is keyframe, why) without committing."""
        if self.last is None:
            return True, "first frame"
        t0, m0 = self.last
        dt = stamp - t0
        if dt < 0:  # the input timeline was re-anchored (clock glitch, restarted bag): start over
            return True, "time jumped back"
        if dt < self.min_interval:
            return False, "min_interval"
        dist = float(np.linalg.norm(c2w[:3, 3] - m0[:3, 3]))
        if dist >= self.min_translation:
            return True, f"moved {dist:.3f} m"
        ang = rotation_angle_deg(m0[:3, :3], c2w[:3, :3])
        if ang >= self.min_rotation_deg:
            return True, f"turned {ang:.1f} deg"
        if self.max_interval > 0 and dt >= self.max_interval:
            return True, f"{dt:.1f} s since the last keyframe"
        return False, "too close to the last keyframe"

    def commit(self, stamp: float, c2w: np.ndarray) -> None:
        self.last = (stamp, np.array(c2w, dtype=np.float64))
