"""The keyframe frontend of the online pipeline: input frame -> prepared keyframe.

For each validated input frame (``frames.InputFrame``): the keyframe policy decides; a keyframe
is undistorted (``core.camera.Undistorter``), downscaled to ``node.max_image_long_side``, its
depth range-gated, its feature grid extracted, and its new surfels seeded
(``core.seeding.seed_keyframe``: seed points, depth, or a nominal depth). Runs on the engine's
frontend thread, or synchronously in batch mapping (docs/ARCHITECTURE.md §1, §3).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any

import numpy as np
import torch

from fhgs_ros.config import FHGSConfig, NodeConfig
from fhgs_ros.core.camera import Camera, CameraError, Intrinsics, Undistorter
from fhgs_ros.core.geometry import invert_pose
from fhgs_ros.core.mapper import Keyframe
from fhgs_ros.core.mvs import KeyframeBuffer
from fhgs_ros.core.seeding import KeyframeSeedParams, flush_stereo_seeds, seed_keyframe
from fhgs_ros.core.surfels import SurfelMap
from fhgs_ros.online.frames import InputFrame, PreparedKeyframe
from fhgs_ros.online.imageproc import InputError, fit_size, resize_depth, resize_rgb
from fhgs_ros.online.keyframes import KeyframeSelector
from fhgs_ros.online.telemetry import Counters, Problems

log = logging.getLogger(__name__)


class SeedPoints:
    """Pending seed points (map frame, from PointCloud2): each becomes a surfel when a keyframe first sees it."""

    def __init__(self, cap: int):
        self.cap = max(1, cap)
        self.lock = threading.Lock()
        self.xyz = torch.zeros(0, 3)
        self.rgb = torch.zeros(0, 3)

    def add(self, xyz: np.ndarray, rgb: np.ndarray | None) -> int:
        x = torch.as_tensor(np.asarray(xyz, dtype=np.float32)).reshape(-1, 3)
        c = torch.full_like(x, 0.5) if rgb is None else torch.as_tensor(np.asarray(rgb, dtype=np.float32)).reshape(-1, 3)
        with self.lock:
            self.xyz = torch.cat([self.xyz, x])[-self.cap:]
            self.rgb = torch.cat([self.rgb, c])[-self.cap:]
            return int(self.xyz.shape[0])

    def get(self) -> tuple[torch.Tensor, torch.Tensor]:
        with self.lock:
            return self.xyz, self.rgb

    def remove(self, idx: torch.Tensor) -> None:
        """Drop the points at ``idx`` of the arrays returned by the last :meth:`get`."""
        if idx.numel() == 0:
            return
        with self.lock:
            keep = torch.ones(self.xyz.shape[0], dtype=torch.bool)
            keep[idx[idx < keep.numel()]] = False
            self.xyz, self.rgb = self.xyz[keep], self.rgb[keep]

    def clear(self) -> None:
        with self.lock:
            self.xyz, self.rgb = torch.zeros(0, 3), torch.zeros(0, 3)

    def __len__(self) -> int:
        with self.lock:
            return int(self.xyz.shape[0])


class KeyframeFrontend:
    """Keyframe selection, undistortion, downscaling, features and seeding (module docstring)."""

    def __init__(self, cfg: FHGSConfig, ncfg: NodeConfig, extractor: Any, dim: int, problems: Problems,
                 counters: Counters):
        self.cfg = cfg
        self.ncfg = ncfg
        self.extractor = extractor
        self.dim = dim
        self.problems = problems
        self.counters = counters
        self.gen = torch.Generator().manual_seed(cfg.mapper.seed)
        self.selector = KeyframeSelector(ncfg.kf_min_translation, ncfg.kf_min_rotation_deg, ncfg.kf_max_interval,
                                         ncfg.kf_min_interval)
        self.seed_points = SeedPoints(cfg.seed.max_points)
        self.stereo = KeyframeBuffer(cfg.seed.stereo())
        self._undistorters: dict[tuple, Undistorter] = {}

    def apply_live(self, ncfg: NodeConfig) -> None:
        """Take the live-changeable node parameters (keyframe policy) of an already validated ``ncfg``."""
        self.ncfg = ncfg
        self.selector.configure(ncfg.kf_min_translation, ncfg.kf_min_rotation_deg, ncfg.kf_max_interval,
                                ncfg.kf_min_interval)

    def reset(self) -> None:
        """Forget the keyframe history and the pending seed points (map reset)."""
        self.selector.reset()
        self.seed_points.clear()
        self.reset_stereo()

    def reset_stereo(self) -> None:
        """Forget the stereo keyframes (map reset or load: they belong to the old map)."""
        self.stereo.clear()

    def seed_params(self) -> KeyframeSeedParams:
        n, sc = self.ncfg, self.cfg.seed
        return KeyframeSeedParams(max_new=n.max_new_surfels_per_keyframe, depth_stride=sc.depth_stride,
                                  depth_max=n.depth_max, init_geometry=n.init_geometry, mono_depth=n.mono_init_depth,
                                  mono_jitter=n.mono_init_jitter,
                                  opacity=sc.opacity, scale_multiplier=sc.scale_multiplier,
                                  backend=self.cfg.mapper.backend)

    def flush_stereo(self, surfels: SurfelMap) -> SurfelMap | None:
        """End of stream: surfels for the keyframes still waiting for their stereo depth (``seed.mvs_defer``),
        from the keyframes there are; ``surfels``: the latest map snapshot (coverage)."""
        if self.ncfg.init_geometry != "mvs":
            return None
        return flush_stereo_seeds(surfels, self.stereo, self.seed_params(), self.gen)

    def _undistorter(self, intr: Intrinsics) -> Undistorter:
        u = self._undistorters.get(intr.key())
        if u is None:
            if len(self._undistorters) > 8:
                self._undistorters.clear()
            u = self._undistorters[intr.key()] = Undistorter(intr)
        return u

    def _rectify(self, fr: InputFrame) -> tuple[np.ndarray, Intrinsics, np.ndarray | None, np.ndarray | None]:
        """Sizes checked, undistorted, downscaled: (rgb, pinhole intrinsics, depth [m] or None, labels or None)."""
        rgb, intr, depth, labels = fr.rgb, fr.intr, fr.depth, fr.labels
        if labels is not None and labels.shape != rgb.shape[:2]:
            if abs(labels.shape[1] / labels.shape[0] - intr.width / intr.height) > 0.01:
                raise InputError("labels_size_mismatch", f"label image {labels.shape[1]}x{labels.shape[0]} does not "
                                                         f"have the aspect ratio of the image {intr.width}x{intr.height}")
            labels = resize_depth(labels, intr.width, intr.height)
        if (rgb.shape[1], rgb.shape[0]) != (intr.width, intr.height):
            raise InputError("size_mismatch", f"image {rgb.shape[1]}x{rgb.shape[0]} does not match its camera_info "
                                              f"{intr.width}x{intr.height}")
        if depth is not None and depth.shape != rgb.shape[:2]:
            dh, dw = depth.shape
            if abs(dw / dh - intr.width / intr.height) > 0.01:
                self.problems.report(InputError("depth_size_mismatch",
                                                f"depth {dw}x{dh} does not have the aspect ratio of the image "
                                                f"{intr.width}x{intr.height}; frame mapped without depth"))
                depth = None
            else:
                depth = resize_depth(depth, intr.width, intr.height)
        if intr.has_distortion:
            und = self._undistorter(intr)
            rgb = und.undistort_rgb(rgb)
            if depth is not None:
                depth = und.undistort_depth(depth)
            if labels is not None:
                labels = und.undistort_labels(labels)
            intr = dataclasses.replace(intr, d=())
        w, h = fit_size(intr.width, intr.height, self.ncfg.max_image_long_side)
        if (w, h) != (intr.width, intr.height):
            rgb = resize_rgb(rgb, w, h)
            if depth is not None:
                depth = resize_depth(depth, w, h)
            if labels is not None:
                labels = resize_depth(labels, w, h)
            intr = intr.scaled(w, h)
        if depth is not None:
            depth = np.where((depth >= self.ncfg.depth_min) & (depth <= self.ncfg.depth_max), depth, 0.0)
            depth = depth.astype(np.float32)
        return rgb, intr, depth, labels

    def prepare(self, fr: InputFrame, surfels: SurfelMap) -> PreparedKeyframe | None:
        """The prepared keyframe of ``fr``, or None when it is not a keyframe. ``surfels``: the
        latest map snapshot (coverage for seeding). Raises InputError for a bad frame."""
        self.counters.inc("frames_processed")
        is_kf, why = self.selector.check(fr.stamp, fr.c2w)
        if not is_kf:
            self.counters.inc("frames_not_keyframes")
            return None
        rgb, intr, depth, labels = self._rectify(fr)
        near = max(1e-3, min(0.2, self.ncfg.depth_min)) if self.ncfg.depth_min > 0 else 0.01
        try:
            cam = Camera.from_intrinsics(intr, torch.as_tensor(invert_pose(fr.c2w), dtype=torch.float32), near=near,
                                         far=max(100.0, 2 * self.ncfg.depth_max), name=f"{fr.stamp:.6f}")
        except CameraError as exc:
            raise InputError("bad_pose", f"frame {fr.stamp:.3f}: {exc}") from None
        if self.extractor is None:
            raise InputError("no_extractor", "no feature extractor configured")
        if getattr(self.extractor, "input_kind", "image") == "labels":
            if labels is None:
                raise InputError("missing_labels", f"frame {fr.stamp:.3f}: the 'label' feature extractor needs a "
                                                   f"label image (topic 'labels')")
            grid = self.extractor.extract(torch.from_numpy(labels.astype(np.int64)))
        else:
            grid = self.extractor.extract(rgb)
        if grid.dim != self.dim:
            raise InputError("feature_dim", f"extractor returned {grid.dim}-d features, the map has {self.dim}")
        target = grid.to_target()
        image = torch.from_numpy(np.array(rgb, dtype=np.uint8, order="C")).permute(2, 0, 1).float().div_(255.0)
        depth_t = torch.from_numpy(depth) if depth is not None else None
        sx, srgb = self.seed_points.get()
        new, used = seed_keyframe(image, depth_t, cam, target, surfels, sx, srgb, self.seed_params(), self.gen,
                                  stereo=self.stereo)
        self.seed_points.remove(used)
        kf = Keyframe(cam, image, target, depth_t, None, fr.stamp)
        self.selector.commit(fr.stamp, fr.c2w)
        self.counters.inc("keyframes_prepared")
        return PreparedKeyframe(kf, new, fr.c2w, fr.received, why)
