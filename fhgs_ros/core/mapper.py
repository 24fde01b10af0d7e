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

from fhgs_ros.core.camera import Camera
from fhgs_ros.core.density import DensityConfig, DensityStats, densify_and_prune, reset_opacity
from fhgs_ros.core.losses import normal_consistency_loss, photometric_loss
from fhgs_ros.core.optim import LearningRates, SurfelOptimizer
from fhgs_ros.core.raster_types import FeatureTarget, NDFDParams
from fhgs_ros.core.render import render
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
    """Training schedule and loss weights (defaults: FHGS = 2DGS defaults + NDFD, spec section 5)."""

    ndfd_enabled: bool = True         # False gives the plain 2DGS baseline
    lambda_ext: float = 1.0           # weight of the external-potential loss
    lambda_int: float = 1.0           # weight of the internal-clustering loss
    lambda_dssim: float = 0.2
    lambda_dist: float = 0.0          # 2DGS depth distortion (1000 bounded, 100 unbounded)
    dist_from_iter: int = 3000
    lambda_normal: float = 0.05       # 2DGS normal consistency
    normal_from_iter: int = 7000
    depth_ratio: float = 1.0          # 1: median depth for the normal loss (bounded), 0: expected
    lambda_depth: float = 0.0         # optional L1 on depth when keyframes carry depth (not in FHGS)
    sh_degree_max: int = 3
    sh_increase_every: int = 1000
    densify_from_iter: int = 500
    densify_until_iter: int = 15_000
    densify_every: int = 100
    opacity_reset_every: int = 3000
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    backend: str = "auto"             # auto | native | reference
    mask_mode: str = "ignore"         # keyframe masks: ignore (pixels outside give no loss) | background
    #                                   (pixels outside must render the background colour: supervise transparency)
    seed: int = 0
    ndfd: NDFDParams = field(default_factory=NDFDParams)
    density: DensityConfig = field(default_factory=DensityConfig)
    lrs: LearningRates = field(default_factory=LearningRates)


class Mapper:
    def __init__(self, config: MapperConfig, feature_dim: int, extent: float = 1.0,
                 device: str | torch.device = "cpu") -> None:
        self.cfg = config
        self.device = torch.device(device)
        self.extent = extent
        self.surfels = SurfelMap.empty(feature_dim, self.device)
        self.keyframes: list[Keyframe] = []
        self.iteration = 0
        self.gen = torch.Generator().manual_seed(config.seed)
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
        with self.lock:
            t0 = time.perf_counter()
            self.iteration += 1
            it = self.iteration
            self.opt.update_lr(it)
            if cfg.sh_increase_every > 0 and it % cfg.sh_increase_every == 0:
                self.surfels.sh_degree = min(self.surfels.sh_degree + 1, cfg.sh_degree_max)
            kf = self.keyframes[int(torch.randint(len(self.keyframes), (1,), generator=self.gen))]
            use_ndfd = cfg.ndfd_enabled and kf.target is not None and (cfg.lambda_ext > 0 or cfg.lambda_int > 0)
            res = render(self.surfels, kf.camera, background=self.background,
                         target=kf.target if use_ndfd else None, ndfd=cfg.ndfd if use_ndfd else None,
                         backend=cfg.backend)
            gt, pmask = kf.image, None
            if kf.mask is not None:
                if cfg.mask_mode == "background":
                    gt = torch.where(kf.mask[None].to(gt.device), gt, self.background[:, None, None])
                else:
                    pmask = kf.mask.to(gt.device)
            loss_rgb = photometric_loss(res.rgb, gt, cfg.lambda_dssim, pmask)
            loss = loss_rgb
            terms = {"rgb": loss_rgb.item()}
            if cfg.lambda_dist > 0 and it > cfg.dist_from_iter:
                ld = res.distortion.mean()
                loss = loss + cfg.lambda_dist * ld
                terms["dist"] = ld.item()
            if cfg.lambda_normal > 0 and it > cfg.normal_from_iter:
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
                le, li = res.ndfd_ext.mean(), res.ndfd_int.mean()
                loss = loss + cfg.lambda_ext * le + cfg.lambda_int * li
                terms["ext"], terms["int"] = le.item(), li.item()
            loss.backward()
            with torch.no_grad():
                in_densify = it <= cfg.densify_until_iter
                if in_densify and self.surfels.means.grad is not None:
                    self.stats.add(self.surfels.means.grad, self.surfels, kf.camera, res.radii)
                self.opt.step()
                self.opt.zero_grad()
                if in_densify and it > cfg.densify_from_iter and it % cfg.densify_every == 0:
                    info = densify_and_prune(self.surfels, self.opt, self.stats, cfg.density, self.extent,
                                             prune_big=it > cfg.opacity_reset_every, generator=self.gen)
                    info["iteration"], info["surfels"] = it, len(self.surfels)
                    self.densify_log.append(info)
                if in_densify and cfg.opacity_reset_every > 0 and it % cfg.opacity_reset_every == 0:
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
