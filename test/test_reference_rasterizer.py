"""The vectorized reference rasterizer against a literal per-pixel loop of the 2DGS algorithm,
plus analytic checks of the ray-surfel intersection."""

from __future__ import annotations

import math

import torch

from conftest import random_scene, small_camera
from fhgs_ros.core.camera import Camera, look_at
from fhgs_ros.core.raster_types import FeatureTarget, NDFDParams
from fhgs_ros.core.reference import rasterize_reference, sample_feature_target, screen_bounds, splat_matrices


def naive_render(sc, cam, grid=None, lam=0.5, k=20.0):
    """Literal per-pixel front-to-back loop (float64), written independently of the vectorized code."""
    tm = splat_matrices(sc["means"], sc["quats"], sc["scales"], cam)
    centre, radius, ok = screen_bounds(tm)
    w2c = cam.world_to_cam.double()
    zc = sc["means"] @ w2c[2, :3] + w2c[2, 3]
    order = sorted(range(len(zc)), key=lambda i: (float(zc[i]), i))
    fgt = sample_feature_target(FeatureTarget.for_image(grid, cam.width, cam.height), cam.width, cam.height) \
        if grid is not None else None
    out = {k_: torch.zeros(cam.height, cam.width, dtype=torch.float64) for k_ in ("alpha", "depth", "ext", "int", "dist")}
    rgb = torch.zeros(3, cam.height, cam.width, dtype=torch.float64)
    near, far = cam.near, cam.far
    for y in range(cam.height):
        for x in range(cam.width):
            T, W = 1.0, 0.0
            F = torch.zeros(sc["features"].shape[1], dtype=torch.float64)
            m1 = m2 = 0.0
            for i in order:
                if not ok[i] or zc[i] <= near:
                    continue
                c, r = centre[i], float(radius[i])
                if not (math.floor(c[0] - r) <= x <= math.ceil(c[0] + r) and math.floor(c[1] - r) <= y <= math.ceil(c[1] + r)):
                    continue
                tu, tv, tw = tm[i, 0], tm[i, 1], tm[i, 2]
                kk, ll = x * tw - tu, y * tw - tv
                p = torch.linalg.cross(kk, ll)
                if p[2] == 0:
                    continue
                u, v = p[0] / p[2], p[1] / p[2]
                rho = min(float(u * u + v * v), 2.0 * float((c[0] - x) ** 2 + (c[1] - y) ** 2))
                z = float(u * tw[0] + v * tw[1] + tw[2])
                if z < near:
                    continue
                a = min(0.99, float(sc["opacity"][i]) * math.exp(-0.5 * rho))
                if a < 1 / 255:
                    continue
                if T * (1 - a) < 1e-4:
                    break
                w = a * T
                rgb[:, y, x] += w * sc["colors"][i]
                out["depth"][y, x] += w * z
                mm = far / (far - near) * (1 - near / z)
                out["dist"][y, x] += (mm * mm * (1 - T) + m2 - 2 * mm * m1) * w
                m1 += w * mm
                m2 += w * mm * mm
                if fgt is not None:
                    fi = sc["features"][i]
                    phi = float(fi @ fgt[y * cam.width + x])
                    s = 1 / (1 + math.exp(k * (phi - lam)))
                    out["ext"][y, x] += s * w * (1 - phi)
                    out["int"][y, x] += s * w * (W - float(F @ fi))
                    W += w
                    F += w * fi
                T *= 1 - a
            out["alpha"][y, x] = 1 - T
    return rgb, out


def test_reference_matches_naive_loop():
    for seed in (0, 1, 2):
        sc = random_scene(25, 6, seed=seed, dtype=torch.float64, spread=0.5, scale_range=(0.05, 0.4))
        cam = small_camera(14, 11)
        grid = torch.randn(6, 3, 4, dtype=torch.float64)
        r = rasterize_reference(sc["means"], sc["quats"], sc["scales"], sc["opacity"], sc["colors"], cam, None,
                                sc["features"], FeatureTarget.for_image(grid, 14, 11), NDFDParams())
        rgb, o = naive_render(sc, cam, grid)
        assert torch.allclose(r.rgb, rgb, atol=1e-10)
        assert torch.allclose(r.alpha, o["alpha"], atol=1e-10)
        assert torch.allclose(r.depth, o["depth"], atol=1e-10)
        assert torch.allclose(r.distortion, o["dist"], atol=1e-9)
        assert torch.allclose(r.ndfd_ext, o["ext"], atol=1e-10)
        assert torch.allclose(r.ndfd_int, o["int"], atol=1e-10)
        assert r.alpha.max() > 0.5  # the scene is not empty


def test_fronto_parallel_surfel_intersection_and_depth():
    """A surfel facing the camera at distance 2: centre pixel alpha = opacity, depth = 2 exactly,
    and the footprint falls off as exp(-r^2 / 2) with r in units of the scale."""
    cam = Camera(41, 41, 40.0, 40.0, 20.0, 20.0, look_at((0, -2, 0), (0, 0, 0)))
    # Surfel in the world xz-plane (normal along world y, towards the camera).
    q = torch.tensor([[math.cos(math.pi / 4), math.sin(math.pi / 4), 0.0, 0.0]], dtype=torch.float64)
    means = torch.zeros(1, 3, dtype=torch.float64)
    scales = torch.tensor([[0.2, 0.2]], dtype=torch.float64)
    r = rasterize_reference(means, q, scales, torch.tensor([0.8], dtype=torch.float64),
                            torch.ones(1, 3, dtype=torch.float64), cam)
    assert abs(r.alpha[20, 20].item() - 0.8) < 1e-9
    assert abs(r.depth[20, 20].item() / r.alpha[20, 20].item() - 2.0) < 1e-9
    # 4 px right of centre: world offset 4 * 2 / 40 = 0.2 = one scale unit -> G = exp(-0.5).
    assert abs(r.alpha[20, 24].item() - 0.8 * math.exp(-0.5)) < 1e-9
    assert abs(r.depth_median[20, 20].item() - 2.0) < 1e-9
    n = r.normal[:, 20, 20] / r.alpha[20, 20]
    assert torch.allclose(n, torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64), atol=1e-9)  # faces the camera


def test_behind_camera_and_edge_on_are_culled_or_skipped():
    sc = random_scene(10, 3, seed=4)
    cam = small_camera()
    sc["means"][:, 1] = -4.0  # all behind the camera at y = -2.5 looking +y
    r = rasterize_reference(sc["means"], sc["quats"], sc["scales"], sc["opacity"], sc["colors"], cam)
    assert r.alpha.abs().max() == 0 and (r.radii == 0).all()
