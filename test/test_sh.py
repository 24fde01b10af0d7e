"""Spherical harmonics: the batched basis form against the closed-form low degrees, split DC/rest input."""

import math

import torch

from fhgs_ros.core.sh import C0, eval_sh, rgb_to_sh0, sh_basis


def test_degree1_matches_closed_form_and_split_input():
    g = torch.Generator().manual_seed(0)
    n = 64
    sh = torch.randn(n, 16, 3, generator=g, dtype=torch.float64)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=-1)
    c1 = math.sqrt(3 / (4 * math.pi))
    x, y, z = d[:, :1], d[:, 1:2], d[:, 2:3]
    want = (C0 * sh[:, 0] - c1 * y * sh[:, 1] + c1 * z * sh[:, 2] - c1 * x * sh[:, 3] + 0.5).clamp_min(0)
    assert torch.allclose(eval_sh(1, sh, d), want, atol=1e-12)
    for deg in range(4):
        assert torch.allclose(eval_sh(deg, sh, d), eval_sh(deg, sh[:, :1], d, sh[:, 1:]), atol=1e-12)


def test_basis_is_orthonormal_on_the_sphere():
    # Monte-Carlo check of int Y_i Y_j = delta_ij (the constants of every band are right)
    g = torch.Generator().manual_seed(1)
    d = torch.nn.functional.normalize(torch.randn(400_000, 3, generator=g, dtype=torch.float64), dim=-1)
    b = sh_basis(3, d)
    gram = 4 * math.pi * (b.T @ b) / len(d)
    assert torch.allclose(gram, torch.eye(16, dtype=torch.float64), atol=0.02)


def test_dc_renders_its_colour_and_gradients_flow():
    rgb = torch.rand(10, 3, dtype=torch.float64)
    sh = torch.zeros(10, 16, 3, dtype=torch.float64)
    sh[:, 0] = rgb_to_sh0(rgb)
    d = torch.nn.functional.normalize(torch.randn(10, 3, dtype=torch.float64), dim=-1)
    assert torch.allclose(eval_sh(3, sh, d), rgb)
    sh.requires_grad_(True)
    d.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s, v: eval_sh(3, s, v), (sh, d))
