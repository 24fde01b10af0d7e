"""In-memory dataset containers shared by every loader.

Frames: world frame as given by the dataset (converted to a right-handed world),
cameras in OpenCV axes (see ``fhgs_ros.core.camera``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from fhgs_ros.core.camera import Camera


class DatasetError(ValueError):
    """Unreadable or inconsistent dataset; the message names the file and field."""


@dataclass
class Frame:
    """One posed image.

    image: (3, H, W) float32 RGB in [0, 1].
    depth: optional (H, W) float32 camera-z depth in metres, 0 where unknown.
    labels: optional (H, W) int64 semantic label ids (synthetic / labelled data).
    normal: optional (3, H, W) float32 world-frame unit normals (synthetic data), 0 where unknown.
    mask: optional (H, W) bool, True on valid pixels (e.g. alpha of an RGBA image); None = all valid.
    """

    camera: Camera
    image: torch.Tensor
    path: str = ""
    depth: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    normal: torch.Tensor | None = None
    mask: torch.Tensor | None = None


@dataclass
class PointCloud:
    """Sparse 3-D points with optional observation tracks (the projection index).

    xyz: (P, 3) float32 world coordinates; rgb: (P, 3) float32 in [0, 1].
    Tracks as flat arrays (one entry per observation): ``obs_point`` (M,) point index,
    ``obs_frame`` (M,) frame index, ``obs_xy`` (M, 2) pixel coordinates (OpenCV convention).
    Optional per-point ``labels`` (P,) int64 and ``normals`` (P, 3) float32 (ground-truth samples).
    """

    xyz: torch.Tensor
    rgb: torch.Tensor
    obs_point: torch.Tensor | None = None
    obs_frame: torch.Tensor | None = None
    obs_xy: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    normals: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.xyz.shape[0])


@dataclass
class Dataset:
    """A posed image collection plus optional ground truth.

    gt_mesh: optional (vertices (V, 3) float32, faces (F, 3) int64) in world coordinates.
    gt_mesh_labels: optional (F,) int64 label id per GT mesh face.
    gt_points: optional area-uniform samples of the exposed GT surface (xyz, rgb, labels, normals).
    label_names: names of the label ids in ``Frame.labels`` (index = id).
    label_colors: optional (L, 3) uint8-range RGB colour per label id, for visualisation.
    """

    frames: list[Frame]
    root: Path
    points: PointCloud | None = None
    gt_mesh: tuple[torch.Tensor, torch.Tensor] | None = None
    label_names: list[str] | None = None
    meta: dict = field(default_factory=dict)
    gt_mesh_labels: torch.Tensor | None = None
    gt_points: PointCloud | None = None
    label_colors: list[list[int]] | None = None

    def split(self, holdout_every: int = 8) -> tuple[list[int], list[int]]:
        """(train indices, test indices): every ``holdout_every``-th frame is held out."""
        test = [i for i in range(len(self.frames)) if holdout_every > 0 and i % holdout_every == 0]
        train = [i for i in range(len(self.frames)) if i not in set(test)]
        if not train:
            train = list(range(len(self.frames)))
        return train, test

    def scene_extent(self) -> float:
        """Radius of the camera centres around their mean times 1.1 (the 3DGS 'cameras_extent')."""
        c = torch.stack([f.camera.center for f in self.frames])
        r = (c - c.mean(0)).norm(dim=1).max().item()
        return max(r, 1e-3) * 1.1
