"""The separable SSIM of core/losses.py equals the 3DGS five-2-D-convolution form (value and gradient)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fhgs_ros.core.losses import _gaussian_window, ssim


def ssim_2d(pred, gt, window=11, sigma=1.5):
    c = pred.shape[0]
    w = _gaussian_window(window, sigma, c, pred.dtype, pred.device)
    x, y = pred[None], gt[None]
    pad = window // 2
    mu_x = F.conv2d(x, w, padding=pad, groups=c)
    mu_y = F.conv2d(y, w, padding=pad, groups=c)
    sxx = F.conv2d(x * x, w, padding=pad, groups=c) - mu_x ** 2
    syy = F.conv2d(y * y, w, padding=pad, groups=c) - mu_y ** 2
    sxy = F.conv2d(x * y, w, padding=pad, groups=c) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return s.mean()


@pytest.mark.parametrize("shape", [(3, 37, 53), (1, 8, 5), (3, 64, 48)])
def test_separable_ssim_matches_2d(shape):
    g = torch.Generator().manual_seed(sum(shape))
    a = torch.rand(shape, generator=g, dtype=torch.float64)
    b = (a + 0.2 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    a1, a2 = a.clone().requires_grad_(True), a.clone().requires_grad_(True)
    v1, v2 = ssim(a1, b), ssim_2d(a2, b)
    v1.backward()
    v2.backward()
    assert abs(float(v1 - v2)) < 1e-12
    assert float((a1.grad - a2.grad).abs().max()) < 1e-12 * max(1.0, float(a2.grad.abs().max()))
    assert float(ssim(b, b)) == pytest.approx(1.0, abs=1e-12)
