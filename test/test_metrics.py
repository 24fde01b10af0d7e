"""Metrics: PSNR, FE (sigma and plain), FL1, label scores, Chamfer, evaluate_views."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fhgs_ros.core.camera import Camera, look_at
from fhgs_ros.core.metrics import (LabelConfusion, chamfer_distance, classify_features, evaluate_views,
                                   feature_entropy, feature_l1, label_scores, psnr, sample_mesh_points,
                                   target_valid_grid)
from fhgs_ros.core.raster_types import FeatureTarget, NDFDParams
from fhgs_ros.core.surfels import SurfelMap
from fhgs_ros.datasets.base import Frame

D = 8
W, H = 32, 24


def plane_scene(features: torch.Tensor | None = None, n_side: int = 16, extent: float = 1.6) -> SurfelMap:
    """Dense opaque surfels on the plane z = 0, facing +z, covering every pixel of ``camera()``."""
    g = torch.linspace(-extent, extent, n_side)
    xy = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    n = xy.shape[0]
    means = torch.cat([xy, torch.zeros(n, 1)], 1)
    if features is None:
        features = torch.randn(n, D, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    return SurfelMap.create(means, torch.rand(n, 3, generator=gen), features,
                            scales=torch.full((n, 2), 1.2 * 2 * extent / (n_side - 1)),
                            quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1), opacity=0.9)


def camera(eye=(0.05, 0.1, 2.0)) -> Camera:
    return Camera(W, H, 30.0, 30.0, (W - 1) / 2, (H - 1) / 2, look_at(eye, (0, 0, 0), up=(0, 1, 0)))


def unit(i: int) -> torch.Tensor:
    e = torch.zeros(D)
    e[i] = 1.0
    return e


# ------------------------------------------------------------------------------------ PSNR
def test_psnr_known_values():
    gt = torch.zeros(3, 4, 5)
    assert psnr(gt + 0.1, gt) == pytest.approx(20.0)
    assert psnr(gt + 0.01, gt) == pytest.approx(40.0)
    assert psnr(gt, gt) == math.inf
    a = np.full((2, 2), 0.5)
    b = a.copy()
    b[0, 0] = 0.0  # mse = 0.25 / 4
    assert psnr(a, b) == pytest.approx(10 * math.log10(16.0))
    with pytest.raises(ValueError):
        psnr(torch.zeros(3, 2, 2), torch.zeros(3, 2, 3))


# ------------------------------------------------------------------------------------ FE
def test_fe_zero_when_features_agree_and_positive_when_not():
    f0 = unit(0) * 3.0  # raw scale does not matter for FE (unit copies are used)
    n = 16 * 16
    cam = camera()
    target = FeatureTarget.for_image(f0[:, None, None].repeat(1, 6, 8), W, H)

    same = plane_scene(f0[None].repeat(n, 1))
    r = feature_entropy(same, cam, target, backend="reference")
    assert abs(r["fe"]) < 1e-6 and abs(r["fe_plain"]) < 1e-6

    other = plane_scene(unit(1)[None].repeat(n, 1))  # orthogonal: phi = 0, sigma = 1 / (1 + e^-10)
    r = feature_entropy(other, cam, target, backend="reference")
    from fhgs_ros.core.render import render
    alpha = render(other, cam, backend="reference").alpha.double().mean().item()
    assert alpha > 0.9
    assert r["fe_plain"] == pytest.approx(alpha, rel=1e-4)  # sum w (1 - 0) = alpha
    assert r["fe"] == pytest.approx(alpha / (1 + math.exp(-10)), rel=1e-4)
    assert r["fe"] > 0.5


def test_fe_not_above_fe_plain():
    cam = camera()
    grid = torch.randn(D, 6, 8, generator=torch.Generator().manual_seed(3))
    target = FeatureTarget.for_image(grid, W, H)
    m = plane_scene()
    r = feature_entropy(m, cam, target, backend="reference")
    assert 0 < r["fe"] < r["fe_plain"]
    # sigma_increasing flips the gate: sigma(phi) + sigma_flipped(phi) = 1, so the two FEs add to fe_plain.
    r2 = feature_entropy(m, cam, target, ndfd=NDFDParams(sigma_increasing=True), backend="reference")
    assert r["fe"] + r2["fe"] == pytest.approx(r["fe_plain"], rel=1e-5)
    assert r2["fe_plain"] == pytest.approx(r["fe_plain"], rel=1e-6)


# ------------------------------------------------------------------------------------ FL1
def test_feature_l1_constant_and_ramp():
    r = torch.full((4, 12, 16), 2.0)
    g = torch.full((4, 3, 4), 0.5)
    assert feature_l1(r, g) == pytest.approx(1.5)
    # A linear ramp survives an align_corners=True bilinear resize exactly.
    xs = torch.linspace(0, 1, 16)
    ramp = xs[None, None, :].repeat(2, 12, 1)
    gt = torch.linspace(0, 1, 4)[None, None, :].repeat(2, 3, 1)
    assert feature_l1(ramp, gt) == pytest.approx(0.0, abs=1e-6)
    assert feature_l1(ramp, gt + 0.25) == pytest.approx(0.25, abs=1e-6)
    with pytest.raises(ValueError):
        feature_l1(torch.zeros(3, 4, 4), torch.zeros(4, 2, 2))


def test_target_valid_grid_crops_padding():
    t = FeatureTarget.for_image(torch.zeros(5, 64, 64), 1000, 750)  # SAM: 64x64 with padding rows
    assert tuple(target_valid_grid(t, 1000, 750).shape) == (5, 48, 64)


# ------------------------------------------------------------------------------------ labels
def test_label_scores_hand_made():
    gt = torch.tensor([[0, 0, 1], [1, 2, 2]])
    pred = torch.tensor([[0, 1, 1], [1, 2, 0]])
    s = label_scores(pred, gt, 3)
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["per_class_iou"] == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert s["miou"] == pytest.approx(0.5)
    # An extra label present nowhere is NaN and not counted in the mean.
    s4 = label_scores(pred, gt, 4)
    assert math.isnan(s4["per_class_iou"][3]) and s4["miou"] == pytest.approx(0.5)
    # Unknown predictions (-1) are wrong but no class's false positive; GT 255 is ignored.
    s = label_scores(torch.tensor([0, -1, 1]), torch.tensor([0, 0, 255]), 2)
    assert s["accuracy"] == pytest.approx(0.5)
    assert s["per_class_iou"][0] == pytest.approx(0.5)
    assert math.isnan(s["per_class_iou"][1]) and s["num_pixels"] == 2


def test_label_confusion_accumulates():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, size=(20, 30))
    pred = np.where(rng.random((20, 30)) < 0.7, gt, rng.integers(-1, 5, size=(20, 30)))
    c = LabelConfusion(5)
    c.update(pred[:10], gt[:10])
    c.update(pred[10:], gt[10:])
    whole = label_scores(pred, gt, 5)
    got = c.scores()
    assert got["accuracy"] == pytest.approx(whole["accuracy"])
    assert got["miou"] == pytest.approx(whole["miou"])
    assert got["accuracy"] == pytest.approx(float((pred == gt).mean()))


def test_classify_features_alpha_gate():
    lv = torch.stack([unit(0), unit(1)])
    feats = torch.zeros(D, 1, 3)
    feats[0, 0, 0] = 2.0
    feats[1, 0, 1] = 0.7
    feats[1, 0, 2] = 1.0
    pred = classify_features(feats, lv, alpha=torch.tensor([[0.9, 0.8, 0.2]]))
    assert pred.tolist() == [[0, 1, -1]]


# ------------------------------------------------------------------------------------ chamfer
def square_mesh():
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]])
    f = torch.tensor([[0, 1, 2], [0, 2, 3]])
    return v, f


def test_chamfer_self_and_shift():
    v, f = square_mesh()
    a = sample_mesh_points(v, f, 4000, seed=0)
    assert a.shape == (4000, 3) and a.dtype == torch.float32
    assert chamfer_distance(a, a)["chamfer"] == 0.0
    b = sample_mesh_points(v, f, 4000, seed=1)
    assert chamfer_distance(a, b)["chamfer"] < 0.02
    shifted = b + torch.tensor([0.0, 0.0, 0.1])
    r = chamfer_distance(a, shifted)
    assert r["accuracy"] == pytest.approx(0.1, abs=0.005)
    assert r["completeness"] == pytest.approx(0.1, abs=0.005)
    assert r["chamfer"] == pytest.approx(0.1, abs=0.005)
    # max_dist drops far points from the means (DTU style)
    far = torch.cat([a, torch.tensor([[0.5, 0.5, 10.0]])])
    assert chamfer_distance(far, a, max_dist=1.0)["accuracy"] == 0.0


def test_sample_mesh_points_area_uniform():
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 5], [3, 0, 5], [0, 3, 5]])
    f = torch.tensor([[0, 1, 2], [3, 4, 5]])  # areas 0.5 and 4.5
    p = sample_mesh_points(v, f, 20000, seed=0)
    frac_small = (p[:, 2] < 2.5).float().mean().item()
    assert frac_small == pytest.approx(0.1, abs=0.01)
    small = p[p[:, 2] < 2.5]
    assert (small[:, 0] >= -1e-6).all() and (small[:, 1] >= -1e-6).all() and (small[:, :2].sum(1) <= 1 + 1e-5).all()
    assert torch.equal(p, sample_mesh_points(v, f, 20000, seed=0))


# ------------------------------------------------------------------------------------ evaluate_views
def test_evaluate_views_end_to_end():
    from fhgs_ros.core.render import render

    g = torch.linspace(-1.6, 1.6, 16)
    xy = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    left = xy[:, 0] < 0
    feats = torch.where(left[:, None], unit(0)[None] * 2, unit(1)[None] * 2)
    m = plane_scene(feats)
    lv = torch.stack([unit(0), unit(1)])
    frames, targets = [], []
    for eye in [(0.0, 0.0, 2.0), (0.1, -0.1, 2.2)]:
        cam = camera(eye)
        with torch.no_grad():
            out = render(m, cam, backend="reference")
        img = (out.rgb + 0.05).clamp(0, 1)
        labels = torch.full((H, W), -1, dtype=torch.int64)
        # image x follows world x here (look_at with up = +y); keep pixels well away from the seam
        cols = torch.arange(W)
        ximg = (cols - cam.cx) / cam.fx * 2.0 + eye[0]
        labels[:, ximg < -0.3] = 0
        labels[:, ximg > 0.3] = 1
        frames.append(Frame(cam, img, path=f"view{len(frames)}", labels=labels))
        grid = torch.zeros(D, 6, 8)
        grid[0, :, :4] = 1.0
        grid[1, :, 4:] = 1.0
        targets.append(FeatureTarget.for_image(grid, W, H))
    res = evaluate_views(m, frames, targets, label_vectors=lv, backend="reference")
    assert res["num_views"] == 2 and len(res["per_view"]) == 2
    expected_psnr = np.mean([psnr(render(m, f.camera, backend="reference").rgb.detach().clamp(0, 1), f.image)
                             for f in frames])
    assert res["psnr"] == pytest.approx(expected_psnr, rel=1e-6)
    assert 0 <= res["fe"] <= res["fe_plain"]
    assert res["fl1"] > 0 and math.isfinite(res["fl1"])
    assert res["label_accuracy"] > 0.95
    assert res["label_miou"] > 0.9
    # Without targets/labels only PSNR is computed.
    res2 = evaluate_views(m, frames, None, backend="reference")
    assert math.isnan(res2["fe"]) and "label_miou" not in res2
    with pytest.raises(ValueError):
        evaluate_views(m, frames, targets[:1], backend="reference")


def test_fl1_in_evaluate_views_matches_manual():
    from fhgs_ros.core.render import render

    m = plane_scene()
    cam = camera()
    grid = torch.randn(D, 6, 8, generator=torch.Generator().manual_seed(5))
    tgt = FeatureTarget.for_image(grid, W, H)
    with torch.no_grad():
        out = render(m, cam, render_features=True, backend="reference")
    fr = Frame(cam, out.rgb.clamp(0, 1))
    res = evaluate_views(m, [fr], [tgt], backend="reference")
    manual = (F.interpolate(out.features[None], size=(6, 8), mode="bilinear", align_corners=True)[0] - grid).abs()
    assert res["fl1"] == pytest.approx(manual.mean().item(), rel=1e-5)
    fe = feature_entropy(m, cam, tgt, backend="reference")
    assert res["fe"] == pytest.approx(fe["fe"], rel=1e-6) and res["fe_plain"] == pytest.approx(fe["fe_plain"], rel=1e-6)
