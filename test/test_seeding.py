"""Seeding: projection index, random-view feature sampling (bilinear on the grid), 2DGS init,
depth back-projection, and seeding on the real OpenSfM berlin reconstruction when present."""

from __future__ import annotations

import pytest
import torch

from conftest import SHARED_DATA, small_camera
from fhgs_ros.core.camera import Camera, look_at
from fhgs_ros.core.raster_types import FeatureTarget
from fhgs_ros.core.seeding import (build_projection_index, knn_scales, points_from_depth, project,
                                   quats_from_normals, sample_grid, sample_point_features, surfels_from_points)
from fhgs_ros.core.geometry import quat_wxyz_to_matrix


def test_sample_grid_bilinear_convention():
    # Grid value = 10 * gx + gy; bilinear sampling reproduces the affine function exactly inside.
    gh, gw = 4, 6
    gy, gx = torch.meshgrid(torch.arange(gh).float(), torch.arange(gw).float(), indexing="ij")
    grid = torch.stack([10 * gx + gy, torch.ones_like(gx)])
    tgt = FeatureTarget(grid, scale=0.25)  # 24 x 16 pixel image
    xy = torch.tensor([[5.0, 3.0], [10.5, 7.25], [1.5, 1.5]])
    v = sample_grid(tgt, xy)
    gxx = (xy[:, 0] + 0.5) * 0.25 - 0.5
    gyy = (xy[:, 1] + 0.5) * 0.25 - 0.5
    assert torch.allclose(v[:, 0], 10 * gxx + gyy, atol=1e-5)
    assert torch.allclose(v[:, 1], torch.ones(3))


def test_projection_index_depth_test_and_random_view_choice():
    cams = [small_camera(32, 24, eye=(x, -2.5, 0.3)) for x in (-0.4, 0.0, 0.4)]
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.2, 0.05], [0.0, -5.0, 0.0]])  # last: behind every camera
    op, of, oxy = build_projection_index(pts, cams)
    assert set(op.tolist()) == {0, 1} and (op == 0).sum() == 3
    xy0, _ = project(pts[:1], cams[1])
    assert torch.allclose(oxy[(op == 0) & (of == 1)][0], xy0[0])
    # a depth map that puts a wall in front of point 0 in view 2 removes that observation
    depths = [None, None, torch.full((24, 32), 1.0)]
    op2, of2, _ = build_projection_index(pts, cams, depths)
    assert not ((op2 == 0) & (of2 == 2)).any()
    # each view's grid is constant = view index: the sampled feature names the chosen view
    targets = [FeatureTarget(torch.full((1, 3, 4), float(i)), 4 / 32) for i in range(3)]
    counts = torch.zeros(3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        f, has = sample_point_features(3, op, of, oxy, targets, g)
        assert has.tolist() == [True, True, False]
        counts[int(f[0, 0])] += 1
    assert (counts > 60).all(), counts  # roughly uniform over the 3 observing views


def test_point_init_follows_2dgs():
    g = torch.Generator().manual_seed(0)
    xyz = torch.rand(200, 3, generator=g)
    s = surfels_from_points(xyz, torch.rand(200, 3), torch.randn(200, 16), generator=g)
    assert torch.allclose(s.opacity, torch.full((200,), 0.1), atol=1e-6)
    assert torch.allclose(s.scales[:, 0], s.scales[:, 1])
    assert torch.allclose(s.scales[:, 0], knn_scales(xyz), rtol=1e-5)
    assert torch.allclose(s.features_unit.norm(dim=1), torch.ones(200), atol=2 ** -11)  # float16 storage
    n = torch.nn.functional.normalize(torch.randn(50, 3, generator=g), dim=-1)
    r = quat_wxyz_to_matrix(quats_from_normals(n, g))
    assert torch.allclose(r[:, :, 2], n, atol=1e-5)


def test_points_from_depth_round_trip():
    cam = Camera(20, 16, 18.0, 18.0, 9.5, 7.5, look_at((0, -2, 0.2), (0, 0, 0)))
    depth = torch.full((16, 20), 2.0)
    xyz, rgb, xy = points_from_depth(torch.rand(3, 16, 20), depth, cam, stride=3)
    pix, z = project(xyz, cam)
    assert torch.allclose(pix, xy, atol=1e-4) and torch.allclose(z, torch.full_like(z, 2.0), atol=1e-5)


BERLIN = SHARED_DATA / "opensfm_berlin"


@pytest.mark.skipif(not BERLIN.exists(), reason=f"real data not present at {BERLIN}")
def test_seeding_on_opensfm_berlin():
    from fhgs_ros.datasets import load_dataset
    ds = load_dataset(BERLIN, downscale=0.125)
    assert len(ds.frames) == 3 and ds.points is not None and len(ds.points) > 1000
    cams = [f.camera for f in ds.frames]
    if ds.points.obs_point is not None and ds.points.obs_point.numel():
        op, of, oxy = ds.points.obs_point.long(), ds.points.obs_frame.long(), ds.points.obs_xy.float()
    else:
        op, of, oxy = build_projection_index(ds.points.xyz, cams)
    # Feature grids: a fixed random projection of the image colours on a 64-long-side grid.
    g = torch.Generator().manual_seed(0)
    proj = torch.randn(8, 3, generator=g)
    targets = []
    for f in ds.frames:
        h, w = f.image.shape[1:]
        gh, gw = (round(64 * h / w), 64) if w >= h else (64, round(64 * w / h))
        small = torch.nn.functional.interpolate(f.image[None], size=(gh, gw), mode="area")[0]
        targets.append(FeatureTarget.for_image(torch.einsum("dc,chw->dhw", proj, small), w, h))
    feats, has = sample_point_features(len(ds.points), op, of, oxy, targets, g)
    assert has.float().mean() > 0.9
    s = surfels_from_points(ds.points.xyz[has], ds.points.rgb[has], feats[has], generator=g)
    assert len(s) == int(has.sum()) and torch.isfinite(s.means).all() and (s.scales > 0).all()
    # Each sampled feature equals the grid at the point's projection in one of its observing views.
    for pi in torch.nonzero(has).squeeze(1)[:50].tolist():
        obs = torch.nonzero(op == pi).squeeze(1)
        cands = torch.stack([sample_grid(targets[int(of[o])], oxy[o:o + 1])[0] for o in obs])
        assert (cands - feats[pi]).abs().max(dim=1).values.min() < 1e-5
