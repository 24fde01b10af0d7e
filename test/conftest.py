"""Shared fixtures: small random surfel scenes and cameras."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fhgs_ros.core.camera import Camera, look_at

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def random_scene(n: int, dim: int, seed: int, dtype=torch.float32, spread: float = 0.6,
                 scale_range=(0.03, 0.15)):
    """Random surfels in front of ``small_camera``: dict of activated tensors."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * 2 * spread
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
    lo, hi = scale_range
    scales = torch.rand(n, 2, generator=g) * (hi - lo) + lo
    opacity = torch.rand(n, generator=g) * 0.8 + 0.15
    colors = torch.rand(n, 3, generator=g)
    feats = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)
    return {k: v.to(dtype) for k, v in dict(means=means, quats=quats, scales=scales, opacity=opacity, colors=colors,
                                               features=feats).items()}


def small_camera(width: int = 24, height: int = 20, eye=(0.3, -2.5, 0.4)) -> Camera:
    f = 1.1 * max(width, height)
    return Camera(width, height, f, f, (width - 1) / 2, (height - 1) / 2, look_at(eye, (0, 0, 0)))


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


@pytest.fixture
def native_poison():
    """The native CPU extension fills its uninitialised output buffers with NaN while the test runs
    (a kernel that leaves a pixel or gradient unwritten fails the comparison instead of passing by luck)."""
    from fhgs_ros.core import native

    if native.native_available():
        native._ext.set_poison(True)
    yield
    if native.native_available():
        native._ext.set_poison(False)
