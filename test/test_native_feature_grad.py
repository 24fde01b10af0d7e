"""The differentiable feature image of the native CPU kernels (``feature_grad=True``, the kernel of
the Feature-3DGS-style step of ``fhgs-bench step --f3dgs``) against the float64 PyTorch reference.

Same honest-scene protocol and tolerances as test_native_equivalence.py (fresh seeds, NaN
poisoning, sanitize, float64 reference as the ground truth): the loss weighs every output and the
D-channel feature image with random weights; the gradients of every surfel parameter (geometry
through the blending weights, colours) and of the per-surfel features must match.
"""

from __future__ import annotations

import pytest
import torch

from fhgs_ros.core import native
from fhgs_ros.core import reference as R
from test_native_equivalence import (FWD_TOL, GRAD_TOL, OUTPUTS, PARAMS, needs_native, prepared, random_scene,
                                     rel_err)


def run_feature_grad(fn, s, dtype, wseed):
    """Render with a differentiable feature image; loss = random weights . every output."""
    params = [s[k].to(dtype).clone().requires_grad_(True) for k in PARAMS]
    fv = s["feature_values"].to(dtype).clone().requires_grad_(True)
    res = fn(*params, s["camera"], s["background"].to(dtype), None, None, None, fv, feature_grad=True)
    g = torch.Generator().manual_seed(wseed)
    loss = 0
    for name in OUTPUTS + ("features",):
        out = getattr(res, name)
        if out is not None:
            loss = loss + (out.double() * torch.randn(out.shape, generator=g, dtype=torch.float64)).sum()
    loss.backward()
    grads = {k: p.grad for k, p in zip(PARAMS, params)}
    grads["feature_values"] = fv.grad
    return res, grads


def check_feature_grad(s, seed, label):
    ref, gref = run_feature_grad(R.rasterize_reference, s, torch.float64, seed)
    nat, gnat = run_feature_grad(native.rasterize_native, s, torch.float32, seed)
    msg = f"{label} seed={seed} (FHGS_TEST_SEED={seed} reproduces)"
    assert nat.features is not None and nat.features.shape == ref.features.shape, msg
    assert torch.isfinite(nat.features).all(), f"features unwritten {msg}"
    assert rel_err(nat.features.detach(), ref.features.detach()) <= FWD_TOL, f"features {msg}"
    assert rel_err(nat.rgb.detach(), ref.rgb.detach()) <= FWD_TOL, f"rgb {msg}"
    assert torch.equal(nat.n_contrib, ref.n_contrib), f"n_contrib differ {msg}"
    for k in PARAMS + ("feature_values",):
        a, b = gnat[k], gref[k]
        assert a is not None and torch.isfinite(a).all(), f"grad {k} missing or non-finite {msg}"
        e = rel_err(a, b)
        assert e <= GRAD_TOL, f"grad {k}: relative error {e:.3g} > {GRAD_TOL} {msg}"
    return ref, gref


pytestmark = pytest.mark.usefixtures("native_poison")


@needs_native
@pytest.mark.parametrize("dr, size, n", [(8, (48, 32), 200), (256, (24, 20), 120), (3, (37, 29), 150)])
def test_feature_image_gradients_match_reference(dr, size, n):
    s, seed, removed = prepared(lambda g: random_scene(size[0], size[1], n, 0, g, dr=dr), min_keep=n // 2)
    ref, gref = check_feature_grad(s, seed, f"Dr={dr} {size} removed={removed}")
    assert int(ref.n_contrib.sum()) > 0
    # the feature image really drives the geometry: its gradient alone is a sizeable part
    assert float(gref["feature_values"].abs().max()) > 0


@needs_native
def test_feature_image_geometry_gradient_is_the_feature_term():
    """With feature_grad the geometry gradient is the default one plus the feature image's part:
    a loss on the feature image alone gives the reference's geometry gradient, a loss without it
    the default kernels' (the SIMD RGB path) gradient."""
    s, seed, _ = prepared(lambda g: random_scene(40, 30, 150, 0, g, dr=16), min_keep=75)
    cam, bg = s["camera"], s["background"]

    def grads(fn, dtype, feat_loss, **kw):
        ps = [s[k].to(dtype).clone().requires_grad_(True) for k in PARAMS]
        fv = s["feature_values"].to(dtype).clone().requires_grad_(True)
        r = fn(*ps, cam, bg.to(dtype), None, None, None, fv, **kw)
        g = torch.Generator().manual_seed(seed)
        wf = torch.randn(r.features.shape, generator=g, dtype=torch.float64)
        wr = torch.randn(r.rgb.shape, generator=g, dtype=torch.float64)
        loss = (r.features.double() * wf).sum() if feat_loss else (r.rgb.double() * wr).sum()
        loss.backward()
        return {k: p.grad for k, p in zip(PARAMS, ps)}, fv.grad

    g_nat, fvg = grads(native.rasterize_native, torch.float32, True, feature_grad=True)
    g_ref, fvg_ref = grads(R.rasterize_reference, torch.float64, True, feature_grad=True)
    for k in ("means", "quats", "scales", "opacity"):
        assert rel_err(g_nat[k], g_ref[k]) <= GRAD_TOL, f"{k} seed={seed}"
        assert float(g_ref[k].abs().max()) > 0, f"{k}: the feature loss must reach the geometry seed={seed}"
    assert float(g_nat["colors"].abs().max()) == 0.0
    assert rel_err(fvg, fvg_ref) <= GRAD_TOL
    g_fg, _ = grads(native.rasterize_native, torch.float32, False, feature_grad=True)
    g_def, fv_def = grads(native.rasterize_native, torch.float32, False)
    assert fv_def is None  # default: the features get no gradient
    for k in PARAMS:
        assert rel_err(g_fg[k], g_def[k]) <= GRAD_TOL, f"{k} seed={seed}"


@needs_native
def test_feature_grad_is_cpu_only_and_off_without_grad():
    s, _, _ = prepared(lambda g: random_scene(16, 16, 20, 0, g, dr=4), min_keep=0)
    with torch.no_grad():
        r = native.rasterize_native(*[s[k] for k in PARAMS], s["camera"], None, None, None, None,
                                    s["feature_values"], feature_grad=True)
    assert r.features.shape == (4, 16, 16)
    from fhgs_ros.core import cuda_emu
    if cuda_emu.available():  # the CUDA kernels (here emulated) have no feature-image backward
        with pytest.raises(ValueError, match="no CUDA kernel"):
            native.rasterize_native(*[s[k] for k in PARAMS], s["camera"], None, None, None, None,
                                    s["feature_values"], feature_grad=True, extension=cuda_emu.module())
