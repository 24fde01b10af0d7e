"""The SIMD RGB path of the native CPU kernels (no NDFD: 16 pixels per vector, issue 13).

Same honest-scene protocol and tolerances as test_native_equivalence.py (float64 reference as the
ground truth, fresh seeds, NaN poisoning, sanitize), with the feature terms removed so that the
forward and backward run the row-vector kernels; every instruction-set variant the CPU supports
(x86-64-v4 AVX-512, x86-64-v3 AVX2, the SSE2 baseline) is run, and the frozen scalar baseline
kernels (the bench's reference point) must agree with the fast ones.
"""

from __future__ import annotations

import pytest
import torch

from fhgs_ros.core import native
from test_native_equivalence import (FWD_TOL, GRAD_TOL, PARAMS, check_equivalent, near_threshold_surfels, needs_native,
                                     prepared, random_scene, saturation_scene)


def _isas() -> list[str]:
    if not native.native_available():
        return ["auto"]
    out = []
    for name in ("x86-64-v4", "x86-64-v3", "baseline"):
        try:
            native._ext.set_cpu_isa(name)
            out.append(name)
        except RuntimeError:
            pass
    native._ext.set_cpu_isa("auto")
    return out


ISAS = _isas()


@pytest.fixture(params=ISAS)
def isa(request):
    native._ext.set_cpu_isa(request.param)
    assert native._ext.cpu_isa() == request.param or request.param == "auto"
    yield request.param
    native._ext.set_cpu_isa("auto")


def rgb_only(s):
    for k in ("ndfd", "target", "features_unit"):
        s.pop(k, None)
    return s


@needs_native
@pytest.mark.parametrize("size", [(37, 29), (48, 32), (17, 5), (33, 1), (1, 1)])
def test_rgb_random_scenes(isa, size):
    def make(g):
        one = size == (1, 1)
        return rgb_only(random_scene(size[0], size[1], 220, 0, g, scale=(0.5, 1.5) if one else (0.03, 0.3),
                                     dr=3 if size[0] % 2 else 0))
    s, seed, removed = prepared(make, min_keep=5 if size == (1, 1) else 100)
    ref, nat = check_equivalent(s, seed, f"rgb {isa} {size} removed={removed}")
    assert nat.ndfd_ext is None and int(ref.n_contrib.sum()) > 0


@needs_native
def test_rgb_larger_scene_and_tiny_huge(isa):
    def make(g):
        s = rgb_only(random_scene(97, 71, 1500, 0, g, scale=(0.02, 0.12), opacity=(0.2, 0.95)))
        n = s["means"].shape[0]
        tiny = torch.arange(n) % 7 == 0
        huge = torch.arange(n) % 50 == 1
        s["scales"][tiny] = 1e-3 + 4e-3 * torch.rand(int(tiny.sum()), 2, generator=g)
        s["scales"][huge] = 2.0 + 2.0 * torch.rand(int(huge.sum()), 2, generator=g)
        s["opacity"][huge] = 0.05 + 0.2 * torch.rand(int(huge.sum()), generator=g)
        return s
    s, seed, removed = prepared(make, min_keep=1000)
    ref, nat = check_equivalent(s, seed, f"rgb larger {isa} removed={removed}")
    assert int(ref.n_contrib.max()) > 10


@needs_native
def test_rgb_saturation_and_early_termination(isa):
    s, seed, removed = prepared(saturation_scene, min_keep=150)
    check_equivalent(s, seed, f"rgb saturation {isa} removed={removed}")
    stats: dict = {}
    near_threshold_surfels(s, stats)
    assert stats["clamped"] > 20, "alphas must saturate at 0.99"
    assert stats["terminated"] > 20, "early termination (T < 1e-4) must happen"


def _fwd_bwd(s, kernel):
    native._ext.set_cpu_kernel(kernel)
    try:
        ps = [s[k].clone().requires_grad_(True) for k in PARAMS]
        r = native.rasterize_native(*ps, s["camera"], s["background"], None, None, None, s.get("feature_values"))
        g = torch.Generator().manual_seed(7)
        loss = sum((getattr(r, k) * torch.randn(getattr(r, k).shape, generator=g)).sum()
                   for k in ("rgb", "alpha", "depth", "depth_median", "normal", "distortion"))
        loss.backward()
        return r, [p.grad for p in ps]
    finally:
        native._ext.set_cpu_kernel("fast")


@needs_native
def test_fast_matches_frozen_baseline_and_is_deterministic(isa):
    """The bench's baseline (the frozen scalar kernels) and the SIMD kernels agree on a sanitized scene
    with many contributors per pixel (each is within the tolerances of the reference, so they are
    within twice those of each other; the same contributors), and two fast runs are bitwise equal."""
    def make(g):
        return random_scene(80, 56, 2000, 0, g, scale=(0.03, 0.15), dr=4)
    s, seed, removed = prepared(make, min_keep=1500)
    rb, gb = _fwd_bwd(s, "baseline")
    rf, gf = _fwd_bwd(s, "fast")
    rf2, gf2 = _fwd_bwd(s, "fast")
    msg = f"(seed={seed}, removed={removed})"
    assert torch.equal(rf.n_contrib, rb.n_contrib), msg
    assert int(rf.n_contrib.max()) > 10, msg
    for k in ("rgb", "alpha", "depth", "depth_median", "normal", "distortion", "features"):
        a, b = getattr(rf, k), getattr(rb, k)
        err = float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
        assert err <= 2 * FWD_TOL, f"{k}: {err:.3g} {msg}"
    for k, a, b in zip(PARAMS, gf, gb):
        err = float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
        assert err <= 2 * GRAD_TOL, f"grad {k}: {err:.3g} {msg}"
    for k in ("rgb", "distortion", "features"):
        assert torch.equal(getattr(rf, k), getattr(rf2, k))
    for a, b in zip(gf, gf2):
        assert torch.equal(a, b)


@needs_native
def test_kernel_and_isa_switches_reject_unknown_names():
    with pytest.raises(RuntimeError):
        native._ext.set_cpu_kernel("turbo")
    with pytest.raises(RuntimeError):
        native._ext.set_cpu_isa("x86-64-v9")
    assert native._ext.cpu_kernel() == "fast" and native._ext.cpu_isa() in ISAS
