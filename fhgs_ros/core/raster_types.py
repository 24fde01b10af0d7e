"""Inputs and outputs shared by every rasterizer backend (reference, native CPU, CUDA)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from fhgs_ros.core.params import param

# Constants of the 2DGS surfel rasterizer (docs/METHOD.md §2); the native header repeats them.
TILE = 16
CUTOFF = 3.0            # sigma cutoff of the screen-space bounding box
FILTER_SIZE = 0.7071068  # low-pass filter radius in pixels (sigma_filter = sqrt(2)/2)
FILTER_INV_SQUARE = 2.0
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99
T_MIN = 1e-4


@dataclass
class NDFDParams:
    """Parameters of the NDFD losses (docs/METHOD.md §3).

    lam, k: threshold and slope of the similarity gate sigma(phi) = 1 / (1 + exp(k (phi - lam)))
    (decreasing in phi; ``sigma_increasing`` flips the sign for the ablation of docs/METHOD.md §8.1).
    ext_use_sigma: include sigma in the external term (docs/METHOD.md §8.2).
    """

    lam: float = param(0.5, 'similarity threshold lambda of the gate sigma (docs/METHOD.md §3)')
    k: float = param(20.0, 'gate slope', lo=0)
    sigma_increasing: bool = param(False, "ablation: flip the gate's sign (docs/METHOD.md §8.1)")
    ext_use_sigma: bool = param(True, 'gate the external term by sigma (docs/METHOD.md §8.2)')


@dataclass
class FeatureTarget:
    """Ground-truth feature grid of one view.

    grid: (D, gh, gw) raw (un-normalized) features, e.g. SAM's 64x48 embedding.
    scale: grid cells per image pixel. Pixel (x, y) (OpenCV, integer centres) samples the grid
    bilinearly at ((x + 0.5) * scale - 0.5, (y + 0.5) * scale - 0.5), clamped to the border,
    and the result is L2-normalized.
    """

    grid: torch.Tensor
    scale: float

    @staticmethod
    def for_image(grid: torch.Tensor, width: int, height: int) -> "FeatureTarget":
        """Grid covering the image with the long side (SAM convention: cell pitch max(W, H) / grid long side)."""
        g_long = grid.shape[2] if width >= height else grid.shape[1]
        return FeatureTarget(grid, g_long / max(width, height))


@dataclass
class RenderResult:
    """Per-pixel outputs (H, W images; channels first). Frames: normals in world frame.

    rgb: (3, H, W) composited colour incl. background; alpha: (H, W) = 1 - T_final;
    depth: (H, W) sum_i w_i z_i (camera z, metres; divide by alpha for the expected depth);
    depth_median: (H, W) z of the last contributor with T > 0.5 (0 if none);
    normal: (3, H, W) sum_i w_i n_i, n_i the surfel normal in world frame facing the camera;
    distortion: (H, W) 2DGS depth distortion; ndfd_ext / ndfd_int: (H, W) per-pixel NDFD
    losses (None when NDFD is off); features: (Dr, H, W) sum_i w_i f_i (None unless asked);
    radii: (N,) int screen radius in pixels, 0 for culled surfels; n_contrib: (H, W) int.
    """

    rgb: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    depth_median: torch.Tensor
    normal: torch.Tensor
    distortion: torch.Tensor
    ndfd_ext: torch.Tensor | None
    ndfd_int: torch.Tensor | None
    features: torch.Tensor | None
    radii: torch.Tensor
    n_contrib: torch.Tensor

    @property
    def expected_depth(self) -> torch.Tensor:
        return self.depth / self.alpha.clamp_min(1e-6)
