"""NDFD at the resolution of its target: one jittered pixel per block (docs/METHOD.md §3).

The ground-truth feature map is a coarse grid (SAM: 64 cells on the long side), so evaluating the
NDFD terms at every pixel mostly re-samples the same bilinear target. ``jittered_ndfd_weights``
splits the image into ``stride x stride`` pixel blocks (the last row / column of blocks may be
smaller), picks one pixel per block uniformly at random (a fresh draw per call, i.e. per
iteration) and gives it the weight ``|block|`` (its pixel count). For any per-pixel loss ``l``,

    sum_p weight_p l_p  is an unbiased estimate of  sum_p l_p

(each pixel of a block is drawn with probability 1 / |block|), and so is its gradient. The
mapper divides by H W, so the subsampled NDFD loss is an unbiased estimate of the full-resolution
mean. ``stride = 1`` is the full-resolution path (every pixel, weight 1).
"""

from __future__ import annotations

import math

import torch


def auto_stride(target_scale: float) -> int:
    """Block size matched to the GT grid: floor(cell pitch in pixels), at least 1.

    target_scale: GT cells per image pixel (``FeatureTarget.scale``).
    """
    if target_scale <= 0:
        return 1
    return max(1, int(math.floor(1.0 / target_scale + 1e-9)))


def jittered_ndfd_weights(height: int, width: int, stride: int, generator: torch.Generator | None = None,
                          device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, W) float32 weights: ``|block|`` at one random pixel of every ``stride x stride`` block, 0 elsewhere.

    With stride 1 every pixel gets weight 1. The random offsets are drawn on the CPU from
    ``generator`` (reproducible), then moved to ``device``.
    """
    if stride <= 1:
        return torch.ones(height, width, dtype=torch.float32, device=device)
    by, bx = -(-height // stride), -(-width // stride)
    y0 = torch.arange(by) * stride
    x0 = torch.arange(bx) * stride
    bh = (height - y0).clamp(max=stride)  # block heights (the last one may be shorter)
    bw = (width - x0).clamp(max=stride)
    uy = torch.rand(by, bx, generator=generator)
    ux = torch.rand(by, bx, generator=generator)
    oy = (uy * bh[:, None]).long().clamp(max=(bh[:, None] - 1).expand(by, bx))
    ox = (ux * bw[None, :]).long().clamp(max=(bw[None, :] - 1).expand(by, bx))
    ys = y0[:, None] + oy
    xs = x0[None, :] + ox
    w = torch.zeros(height, width, dtype=torch.float32)
    w[ys.reshape(-1), xs.reshape(-1)] = (bh[:, None] * bw[None, :]).float().reshape(-1)
    return w.to(device)
