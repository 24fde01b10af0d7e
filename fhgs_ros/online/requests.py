"""Validators of the node's service requests (ROS-free, pure: plain numbers in, checked values out).

Each raises :class:`fhgs_ros.online.guard.Rejected` (kind ``bad_service_argument`` or
``request_too_large``) with a reason; nothing is allocated before the request is priced
(:mod:`fhgs_ros.online.limits`). Numbers are checked as float32 where the renderer uses float32.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from fhgs_ros.core.camera import Camera, CameraError
from fhgs_ros.online.guard import Rejected, finite_f32
from fhgs_ros.online.limits import BASE_BYTES_PER_PIXEL, RequestLimits, check_view

MAX_ABS_COORD = 1.0e6        # [m] no pose, point or seed coordinate of the node lies farther from the origin
MAX_IMAGE_SIDE = 65535       # [px]
BAD = "bad_service_argument"


def _quat_matrix(q: np.ndarray, what: str, tolerance: float = 1e-2) -> np.ndarray:
    from fhgs_ros.core.geometry import quat_xyzw_to_matrix

    n = float(np.linalg.norm(q.astype(np.float64)))
    if n < 1e-9 or abs(n - 1.0) > tolerance:
        raise Rejected(BAD, f"{what}: quaternion is not normalized (norm {n:.4g})")
    return np.asarray(quat_xyzw_to_matrix(q.astype(np.float64) / n), dtype=np.float64)


def request_pose(position: Sequence[float], orientation: Sequence[float], what: str = "request pose") -> np.ndarray:
    """(x y z), (qx qy qz qw) -> 4x4 camera-to-map, float32-finite, |t| <= MAX_ABS_COORD, unit quaternion."""
    if any(isinstance(v, float) and math.isnan(v) for v in list(position) + list(orientation)):
        raise Rejected(BAD, f"{what}: contains NaN")
    t = finite_f32(position, f"{what} position", BAD, MAX_ABS_COORD)
    q = finite_f32(orientation, f"{what} orientation", BAD)
    if t.size != 3 or q.size != 4:
        raise Rejected(BAD, f"{what}: needs 3 position and 4 orientation values")
    m = np.eye(4)
    m[:3, :3] = _quat_matrix(q, what)
    m[:3, 3] = t.astype(np.float64)
    return m


def request_intrinsics(width: int, height: int, k: Sequence[float], what: str = "request camera_info"
                       ) -> tuple[int, int, float, float, float, float]:
    """(w, h, fx, fy, cx, cy) of a request's camera_info (k row-major 3x3), checked."""
    w, h = int(width), int(height)
    if not (0 < w <= MAX_IMAGE_SIDE and 0 < h <= MAX_IMAGE_SIDE):
        raise Rejected(BAD, f"{what}: size {w}x{h} must be in 1..{MAX_IMAGE_SIDE}")
    kk = finite_f32(k, f"{what} K", BAD)
    if kk.size != 9:
        raise Rejected(BAD, f"{what}: K must hold 9 numbers")
    fx, fy, cx, cy = (float(kk[i]) for i in (0, 4, 2, 5))
    if not (0 < fx <= 1e6 and 0 < fy <= 1e6):
        raise Rejected(BAD, f"{what}: focal lengths must be in (0, 1e6] (fx={fx}, fy={fy})")
    if abs(cx) > 16 * w or abs(cy) > 16 * h:
        raise Rejected(BAD, f"{what}: principal point ({cx}, {cy}) lies far outside the {w}x{h} image")
    return w, h, fx, fy, cx, cy


def request_camera(position: Sequence[float], orientation: Sequence[float], info_width: int, info_height: int,
                   k: Sequence[float], fallback: Camera | None, use_latest: bool, limits: RequestLimits,
                   feature_channels: int = 0, per_pixel: int = BASE_BYTES_PER_PIXEL, what: str = "view",
                   near: float = 0.05, far: float = 1000.0) -> Camera:
    """Camera of a render / query / segment request, priced against ``limits`` before use."""
    if use_latest:
        if fallback is None:
            raise Rejected(BAD, f"{what}: no keyframe yet: use_latest_keyframe cannot be honoured")
        check_view(fallback.width, fallback.height, limits, feature_channels, per_pixel, what)
        return fallback
    c2w = request_pose(position, orientation, f"{what}: request pose")
    if int(info_width) == 0 or int(info_height) == 0:
        if fallback is None:
            raise Rejected(BAD, f"{what}: camera_info is empty and there is no keyframe to take intrinsics from")
        w, h, fx, fy, cx, cy = fallback.width, fallback.height, fallback.fx, fallback.fy, fallback.cx, fallback.cy
    else:
        w, h, fx, fy, cx, cy = request_intrinsics(info_width, info_height, k, f"{what}: request camera_info")
    check_view(w, h, limits, feature_channels, per_pixel, what)
    r = c2w[:3, :3]
    w2c = np.eye(4)
    w2c[:3, :3] = r.T
    w2c[:3, 3] = -r.T @ c2w[:3, 3]
    try:
        import torch
        return Camera(w, h, fx, fy, cx, cy, torch.as_tensor(w2c, dtype=torch.float32), near=near, far=far,
                      name="request")
    except CameraError as exc:
        raise Rejected(BAD, f"{what}: {exc}") from None


def query_threshold(threshold: float, default: float) -> float:
    """Cosine threshold: NaN/Inf or > 1 refused, <= 0 means the node's default."""
    t = float(threshold)
    if not math.isfinite(t) or t > 1.0:
        raise Rejected(BAD, f"query_feature: threshold {threshold} must be in (0, 1] (<= 0: the default)")
    return t if t > 0 else float(default)


def query_radius(radius: float) -> float | None:
    r = float(radius)
    if not math.isfinite(r) or r > MAX_ABS_COORD:
        raise Rejected(BAD, f"query_feature: radius {radius} must be finite (<= 0: no radius)")
    return r if r > 0 else None


def query_max_results(n: int, limits: RequestLimits) -> int:
    """0 = the node's cap; larger values are capped at node.query_max_results."""
    n = int(n)
    return limits.max_results if n <= 0 else min(n, limits.max_results)


def query_point(x: float, y: float, z: float) -> tuple[float, float, float]:
    p = finite_f32([x, y, z], "query_feature: point (NaN/Inf)", BAD, MAX_ABS_COORD)
    return float(p[0]), float(p[1]), float(p[2])


def query_vector(values: Sequence[float], dim: int) -> np.ndarray:
    if len(values) != dim:
        raise Rejected(BAD, f"query_feature: vector has {len(values)} values, the map's features have {dim}")
    v = finite_f32(values, "query_feature: vector", BAD)
    if float(np.abs(v).max(initial=0.0)) == 0.0:
        raise Rejected(BAD, "query_feature: vector is zero")
    return v


def segment_prompts(points: Sequence[float], labels: Sequence[int], box: Sequence[float], width: int, height: int,
                    max_prompts: int) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """(points (P, 2), labels (P,), box (4,)) checked against a width x height view, or None each."""
    if len(points) % 2:
        raise Rejected(BAD, f"segment_view: points must be x, y pairs, got {len(points)} values")
    n = len(points) // 2
    if n > max_prompts:
        raise Rejected("request_too_large", f"segment_view: {n} point prompts exceed node.max_prompts={max_prompts}")
    if len(labels) and len(labels) != n:
        raise Rejected(BAD, f"segment_view: {n} points but {len(labels)} labels")
    if len(box) not in (0, 4):
        raise Rejected(BAD, f"segment_view: box needs 4 values, got {len(box)}")
    if not n and not len(box):
        raise Rejected(BAD, "segment_view: give point prompts and/or a box")
    pts = lab = bx = None
    if n:
        pts = finite_f32(points, "segment_view: points", BAD).reshape(-1, 2)
        if ((pts[:, 0] < 0) | (pts[:, 0] >= width) | (pts[:, 1] < 0) | (pts[:, 1] >= height)).any():
            raise Rejected(BAD, f"segment_view: a point lies outside the {width}x{height} view")
        if len(labels):
            lab = np.asarray([int(v) for v in labels], dtype=np.int64)
            if not np.isin(lab, (0, 1)).all():
                raise Rejected(BAD, "segment_view: labels must be 0 (background) or 1 (foreground)")
    if len(box):
        bx = finite_f32(box, "segment_view: box", BAD)
        x0, y0, x1, y1 = bx.tolist()
        if not (x0 < x1 and y0 < y1):
            raise Rejected(BAD, f"segment_view: box ({x0}, {y0}, {x1}, {y1}) is empty or inverted (x0 < x1, y0 < y1)")
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise Rejected(BAD, f"segment_view: box lies outside the {width}x{height} view")
    return pts, lab, bx


def export_format(path_suffix: str, fmt: str, color: str) -> tuple[str, str]:
    """(format, color) of an export_mesh request."""
    f = (fmt or path_suffix.lstrip(".")).lower()
    if f not in ("ply", "obj"):
        raise Rejected(BAD, f"export_mesh: unknown format '{fmt or f}' (ply, obj)")
    c = color or "rgb"
    if c not in ("rgb", "features", "none"):
        raise Rejected(BAD, f"export_mesh: unknown color '{color}' (rgb, features, none)")
    return f, c


__all__ = ["request_pose", "request_intrinsics", "request_camera", "query_threshold", "query_radius",
           "query_max_results", "query_point", "query_vector", "segment_prompts", "export_format", "MAX_ABS_COORD"]
