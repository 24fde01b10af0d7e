"""Semantic queries: by feature vector, by pixel, by 3-D point; exact blending weights."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
import torch.nn.functional as F

from conftest import random_scene, small_camera
from fhgs_ros.core.camera import Camera, look_at
from fhgs_ros.core.query import (QueryError, blend_values, crop_camera, dominant_pixels, pair_weights,
                                 pixel_weights, precision_recall, query_by_feature, query_by_pixel, query_by_point,
                                 query_example_report, surfel_labels_from_views, surfels_in_mask,
                                 write_query_json)
from fhgs_ros.core.render import render
from fhgs_ros.core.surfels import SurfelMap


def two_planes(dim: int = 32, spacing: float = 0.05, seed: int = 0, noise: float = 0.1):
    """Surfels tiling the plane y = 0, x in [-1, 1), z in [-0.75, 0.75), facing -y.

    Label 0 for x < 0 and label 1 for x >= 0, each with its own feature direction (+ noise).
    Returns (surfels, labels (N,), camera (64 x 48, looking along +y at the origin))."""
    g = torch.Generator().manual_seed(seed)
    xs = torch.arange(-1 + spacing / 2, 1, spacing)
    zs = torch.arange(-0.75 + spacing / 2, 0.75, spacing)
    gx, gz = torch.meshgrid(xs, zs, indexing="ij")
    means = torch.stack([gx.reshape(-1), torch.zeros(gx.numel()), gz.reshape(-1)], -1)
    labels = (means[:, 0] >= 0).long()
    protos = F.normalize(torch.randn(2, dim, generator=g), dim=-1) * 3
    feats = protos[labels] + noise * torch.randn(len(means), dim, generator=g)
    n = len(means)
    quats = torch.tensor([math.cos(math.pi / 4), math.sin(math.pi / 4), 0.0, 0.0]).expand(n, 4).clone()
    surfels = SurfelMap.create(means, torch.rand(n, 3, generator=g), feats, scales=torch.full((n, 2), 0.6 * spacing),
                               quats=quats, opacity=0.9)
    cam = Camera(64, 48, 60.0, 60.0, 31.5, 23.5, look_at((0.0, -3.0, 0.0), (0.0, 0.0, 0.0)))
    return surfels, labels, cam


def clusters(n_per=500, k=4, dim=64, noise=0.15, seed=0):
    g = torch.Generator().manual_seed(seed)
    protos = F.normalize(torch.randn(k, dim, generator=g), dim=-1) * 3
    labels = torch.arange(k).repeat_interleave(n_per)
    feats = protos[labels] + noise * torch.randn(len(labels), dim, generator=g)
    n = len(labels)
    surfels = SurfelMap.create(torch.randn(n, 3, generator=g), torch.rand(n, 3, generator=g), feats,
                               scales=torch.full((n, 2), 0.01))
    return surfels, labels


# ----------------------------------------------------------------------------- by feature
def test_query_by_feature_precision_recall_and_order():
    surfels, labels = clusters()
    seed = 1234  # a surfel of object 2
    res = query_by_feature(surfels, surfels.features_raw[seed].float(), threshold=0.7, seed=seed)
    pr = precision_recall(res, labels, int(labels[seed]))
    assert pr["precision"] == 1.0 and pr["recall"] >= 0.99
    assert res.seed == seed and seed in res.indices.tolist()
    assert (res.scores[:-1] >= res.scores[1:]).all() and (res.scores >= 0.7).all()
    # same set as a brute-force loop
    v = F.normalize(surfels.features_raw[seed].float(), dim=0)
    brute = {i for i in range(len(surfels))
             if float(F.normalize(surfels.features_raw[i].float(), dim=0) @ v) >= 0.7}
    assert set(res.indices.tolist()) == brute
    top = query_by_feature(surfels, v, threshold=-1.0, top_k=5)
    assert len(top) == 5 and torch.equal(top.indices, res.indices[:5])
    assert res.mask(len(surfels)).sum() == len(res)
    with pytest.raises(QueryError, match="dims"):
        query_by_feature(surfels, torch.ones(3))
    with pytest.raises(QueryError, match="zero"):
        query_by_feature(surfels, torch.zeros(64))


def test_query_is_vectorized_linear_time():
    g = torch.Generator().manual_seed(0)
    big = F.normalize(torch.randn(1_000_000, 16, generator=g), dim=-1)
    v = big[0]
    query_by_feature(big[:1000], v, 0.9)  # warm-up
    t0 = time.perf_counter()
    res = query_by_feature(big, v, 0.9)
    t_big = time.perf_counter() - t0
    # one (N, D) x (D,) product: ~0.3 s here for 1M x 16; a pairwise or per-surfel Python loop
    # would take minutes
    assert t_big < 2.0, f"1M-surfel query took {t_big:.2f} s"
    assert res.indices[0] == 0 and res.scores[0] == pytest.approx(1.0)
    assert len(res) == int(((big @ v) >= 0.9).sum())


def test_query_by_point():
    surfels, labels = clusters(n_per=50, k=3, dim=16)
    i = 77
    p = surfels.means[i].detach() + 1e-4
    res = query_by_point(surfels, p, threshold=0.7)
    assert res.seed == i and precision_recall(res, labels, int(labels[i]))["precision"] == 1.0
    far = query_by_point(surfels, p + 100, threshold=0.7, radius=0.5)
    assert len(far) == 0 and far.seed == -1


# ----------------------------------------------------------------------------- blending weights
def test_pair_weights_reproduce_the_renderer():
    s = random_scene(60, 8, seed=3)
    surfels = SurfelMap.create(s["means"], s["colors"], s["features"], scales=s["scales"], quats=s["quats"],
                               opacity=s["opacity"])
    cam = small_camera(24, 20)
    r = render(surfels, cam, render_features=True, backend="reference")
    sid, pix, w = pair_weights(surfels, cam)
    alpha = torch.zeros(cam.width * cam.height).index_add(0, pix, w).reshape(cam.height, cam.width)
    assert torch.allclose(alpha, r.alpha, atol=1e-5)
    feats = blend_values(sid, pix, w, surfels.features_raw, cam.width, cam.height, chunk=97)
    assert torch.allclose(feats, r.features, atol=1e-5)
    # a 1x1 window renders exactly that pixel
    x, y = 11, 9
    r1 = render(surfels, crop_camera(cam, x, y, 1, 1), render_features=True, backend="reference")
    assert torch.allclose(r1.features[:, 0, 0], r.features[:, y, x], atol=1e-5)
    idx, ww = pixel_weights(surfels, cam, x, y)
    assert float(ww.sum()) == pytest.approx(float(r.alpha[y, x].detach()), abs=1e-5)
    assert (ww[:-1] >= ww[1:]).all()
    # dominant pixel: argmax over that surfel's pairs
    dom, wmax = dominant_pixels(surfels, cam)
    for i in torch.nonzero(dom >= 0).squeeze(1)[:10].tolist():
        m = sid == i
        assert float(wmax[i]) == pytest.approx(float(w[m].max()))
        assert int(dom[i]) in pix[m][w[m] == w[m].max()].tolist()


# ----------------------------------------------------------------------------- by pixel
@pytest.mark.parametrize("mode", ["rendered", "dominant"])
def test_query_by_pixel_on_two_planes(mode):
    surfels, labels, cam = two_planes()
    for x, lab in ((14, 0), (50, 1)):
        res = query_by_pixel(surfels, cam, x, 24, threshold=0.8, mode=mode)
        pr = precision_recall(res, labels, lab)
        assert pr["precision"] == 1.0 and pr["recall"] > 0.95, (mode, x, pr)
        assert int(labels[res.seed]) == lab
    with pytest.raises(QueryError, match="no surfel"):
        query_by_pixel(surfels, cam, 0, 0)  # background corner
    with pytest.raises(QueryError, match="outside"):
        query_by_pixel(surfels, cam, 64, 0)


def test_surfels_in_mask_by_dominant_pixel_and_centre():
    surfels, labels, cam = two_planes()
    mask = torch.zeros(48, 64, dtype=torch.bool)
    mask[:, :32] = True  # left half of the image = label 0 (x < 0 projects left)
    for membership in ("dominant", "centre"):
        for rls in (None, 48):
            idx = surfels_in_mask(surfels, cam, mask, membership=membership, render_long_side=rls)
            pr = precision_recall(idx, labels, 0)
            assert pr["precision"] == 1.0 and pr["recall"] >= (0.98 if rls is None else 0.9), (membership, rls, pr)
    # surfels hidden behind an opaque front layer are not "in" any mask
    front = two_planes(seed=1)[0]
    front.means.data[:, 1] -= 0.5
    front.log_scales.data += math.log(2.0)  # overlapping: an opaque wall
    both = surfels.snapshot()
    both.append(front)
    idx = surfels_in_mask(both, cam, torch.ones(48, 64, dtype=torch.bool))
    assert (idx >= len(surfels)).float().mean() > 0.95
    with pytest.raises(QueryError, match="shape"):
        surfels_in_mask(surfels, cam, torch.ones(4, 4, dtype=torch.bool))


def test_query_example_report_and_json(tmp_path):
    surfels, labels, _ = two_planes()
    rep = query_example_report(surfels, labels, 1, threshold=0.8)
    assert rep["precision"] == 1.0 and rep["recall"] > 0.95 and int(labels[rep["seed_surfel"]]) == 1
    write_query_json(tmp_path / "demo_out" / "query.json", rep)
    back = json.loads((tmp_path / "demo_out" / "query.json").read_text())
    assert back["precision"] == rep["precision"] and back["recall"] == rep["recall"]
    with pytest.raises(QueryError, match="label 7"):
        query_example_report(surfels, labels, 7)


def test_surfel_labels_from_labelled_views():
    surfels, labels, cam = two_planes()
    lab_img = torch.zeros(48, 64, dtype=torch.long)
    lab_img[:, 32:] = 1
    got = surfel_labels_from_views(surfels, [cam], [lab_img])
    known = got >= 0
    assert known.float().mean() > 0.98 and (got[known] == labels[known]).float().mean() > 0.99
    # unknown surfels are ignored when scoring; label=None picks the most frequent label
    got[:10] = -1
    rep = query_example_report(surfels, got, None, threshold=0.8)
    assert rep["precision"] == 1.0 and rep["recall"] > 0.95
