"""Label-embedding features for labelled / synthetic data.

Each label id gets a fixed random unit vector; a label image becomes a feature grid by
averaging the one-hot embedding over SAM-style grid cells, so it plugs into the same pipeline
as SAM embeddings (docs/METHOD.md §1.2): the grid's long side has ``grid_long_side`` cells,
the short side round(grid_long_side * short / long), i.e. the cell pitch is max(W, H) / 64 px
for the default, like SAM's 64x64 grid cropped to the image's aspect ratio.

Label ids outside [0, L) (e.g. 255 = "unknown") embed as the zero vector.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def label_vectors(num_labels: int, dim: int, seed: int = 0) -> torch.Tensor:
    """(num_labels, dim) float32 fixed random unit vectors (deterministic in ``seed``)."""
    if num_labels < 1 or dim < 1:
        raise ValueError(f"label_vectors: need num_labels >= 1 and dim >= 1, got {num_labels}, {dim}")
    g = torch.Generator().manual_seed(int(seed))
    v = torch.randn(num_labels, dim, generator=g, dtype=torch.float64)
    return F.normalize(v, dim=1).float()


def grid_shape(width: int, height: int, grid_long_side: int = 64) -> tuple[int, int]:
    """(gh, gw) of the feature grid for a W x H image (SAM convention, see module docstring)."""
    if width >= height:
        return max(1, round(grid_long_side * height / width)), grid_long_side
    return grid_long_side, max(1, round(grid_long_side * width / height))


def label_feature_grid(labels: torch.Tensor, vectors: torch.Tensor, grid_long_side: int = 64) -> torch.Tensor:
    """(D, gh, gw) area-averaged one-hot label embedding of an (H, W) integer label image.

    Exact area averages (average pooling over pitch x pitch pixel blocks) when H and W are
    multiples of the grid; adaptive average pooling otherwise.
    """
    if labels.dim() != 2:
        raise ValueError(f"label_feature_grid: labels must be (H, W), got {tuple(labels.shape)}")
    if vectors.dim() != 2:
        raise ValueError(f"label_feature_grid: vectors must be (L, D), got {tuple(vectors.shape)}")
    h, w = labels.shape
    nl, _ = vectors.shape
    gh, gw = grid_shape(w, h, grid_long_side)
    lab = labels.long()
    valid = (lab >= 0) & (lab < nl)
    onehot = F.one_hot(torch.where(valid, lab, 0), nl).to(vectors.dtype) * valid[..., None]
    onehot = onehot.permute(2, 0, 1)[None]  # (1, L, H, W)
    if h % gh == 0 and w % gw == 0:
        frac = F.avg_pool2d(onehot, kernel_size=(h // gh, w // gw))
    else:
        frac = F.adaptive_avg_pool2d(onehot, (gh, gw))
    return torch.einsum("lhw,ld->dhw", frac[0], vectors)


def label_feature_image(labels: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """(D, H, W) per-pixel embedding (zero for ids outside [0, L))."""
    lab = labels.long()
    valid = (lab >= 0) & (lab < vectors.shape[0])
    return (vectors[torch.where(valid, lab, 0)] * valid[..., None]).permute(2, 0, 1)


def classify_features(feature_image: torch.Tensor, vectors: torch.Tensor,
                      min_similarity: float | None = None) -> torch.Tensor:
    """(H, W) int64 label per pixel of a (D, H, W) feature image by maximum cosine similarity.

    With ``min_similarity``, pixels whose best cosine is below it (or whose feature is zero) get -1.
    """
    if feature_image.dim() != 3 or feature_image.shape[0] != vectors.shape[1]:
        raise ValueError(f"classify_features: expected (D, H, W) with D = {vectors.shape[1]}, "
                         f"got {tuple(feature_image.shape)}")
    f = F.normalize(feature_image.float(), dim=0)
    v = F.normalize(vectors.float(), dim=1)
    sim = torch.einsum("dhw,ld->lhw", f, v)
    best, idx = sim.max(0)
    if min_similarity is not None:
        idx = torch.where(best >= min_similarity, idx, torch.full_like(idx, -1))
    return idx
