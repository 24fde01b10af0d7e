"""Reference 2DGS surfel rasterizer with the FHGS NDFD branch, in plain PyTorch.

Written for clarity, not speed: it is the ground truth the native kernels are tested
against, and autograd provides its backward pass. The algorithm is exactly the one of
docs/METHOD.md §2-§3 and ``fhgs_ros/cuda/raster_math.h``:

1. per surfel: the 3x3 ray-splat matrix T = P [s_u t_u, s_v t_v, p] (P = K [R|t], world ->
   homogeneous pixels), its 3-sigma screen bounding box (2DGS ``compute_aabb``) and centre,
   culling of surfels whose centre is nearer than ``camera.near``;
2. per (pixel, surfel) pair with the pixel inside the surfel's box: the ray-splat
   intersection (u, v) = (k x l).xy / (k x l).z with k = x Tw - Tu, l = y Tw - Tv, the
   low-pass filter rho = min(u^2 + v^2, 2 |c - x|^2), alpha = min(0.99, op exp(-rho / 2)),
   skipped when alpha < 1/255, (k x l).z = 0 or the intersection depth < near;
3. per pixel, contributors in increasing depth of the surfel centre (ties by index),
   front-to-back compositing with early termination (stop before T (1 - alpha) < 1e-4);
4. NDFD per contributor i: phi = f_i . f_gt(n), sigma = 1 / (1 + exp(k (phi - lam))),
   L_ext += sigma w (1 - phi), L_int += sigma w (W_{i-1} - F_{i-1} . f_i) with
   W_{i-1} = 1 - T_i and F_{i-1} = sum_{j<i} w_j f_j (unit features).

Segmented prefix sums (per pixel) are done in float64 so the reference stays exact.
Features are detached: NDFD reaches geometry only through the blending weights w.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fhgs_ros.core.camera import Camera
from fhgs_ros.core.raster_types import (ALPHA_MAX, ALPHA_MIN, CUTOFF, FILTER_INV_SQUARE, FILTER_SIZE, T_MIN,
                                        FeatureTarget, NDFDParams, RenderResult)
from fhgs_ros.core.geometry import quat_wxyz_to_matrix


def splat_matrices(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, camera: Camera) -> torch.Tensor:
    """(N, 3, 3) matrices T with rows Tu, Tv, Tw: (x w, y w, w) = T (u, v, 1) for tangent coords (u, v)."""
    dt = means.dtype
    proj = camera.projection().to(device=means.device, dtype=dt)  # (3, 4)
    rot = quat_wxyz_to_matrix(quats)
    pm, pt = proj[:, :3], proj[:, 3]
    col_u = (scales[:, 0:1] * rot[:, :, 0]) @ pm.T
    col_v = (scales[:, 1:2] * rot[:, :, 1]) @ pm.T
    col_p = means @ pm.T + pt
    return torch.stack([col_u, col_v, col_p], dim=-1)


def screen_bounds(tmat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """2DGS ``compute_aabb``: (centre (N, 2) pixels, radius (N,) pixels as float, ok mask (N,))."""
    t0, t1, t2 = tmat[:, 0], tmat[:, 1], tmat[:, 2]
    tvec = torch.tensor([CUTOFF * CUTOFF, CUTOFF * CUTOFF, -1.0], dtype=tmat.dtype, device=tmat.device)
    d = (tvec * t2 * t2).sum(-1)
    ok = d != 0
    f = tvec / torch.where(ok, d, torch.ones_like(d))[:, None]
    cx = (f * t0 * t2).sum(-1)
    cy = (f * t1 * t2).sum(-1)
    hx = cx * cx - (f * t0 * t0).sum(-1)
    hy = cy * cy - (f * t1 * t1).sum(-1)
    ext = torch.sqrt(torch.clamp_min(torch.maximum(hx, hy).detach(), 1e-4))
    radius = torch.ceil(torch.clamp_min(ext, CUTOFF * FILTER_SIZE))
    return torch.stack([cx, cy], -1), radius, ok


def _segment_exclusive_cumsum(vals: torch.Tensor, seg_start: torch.Tensor) -> torch.Tensor:
    """Exclusive prefix sum inside segments of a sorted array, in float64.

    vals: (P, ...) values; seg_start: (P,) index of the first element of each element's segment.
    """
    v = vals.double()
    incl = torch.cumsum(v, 0)
    excl = incl - v
    return excl - excl[seg_start]


def sample_grid(target: FeatureTarget, xy: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample the raw grid at pixel positions xy (M, 2) -> (M, D), in the grid's dtype.

    Pixel (x, y) (OpenCV, integer centres) reads grid coordinates ((x + 0.5) scale - 0.5, ...),
    clamped to the border (the FeatureTarget convention shared by seeding and the rasterizers).
    """
    grid = target.grid
    d, gh, gw = grid.shape
    xy = xy.to(grid.dtype)
    gx = ((xy[:, 0] + 0.5) * target.scale - 0.5).clamp(0, gw - 1)
    gy = ((xy[:, 1] + 0.5) * target.scale - 0.5).clamp(0, gh - 1)
    x0 = gx.floor().long().clamp(0, gw - 1)
    y0 = gy.floor().long().clamp(0, gh - 1)
    x1 = (x0 + 1).clamp(max=gw - 1)
    y1 = (y0 + 1).clamp(max=gh - 1)
    fx = (gx - x0.to(grid.dtype))[:, None]
    fy = (gy - y0.to(grid.dtype))[:, None]
    g = grid.permute(1, 2, 0)
    top = g[y0, x0] * (1 - fx) + g[y0, x1] * fx
    bot = g[y1, x0] * (1 - fx) + g[y1, x1] * fx
    return top * (1 - fy) + bot * fy


def sample_feature_target(target: FeatureTarget, width: int, height: int) -> torch.Tensor:
    """(H * W, D) unit GT features at every pixel centre (``sample_grid`` then L2-normalize)."""
    ys, xs = torch.meshgrid(torch.arange(height, device=target.grid.device),
                            torch.arange(width, device=target.grid.device), indexing="ij")
    xy = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)
    return F.normalize(sample_grid(target, xy), dim=-1, eps=1e-12)


def _pairs(centre: torch.Tensor, radius: torch.Tensor, visible: torch.Tensor, width: int, height: int):
    """All (surfel, pixel) pairs with the pixel inside the surfel's clipped screen box."""
    idx = torch.nonzero(visible).squeeze(1)
    c = centre[idx].detach()
    r = radius[idx].detach()
    x0 = torch.floor(c[:, 0] - r).clamp(0, width - 1).long()
    x1 = torch.ceil(c[:, 0] + r).clamp(0, width - 1).long()
    y0 = torch.floor(c[:, 1] - r).clamp(0, height - 1).long()
    y1 = torch.ceil(c[:, 1] + r).clamp(0, height - 1).long()
    inside = (c[:, 0] + r >= 0) & (c[:, 0] - r <= width - 1) & (c[:, 1] + r >= 0) & (c[:, 1] - r <= height - 1)
    bw = (x1 - x0 + 1) * inside
    bh = (y1 - y0 + 1) * inside
    counts = bw * bh
    sid = torch.repeat_interleave(idx, counts)
    offs = torch.cumsum(counts, 0) - counts
    local = torch.arange(int(counts.sum()), device=centre.device) - torch.repeat_interleave(offs, counts)
    bw_r = torch.repeat_interleave(bw, counts)
    px = torch.repeat_interleave(x0, counts) + local % bw_r.clamp_min(1)
    py = torch.repeat_interleave(y0, counts) + local // bw_r.clamp_min(1)
    return sid, px, py


def _pair_alpha(tmat, centre, opacity, near, sid, px, py):
    """Per-pair (u, v)-based quantities; returns alpha, depth z, validity mask."""
    dt = tmat.dtype
    t = tmat[sid]
    tu, tv, tw = t[:, 0], t[:, 1], t[:, 2]
    x = px.to(dt)[:, None]
    y = py.to(dt)[:, None]
    k = x * tw - tu
    l = y * tw - tv
    p = torch.linalg.cross(k, l, dim=-1)
    pz_ok = p[:, 2] != 0
    pz = torch.where(pz_ok, p[:, 2], torch.ones_like(p[:, 2]))
    u = p[:, 0] / pz
    v = p[:, 1] / pz
    rho3d = u * u + v * v
    dx = centre[sid, 0] - px.to(dt)
    dy = centre[sid, 1] - py.to(dt)
    rho2d = FILTER_INV_SQUARE * (dx * dx + dy * dy)
    rho = torch.minimum(rho3d, rho2d)
    z = u * tw[:, 0] + v * tw[:, 1] + tw[:, 2]
    alpha = torch.clamp_max(opacity[sid] * torch.exp(-0.5 * rho), ALPHA_MAX)
    valid = pz_ok & (z >= near) & (alpha >= ALPHA_MIN)
    return alpha, z, valid


@dataclass
class CompositedPairs:
    """Every contributing (surfel, pixel) pair of one view in compositing order.

    Pairs are sorted by pixel, then front to back (surfel centre depth, ties by index); ``seg_start``
    is the index of the first pair of each pair's pixel. alpha, z, t_excl (transmittance before the
    pair) and w = alpha T (0 after early termination, where ``keep`` is False) carry autograd.
    """

    sid: torch.Tensor
    pix: torch.Tensor
    alpha: torch.Tensor
    z: torch.Tensor
    seg_start: torch.Tensor
    pos: torch.Tensor
    log1m: torch.Tensor
    keep: torch.Tensor
    t_excl: torch.Tensor
    w: torch.Tensor
    radii: torch.Tensor


def composite_pairs(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacity: torch.Tensor,
                    camera: Camera) -> CompositedPairs:
    """Steps 1-3 of the module docstring: projection, culling, pairs, sorting, transmittance."""
    dev, dt = means.device, means.dtype
    width, height = int(camera.width), int(camera.height)
    n = means.shape[0]
    w2c = camera.world_to_cam.to(dev, dt)
    zc = means @ w2c[2, :3] + w2c[2, 3]
    tmat = splat_matrices(means, quats, scales, camera)
    centre, radius, ok = screen_bounds(tmat)
    visible = ok & (zc > camera.near) & torch.isfinite(centre).all(-1) & torch.isfinite(radius)
    radii = torch.where(visible, radius.detach(), torch.zeros_like(radius)).long()

    # Depth order of surfel centres, ties by index (stable sort); rank used in the pair key.
    rank = torch.empty(n, dtype=torch.long, device=dev)
    rank[torch.sort(zc.detach(), stable=True).indices] = torch.arange(n, device=dev)

    sid, px, py = _pairs(centre, radius, visible, width, height)
    with torch.no_grad():
        _, _, valid = _pair_alpha(tmat, centre, opacity, camera.near, sid, px, py)
    sid, px, py = sid[valid], px[valid], py[valid]
    pix = py * width + px
    order = torch.sort(pix * max(n, 1) + rank[sid], stable=True).indices
    sid, pix = sid[order], pix[order]
    px, py = px[order], py[order]
    alpha, z, _ = _pair_alpha(tmat, centre, opacity, camera.near, sid, px, py)

    npair = sid.shape[0]
    pos = torch.arange(npair, device=dev)
    is_start = torch.ones(npair, dtype=torch.bool, device=dev)
    if npair > 1:
        is_start[1:] = pix[1:] != pix[:-1]
    seg_start = torch.cummax(torch.where(is_start, pos, torch.zeros_like(pos)), 0).values

    # Transmittance: T_i = prod_{j<i} (1 - alpha_j); stop before T (1 - alpha) < T_MIN.
    log1m = torch.log1p(-alpha.double())
    excl_log = _segment_exclusive_cumsum(log1m, seg_start)
    keep = (excl_log + log1m).detach() >= torch.log(torch.tensor(T_MIN, dtype=torch.float64))
    t_excl = torch.exp(excl_log).to(dt)
    w = alpha * t_excl * keep
    return CompositedPairs(sid, pix, alpha, z, seg_start, pos, log1m, keep, t_excl, w, radii)


def rasterize_reference(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacity: torch.Tensor,
                        colors: torch.Tensor, camera: Camera, background: torch.Tensor | None = None,
                        features_unit: torch.Tensor | None = None, target: FeatureTarget | None = None,
                        ndfd: NDFDParams | None = None, feature_values: torch.Tensor | None = None,
                        ndfd_mask: torch.Tensor | None = None, *, feature_grad: bool = False) -> RenderResult:
    """Render one view.

    Args (N surfels, activated values, world frame):
        means (N, 3); quats (N, 4) (w, x, y, z), normalized inside; scales (N, 2) metres;
        opacity (N,) in (0, 1); colors (N, 3) RGB (already evaluated from SH);
        background (3,) RGB; features_unit (N, D) unit features and ``target`` for NDFD (both
        needed when ``ndfd`` is given); feature_values (N, Dr) to alpha-blend into a feature image;
        ndfd_mask (H, W) bool: pixels where the NDFD losses are evaluated (0 elsewhere; None: all);
        feature_grad: the feature image F = sum_i w_i f_i is differentiable in ``feature_values``
        too (otherwise detached; it always is in the geometry through w): the Feature-3DGS-style
        feature rendering of ``fhgs-bench step --f3dgs``, reference of the native ``feature_grad``.
    """
    dev, dt = means.device, means.dtype
    width, height = int(camera.width), int(camera.height)
    npix = width * height
    bg = torch.zeros(3, dtype=dt, device=dev) if background is None else background.to(dev, dt)
    cp = composite_pairs(means, quats, scales, opacity, camera)
    sid, pix, z, seg_start, pos = cp.sid, cp.pix, cp.z, cp.seg_start, cp.pos
    log1m, keep, t_excl, w, radii = cp.log1m, cp.keep, cp.t_excl, cp.w, cp.radii
    npair = sid.shape[0]

    def seg_sum(vals: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((npix,) + vals.shape[1:], dtype=vals.dtype, device=dev)
        return out.index_add(0, pix, vals)

    t_final = torch.exp(seg_sum((log1m * keep).double())).to(dt)
    rgb = seg_sum(w[:, None] * colors[sid]) + t_final[:, None] * bg
    depth = seg_sum(w * z)

    rot = quat_wxyz_to_matrix(quats)
    normal_w = rot[:, :, 2]
    to_surfel = means - camera.center.to(dev, dt)
    normal_w = torch.where(((normal_w * to_surfel).sum(-1, keepdim=True) > 0).detach(), -normal_w, normal_w)
    normal = seg_sum(w[:, None] * normal_w[sid])

    # Median depth: z of the last kept contributor with T > 0.5.
    cand = keep & (t_excl.detach() > 0.5)
    last = torch.full((npix,), -1, dtype=torch.long, device=dev)
    last = last.scatter_reduce(0, pix[cand], pos[cand], reduce="amax")
    z_pad = torch.cat([z, z.new_zeros(1)])
    depth_median = z_pad[torch.where(last >= 0, last, torch.full_like(last, npair))]

    # 2DGS depth distortion with m = far/(far-near) (1 - near/z).
    near, far = camera.near, camera.far
    m = far / (far - near) * (1 - near / z)
    wm = w * m
    m1 = _segment_exclusive_cumsum(wm, seg_start).to(dt)
    m2 = _segment_exclusive_cumsum(wm * m, seg_start).to(dt)
    a_prev = 1 - t_excl
    distortion = seg_sum((m * m * a_prev + m2 - 2 * m * m1) * w)

    ext = intl = None
    if ndfd is not None:
        if features_unit is None or target is None:
            raise ValueError("NDFD needs features_unit and a FeatureTarget")
        fu = features_unit.detach().to(dev, dt)
        fgt = sample_feature_target(FeatureTarget(target.grid.detach().to(dev, dt), target.scale), width, height)
        fi = fu[sid]
        phi = (fi * fgt[pix]).sum(-1)
        sign = -1.0 if ndfd.sigma_increasing else 1.0
        sig = torch.sigmoid(-sign * ndfd.k * (phi - ndfd.lam))
        gate = sig if ndfd.ext_use_sigma else torch.ones_like(sig)
        ext = seg_sum(gate * w * (1 - phi))
        f_prev = _segment_exclusive_cumsum(w[:, None] * fi, seg_start).to(dt)
        w_prev = 1 - t_excl
        intl = seg_sum(sig * w * (w_prev - (f_prev * fi).sum(-1)))
        ext = ext.reshape(height, width)
        intl = intl.reshape(height, width)
        if ndfd_mask is not None:
            keep_px = ndfd_mask.to(dev, torch.bool)
            ext = torch.where(keep_px, ext, torch.zeros_like(ext))
            intl = torch.where(keep_px, intl, torch.zeros_like(intl))

    feats = None
    if feature_values is not None:
        fv = (feature_values if feature_grad else feature_values.detach()).to(dev, dt)
        feats = seg_sum(w[:, None] * fv[sid]).T.reshape(-1, height, width)

    n_contrib = seg_sum(keep.long())
    return RenderResult(
        rgb=rgb.T.reshape(3, height, width), alpha=(1 - t_final).reshape(height, width),
        depth=depth.reshape(height, width), depth_median=depth_median.reshape(height, width),
        normal=normal.T.reshape(3, height, width), distortion=distortion.reshape(height, width),
        ndfd_ext=ext, ndfd_int=intl, features=feats, radii=radii, n_contrib=n_contrib.reshape(height, width))
