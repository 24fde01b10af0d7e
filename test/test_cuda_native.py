"""CUDA backend versus the native CPU backend (and the float64 reference) on a GPU machine.

Runs automatically when the extension was built with nvcc (see setup_ext.py) and torch sees a
GPU; skipped otherwise. The scenes, the sanitizer of near-threshold decisions and the metric are
those of test_native_equivalence.py: forward outputs within 1e-5 and gradients within 1e-4
(``max|a - b| / max|b|`` per tensor), ``radii`` and ``n_contrib`` equal; the CUDA buffers are
NaN-poisoned too.
"""

from __future__ import annotations

import pytest
import torch

from fhgs_ros.core import native

try:  # the scene generators and the sanitizer
    from test_native_equivalence import (FWD_TOL, GRAD_TOL, OUTPUTS, PARAMS, check_equivalent, prepared,
                                         random_scene, rel_err, run)
except ImportError:  # run from another directory
    from test.test_native_equivalence import (FWD_TOL, GRAD_TOL, OUTPUTS, PARAMS, check_equivalent, prepared,
                                              random_scene, rel_err, run)

pytestmark = [pytest.mark.skipif(
    not (native.native_available() and native.cuda_built() and torch.cuda.is_available()),
    reason="needs the CUDA backend (extension built with nvcc) and a visible GPU"),
    pytest.mark.usefixtures("native_poison")]


def on(s, device):
    out = dict(s)
    for k, v in s.items():
        if torch.is_tensor(v):
            out[k] = v.to(device)
    if "target" in s:
        out["target"] = type(s["target"])(s["target"].grid.to(device), s["target"].scale)
    return out


def cuda_vs_cpu(s, seed, label=""):
    cpu, gcpu = run(native.rasterize_native, s, torch.float32, seed)
    gpu, ggpu = run(native.rasterize_native, on(s, "cuda"), torch.float32, seed)
    msg = f"{label} seed={seed}"
    for name in OUTPUTS:
        a, b = getattr(gpu, name), getattr(cpu, name)
        assert (a is None) == (b is None)
        if b is not None:
            assert a.is_cuda and torch.isfinite(a).all(), f"{name} unwritten on the GPU {msg}"
            assert rel_err(a.cpu(), b) <= FWD_TOL, f"{name} {rel_err(a.cpu(), b):.3g} {msg}"
    if cpu.features is not None:
        assert rel_err(gpu.features.cpu(), cpu.features) <= FWD_TOL
    assert torch.equal(gpu.radii.cpu(), cpu.radii) and torch.equal(gpu.n_contrib.cpu(), cpu.n_contrib), msg
    for k in PARAMS:
        e = rel_err(ggpu[k].cpu(), gcpu[k])
        assert e <= GRAD_TOL, f"grad {k} {e:.3g} {msg}"


@pytest.mark.parametrize("dim", [1, 3, 32, 256, 257])
def test_cuda_matches_cpu(dim):
    def make(g):
        s = random_scene(61, 45, 400, dim, g, dr=3)
        if dim == 1:
            s["target"] = type(s["target"])(s["target"].grid.abs() + 0.5, s["target"].scale)
        return s
    s, seed, removed = prepared(make, min_keep=200)
    cuda_vs_cpu(s, seed, f"D={dim} removed={removed}")


def test_cuda_matches_reference():
    s, seed, removed = prepared(lambda g: random_scene(40, 31, 250, 16, g), min_keep=120)
    check_equivalent(on(s, "cuda"), seed, f"cuda vs reference removed={removed}")


def test_cuda_large_image_runs():
    """A larger frame: many tiles, long lists, batches of shared-memory loads."""
    g = torch.Generator().manual_seed(0)
    s = random_scene(320, 240, 20000, 64, g, scale=(0.01, 0.05))
    r = native.rasterize_native(*[on(s, "cuda")[k].requires_grad_(True) for k in PARAMS], s["camera"],
                                s["background"].cuda(), s["features_unit"].cuda(),
                                type(s["target"])(s["target"].grid.cuda(), s["target"].scale), s["ndfd"])
    (r.rgb.sum() + r.ndfd_int.sum()).backward()
    assert torch.isfinite(r.rgb).all() and r.n_contrib.sum() > 0
