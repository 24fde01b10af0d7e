"""The data that flows through the online pipeline: input frames -> prepared keyframes -> map snapshots."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fhgs_ros.core.camera import Camera, Intrinsics
from fhgs_ros.core.mapper import Keyframe
from fhgs_ros.core.surfels import SurfelMap


@dataclass
class InputFrame:
    """A synchronized, decoded, validated input frame (what the node's callbacks submit)."""

    stamp: float
    rgb: np.ndarray                 # (H, W, 3) uint8 RGB, as received (distorted)
    intr: Intrinsics                # of ``rgb``
    c2w: np.ndarray                 # (4, 4) camera optical frame -> map
    depth: np.ndarray | None = None  # (h, w) metres, 0 = unknown; registered to the colour camera
    frame_id: str = ""
    received: float = 0.0           # monotonic time the image arrived (latency measurement)
    labels: np.ndarray | None = None  # (h, w) integer label ids registered to the image (``label`` extractor)


@dataclass
class PreparedKeyframe:
    keyframe: Keyframe
    surfels: SurfelMap | None
    c2w: np.ndarray
    received: float
    reason: str


@dataclass
class MapState:
    """Immutable view of the map for readers (never modified after publication)."""

    surfels: SurfelMap
    cameras: list[Camera]           # every keyframe camera, oldest first (including loaded ones)
    version: int
    iteration: int
    model_id: str
    feature_dim: int
    pca: Any = None                 # FeaturePCA or None
    centroids: torch.Tensor | None = None  # (K, D) unit cluster centres of the features
    stamp: float = 0.0              # stamp of the latest keyframe
    received: float = 0.0           # arrival time of the latest keyframe's image
    keyframes_total: int = 0

    @property
    def last_camera(self) -> Camera | None:
        return self.cameras[-1] if self.cameras else None


def light_snapshot(m: SurfelMap) -> SurfelMap:
    """Detached copy of the trainable tensors; frozen features and ids are shared. Call under the mapper lock."""
    return m.snapshot(share_frozen=True)
