"""Object / validity masks stored next to the images (LLFF ``masks*/``, COLMAP ``masks/``).

A mask image is read as grey, resized (area average) to the frame size and thresholded at half
(True = object / valid pixel, supervised by the photometric loss). File names tried for an image
``IMG_1.JPG``: ``IMG_1.JPG.png`` (COLMAP's convention), ``IMG_1_mask.<ext>``, ``IMG_1.<ext>``,
``IMG_1.JPG`` for ``<ext>`` in png/jpg/jpeg (either case).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fhgs_ros.datasets.common import _resize_float, err, open_image

_EXTS = (".png", ".PNG", ".jpg", ".JPG", ".jpeg", ".JPEG")


def find_mask(folder: Path | None, image_name: str) -> Path | None:
    """The mask file of image ``image_name`` (a file name, any sub-path kept) in ``folder``, or None."""
    if folder is None or not folder.is_dir():
        return None
    rel = Path(image_name)
    stem = rel.with_suffix("")
    cands = [rel.with_name(rel.name + ".png")]
    cands += [stem.with_name(stem.name + "_mask" + e) for e in _EXTS]
    cands += [stem.with_name(stem.name + e) for e in _EXTS]
    cands.append(rel)
    for c in cands:
        p = folder / c
        if p.is_file():
            return p
    return None


def load_mask(path: Path, size: tuple[int, int], file: Any = None, field: str = "mask") -> torch.Tensor:
    """(H, W) bool mask of ``path`` at ``size`` (w, h): grey resized by area average, > 0.5 (of 255)."""
    im = open_image(path, file or path, field)
    a = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    if abs(a.shape[1] / a.shape[0] - size[0] / size[1]) > 0.01:
        raise err(file or path, field, f"mask {a.shape[1]}x{a.shape[0]} does not have the image's aspect ratio")
    if (a.shape[1], a.shape[0]) != tuple(size):
        a = _resize_float(a[..., None], size)[..., 0]
    return torch.from_numpy(a > 0.5)


def mask_folder(root: Path, image_folder: str = "images") -> Path | None:
    """``masks<suffix>/`` matching ``images<suffix>/`` (e.g. masks_4 for images_4), else ``masks/``, else None."""
    suffix = image_folder[len("images"):] if image_folder.startswith("images") else ""
    for name in (f"masks{suffix}", "masks"):
        if (root / name).is_dir():
            return root / name
    return None


__all__ = ["find_mask", "load_mask", "mask_folder"]
