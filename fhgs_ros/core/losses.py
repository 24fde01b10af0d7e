"""Training losses: photometric (L1, D-SSIM), 2DGS regularizers, and the NDFD formulas in
readable per-ray form (docs/METHOD.md §3 and §5).

The per-ray NDFD functions here are the literal formulas (cumulative O(N D) and pairwise
O(N^2 D)); the rasterizers compute the same sums inside their compositing loops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fhgs_ros.core.camera import Camera


# ---------------------------------------------------------------------------- photometric
def l1_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    return (pred - gt).abs().mean()


def _gaussian_window(size: int, sigma: float, channels: int, dtype, device) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - size // 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    g = g / g.sum()
    w = g[:, None] * g[None, :]
    return w.expand(channels, 1, size, size).contiguous()


def ssim(pred: torch.Tensor, gt: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of two (C, H, W) images in [0, 1] (3DGS implementation: Gaussian window, zero padding).

    The 2-D Gaussian window is the outer product of a 1-D one, so the five local means (of x, y,
    x^2, y^2, x y) are one horizontal and one vertical 1-D depthwise convolution of the stacked
    maps: the same sums as the five 2-D convolutions of the 3DGS code, zero padding included
    (test/test_losses_ssim.py), with 2 x 11 instead of 121 taps per pixel.
    """
    return ssim_map(pred, gt, window, sigma).mean()


def ssim_map(pred: torch.Tensor, gt: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM (1, C, H, W) of two (C, H, W) images in [0, 1] (see :func:`ssim`)."""
    c = pred.shape[0]
    t = torch.arange(window, dtype=pred.dtype, device=pred.device) - window // 2
    g = torch.exp(-(t * t) / (2 * sigma * sigma))
    g = g / g.sum()
    k, pad = 5 * c, window // 2
    stack = torch.cat([pred, gt, pred * pred, gt * gt, pred * gt], 0)[None]  # (1, 5C, H, W)
    m = F.conv2d(stack, g.reshape(1, 1, 1, window).expand(k, 1, 1, window), padding=(0, pad), groups=k)
    m = F.conv2d(m, g.reshape(1, 1, window, 1).expand(k, 1, window, 1), padding=(pad, 0), groups=k)
    mu_x, mu_y, exx, eyy, exy = m[0].split(c, 0)
    sxx = exx - mu_x ** 2
    syy = eyy - mu_y ** 2
    sxy = exy - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return (((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2)))[None]


def photometric_loss(pred: torch.Tensor, gt: torch.Tensor, lambda_dssim: float = 0.2,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """(1 - lambda) L1 + lambda (1 - SSIM), the 3DGS/2DGS colour loss.

    ``mask`` (H, W) bool/float: only pixels with mask > 0 count (both terms are means over them);
    pixels outside give no gradient at all. An all-False mask gives a zero loss.
    """
    if mask is not None:
        m = mask.to(pred.dtype)[None]
        n = m.sum()
        if float(n) <= 0:
            return (pred * 0).sum()
        l1 = ((pred - gt).abs() * m).sum() / (n * pred.shape[0])
        ss = (ssim_map(pred, gt)[0] * m).sum() / (n * pred.shape[0])
        return (1 - lambda_dssim) * l1 + lambda_dssim * (1 - ss)
    return (1 - lambda_dssim) * l1_loss(pred, gt) + lambda_dssim * (1 - ssim(pred, gt))


# ---------------------------------------------------------------------------- 2DGS regularizers
def depth_to_points(depth: torch.Tensor, camera: Camera) -> torch.Tensor:
    """(H, W) camera-z depth -> (H, W, 3) world points (OpenCV pixel convention)."""
    h, w = depth.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=depth.dtype, device=depth.device),
                            torch.arange(w, dtype=depth.dtype, device=depth.device), indexing="ij")
    x = (xs - camera.cx) / camera.fx * depth
    y = (ys - camera.cy) / camera.fy * depth
    pc = torch.stack([x, y, depth], -1)
    c2w = camera.cam_to_world.to(depth.device, depth.dtype)
    return pc @ c2w[:3, :3].T + c2w[:3, 3]


def depth_normals(depth: torch.Tensor, camera: Camera) -> torch.Tensor:
    """(3, H, W) world normals from central finite differences of the depth points (0 on the border),
    oriented towards the camera (2DGS ``depth_to_normal``)."""
    pts = depth_to_points(depth, camera)
    out = torch.zeros_like(pts)
    dx = pts[1:-1, 2:] - pts[1:-1, :-2]
    dy = pts[2:, 1:-1] - pts[:-2, 1:-1]
    n = F.normalize(torch.linalg.cross(dx, dy, dim=-1), dim=-1)
    out[1:-1, 1:-1] = n
    return out.permute(2, 0, 1)


def normal_consistency_loss(rendered_normal: torch.Tensor, depth: torch.Tensor, alpha: torch.Tensor,
                            camera: Camera) -> torch.Tensor:
    """2DGS L_n: mean over pixels of 1 - <sum_i w_i n_i, N_depth * alpha.detach()>.

    The depth normal is computed in OpenCV camera axes and flipped to face the camera, the same
    convention as the rendered surfel normals.
    """
    nd = depth_normals(depth, camera)
    pts = depth_to_points(depth, camera)
    view = pts - camera.center.to(pts.device, pts.dtype)
    flip = ((nd.permute(1, 2, 0) * view).sum(-1) > 0).detach()
    nd = torch.where(flip[None], -nd, nd)
    return (1 - (rendered_normal * nd * alpha.detach()[None]).sum(0)).mean()


# ---------------------------------------------------------------------------- NDFD (readable form)
def ndfd_sigma(phi: torch.Tensor, lam: float = 0.5, k: float = 20.0, increasing: bool = False) -> torch.Tensor:
    """Similarity gate sigma(phi) = 1 / (1 + exp(k (phi - lam))): ~1 for disagreeing, ~0 for agreeing."""
    s = -k * (phi - lam)
    return torch.sigmoid(-s if increasing else s)


def ndfd_ray_cumulative(w: torch.Tensor, f_unit: torch.Tensor, f_gt_unit: torch.Tensor, lam: float = 0.5,
                        k: float = 20.0, ext_use_sigma: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """O(N D) NDFD losses of one ray, contributors front to back (i = 0 nearest).

    w: (N,) blending weights; f_unit: (N, D) unit surfel features; f_gt_unit: (D,) unit GT feature.
    Returns (L_ext, L_int): L_ext = sum_i sigma_i w_i (1 - phi_i);
    L_int = sum_i sigma_i w_i (W_{i-1} - F_{i-1} . f_i) with exclusive prefixes W, F.
    """
    f_unit = f_unit.detach()
    phi = f_unit @ f_gt_unit.detach()
    sig = ndfd_sigma(phi, lam, k)
    gate = sig if ext_use_sigma else torch.ones_like(sig)
    ext = (gate * w * (1 - phi)).sum()
    w_prev = torch.cumsum(w, 0) - w
    f_prev = torch.cumsum(w[:, None] * f_unit, 0) - w[:, None] * f_unit
    intl = (sig * w * (w_prev - (f_prev * f_unit).sum(-1))).sum()
    return ext, intl


def ndfd_ray_pairwise(w: torch.Tensor, f_unit: torch.Tensor, f_gt_unit: torch.Tensor, lam: float = 0.5,
                      k: float = 20.0) -> torch.Tensor:
    """O(N^2 D) internal loss of one ray: sum_i sum_{j<i} sigma_i w_i w_j (1 - f_j . f_i)."""
    f_unit = f_unit.detach()
    sig = ndfd_sigma(f_unit @ f_gt_unit.detach(), lam, k)
    cos = f_unit @ f_unit.T
    n = w.shape[0]
    lower = torch.tril(torch.ones(n, n, dtype=torch.bool, device=w.device), diagonal=-1)  # j < i
    pair = sig[:, None] * w[:, None] * w[None, :] * (1 - cos)
    return (pair * lower).sum()
