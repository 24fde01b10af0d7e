"""Mapper: owns the SurfelMap, its optimizer and the training schedule.

Data flow: keyframes (posed RGB + GT feature grid) -> ``add_keyframe`` -> ``step()`` optimizes
the map on a random keyframe per iteration. Used offline (all keyframes first, then N steps) and
online (the ROS node adds keyframes while an optimizer thread keeps calling ``step``). Readers in
other threads call ``snapshot()``, which copies the map under a short lock.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fhgs_ros.core.params import param

from fhgs_ros.core.camera import Camera
from fhgs_ros.core.density import DensityConfig, DensityStats, densify_and_prune, reset_opacity
from fhgs_ros.core.losses import normal_consistency_loss, photometric_loss
from fhgs_ros.core.ndfd_sampling import auto_stride, jittered_ndfd_weights
from fhgs_ros.core.optim import LearningRates, SurfelOptimizer
from fhgs_ros.core.raster_types import FeatureTarget, NDFDParams
from fhgs_ros.core.render import render
from fhgs_ros.core.schedule import OfflineSchedule
from fhgs_ros.core.surfels import SurfelMap

log = logging.getLogger(__name__)


@dataclass
class Keyframe:
    """One training view: camera (OpenCV, world->camera), image (3, H, W) in [0, 1], GT feature
    target, optional depth (H, W) metres and labels (H, W)."""

    camera: Camera
    image: torch.Tensor
    target: FeatureTarget | None = None
    depth: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    stamp: float = 0.0
    mask: torch.Tensor | None = None  # (H, W) bool, True = object/valid pixel (see MapperConfig.mask_mode)


@dataclass
class MapperConfig:
    """Training schedule and loss weights (defaults: FHGS = 2DGS defaults + NDFD, docs/METHOD.md §5)."""

    ndfd_enabled: bool = param(True, 'FHGS NDFD losses on (false = plain 2DGS baseline)')
    lambda_ext: float = param(1.0, 'weight of the external-potential loss L_ext (docs/METHOD.md §3)', lo=0)
    lambda_int: float = param(1.0, 'weight of the internal-clustering loss L_int (docs/METHOD.md §3)', lo=0)
    lambda_dssim: float = param(0.2, 'D-SSIM share of the colour loss', lo=0, hi=1)
    lambda_dist: float = param(0.0, '2DGS depth distortion weight (1000 bounded scenes, 100 unbounded)', lo=0)
    dist_from_iter: int = param(3000, 'distortion active after this iteration')
    lambda_normal: float = param(0.05, '2DGS normal-consistency weight', lo=0)
    normal_from_iter: int = param(7000, 'normal loss active after this iteration')
    depth_ratio: float = param(1.0, '1 = median depth for the normal loss (bounded), 0 = expected depth')
    lambda_depth: float = param(0.0, 'optional L1 depth loss when keyframes have depth (not part of FHGS)')
    sh_degree_max: int = param(3, 'spherical-harmonics degree reached by the schedule', lo=0, hi=3)
    sh_increase_every: int = param(1000, '+1 SH degree every N iterations')
    densify_from_iter: int = param(500, 'adaptive density control window [from, until], every N iterations')
    densify_until_iter: int = param(15000, 'last iteration of adaptive density control (offline schedule)')
    densify_every: int = param(100, 'densify every N iterations', lo=1)
    opacity_reset_every: int = param(3000,
                                     'opacity <- min(opacity, 0.01) every N iterations inside the window; '
                                     'big-surfel pruning starts after the first reset (0: no reset, prune from the '
                                     'start)')
    background: tuple[float, float, float] = param((0.0, 0.0, 0.0), 'background colour, RGB in [0, 1]')
    backend: str = param('auto', 'rasterizer: auto (native if built) | native | reference (PyTorch)',
                         choices=('auto', 'native', 'reference'))
    mask_mode: str = param('ignore', 'keyframe masks: ignore (pixels outside give no loss, colour nor NDFD) | '
                           'background (pixels '
                           'outside must render the background colour: supervise transparency)',
                           choices=('ignore', 'background'))
    seed: int = param(0, 'random seed (keyframe order, seeding, splits)')
    ndfd: NDFDParams = field(default_factory=NDFDParams)
    ndfd_stride: int = param(0, 'NDFD pixel subsampling (core/ndfd_sampling.py): 0 = one jittered pixel per GT-grid '
                             'cell pitch (unbiased estimate of the full-resolution loss), 1 = every pixel, s > 1 = '
                             'one per s x s block', unit='px', lo=0, hi=4096)
    coarse_factor: float = param(1.0, 'large-image mode: render and supervise at this fraction of the keyframe '
                                 'resolution (1 = off; 0.5 = a quarter of the pixels); the full resolution is used '
                                 'after coarse_until_iter (offline) / in the last 30 % of a keyframe budget (online)',
                                 lo=0.1, hi=1.0)
    coarse_min_pixels: int = param(250_000, 'large-image mode applies only to keyframes with at least this many '
                                   'pixels', unit='px', lo=0)
    coarse_until_iter: int = param(15000, 'large-image mode: reduced resolution up to this iteration (offline '
                                   'schedule)')
    density: DensityConfig = field(default_factory=DensityConfig)
    lrs: LearningRates = field(default_factory=LearningRates)


def coarse_keyframe(kf: Keyframe, factor: float) -> Keyframe:
    """The keyframe at ``factor`` times its resolution: area-averaged image, nearest depth/mask/labels,
    the camera scaled, the same GT feature grid (more cells per pixel)."""
    cam = kf.camera.scaled(factor)
    size = (cam.height, cam.width)

    def nearest(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        return F.interpolate(t[None, None].float(), size=size, mode="nearest")[0, 0].to(t.dtype)

    image = F.interpolate(kf.image[None], size=size, mode="area")[0]
    target = None
    if kf.target is not None:
        target = FeatureTarget(kf.target.grid, kf.target.scale * kf.camera.width / cam.width)
    return Keyframe(cam, image, target, nearest(kf.depth), nearest(kf.labels), kf.stamp, nearest(kf.mask))


class Mapper:
    def __init__(self, config: MapperConfig, feature_dim: int, extent: float = 1.0,
                 device: str | torch.device = "cpu", schedule: OfflineSchedule | None = None) -> None:
        self.cfg = config
        self.schedule = schedule or OfflineSchedule(config)
        self.device = torch.device(device)
        self.extent = extent
        self.surfels = SurfelMap.empty(feature_dim, self.device)
        self.keyframes: list[Keyframe] = []
        self.iteration = 0
        self.gen = torch.Generator().manual_seed(config.seed)
        self.ndfd_gen = torch.Generator().manual_seed(config.seed + 7919)  # NDFD pixel jitter only
        self.opt = SurfelOptimizer(self.surfels, config.lrs, extent)
        self.stats = DensityStats(0, self.device)
        self.lock = threading.RLock()
        self.background = torch.tensor(config.background, dtype=torch.float32, device=self.device)
        self.last_losses: dict[str, float] = {}
        self.densify_log: list[dict] = []

    # ------------------------------------------------------------------ inputs
    def add_keyframe(self, kf: Keyframe) -> int:
        with self.lock:
            self.keyframes.append(kf)
            return len(self.keyframes) - 1

    def add_surfels(self, new: SurfelMap) -> None:
        """Append seeded surfels (their frozen features come with them)."""
        if new.feature_dim != self.surfels.feature_dim:
            raise ValueError(f"feature width {new.feature_dim} != map feature width {self.surfels.feature_dim}")
        with self.lock:
            n = len(new)
            self.surfels.append(new)
            self.opt.extend(self.surfels, n)
            self.stats.extend(n)

    def replace_map(self, surfels: SurfelMap, iteration: int = 0) -> None:
        """Swap in a whole map (e.g. loaded from a file): fresh optimizer state and statistics."""
        if surfels.feature_dim != self.surfels.feature_dim:
            raise ValueError(f"feature width {surfels.feature_dim} != map feature width {self.surfels.feature_dim}")
        with self.lock:
            for p in surfels.parameters().values():
                p.requires_grad_(True)
            self.surfels = surfels
            self.opt = SurfelOptimizer(surfels, self.cfg.lrs, self.extent)
            self.stats = DensityStats(len(surfels), self.device)
            self.iteration = iteration

    def set_extent(self, extent: float) -> None:
        with self.lock:
            self.extent = extent
            self.opt.extent = extent

    # ------------------------------------------------------------------ optimization
    def step(self) -> dict[str, float]:
        """One optimization iteration on a random keyframe; returns the loss terms."""
        if not self.keyframes or len(self.surfels) == 0:
            return {}
        cfg = self.cfg
        sched = self.schedule
        with self.lock:
            t0 = time.perf_counter()
            self.iteration += 1
            it = self.iteration
            self.opt.update_lr(it)
            if cfg.sh_increase_every > 0 and it % cfg.sh_increase_every == 0:
                self.surfels.sh_degree = min(self.surfels.sh_degree + 1, cfg.sh_degree_max)
            kf = self.keyframes[int(torch.randint(len(self.keyframes), (1,), generator=self.gen))]
            if (cfg.coarse_factor < 1.0 and kf.camera.width * kf.camera.height >= cfg.coarse_min_pixels
                    and sched.coarse_on(it)):
                kf = coarse_keyframe(kf, cfg.coarse_factor)
            use_ndfd = cfg.ndfd_enabled and kf.target is not None and (cfg.lambda_ext > 0 or cfg.lambda_int > 0)
            nd_w, nd_count = None, None
            if use_ndfd:
                stride = cfg.ndfd_stride if cfg.ndfd_stride > 0 else auto_stride(kf.target.scale)
                if stride > 1:
                    nd_w = jittered_ndfd_weights(kf.camera.height, kf.camera.width, stride, self.ndfd_gen,
                                                 self.device)
                if kf.mask is not None and cfg.mask_mode == "ignore":
                    # pixels outside the mask give no loss: NDFD like the colour term (mean over mask pixels)
                    m = kf.mask.to(self.device, torch.float32)
                    nd_w = m if nd_w is None else nd_w * m
                    nd_count = float(m.sum())
                    use_ndfd = nd_count > 0
                    if not use_ndfd:
                        nd_w = None
            res = render(self.surfels, kf.camera, background=self.background,
                         target=kf.target if use_ndfd else None, ndfd=cfg.ndfd if use_ndfd else None,
                         backend=cfg.backend, ndfd_mask=nd_w > 0 if nd_w is not None else None)
            gt, pmask = kf.image, None
            if kf.mask is not None:
                if cfg.mask_mode == "background":
                    gt = torch.where(kf.mask[None].to(gt.device), gt, self.background[:, None, None])
                else:
                    pmask = kf.mask.to(gt.device)
            loss_rgb = photometric_loss(res.rgb, gt, cfg.lambda_dssim, pmask)
            loss = loss_rgb
            terms = {"rgb": loss_rgb.item()}
            if cfg.lambda_dist > 0 and sched.dist_on(it):
                ld = res.distortion.mean()
                loss = loss + cfg.lambda_dist * ld
                terms["dist"] = ld.item()
            if cfg.lambda_normal > 0 and sched.normal_on(it):
                surf_depth = res.depth_median if cfg.depth_ratio >= 0.5 else res.expected_depth
                ln = normal_consistency_loss(res.normal, surf_depth, res.alpha, kf.camera)
                loss = loss + cfg.lambda_normal * ln
                terms["normal"] = ln.item()
            if cfg.lambda_depth > 0 and kf.depth is not None:
                valid = kf.depth > 0
                if valid.any():
                    lz = (res.expected_depth - kf.depth)[valid].abs().mean()
                    loss = loss + cfg.lambda_depth * lz
                    terms["depth"] = lz.item()
            if use_ndfd:
                if nd_w is None:
                    le, li = res.ndfd_ext.mean(), res.ndfd_int.mean()
                else:  # unbiased estimate of the full-resolution means (over the mask pixels with a mask)
                    n = nd_count if nd_count is not None else nd_w.numel()
                    le = (res.ndfd_ext * nd_w).sum() / n
                    li = (res.ndfd_int * nd_w).sum() / n
                loss = loss + cfg.lambda_ext * le + cfg.lambda_int * li
                terms["ext"], terms["int"] = le.item(), li.item()
            loss.backward()
            with torch.no_grad():
                if sched.collect_stats(it) and self.surfels.means.grad is not None:
                    self.stats.add(self.surfels.means.grad, self.surfels, kf.camera, res.radii)
                self.opt.step()
                self.opt.zero_grad()
                if sched.densify_now(it):
                    info = densify_and_prune(self.surfels, self.opt, self.stats, cfg.density, self.extent,
                                             prune_big=sched.prune_big(it), generator=self.gen)
                    info["iteration"], info["surfels"] = it, len(self.surfels)
                    self.densify_log.append(info)
                if sched.reset_opacity_now(it):
                    reset_opacity(self.surfels, self.opt)
            terms["total"] = loss.item()
            terms["ms"] = (time.perf_counter() - t0) * 1000
            self.last_losses = terms
            return terms

    # ------------------------------------------------------------------ readers
    def snapshot(self, share_frozen: bool = False) -> SurfelMap:
        """Detached copy of the map, safe to use from another thread (see SurfelMap.snapshot)."""
        with self.lock:
            return self.surfels.snapshot(share_frozen)
