"""Adaptive density control (2DGS/3DGS): clone, split, prune, opacity reset, hard cap.

Children of clone and split copy the parent's frozen feature bit-for-bit (``SurfelMap.clone_rows``);
pruning deletes a surfel together with its feature. Features are never re-sampled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from fhgs_ros.core.params import param

from fhgs_ros.core.camera import Camera
from fhgs_ros.core.optim import SurfelOptimizer
from fhgs_ros.core.geometry import quat_wxyz_to_matrix
from fhgs_ros.core.surfels import SurfelMap

log = logging.getLogger(__name__)


@dataclass
class DensityConfig:
    grad_threshold: float = param(0.0002, 'projected-centre gradient norm (NDC) that triggers clone/split', lo=0)
    percent_dense: float = param(0.01, 'clone if max scale <= percent_dense * extent, else split')
    split_children: int = param(2, 'children of a split surfel', lo=2)
    min_opacity: float = param(0.05, 'prune below this opacity', lo=0, hi=1)
    max_screen_size: float = param(20.0, 'prune larger surfels after the first opacity reset', unit='px')
    max_world_scale: float = param(0.1, 'prune larger surfels after the first opacity reset', unit='x extent')
    max_surfels: int = param(200000, 'hard cap on the number of surfels', lo=1)


class DensityStats:
    """Per-surfel accumulators of the projected-centre gradient and max screen radius."""

    def __init__(self, n: int, device: torch.device | str = "cpu") -> None:
        self.grad_accum = torch.zeros(n, device=device)
        self.count = torch.zeros(n, device=device)
        self.max_radii = torch.zeros(n, device=device)

    def add(self, means_grad: torch.Tensor, surfels: SurfelMap, camera: Camera, radii: torch.Tensor) -> None:
        """Accumulate |dL/d(centre in NDC)| for surfels seen in this view.

        The centre's NDC gradient is derived from the world-mean gradient: a screen shift of
        dx pixels moves the centre by dx z / fx in camera x, and NDC = 2 x / W - 1.
        """
        vis = radii > 0
        w2c = camera.world_to_cam.to(means_grad.device)
        g_cam = means_grad @ w2c[:3, :3].T
        z = (surfels.means.detach() @ w2c[2, :3] + w2c[2, 3]).clamp_min(1e-6)
        gx = g_cam[:, 0] * z / camera.fx * camera.width * 0.5
        gy = g_cam[:, 1] * z / camera.fy * camera.height * 0.5
        g = torch.sqrt(gx * gx + gy * gy)
        self.grad_accum[vis] += g[vis]
        self.count[vis] += 1
        self.max_radii[vis] = torch.maximum(self.max_radii[vis], radii[vis].float())

    def select(self, mask: torch.Tensor) -> None:
        self.grad_accum, self.count, self.max_radii = self.grad_accum[mask], self.count[mask], self.max_radii[mask]

    def extend(self, n: int) -> None:
        z = torch.zeros(n, device=self.grad_accum.device)
        self.grad_accum, self.count, self.max_radii = (torch.cat([self.grad_accum, z]), torch.cat([self.count, z]),
                                                       torch.cat([self.max_radii, z]))

    def reset(self) -> None:
        self.grad_accum.zero_()
        self.count.zero_()
        self.max_radii.zero_()


def densify_and_prune(surfels: SurfelMap, opt: SurfelOptimizer, stats: DensityStats, cfg: DensityConfig,
                      extent: float, prune_big: bool, generator: torch.Generator | None = None) -> dict:
    """One densification round; returns counts {cloned, split, pruned}."""
    n0 = len(surfels)
    grads = stats.grad_accum / stats.count.clamp_min(1)
    cand = grads >= cfg.grad_threshold
    max_scale = surfels.scales.detach().max(dim=1).values
    small = max_scale <= cfg.percent_dense * extent
    budget = max(0, cfg.max_surfels - n0)
    clone_idx = torch.nonzero(cand & small).squeeze(1)
    split_idx = torch.nonzero(cand & ~small).squeeze(1)
    # Respect the hard cap: keep the highest-gradient candidates (a split adds children-1 net).
    want = clone_idx.numel() + split_idx.numel() * (cfg.split_children - 1)
    if want > budget:
        allc = torch.cat([clone_idx, split_idx])
        order = torch.argsort(grads[allc], descending=True)
        chosen = allc[order]
        cost = torch.where(small[chosen], 1, cfg.split_children - 1)
        chosen = chosen[torch.cumsum(cost, 0) <= budget]
        clone_idx = chosen[small[chosen]]
        split_idx = chosen[~small[chosen]]

    # Clone: identical copies (the optimizer moves them apart).
    if clone_idx.numel():
        child = surfels.clone_rows(clone_idx)
        surfels.append(child)
        opt.extend(surfels, clone_idx.numel())
        stats.extend(clone_idx.numel())

    # Split: children sampled in the tangent plane, scales / (0.8 * children).
    n_split = split_idx.numel()
    if n_split:
        k = cfg.split_children
        rep = split_idx.repeat(k)
        sc = surfels.scales.detach()[rep]
        samples = torch.randn(rep.numel(), 2, generator=generator, device=sc.device) * sc
        rot = quat_wxyz_to_matrix(surfels.quats.detach()[rep])
        offs = rot[:, :, 0] * samples[:, 0:1] + rot[:, :, 1] * samples[:, 1:2]
        child = surfels.clone_rows(rep, {
            "means": surfels.means.detach()[rep] + offs,
            "log_scales": torch.log(sc / (0.8 * k)),
        })
        surfels.append(child)
        opt.extend(surfels, rep.numel())
        stats.extend(rep.numel())

    # Prune: split parents, transparent surfels, and (after the first reset) oversized ones.
    prune = torch.zeros(len(surfels), dtype=torch.bool, device=surfels.means.device)
    prune[split_idx] = True
    prune |= surfels.opacity.detach() < cfg.min_opacity
    if prune_big:
        prune |= stats.max_radii > cfg.max_screen_size
        prune |= surfels.scales.detach().max(dim=1).values > cfg.max_world_scale * extent
    if prune.all():  # never empty the map entirely
        prune[torch.argmax(surfels.opacity.detach())] = False
    keep = ~prune
    surfels.keep(keep)
    opt.select(surfels, keep)
    stats.select(keep)
    stats.reset()
    return {"cloned": int(clone_idx.numel()), "split": int(n_split), "pruned": int(prune.sum())}


def reset_opacity(surfels: SurfelMap, opt: SurfelOptimizer, value: float = 0.01) -> None:
    """opacity <- min(opacity, value), with the optimizer moments of opacity zeroed."""
    new = torch.minimum(surfels.opacity_logit.data, torch.logit(torch.tensor(value)))
    surfels.opacity_logit.data.copy_(new)
    opt.zero_state("opacity_logit")
