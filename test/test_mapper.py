"""Mapper training: frozen features stay bit-identical through optimization, densification and
pruning; children copy their parent's feature; the loss decreases; the hard cap holds."""

from __future__ import annotations

import torch

from conftest import random_scene
from fhgs_ros.core.camera import Camera, look_at
from fhgs_ros.core.density import DensityConfig
from fhgs_ros.core.mapper import Keyframe, Mapper, MapperConfig
from fhgs_ros.core.raster_types import FeatureTarget
from fhgs_ros.core.reference import rasterize_reference
from fhgs_ros.core.surfels import SurfelMap


def _views(n_views=4, size=(24, 20)):
    """Keyframes rendered from a random 'ground-truth' surfel scene."""
    sc = random_scene(60, 8, seed=7, spread=0.5, scale_range=(0.05, 0.2))
    kfs = []
    for i in range(n_views):
        ang = 2 * torch.pi * i / n_views
        eye = (2.5 * float(torch.sin(torch.tensor(ang))), -2.5 * float(torch.cos(torch.tensor(ang))), 0.5)
        f = 1.1 * max(size)
        cam = Camera(size[0], size[1], f, f, (size[0] - 1) / 2, (size[1] - 1) / 2, look_at(eye, (0, 0, 0)))
        with torch.no_grad():
            r = rasterize_reference(sc["means"], sc["quats"], sc["scales"], sc["opacity"], sc["colors"], cam,
                                    feature_values=sc["features"])
        grid = torch.nn.functional.interpolate(r.features[None], size=(5, 6), mode="area")[0]
        kfs.append(Keyframe(cam, r.rgb.clamp(0, 1), FeatureTarget.for_image(grid, size[0], size[1])))
    return sc, kfs


def _mapper(cfg: MapperConfig, sc, kfs) -> Mapper:
    m = Mapper(cfg, feature_dim=8, extent=2.5)
    for kf in kfs:
        m.add_keyframe(kf)
    g = torch.Generator().manual_seed(0)
    init = SurfelMap.create(sc["means"] + 0.05 * torch.randn(60, 3, generator=g), torch.rand(60, 3, generator=g),
                            torch.randn(60, 8, generator=g), torch.full((60, 2), 0.08))
    m.add_surfels(init)
    return m


def test_features_frozen_through_training_and_densification():
    sc, kfs = _views()
    cfg = MapperConfig(densify_from_iter=5, densify_every=5, densify_until_iter=40, opacity_reset_every=1000,
                       sh_increase_every=10, lambda_dist=10.0, dist_from_iter=10, normal_from_iter=10,
                       density=DensityConfig(grad_threshold=1e-6, percent_dense=0.5, max_surfels=400),
                       backend="reference")
    m = _mapper(cfg, sc, kfs)
    before = {int(u): (fr.clone(), fu.clone()) for u, fr, fu in
              zip(m.surfels.uid, m.surfels.features_raw, m.surfels.features_unit)}
    means_before = m.surfels.means.detach().clone()
    for _ in range(45):
        m.step()
    s = m.surfels
    assert not s.features_raw.requires_grad and not s.features_unit.requires_grad
    assert all(not (p is s.features_raw or p is s.features_unit) for g in m.opt.opt.param_groups for p in g["params"])
    assert len(m.densify_log) > 0 and sum(d["cloned"] + d["split"] for d in m.densify_log) > 0
    assert len(s) <= 400
    survivors = children = 0
    for u, pu, fr, fu in zip(s.uid.tolist(), s.parent_uid.tolist(), s.features_raw, s.features_unit):
        if u in before:
            survivors += 1
            assert torch.equal(fr, before[u][0]) and torch.equal(fu, before[u][1])
        elif pu in before:
            children += 1
            assert torch.equal(fr, before[pu][0]) and torch.equal(fu, before[pu][1])
    assert survivors > 0 and children > 0
    # every feature row in the map is bit-identical to some seeded feature
    seeded = torch.stack([v[0] for v in before.values()])
    assert all((seeded == row).all(1).any() for row in s.features_raw)
    assert not torch.equal(means_before[: min(len(s), 60)], s.means.detach()[: min(len(s), 60)])


def test_training_reduces_photometric_loss():
    sc, kfs = _views()
    cfg = MapperConfig(densify_until_iter=0, backend="reference", seed=1)
    m = _mapper(cfg, sc, kfs)
    first = [m.step()["rgb"] for _ in range(8)]
    for _ in range(150):
        m.step()
    last = [m.step()["rgb"] for _ in range(8)]
    assert sum(last) / 8 < 0.8 * sum(first) / 8


def test_snapshot_is_detached_copy():
    sc, kfs = _views(2)
    m = _mapper(MapperConfig(backend="reference"), sc, kfs)
    snap = m.snapshot()
    m.step()
    assert not torch.equal(snap.means, m.surfels.means.detach())
    assert not snap.means.requires_grad


def test_mask_ignore_keeps_ndfd_off_the_outside_pixels():
    """mask_mode ignore: pixels outside a keyframe's mask give no loss, colour nor NDFD: the NDFD terms
    are the means over the mask pixels of the per-pixel NDFD maps (the plain mean without a mask)."""
    from fhgs_ros.core.render import render
    sc, kfs = _views(n_views=1)
    kf = kfs[0]
    h, w = kf.image.shape[1:]
    left = torch.zeros(h, w, dtype=torch.bool)
    left[:, : w // 2] = True
    for mask in (None, torch.ones(h, w, dtype=torch.bool), left):
        cfg = MapperConfig(densify_until_iter=0, backend="reference", seed=3, ndfd_stride=1)
        torch.manual_seed(0)  # SurfelMap.create draws the rotations from the global generator
        m = _mapper(cfg, sc, [Keyframe(kf.camera, kf.image, kf.target, mask=mask)])
        with torch.no_grad():
            r = render(m.surfels, kf.camera, background=m.background, target=kf.target, ndfd=cfg.ndfd,
                       backend="reference")
        sel = torch.ones(h, w, dtype=torch.bool) if mask is None else mask
        terms = m.step()
        for key, full in (("ext", r.ndfd_ext), ("int", r.ndfd_int)):
            want = float(full[sel].mean())
            assert want > 0 and abs(terms[key] - want) < 1e-4 * want, (key, terms[key], want)
        if mask is left:  # and it differs from the whole-image mean
            assert abs(terms["ext"] - float(r.ndfd_ext.mean())) > 0.05 * terms["ext"]
