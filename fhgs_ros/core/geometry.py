"""Rotations and rigid poses: the one home of quaternion and SE(3) math in the package.

Conventions (docs/ARCHITECTURE.md §8):
- quaternion component order is part of every function name: ``wxyz`` (Hamilton, scalar first:
  the surfels' ``quats``, COLMAP's ``qvec``) or ``xyzw`` (ROS ``geometry_msgs/Quaternion``);
- a pose is a 4x4 rigid transform ``T_a_b`` mapping points of frame b into frame a; camera
  poses are OpenCV-axis (x right, y down, z forward) camera-to-world ``c2w`` or world-to-camera
  ``w2c`` as named;
- every function takes numpy arrays or torch tensors and returns the same kind (one formula
  serves both; numpy works in float64, torch in the tensor's dtype), batched over leading axes
  where noted.

Validation of untrusted quaternions (NaN, norm tolerance) is the caller's job: the ROS input
pipeline does it in :func:`fhgs_ros.online.imageproc.pose_matrix` before calling these.
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def _is_torch(x) -> bool:
    return isinstance(x, torch.Tensor)


def _stack(xs: list, axis: int, like):
    return torch.stack(xs, axis) if _is_torch(like) else np.stack(xs, axis)


def _normalize(q: Array) -> Array:
    if _is_torch(q):
        return F.normalize(q, dim=-1)
    return q / (np.linalg.norm(q) if q.ndim == 1 else np.linalg.norm(q, axis=-1, keepdims=True))


# ----------------------------------------------------------------------------- quaternion <-> matrix
def _unit_quat_to_matrix(w, x, y, z, like):
    """The rotation matrix of a unit quaternion given by its components (one formula for both orders)."""
    m = _stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1, like)
    return m.reshape(tuple(like.shape[:-1]) + (3, 3))


def quat_wxyz_to_matrix(q: Array) -> Array:
    """(..., 4) quaternions (w, x, y, z), any non-zero norm -> (..., 3, 3) rotation matrices."""
    q = _normalize(q if _is_torch(q) else np.asarray(q, dtype=np.float64))
    return _unit_quat_to_matrix(q[..., 0], q[..., 1], q[..., 2], q[..., 3], q)


def quat_xyzw_to_matrix(q: Array) -> Array:
    """(..., 4) quaternions (x, y, z, w) (ROS order), any non-zero norm -> (..., 3, 3) rotation matrices."""
    q = _normalize(q if _is_torch(q) else np.asarray(q, dtype=np.float64))
    return _unit_quat_to_matrix(q[..., 3], q[..., 0], q[..., 1], q[..., 2], q)


def _shepperd(r: Array, order: str) -> Array:
    """(..., 3, 3) rotations -> (..., 4) unit quaternions in ``order`` ('wxyz' or 'xyzw'), w >= 0.

    Shepperd's method: the branch (trace, or the largest diagonal element) that avoids dividing
    by a small number is taken per matrix; normalised in the output order.
    """
    torch_in = _is_torch(r)
    m = r.double() if torch_in else np.asarray(r, dtype=np.float64)
    sqrt, where = (torch.sqrt, torch.where) if torch_in else (np.sqrt, np.where)
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    tr = m00 + m11 + m22
    branches = []
    with np.errstate(invalid="ignore", divide="ignore"):  # unselected branches may be NaN
        s = sqrt(tr + 1.0) * 2
        branches.append((0.25 * s, (m21 - m12) / s, (m02 - m20) / s, (m10 - m01) / s))
        s = sqrt(1.0 + m00 - m11 - m22) * 2
        branches.append(((m21 - m12) / s, 0.25 * s, (m01 + m10) / s, (m02 + m20) / s))
        s = sqrt(1.0 + m11 - m00 - m22) * 2
        branches.append(((m02 - m20) / s, (m01 + m10) / s, 0.25 * s, (m12 + m21) / s))
        s = sqrt(1.0 + m22 - m00 - m11) * 2
        branches.append(((m10 - m01) / s, (m02 + m20) / s, (m12 + m21) / s, 0.25 * s))
    perm = (0, 1, 2, 3) if order == "wxyz" else (1, 2, 3, 0)
    q0, q1, q2, q3 = (_stack([br[i] for i in perm], -1, m) for br in branches)
    c0 = tr > 0
    c1 = (m00 > m11) & (m00 > m22)
    c2 = m11 > m22
    q = where(c0[..., None], q0, where(c1[..., None], q1, where(c2[..., None], q2, q3)))
    q = _normalize(q)
    w = perm.index(0)
    q = where(q[..., w:w + 1] < 0, -q, q)
    return q.to(r.dtype) if torch_in else q


def matrix_to_quat_wxyz(r: Array) -> Array:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions (w, x, y, z) with w >= 0."""
    return _shepperd(r, "wxyz")


def matrix_to_quat_xyzw(r: Array) -> Array:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions (x, y, z, w) with w >= 0 (ROS order)."""
    return _shepperd(r, "xyzw")


def xyzw_to_wxyz(q: Array) -> Array:
    """Reorder quaternion components (x, y, z, w) -> (w, x, y, z)."""
    return q[..., [3, 0, 1, 2]]


def wxyz_to_xyzw(q: Array) -> Array:
    """Reorder quaternion components (w, x, y, z) -> (x, y, z, w)."""
    return q[..., [1, 2, 3, 0]]


def angle_axis_to_matrix(v) -> np.ndarray:
    """Angle-axis vector (3,) [rad] -> 3x3 rotation (Rodrigues' formula)."""
    v = np.asarray(v, dtype=np.float64)
    th = float(np.linalg.norm(v))
    if th < 1e-12:
        return np.eye(3)
    k = v / th
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(th) * kx + (1 - math.cos(th)) * (kx @ kx)


def orthonormalize(r: np.ndarray, tol: float = 1e-3) -> np.ndarray:
    """Nearest rotation to ``r`` (SVD) when ``r`` is already within ``tol`` of one; ``r`` unchanged
    otherwise (a scaled or reflected matrix is left for the caller's validation to reject)."""
    r = np.asarray(r, dtype=np.float64)
    if np.abs(r @ r.T - np.eye(3)).max() > tol or abs(np.linalg.det(r) - 1.0) > tol:
        return r
    u, _, vt = np.linalg.svd(r)
    q = u @ vt
    if np.linalg.det(q) < 0:
        return r
    return q


def rotation_angle_deg(r_a: np.ndarray, r_b: np.ndarray) -> float:
    """Angle of the relative rotation r_a^T r_b [deg]."""
    c = (np.trace(r_a.T @ r_b) - 1) / 2
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


# ----------------------------------------------------------------------------- poses
def pose_from_translation_quat_xyzw(t, q) -> np.ndarray:
    """Translation (3,) + quaternion (x, y, z, w) -> 4x4 rigid transform (float64, unvalidated)."""
    m = np.eye(4)
    m[:3, :3] = quat_xyzw_to_matrix(np.asarray(q, dtype=np.float64).reshape(4))
    m[:3, 3] = np.asarray(t, dtype=np.float64).reshape(3)
    return m


def invert_pose(m: Array) -> Array:
    """Inverse of a rigid 4x4 transform (R, t) -> (R^T, -R^T t)."""
    if _is_torch(m):
        out = torch.eye(4, dtype=m.dtype, device=m.device)
    else:
        m = np.asarray(m)
        out = np.eye(4)
    r = m[:3, :3]
    out[:3, :3] = r.T
    out[:3, 3] = -r.T @ m[:3, 3]
    return out


def slerp_xyzw(q0: np.ndarray, q1: np.ndarray, a: float) -> np.ndarray:
    """Spherical linear interpolation of unit quaternions (any one component order, the same for both)."""
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
    """Rigid transform at time t [s] between (t0, m0) and (t1, m1): linear translation, slerp rotation."""
    if t1 <= t0:
        return m0.copy()
    a = min(1.0, max(0.0, (t - t0) / (t1 - t0)))
    out = np.eye(4)
    out[:3, 3] = (1 - a) * m0[:3, 3] + a * m1[:3, 3]
    q = slerp_xyzw(matrix_to_quat_xyzw(m0[:3, :3]), matrix_to_quat_xyzw(m1[:3, :3]), a)
    out[:3, :3] = quat_xyzw_to_matrix(q)
    return out


def opengl_c2w_to_opencv_w2c(c2w_gl: np.ndarray) -> np.ndarray:
    """NeRF/OpenGL camera-to-world (x right, y up, z back) -> OpenCV world-to-camera (float64).

    The rotation is re-orthonormalised (SVD) so small numerical drift in files is tolerated.
    """
    c2w = np.asarray(c2w_gl, dtype=np.float64).copy()
    c2w[:3, 1:3] *= -1.0  # flip y and z camera axes
    c2w[:3, :3] = orthonormalize(c2w[:3, :3])
    return invert_pose(c2w)


def opencv_w2c_to_opengl_c2w(w2c: np.ndarray) -> np.ndarray:
    """OpenCV world-to-camera -> NeRF/OpenGL camera-to-world (inverse of :func:`opengl_c2w_to_opencv_w2c`)."""
    c2w = invert_pose(np.asarray(w2c, dtype=np.float64))
    c2w[:3, 1:3] *= -1.0
    return c2w


def random_quats_wxyz(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniformly random unit quaternions (N, 4) (w, x, y, z)."""
    return F.normalize(torch.randn(n, 4, generator=generator), dim=-1)


__all__ = ["quat_wxyz_to_matrix", "quat_xyzw_to_matrix", "matrix_to_quat_wxyz", "matrix_to_quat_xyzw",
           "xyzw_to_wxyz", "wxyz_to_xyzw", "angle_axis_to_matrix", "orthonormalize", "rotation_angle_deg",
           "pose_from_translation_quat_xyzw", "invert_pose", "slerp_xyzw", "interpolate_pose",
           "opengl_c2w_to_opencv_w2c", "opencv_w2c_to_opengl_c2w", "random_quats_wxyz"]
