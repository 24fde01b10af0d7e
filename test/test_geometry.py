"""core/geometry.py: the one home of rotations and poses, for numpy and torch alike."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fhgs_ros.core.geometry import (angle_axis_to_matrix, interpolate_pose, invert_pose, matrix_to_quat_wxyz,
                                    matrix_to_quat_xyzw, opencv_w2c_to_opengl_c2w, opengl_c2w_to_opencv_w2c,
                                    quat_wxyz_to_matrix, quat_xyzw_to_matrix, rotation_angle_deg, wxyz_to_xyzw,
                                    xyzw_to_wxyz)


def _random_quats(n: int, seed: int = 0) -> np.ndarray:
    q = np.random.default_rng(seed).normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return np.where(q[:, :1] < 0, -q, q)  # w >= 0 (wxyz)


def test_quaternion_matrix_round_trip_numpy_and_torch():
    q = _random_quats(500)
    r = quat_wxyz_to_matrix(q)
    assert r.shape == (500, 3, 3)
    assert np.allclose(r @ np.swapaxes(r, 1, 2), np.eye(3), atol=1e-12) and np.allclose(np.linalg.det(r), 1)
    assert np.allclose(matrix_to_quat_wxyz(r), q, atol=1e-12)
    # the same function serves torch (float32 and float64), batched
    rt = quat_wxyz_to_matrix(torch.from_numpy(q))
    assert rt.dtype == torch.float64 and torch.allclose(rt, torch.from_numpy(r), atol=1e-12)
    q32 = matrix_to_quat_wxyz(rt.float())
    assert q32.dtype == torch.float32 and torch.allclose(q32.double(), torch.from_numpy(q), atol=1e-5)
    # component order is in the name: xyzw is the same rotation with the scalar last
    assert np.allclose(quat_xyzw_to_matrix(wxyz_to_xyzw(q)), r, atol=1e-12)
    assert np.allclose(xyzw_to_wxyz(matrix_to_quat_xyzw(r)), q, atol=1e-12)
    # any non-zero norm is normalized
    assert np.allclose(quat_wxyz_to_matrix(3.0 * q[:5]), r[:5], atol=1e-12)


def test_near_180_degree_rotations_use_the_stable_branch():
    for axis in np.eye(3):
        r = angle_axis_to_matrix(axis * (math.pi - 1e-9))
        assert np.allclose(quat_wxyz_to_matrix(matrix_to_quat_wxyz(r)), r, atol=1e-8)


def test_poses_inverse_interpolation_angle_and_gl_conversion():
    rng = np.random.default_rng(1)
    m = np.eye(4)
    m[:3, :3] = quat_wxyz_to_matrix(_random_quats(1, 2)[0])
    m[:3, 3] = rng.normal(size=3)
    assert np.allclose(invert_pose(m) @ m, np.eye(4), atol=1e-12)
    assert torch.allclose(invert_pose(torch.from_numpy(m)) @ torch.from_numpy(m), torch.eye(4, dtype=torch.float64))
    a, b = np.eye(4), np.eye(4)
    b[:3, :3] = angle_axis_to_matrix([0, 0, math.radians(80)])
    b[:3, 3] = [2, 0, 0]
    mid = interpolate_pose(a, 1.0, b, 3.0, 2.0)
    assert np.allclose(mid[:3, 3], [1, 0, 0]) and rotation_angle_deg(a[:3, :3], mid[:3, :3]) == pytest.approx(40)
    assert np.allclose(interpolate_pose(a, 1.0, b, 3.0, 9.0), b)  # clamped, never extrapolated
    gl = opencv_w2c_to_opengl_c2w(m)
    assert np.allclose(opengl_c2w_to_opencv_w2c(gl), m, atol=1e-12)
    assert np.allclose(gl[:3, 3], invert_pose(m)[:3, 3])  # same camera centre, flipped y/z axes
