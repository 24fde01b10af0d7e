"""``label`` feature extractor: label-embedding features for labelled and synthetic data.

Same output contract as ``sam`` (a :class:`FeatureGrid` (D, gh, gw) whose long side has
``grid_long_side`` cells, top-left aligned, ``scale = grid_long_side / max(W, H)``), but the
input is a **label image**, not RGB: ``extract(labels)`` with ``labels`` an (H, W) integer
array/tensor of label ids in [0, num_labels) (``Frame.labels``; other ids, e.g. 255 = unknown,
embed as the zero vector). A dataset ``Frame`` (anything
with a ``.labels`` attribute) is accepted too, and ``extractor_input(extractor, frame)`` in
``fhgs_ros.features.base`` picks ``frame.labels`` because ``input_kind == "labels"``.

The per-label vectors and the grid construction are those of ``fhgs_ros.features.label``
(``label_vectors(num_labels, dim, seed=...)`` and ``label_feature_grid(labels, vectors,
grid_long_side=...)``); this class only wraps them in the extractor protocol.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np
import torch

from fhgs_ros.features.base import FeatureError, FeatureGrid


class LabelExtractor:
    """Label ids -> feature grid of per-label embedding vectors.

    Args (YAML keys of ``features``): num_labels (the dataset's label count; required unless
    ``vectors`` is given), dim (D), grid_long_side (cells on the long side; 64 like SAM),
    seed (of the label vectors), vectors (explicit (num_labels, D) vectors).
    """

    input_kind = "labels"

    def __init__(self, num_labels: int | None = None, dim: int = 64, grid_long_side: int = 64, seed: int = 0,
                 vectors: torch.Tensor | None = None):
        if vectors is None:
            if num_labels is None or int(num_labels) < 1:
                raise FeatureError("the 'label' extractor needs num_labels (the dataset's number of label ids, "
                                   "e.g. len(dataset.label_names)) or explicit vectors")
            from fhgs_ros.features.label import label_vectors
            vectors = label_vectors(int(num_labels), int(dim), seed=int(seed))
            vid = f"d{int(dim)}-n{int(num_labels)}-s{int(seed)}"
        else:
            vectors = torch.as_tensor(vectors, dtype=torch.float32)
            if vectors.ndim != 2:
                raise FeatureError(f"label vectors must be (num_labels, D), got shape {tuple(vectors.shape)}")
            vid = "v" + hashlib.sha256(vectors.contiguous().numpy().tobytes()).hexdigest()[:12]
        if int(grid_long_side) < 1:
            raise FeatureError(f"grid_long_side must be positive, got {grid_long_side}")
        self.vectors = torch.as_tensor(vectors, dtype=torch.float32).contiguous()
        self.num_labels = int(self.vectors.shape[0])
        self.dim = int(self.vectors.shape[1])
        self.grid_long_side = int(grid_long_side)
        self.input_size = self.grid_long_side
        self.model_id = f"label-{vid}-g{self.grid_long_side}"

    def __repr__(self) -> str:
        return f"LabelExtractor({self.model_id})"

    def _labels(self, labels: Any) -> torch.Tensor:
        if hasattr(labels, "labels") and not isinstance(labels, (np.ndarray, torch.Tensor)):
            if labels.labels is None:
                raise FeatureError(f"frame '{getattr(labels, 'path', '')}' has no label image")
            labels = labels.labels
        t = labels.detach().cpu() if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
        if t.ndim == 3 and t.shape[-1] == 1:
            t = t[..., 0]
        if t.ndim != 2:
            raise FeatureError(f"the 'label' extractor takes an (H, W) integer label image (Frame.labels), "
                               f"got shape {tuple(t.shape)}")
        if t.is_floating_point() or t.dtype == torch.bool:
            raise FeatureError(f"label image must hold integer ids, got dtype {t.dtype}")
        return t.long()  # ids outside [0, num_labels) (e.g. 255 = unknown) embed as zero (label.py)

    def extract(self, labels: Any) -> FeatureGrid:
        from fhgs_ros.features.label import label_feature_grid

        t = self._labels(labels)
        h, w = t.shape
        grid = torch.as_tensor(label_feature_grid(t, self.vectors, grid_long_side=self.grid_long_side))
        grid = grid.detach().float().cpu().contiguous()
        g_long = grid.shape[2] if w >= h else grid.shape[1]
        return FeatureGrid(grid, g_long / max(w, h), (int(h), int(w)), self.model_id)

    def extract_batch(self, images: Sequence[Any]) -> list[FeatureGrid]:
        return [self.extract(im) for im in images]
