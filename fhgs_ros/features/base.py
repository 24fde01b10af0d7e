"""Feature-extractor protocol, the ``FeatureGrid`` it returns, and the registry by name.

An extractor turns one input image into a feature grid (D, gh, gw) plus the mapping from grid
cells to image pixels. The mapping is the one of ``FeatureTarget`` (docs/METHOD.md §1.2):
``scale`` is grid cells per image pixel, and image pixel (x, y) (OpenCV, integer centres)
samples the grid bilinearly at ((x + 0.5) * scale - 0.5, (y + 0.5) * scale - 0.5). A grid
cell (gx, gy) therefore has its centre at image pixel ((gx + 0.5) / scale - 0.5, ...). For SAM
the grid covers the image from its top-left corner, with ``scale = 64 / max(W, H)`` at the
standard 1024 input (the padded region of SAM's square input is cropped away).

Inputs: an RGB image as (H, W, 3) uint8 or float in [0, 1] (numpy or torch); a (3, H, W)
tensor (the ``Frame.image`` layout) is accepted too. Extractors whose ``input_kind`` is
``"labels"`` (the ``label`` extractor) take an (H, W) integer label image instead; use
:func:`extractor_input` to pick the right field of a dataset ``Frame``.

The registry by name (``make_extractor``) lives in :mod:`fhgs_ros.features.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from fhgs_ros.core.raster_types import FeatureTarget


class FeatureError(ValueError):
    """Invalid extractor input or configuration; the message names the offending item."""


@dataclass
class FeatureGrid:
    """A feature grid for one image.

    grid: (D, gh, gw) float32 CPU tensor of raw (un-normalized) features.
    scale: grid cells per image pixel (see the module docstring for the exact mapping).
    image_size: (H, W) of the source image in pixels.
    model_id: id of the extractor that produced it (cache key part, map-file metadata).
    """

    grid: torch.Tensor
    scale: float
    image_size: tuple[int, int]
    model_id: str = ""

    @property
    def dim(self) -> int:
        return int(self.grid.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.grid.shape)  # type: ignore[return-value]

    def to_target(self) -> FeatureTarget:
        """The ``FeatureTarget`` the rasterizer's NDFD branch samples (same grid and scale)."""
        return FeatureTarget(self.grid, float(self.scale))

    def pixel_to_grid(self, xy: torch.Tensor) -> torch.Tensor:
        """(..., 2) image pixel coordinates -> continuous grid coordinates (cell centres at integers)."""
        return (torch.as_tensor(xy, dtype=torch.float32) + 0.5) * self.scale - 0.5

    def grid_to_pixel(self, gxy: torch.Tensor) -> torch.Tensor:
        """(..., 2) continuous grid coordinates -> image pixel coordinates."""
        return (torch.as_tensor(gxy, dtype=torch.float32) + 0.5) / self.scale - 0.5

    def sample(self, xy: torch.Tensor) -> torch.Tensor:
        """Raw features (P, D) bilinearly sampled at pixel coordinates ``xy`` (P, 2), border-clamped."""
        d, gh, gw = self.grid.shape
        g = self.pixel_to_grid(torch.as_tensor(xy, dtype=torch.float32).reshape(-1, 2))
        gx = g[:, 0].clamp(0, gw - 1)
        gy = g[:, 1].clamp(0, gh - 1)
        # grid_sample with align_corners=True maps -1..1 to the centres of the first/last cells.
        nx = 2 * gx / max(gw - 1, 1) - 1
        ny = 2 * gy / max(gh - 1, 1) - 1
        out = F.grid_sample(self.grid[None].float(), torch.stack([nx, ny], -1)[None, None], mode="bilinear",
                            align_corners=True)
        return out[0, :, 0].T.contiguous()

    def upsample(self) -> torch.Tensor:
        """(D, H, W) features at every image pixel (bilinear, same sampling as ``sample``)."""
        h, w = self.image_size
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
        return self.sample(torch.stack([xs, ys], -1).reshape(-1, 2)).T.reshape(-1, h, w)


@runtime_checkable
class FeatureExtractor(Protocol):
    """image -> FeatureGrid. ``model_id`` identifies weights + settings; ``dim`` is D."""

    model_id: str
    dim: int

    def extract(self, image: Any) -> FeatureGrid: ...

    def extract_batch(self, images: Sequence[Any]) -> list[FeatureGrid]: ...


# ----------------------------------------------------------------------------- input helpers
def image_to_uint8_hwc(image: Any) -> np.ndarray:
    """RGB image -> contiguous (H, W, 3) uint8 numpy array.

    Accepts (H, W, 3) or (3, H, W) (numpy or torch), uint8 or float in [0, 1]; (H, W, 4) RGBA
    drops alpha and (H, W) grey is replicated. Raises FeatureError for anything else.
    """
    if isinstance(image, torch.Tensor):
        arr = image.detach().cpu().numpy()
    else:
        arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3:
        raise FeatureError(f"expected an (H, W, 3) or (3, H, W) image, got shape {tuple(arr.shape)}")
    if arr.shape[2] not in (3, 4) and arr.shape[0] in (3, 4):
        arr = np.transpose(arr, (1, 2, 0))
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.shape[2] != 3:
        raise FeatureError(f"expected 3 colour channels, got shape {tuple(arr.shape)}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise FeatureError(f"empty image of shape {tuple(arr.shape)}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise FeatureError("image contains NaN or Inf")
        return np.ascontiguousarray(np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8))
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        if arr.min() < 0 or arr.max() > 255:
            raise FeatureError(f"integer image values must be in [0, 255], got [{arr.min()}, {arr.max()}]")
        return np.ascontiguousarray(arr.astype(np.uint8))
    raise FeatureError(f"unsupported image dtype {arr.dtype}")


def extractor_input(extractor: Any, frame: Any) -> Any:
    """What to pass to ``extractor.extract`` for a dataset ``Frame``: its labels or its image."""
    kind = getattr(extractor, "input_kind", "rgb")
    if kind == "labels":
        if getattr(frame, "labels", None) is None:
            raise FeatureError(f"extractor '{extractor.model_id}' needs label images, but frame "
                               f"'{getattr(frame, 'path', '')}' has none")
        return frame.labels
    return frame.image


def extract_frames(extractor: FeatureExtractor, frames: Sequence[Any], batch_size: int = 4) -> list[FeatureGrid]:
    """Feature grids for dataset frames (image or labels per ``extractor_input``), batched."""
    out: list[FeatureGrid] = []
    for i in range(0, len(frames), max(1, batch_size)):
        out.extend(extractor.extract_batch([extractor_input(extractor, f) for f in frames[i:i + batch_size]]))
    return out
