"""Depth from posed RGB keyframes (fhgs_ros.core.mvs), masks in loaders and in the photometric loss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fhgs_ros.core.camera import Camera
from fhgs_ros.core.mvs import (KeyframeBuffer, MVSConfig, estimate_depth, online_seed_points, select_source_views,
                               triangulate_pair, prepare_view)

from conftest import SHARED_DATA as SHARED  # ../shared/data beside the checkout; tests using it skip without it


@pytest.fixture(scope="module")
def room():
    from fhgs_ros.datasets.synthetic import synthetic_dataset
    torch.set_num_threads(2)
    return synthetic_dataset(128, 96, 24, seed=0, num_points=100)


def _scaled_world(cam: Camera, s: float) -> Camera:
    w2c = cam.world_to_cam.clone()
    w2c[:3, 3] *= s
    return Camera(cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy, w2c, cam.near * s, cam.far * s, cam.name)


def _depth(ds, i, cfg=None, cams=None):
    cams = cams or [f.camera for f in ds.frames]
    others = [j for j in range(len(ds.frames)) if j != i]
    return estimate_depth(ds.frames[i].image, cams[i], [ds.frames[j].image for j in others],
                          [cams[j] for j in others], cfg or MVSConfig())


def test_box_filter_is_the_border_clipped_window_mean():
    """``_box`` (OpenCV running sums, channels last) against torch's avg_pool2d without padded pixels."""
    import torch.nn.functional as F
    from fhgs_ros.core.mvs import _box

    x = torch.rand(3, 13, 17, 4, generator=torch.Generator().manual_seed(0))
    for k in (3, 7, 33):
        ref = F.avg_pool2d(x.permute(0, 3, 1, 2), k, stride=1, padding=k // 2, count_include_pad=False)
        assert torch.allclose(_box(x, k), ref.permute(0, 2, 3, 1), atol=1e-5)


def test_hole_filling_fits_local_planes_in_inverse_depth():
    """A slanted plane (inverse depth affine in the pixel coordinates) with half its pixels and a 10 x 10 block
    missing: the first-order fill (local plane) is exact to the ridge's bias, the mean fill is biased where the
    measured neighbours lie on one side; a non-smooth surface is not filled by either."""
    from fhgs_ros.core.mvs import fill_holes

    g = torch.Generator().manual_seed(0)
    h, w = 60, 80
    ys, xs = torch.meshgrid(torch.arange(h).double(), torch.arange(w).double(), indexing="ij")
    d = (1.0 / (0.2 + 0.004 * ys + 0.001 * xs)).float()
    hole = torch.rand(h, w, generator=g) < 0.5
    hole[20:30, 30:40] = True
    d0 = torch.where(hole, torch.zeros_like(d), d)
    c0 = torch.where(hole, torch.zeros_like(d), torch.full_like(d, 0.8))
    err = {}
    for order in (0, 1):
        dd, cc = fill_holes(d0, c0, 8, 0.05, 0.25, None, order)
        filled = cc == 0.25
        assert bool((filled <= hole).all()) and bool((dd[~hole] == d[~hole]).all())
        err[order] = ((dd - d).abs() / d)[filled]
        if order == 1:
            assert bool(filled[hole].all())               # every hole of the plane is filled
    assert float(err[1].max()) < 0.02 and float(err[1].mean()) < 0.002
    assert float(err[0].max()) > 0.05                     # one-sided means are biased on a slant
    # with each pixel's own stereo optimum as a candidate, a hole is filled only where that agrees with the plane
    cand = torch.where(torch.arange(w)[None, :].expand(h, w) < w // 2, d, 1.2 * d)
    _, cc = fill_holes(d0, c0, 8, 0.05, 0.25, None, 1, cand, 0.05)
    filled = cc == 0.25
    assert bool(filled[:, : w // 2][hole[:, : w // 2]].all()) and not bool(filled[:, w // 2:].any())
    # depths that vary at random by +-30 % are no surface: nothing filled
    rough = d0 * (1 + 0.3 * (2 * torch.rand(h, w, generator=g) - 1))
    for order in (0, 1):
        _, cc = fill_holes(rough, c0, 8, 0.05, 0.25, None, order)
        assert not bool((cc == 0.25).any())


def test_symmetric_3x3_solve_matches_torch_linalg():
    """The per-pixel adjugate solve of ``fill_holes`` against ``torch.linalg.solve``; singular systems give 0."""
    from fhgs_ros.core.mvs import _solve_sym3

    g = torch.Generator().manual_seed(1)
    m = torch.randn(50, 40, 3, 3, generator=g, dtype=torch.float64)
    A = m @ m.transpose(-1, -2) + 0.1 * torch.eye(3, dtype=torch.float64)
    r = torch.randn(50, 40, 3, generator=g, dtype=torch.float64)
    A[0, 0] = torch.ones(3, 3, dtype=torch.float64)                       # rank 1
    got = torch.stack(_solve_sym3(A[..., 0, 0], A[..., 0, 1], A[..., 0, 2], A[..., 1, 1], A[..., 1, 2], A[..., 2, 2],
                                  r[..., 0], r[..., 1], r[..., 2]), -1)
    ref = torch.linalg.solve(A[1:], r[1:])
    assert torch.allclose(got[1:], ref, rtol=1e-8, atol=1e-8)
    assert bool((got[0, 0] == 0).all())


def test_opencv_sweep_matches_the_pytorch_reference(room):
    """The plane sweep (OpenCV homography warps) against its readable PyTorch version: the same pixels leave
    the source, and the ZNCC scores agree up to OpenCV's 1/32-pixel interpolation weights."""
    from fhgs_ros.core.mvs import sweep, sweep_reference

    views = [prepare_view(room.frames[i].image, room.frames[i].camera, 128) for i in (2, 1, 3, 4)]
    inv = torch.linspace(1 / 0.3, 1 / 30, 48, dtype=torch.float64)
    a, ta = sweep(views[0], views[1:], inv)
    b, tb = sweep_reference(views[0], views[1:], inv)
    assert a.shape == b.shape == (3, 48, 96, 128) and torch.allclose(ta, tb, atol=1e-4)
    na, nb = torch.isnan(a), torch.isnan(b)
    assert float((na == nb).float().mean()) > 0.999 and 0.05 < float(na.float().mean()) < 0.95
    both = ~na & ~nb
    d = (a - b)[both].abs()
    assert float(d.mean()) < 0.01 and float((d > 0.05).float().mean()) < 0.01

    # a source 2 units ahead of the reference, looking the same way: planes nearer than that lie behind it
    c = room.frames[2].camera
    w2c = c.world_to_cam.clone()
    w2c[2, 3] -= 2.0
    ahead = Camera(c.width, c.height, c.fx, c.fy, c.cx, c.cy, w2c, c.near, c.far, "ahead")
    src = prepare_view(room.frames[2].image, ahead, 128)
    inv = torch.tensor([1 / 1.0, 1 / 1.9, 1 / 2.1, 1 / 40.0], dtype=torch.float64)
    a, _ = sweep(views[0], [src], inv)
    b, _ = sweep_reference(views[0], [src], inv)
    assert bool(torch.isnan(a[0, :2]).all()) and bool(torch.isnan(b[0, :2]).all())
    assert float((torch.isnan(a) == torch.isnan(b)).float().mean()) > 0.999 and not bool(torch.isnan(a[0, 3]).all())


def test_stereo_depth_is_enlarged_like_the_coverage_render():
    """``upsample`` (stereo depth to the keyframe's size) is centre-aligned nearest, as the coverage render
    is enlarged (``F.interpolate`` nearest-exact), also at a non-integer factor (160 -> 216 px)."""
    import torch.nn.functional as F
    from fhgs_ros.core.mvs import MVSResult, upsample

    import cv2

    d = torch.rand(120, 160, generator=torch.Generator().manual_seed(1)) + 0.5
    up = upsample(MVSResult(d, d.clone()), 640, 480)
    ref = F.interpolate(d[None, None], size=(480, 640), mode="nearest-exact")[0, 0]
    assert torch.equal(up.depth, ref) and torch.equal(up.confidence, ref)
    up = upsample(MVSResult(d, d.clone()), 216, 162)
    ref = F.interpolate(d[None, None], size=(162, 216), mode="nearest-exact")[0, 0]
    # the two differ only in the rows / columns whose centre falls exactly on a source pixel boundary
    assert float((up.depth != ref).float().mean()) < 0.03 and torch.equal(up.depth, up.confidence)
    old = torch.from_numpy(cv2.resize(d.numpy(), (216, 162), interpolation=cv2.INTER_NEAREST))
    assert float((old != ref).float().mean()) > 0.2     # corner-aligned nearest: the half-pixel shift


def test_stereo_depth_matches_exact_depth(room):
    """Measured (confident) pixels: median relative error below 2.5 %, at least 15 % of the pixels."""
    meds, covs, outl = [], [], []
    for i in (1, 7, 13, 19):
        r = _depth(room, i)
        gt = room.frames[i].depth
        ok = (r.confidence >= MVSConfig().min_zncc) & (gt > 0)
        rel = ((r.depth - gt).abs() / gt)[ok]
        meds.append(float(rel.median()))
        outl.append(float((rel > 0.1).float().mean()))
        covs.append(float(ok.float().mean()))
        assert r.depth.shape == gt.shape and r.confidence.shape == gt.shape
        assert bool(((r.depth > 0) == (r.confidence > 0)).all())
    assert np.median(meds) < 0.025, meds
    assert np.mean(covs) > 0.15, covs
    assert np.mean(outl) < 0.15, outl


def test_scaling_the_world_scales_the_depth(room):
    """Nothing assumes metric scale: the same images with the world scaled by 7.3 give 7.3 x the depth."""
    s = 7.3
    r1 = _depth(room, 7)
    r2 = _depth(room, 7, cams=[_scaled_world(f.camera, s) for f in room.frames])
    both = (r1.confidence > 0) & (r2.confidence > 0)
    assert both.float().mean() > 0.3
    ratio = (r2.depth[both] / r1.depth[both])
    assert abs(float(ratio.median()) - s) < 0.01 * s
    assert float((ratio - s).abs().lt(0.02 * s).float().mean()) > 0.95


def test_confidence_is_zero_on_textureless_and_unseen_pixels(room):
    """A flat grey patch pasted into the reference and a view with no sources get no depth."""
    f = room.frames[7]
    img = f.image.clone()
    img[:, 30:70, 40:90] = 0.5
    cams = [g.camera for g in room.frames]
    others = [j for j in range(len(room.frames)) if j != 7]
    r = estimate_depth(img, f.camera, [room.frames[j].image for j in others], [cams[j] for j in others],
                       MVSConfig(fill_radius=0))
    assert float(r.confidence[36:64, 46:84].max()) == 0.0
    assert float((r.confidence > 0).float().mean()) > 0.05
    none = estimate_depth(f.image, f.camera, [], [])
    assert float(none.confidence.max()) == 0.0 and float(none.depth.max()) == 0.0


def test_source_views_need_parallax_and_overlap(room):
    cams = [f.camera for f in room.frames]
    ref = cams[5]
    same = Camera(ref.width, ref.height, ref.fx, ref.fy, ref.cx, ref.cy, ref.world_to_cam.clone())
    assert select_source_views(ref, [same], 4) == []  # no baseline: no source
    sel = select_source_views(ref, [c for i, c in enumerate(cams) if i != 5], 3)
    assert 1 <= len(sel) <= 3
    # behind the reference, looking away: never a source
    w2c = ref.world_to_cam.clone()
    w2c[:3, :3] = -w2c[:3, :3] * torch.tensor([1.0, -1.0, 1.0])[:, None]
    w2c[:3, 3] = -w2c[:3, :3] @ (ref.center + 0.3)
    away = Camera(ref.width, ref.height, ref.fx, ref.fy, ref.cx, ref.cy, w2c)
    assert select_source_views(ref, [away], 2, depth_hint=2.0) == []


def test_triangulated_features_lie_on_the_surface():
    """ORB / SIFT matches triangulated with the known poses: median relative depth error below 3 %."""
    from fhgs_ros.datasets.synthetic import synthetic_dataset
    ds = synthetic_dataset(320, 240, 24, seed=0, num_points=100, supersample=1)
    for det in ("orb", "sift"):
        a, b = ds.frames[2], ds.frames[3]
        va, vb = prepare_view(a.image, a.camera, 320), prepare_view(b.image, b.camera, 320)
        x, xy = triangulate_pair(va.gray, va.camera, vb.gray, vb.camera, detector=det)
        assert len(x) >= 5
        w2c = a.camera.world_to_cam.double().numpy()
        z = x @ w2c[2, :3] + w2c[2, 3]
        gt = a.depth.numpy()[np.clip(np.round(xy[:, 1]).astype(int), 0, 239),
                             np.clip(np.round(xy[:, 0]).astype(int), 0, 319)]
        assert np.median(np.abs(z - gt) / gt) < 0.03, det


def test_keyframe_buffer_first_keyframe_waits_then_both_are_seeded(room):
    """defer 0: every keyframe is estimated as soon as it has an earlier source."""
    buf = KeyframeBuffer(MVSConfig(defer=0), capacity=3, max_waiting=1)
    f0, f1 = room.frames[1], room.frames[2]
    assert online_seed_points(buf, f0.image, f0.camera, token="a") == []  # nothing to match yet: no guess
    pts = online_seed_points(buf, f1.image, f1.camera, token="b")
    assert sorted(p.token for p in pts) == ["a", "b"]  # the waiting first keyframe is seeded now too
    for p in pts:
        assert p.rgb.shape == p.xyz.shape and len(p.xyz) > 100
    p = next(p for p in pts if p.token == "b")
    w2c = p.camera.world_to_cam
    z = p.xyz @ w2c[2, :3] + w2c[2, 3]
    gt = f1.depth[p.xy[:, 1].long(), p.xy[:, 0].long()]
    assert float(((z - gt).abs() / gt).median()) < 0.1  # measured and filled pixels, one 30-degree source
    for i in (3, 4):
        online_seed_points(buf, room.frames[i].image, room.frames[i].camera)
    assert len(buf) == 3 and all(it.image is None for it in buf.items)  # bounded memory: grey views only


def test_deferred_keyframe_depth_uses_sources_on_both_sides(room):
    """defer 2 (default): a keyframe's depth arrives with the second keyframe after it, from sources before
    and after it, and the map coverage test runs in that keyframe's own camera (``explain``)."""
    frames = [room.frames[i] for i in (1, 2, 3, 4)]
    asked = []

    def no_map(c):
        asked.append(c.name)
        return None, None

    # the map covers every pixel, at no depth that agrees with the stereo one (defer applies to a non-empty map)
    cover = torch.ones(96, 128, dtype=torch.bool)
    buf = KeyframeBuffer(MVSConfig(defer=2), capacity=6)
    out = [online_seed_points(buf, f.image, f.camera, token=k, covered=cover, rendered_depth=torch.zeros(96, 128),
                              explain=no_map) for k, f in enumerate(frames)]
    assert out[0] == [] and out[1] == []          # the first keyframe waits for two later ones
    assert [p.token for p in out[2]] == [0] and [p.token for p in out[3]] == [1]
    assert asked == [frames[0].camera.name, frames[1].camera.name]
    p = out[3][0]
    w2c = p.camera.world_to_cam
    z = p.xyz @ w2c[2, :3] + w2c[2, 3]
    gt = frames[1].depth[p.xy[:, 1].long(), p.xy[:, 0].long()]
    assert len(z) > 100 and float(((z - gt).abs() / gt).median()) < 0.05

    # a map that explains every pixel at its exact depth: only measured stereo pixels that disagree with it
    # by more than 3 % are seeded (hole-filled ones never where the map covers), a minority
    exact = {f.camera.name: f.depth for f in frames}
    buf = KeyframeBuffer(MVSConfig(defer=2), capacity=6)
    again = [online_seed_points(buf, f.image, f.camera, token=k, covered=cover, rendered_depth=f.depth,
                                explain=lambda c: (torch.ones(c.height, c.width, dtype=torch.bool), exact[c.name]))
             for k, f in enumerate(frames)]
    q = again[3][0]
    zq = q.xyz @ w2c[2, :3] + w2c[2, 3]
    gq = frames[1].depth[q.xy[:, 1].long(), q.xy[:, 0].long()]
    assert bool(((zq - gq).abs() > 0.0299 * zq).all()) and len(zq) < 0.3 * len(z)


def test_end_of_stream_flush_seeds_the_keyframes_still_waiting(room):
    """defer 2: the last two keyframes of a stream wait for later ones that never come; ``flush_seed_points``
    estimates them from the keyframes before them (one side), seeds by the same coverage rule, and empties
    the queue (a second flush returns nothing)."""
    from fhgs_ros.core.mvs import flush_seed_points

    frames = [room.frames[i] for i in (1, 2, 3, 4, 5)]
    cover = torch.ones(96, 128, dtype=torch.bool)
    buf = KeyframeBuffer(MVSConfig(defer=2), capacity=6)
    got = [p.token for k, f in enumerate(frames)
           for p in online_seed_points(buf, f.image, f.camera, token=k, covered=cover,
                                       rendered_depth=torch.zeros(96, 128), explain=lambda c: (None, None))]
    assert got == [0, 1, 2] and buf.waiting() == 2
    asked = []

    def covered_nowhere_near(c):   # coverage everywhere at no agreeing depth: the measured pixels seed
        asked.append(c.name)
        return torch.ones(c.height, c.width, dtype=torch.bool), torch.zeros(c.height, c.width)

    out = flush_seed_points(buf, stride=2, explain=covered_nowhere_near)
    assert [p.token for p in out] == [3, 4] and buf.waiting() == 0
    assert asked.count(frames[3].camera.name) == 2 and asked.count(frames[4].camera.name) == 2  # hint + coverage
    for p in out:
        f = frames[p.token]
        w2c = p.camera.world_to_cam
        z = p.xyz @ w2c[2, :3] + w2c[2, 3]
        gt = f.depth[p.xy[:, 1].long(), p.xy[:, 0].long()]
        assert len(z) > 100 and float(((z - gt).abs() / gt).median()) < 0.06
    assert flush_seed_points(buf, stride=2, explain=covered_nowhere_near) == []


def test_offline_bag_mapping_seeds_the_last_keyframes_at_the_end_of_the_bag(room, tmp_path):
    """``fhgs-replay --offline`` (``map_bag``) on a bag without depth: at the end of the bag the keyframes whose
    stereo depth waited for later ones are seeded and get one keyframe budget of iterations; the report says so."""
    from fhgs_ros.bag import write_frames_bag
    from fhgs_ros.online.bag_mapping import map_bag

    bag = write_frames_bag([room.frames[i] for i in (1, 2, 3, 4, 5)], tmp_path / "bag", pose_mode="pose",
                           with_depth=False).path
    flat = {"features.extractor": "label", "features.num_labels": len(room.label_names), "features.dim": 8,
            "node.pose_source": "pose", "node.steps_per_keyframe": 4, "node.kf_min_translation": 0.0,
            "node.kf_min_rotation_deg": 0.0}
    remap = {"/camera/image_raw": "/image", "/camera/camera_info": "/camera_info", "/camera/labels": "/labels",
             "/camera/pose": "/pose"}
    rep, eng = map_bag(bag, flat, tmp_path / "map.safetensors", remap=remap, progress=False)
    assert rep.keyframes == 5 and rep.flushed_surfels > 100
    assert rep.iterations == 5 * 4          # the first keyframe has no surfels yet (it waits): four budgets, one more
    assert rep.surfels == len(eng.state.surfels) and (tmp_path / "map.safetensors").is_file()
    assert any(line.startswith(f"end of bag: {rep.flushed_surfels} surfels seeded") for line in rep.lines())
    assert eng.finish_stream() == 0          # nothing waits any more


def test_engine_without_depth_waits_for_a_stereo_partner(room):
    """node.init_geometry mvs: the first keyframe without depth gets no surfels, the second seeds both (an
    empty map does not defer, seed.mvs_defer applies once it has surfels)."""
    from fhgs_ros.config import FHGSConfig
    from fhgs_ros.features.registry import make_extractor
    from fhgs_ros.online.frames import InputFrame
    from fhgs_ros.online.engine import MappingEngine
    from fhgs_ros.core.camera import Intrinsics
    from fhgs_ros.config import NodeConfig

    ext = make_extractor("label", num_labels=11, dim=8, grid_long_side=32)
    eng = MappingEngine(FHGSConfig(), NodeConfig(kf_min_translation=0.0, kf_min_rotation_deg=0.0), ext)
    preps = []
    for k, i in enumerate((1, 2)):
        f = room.frames[i]
        c = f.camera
        rgb = (f.image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        intr = Intrinsics(c.width, c.height, float(c.fx), float(c.fy), float(c.cx), float(c.cy))
        preps.append(eng.prepare(InputFrame(float(k + 1), rgb, intr, c.cam_to_world.double().numpy(), None,
                                            labels=f.labels.numpy())))
    assert preps[0].surfels is None
    s = preps[1].surfels
    assert s is not None and len(s) > 200
    # the seeds lie on the exact surface (distance to the exact depth along the view of frame 2)
    cam = room.frames[2].camera
    from fhgs_ros.core.seeding import project
    xy, z = project(s.means.detach(), cam)
    inside = (xy[:, 0] >= 0) & (xy[:, 0] <= 127) & (xy[:, 1] >= 0) & (xy[:, 1] <= 95) & (z > 0)
    gt = room.frames[2].depth[xy[inside, 1].round().long(), xy[inside, 0].round().long()]
    assert float(((z[inside] - gt).abs() / gt).median()) < 0.1  # measured and filled pixels


def test_coverage_at_reduced_resolution_agrees_with_the_full_render():
    """The stereo path tests the map's coverage at twice the stereo working resolution (seeding.coverage
    with long_side): same size as the camera, the same covered pixels as a full-size render, and median
    depths about as close to the exact depth on smooth surfaces."""
    import torch.nn.functional as F

    from fhgs_ros.core.seeding import coverage, points_from_depth, surfels_from_points
    from fhgs_ros.datasets.synthetic import synthetic_dataset

    ds = synthetic_dataset(320, 240, 8, seed=0, num_points=100, supersample=1)
    g = torch.Generator().manual_seed(0)
    pts = [points_from_depth(f.image, f.depth, f.camera, stride=3) for f in ds.frames[::2]]
    xyz, rgb = torch.cat([p[0] for p in pts]), torch.cat([p[1] for p in pts])
    s = surfels_from_points(xyz, rgb, torch.randn(len(xyz), 8, generator=g), 0.8, generator=g)
    cam, gt = ds.frames[3].camera, ds.frames[3].depth
    full_cov, full_depth = coverage(s, cam)
    low_cov, low_depth = coverage(s, cam, long_side=160)
    assert low_cov.shape == full_cov.shape == (240, 320) and low_depth.shape == (240, 320)
    assert float(full_cov.float().mean()) > 0.5
    assert float((low_cov == full_cov).float().mean()) > 0.97
    # pixels whose exact depth varies by at most 5 % within 9 x 9 (away from depth edges)
    mx = F.max_pool2d(gt[None, None], 9, 1, 4)[0, 0]
    mn = -F.max_pool2d(-gt[None, None], 9, 1, 4)[0, 0]
    smooth = mx <= 1.05 * mn

    def off(cov, d):
        return float(((((d - gt).abs() / gt) > 0.1) & cov & smooth).sum() / (cov & smooth).sum())

    assert off(low_cov, low_depth) < off(full_cov, full_depth) + 0.03
    # long_side at or above the camera's size: the full render itself
    same_cov, same_depth = coverage(s, cam, long_side=640)
    assert torch.equal(same_cov, full_cov) and torch.equal(same_depth, full_depth)


def test_masked_photometric_loss_ignores_outside_pixels():
    from fhgs_ros.core.losses import photometric_loss
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(3, 24, 32, generator=g)
    pred = gt.clone().requires_grad_(True)
    mask = torch.zeros(24, 32, dtype=torch.bool)
    mask[:, :16] = True
    with torch.no_grad():
        pred[:, :, 16:] = 1 - gt[:, :, 16:]  # wrong only outside the mask
    loss = photometric_loss(pred, gt, 0.2, mask)
    assert float(loss.detach()) < 0.05
    loss_all = photometric_loss(pred, gt, 0.2)
    assert float(loss_all) > 0.1
    loss.backward()
    assert float(pred.grad[:, :, 21:].abs().max()) == 0.0  # outside: no gradient (SSIM window: 5 px beyond)
    assert float(photometric_loss(pred, gt, 0.2, torch.zeros(24, 32, dtype=torch.bool))) == 0.0
    full = photometric_loss(gt, gt * 0.9, 0.2, torch.ones(24, 32, dtype=torch.bool))
    assert torch.allclose(full, photometric_loss(gt, gt * 0.9, 0.2))


def _write_llff(tmp: Path, ds, n: int = 6, mask_name: str = "{stem}_mask.png") -> None:
    """A synthetic LLFF folder: images_2/, masks_2/, poses_bounds.npy (full-res hwf = 2 x the images)."""
    from PIL import Image
    (tmp / "images_2").mkdir(parents=True)
    (tmp / "masks_2").mkdir()
    rows = []
    for i in range(n):
        f = ds.frames[i]
        c = f.camera
        stem = f"IMG_{i:02d}"
        Image.fromarray((f.image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(tmp / "images_2" / f"{stem}.png")
        m = np.zeros((c.height, c.width), np.uint8)
        m[:, : c.width // 2] = 255
        Image.fromarray(m).save(tmp / "masks_2" / mask_name.format(stem=stem))
        c2w = c.cam_to_world.double().numpy()
        r = np.stack([c2w[:3, 1], c2w[:3, 0], -c2w[:3, 2]], 1)   # OpenCV [right, down, fwd] -> LLFF [down, right, back]
        m35 = np.concatenate([r, c2w[:3, 3:4], np.array([[2 * c.height], [2 * c.width], [2 * c.fx]])], 1)
        rows.append(np.concatenate([m35.reshape(-1), [0.5, 8.0]]))
    np.save(tmp / "poses_bounds.npy", np.array(rows))


def test_llff_loader_reads_poses_and_masks(tmp_path, room):
    from fhgs_ros.datasets import detect_format, load_dataset
    _write_llff(tmp_path, room)
    assert detect_format(tmp_path) == "llff"
    ds = load_dataset(tmp_path, downscale=2)
    assert len(ds.frames) == 6 and ds.meta["masks"] == "masks_2" and ds.points is None
    for i, f in enumerate(ds.frames):
        c0 = room.frames[i].camera
        assert (f.camera.width, f.camera.height) == (c0.width, c0.height)
        assert abs(f.camera.fx - c0.fx) < 1e-3 and abs(f.camera.cx - (c0.width / 2 - 0.5)) < 1e-6
        assert torch.allclose(f.camera.world_to_cam, c0.world_to_cam, atol=1e-4)
        assert f.mask is not None and bool(f.mask[:, : c0.width // 2].all()) and not bool(f.mask[:, c0.width // 2:].any())
        assert torch.allclose(f.image, room.frames[i].image, atol=1 / 255 + 1e-6)


def test_colmap_mask_folder(tmp_path, room):
    from PIL import Image
    from fhgs_ros.datasets import Dataset, load_dataset, write_colmap_text
    sub = Dataset(room.frames[:3], room.root)
    out = write_colmap_text(sub, tmp_path / "col", write_extras_files=False)
    ds0 = load_dataset(out)
    (Path(ds0.root) / "masks").mkdir()
    for f in ds0.frames:
        m = np.full((f.camera.height, f.camera.width), 255, np.uint8)
        m[:10] = 0
        Image.fromarray(m).save(Path(ds0.root) / "masks" / (Path(f.path).name + ".png"))
    ds = load_dataset(out)
    for f in ds.frames:
        assert f.mask is not None and not bool(f.mask[:10].any()) and bool(f.mask[10:].all())


def test_fhgs_map_on_posed_rgb_without_points_or_depth(tmp_path, room):
    """A NeRF folder with images and poses only: fhgs-map seeds from stereo and writes its metrics."""
    from fhgs_ros.config import FHGSConfig
    from fhgs_ros.datasets import Dataset, Frame, write_nerf
    from fhgs_ros.offline import run_offline
    frames = [Frame(f.camera, f.image, labels=f.labels) for f in room.frames]
    write_nerf(Dataset(frames, room.root, label_names=room.label_names), tmp_path / "nerf", write_extras_files=False)
    assert not (tmp_path / "nerf" / "points3d.ply").exists() and not (tmp_path / "nerf" / "depth").exists()
    cfg = FHGSConfig()
    cfg.features.dim = 8
    cfg.offline.iterations = 30
    m = run_offline(cfg, tmp_path / "nerf", tmp_path / "out", iterations=30)
    assert (tmp_path / "out" / "metrics.json").is_file()
    assert m["num_seed_surfels"] > 1000 and np.isfinite(m["psnr"])


@pytest.mark.skipif(not (SHARED / "opensfm_berlin").is_dir(), reason="../shared/data/opensfm_berlin not present")
def test_berlin_stereo_depth_agrees_with_its_sfm_points():
    """The berlin set's three real photos (OpenSfM, 816 x 612 at 1/4): each view's stereo depth against the
    other two agrees with the SfM points it sees (median relative error about 1 %; the points themselves
    are not used by the stereo), and the default hole fill is far more accurate there than the plain mean fill."""
    from fhgs_ros.core.seeding import project
    from fhgs_ros.datasets import load_dataset

    ds = load_dataset(SHARED / "opensfm_berlin", 0.25)
    pts = ds.points.xyz.float()
    rels, fills, visible = [], {"default": [], "mean": []}, 0
    for i, f in enumerate(ds.frames):
        others = [j for j in range(3) if j != i]
        xy, z = project(pts, f.camera)
        px, py = xy[:, 0].round().long(), xy[:, 1].round().long()
        ok = (z > 0) & (px >= 0) & (py >= 0) & (px < f.camera.width) & (py < f.camera.height)
        visible += int(ok.sum())
        for name, cfg in (("default", MVSConfig()), ("mean", MVSConfig(fill_order=0, fill_agree=0.0))):
            r = estimate_depth(f.image, f.camera, [ds.frames[j].image for j in others],
                               [ds.frames[j].camera for j in others], cfg)
            d, c = r.depth[py[ok], px[ok]], r.confidence[py[ok], px[ok]]
            m = (d > 0) & (c > cfg.fill_confidence)          # measured, not hole-filled
            if name == "default":
                assert int(m.sum()) > 0.3 * int(ok.sum())
                rels.append((d[m] - z[ok][m]).abs() / z[ok][m])
            fl = (d > 0) & ~m
            fills[name].append((d[fl] - z[ok][fl]).abs() / z[ok][fl])
    rel = torch.cat(rels)
    assert float(rel.median()) < 0.02 and float((rel > 0.1).float().mean()) < 0.05
    # hole-filled pixels at SfM points (real photos): the default plane fill with the agreement test
    # (measured: 24 % of the visible points, median error 2.4 %, 4 % more than 10 % off) against the plain mean
    # fill (35 %, 4.7 %, 34 %)
    fd, fm = torch.cat(fills["default"]), torch.cat(fills["mean"])
    assert len(fd) > 0.15 * visible
    assert float(fd.median()) < 0.04 and float((fd > 0.1).float().mean()) < 0.1
    assert float((fm > 0.1).float().mean()) > 2 * float((fd > 0.1).float().mean())


def test_seed_parameters_choose_the_stereo_hole_filling():
    """seed.mvs_fill / mvs_fill_agree reach the stereo (node and fhgs-map share SeedConfig.stereo); the table's
    defaults are MVSConfig's."""
    from fhgs_ros.config import SeedConfig
    d = SeedConfig().stereo()
    assert (d.fill_order, d.fill_agree, d.fill_radius) == (MVSConfig.fill_order, MVSConfig.fill_agree,
                                                           MVSConfig.fill_radius)
    m = SeedConfig(mvs_fill="mean", mvs_fill_agree=0.0, mvs_long_side=96, mvs_defer=1).stereo()
    assert (m.fill_order, m.fill_agree, m.long_side, m.defer) == (0, 0.0, 96, 1)
    assert SeedConfig(mvs_fill="none").stereo().fill_radius == 0


@pytest.mark.skipif(not (SHARED / "maryrose_tankard").is_dir(), reason="../shared/data/maryrose_tankard absent")
def test_maryrose_stereo_depth_within_the_scene_bounds():
    """Real photos: the stereo depth of masked pixels lies inside the SfM near/far bounds of the view."""
    from fhgs_ros.datasets import load_dataset
    ds = load_dataset(SHARED / "maryrose_tankard", downscale=16)
    assert len(ds.frames) == 69 and all(f.mask is not None for f in ds.frames)
    cams = [f.camera for f in ds.frames]
    i = 20
    others = [j for j in range(69) if j != i]
    r = estimate_depth(ds.frames[i].image, cams[i], [ds.frames[j].image for j in others], [cams[j] for j in others],
                       MVSConfig(long_side=216), mask=ds.frames[i].mask)
    ok = r.confidence > 0
    assert float(ok.float().sum() / ds.frames[i].mask.float().sum()) > 0.3
    assert not bool((ok & ~ds.frames[i].mask).any())
    near, far = ds.meta["bounds"][i]
    inside = ((r.depth[ok] > 0.95 * near) & (r.depth[ok] < 1.05 * far)).float().mean()
    assert float(inside) > 0.9


def test_multi_view_consistency_keeps_agreeing_depths_and_rejects_wrong_ones(room):
    """consistent_sources: exact depths agree with another view's exact depth; depths 20 % off do not;
    with the check on, depth_from_views drops the pixels that no view confirms."""
    from fhgs_ros.core.mvs import consistent_sources, depth_from_views
    f0, f1 = room.frames[3], room.frames[4]
    v0, v1 = prepare_view(f0.image, f0.camera), prepare_view(f1.image, f1.camera)
    d0 = f0.depth.clone()
    wrong = torch.zeros_like(d0, dtype=torch.bool)
    wrong[:, : d0.shape[1] // 2] = True
    d0_bad = torch.where(wrong, d0 * 1.2, d0)
    n_ok, n_known = consistent_sources(v0, d0_bad, [(v1, f1.depth)], tol=0.02)
    seen = n_known > 0
    assert float(seen.float().mean()) > 0.3
    # exact half: most checkable pixels agree (misses at occlusion edges and from nearest-pixel sampling of
    # slanted surfaces at 128 x 96)
    exact_ok = float(n_ok[seen & ~wrong].float().mean())
    assert exact_ok > 0.6, exact_ok
    # wrong half: the reprojected point lands where the other view sees something else
    assert float(n_ok[seen & wrong].float().mean()) < 0.1
    # in depth_from_views: with min_consistent 1 every kept pixel is confirmed by the other view's depth
    cfg = MVSConfig(min_consistent=1, fill_radius=0)
    r = depth_from_views(v0, [v1, prepare_view(room.frames[2].image, room.frames[2].camera)], cfg,
                         checks=[(v1, f1.depth)])
    kept = r.depth > 0
    assert r.measured is not None and bool((r.measured[kept] == r.depth[kept]).all())
    n_ok, _ = consistent_sources(v0, r.depth, [(v1, f1.depth)], cfg.consistency_tol)
    assert bool((n_ok[kept] >= 1).all()) and int(kept.sum()) < int((r.measured > 0).sum())


def _striped_plane_views(z: float = 3.0, baseline: float = 0.3, w: int = 160, h: int = 120, f: float = 150.0,
                         period_px: float = 8.0, seed: int = 0):
    """A fronto-parallel plane at depth ``z`` seen by two cameras ``baseline`` apart along x: vertical
    stripes with a period of ``period_px`` pixels (every period is an equally good match) plus 25 small
    blobs (the only unambiguous texture)."""
    from fhgs_ros.core.mvs import MVSView
    rng = np.random.default_rng(seed)
    lam = period_px * z / f
    blobs = rng.uniform([-1.5, -1.2], [1.5, 1.2], (25, 2))
    xs, ys = np.meshgrid(np.arange(w), np.arange(h))
    views = []
    for tx in (0.0, baseline):
        w2c = torch.eye(4)
        w2c[0, 3] = -tx
        cam = Camera(w, h, f, f, (w - 1) / 2, (h - 1) / 2, w2c)
        X, Y = (xs - cam.cx) / f * z + tx, (ys - cam.cy) / f * z
        t = 0.5 + 0.3 * np.sin(2 * np.pi * X / lam)
        for bx, by in blobs:
            t = t + 0.25 * np.exp(-((X - bx) ** 2 + (Y - by) ** 2) / (2 * 0.03 ** 2))
        views.append(MVSView(t.astype(np.float32), cam))
    return views


def test_semi_global_matching_resolves_repetitive_texture():
    """Stripes repeat every 8 px over a disparity range of 4.5-30 px: winner-takes-all finds the plane at
    almost no pixel (the ambiguity test rejects them), SGM propagates the blobs' depth along the stripes."""
    from fhgs_ros.core.mvs import depth_from_views
    views = _striped_plane_views()
    res = {}
    for name, p2 in (("wta", 0.0), ("sgm", 0.5)):
        r = depth_from_views(views[0], views[1:], MVSConfig(fill_radius=0, sgm_p2=p2), depth_range=(1.5, 10.0))
        rel = (r.depth - 3.0).abs() / 3.0
        res[name] = (float(((r.depth > 0) & (rel < 0.03)).float().mean()),
                     float(((r.depth > 0) & (rel > 0.1)).float().mean()))
    assert res["wta"][0] < 0.1, res
    assert res["sgm"][0] > 0.7 and res["sgm"][1] < 0.06, res
