"""Minimal ``torchvision`` stand-in so ``segment_anything`` imports beside the pinned CPU torch.

PyPI ``torchvision`` does not load beside torch 2.13.0 here (``operator torchvision::nms does
not exist``), and ``segment_anything`` imports it in two places:

- ``segment_anything/utils/transforms.py``: ``torchvision.transforms.functional.resize`` and
  ``to_pil_image`` (used by ``ResizeLongestSide.apply_image``, SAM's own preprocessing);
- ``segment_anything/automatic_mask_generator.py``: ``torchvision.ops.boxes.batched_nms`` and
  ``box_area``.

:func:`install` registers small pure-PyTorch/PIL implementations of exactly these four
functions under the torchvision module names, **only** when a real torchvision cannot be
imported (a working torchvision is always preferred and never shadowed). Call it before the
first ``import segment_anything``; :func:`import_segment_anything` does both.

The implementations follow torchvision's semantics for the inputs segment_anything passes:
``resize(PIL image, (h, w))`` is ``PIL.Image.resize((w, h), BILINEAR)`` (what torchvision does
for PIL images), ``to_pil_image`` accepts HWC uint8 numpy arrays and CHW/HW tensors, and
``batched_nms`` is greedy IoU suppression performed independently per category, returning
kept indices sorted by decreasing score.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

COMPAT_FLAG = "__fhgs_tv_compat__"
_MODULE_NAMES = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional",
                 "torchvision.ops", "torchvision.ops.boxes")


# ----------------------------------------------------------------------------- transforms
def to_pil_image(pic, mode: str | None = None):
    """numpy (H, W[, C]) or tensor (C, H, W) / (H, W) -> ``PIL.Image``.

    Floating-point tensors are taken to be in [0, 1] (torchvision's convention) and scaled to
    uint8; numpy arrays must already be uint8 (as SAM passes them).
    """
    from PIL import Image

    if isinstance(pic, torch.Tensor):
        t = pic.detach().cpu()
        if t.ndim == 3:
            t = t.permute(1, 2, 0)
        if t.is_floating_point():
            t = (t * 255).round().clamp(0, 255).to(torch.uint8)
        arr = t.numpy()
    else:
        arr = np.asarray(pic)
        if arr.dtype != np.uint8:
            if np.issubdtype(arr.dtype, np.floating):
                arr = np.clip(np.round(arr * 255), 0, 255).astype(np.uint8)
            else:
                arr = arr.astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3):
        raise ValueError(f"to_pil_image: expected a 2-D or 3-D array, got shape {arr.shape}")
    return Image.fromarray(np.ascontiguousarray(arr), mode=mode) if mode else Image.fromarray(np.ascontiguousarray(arr))


def _resize_shape(h: int, w: int, size) -> tuple[int, int]:
    if isinstance(size, int) or (isinstance(size, Sequence) and len(size) == 1):
        s = int(size if isinstance(size, int) else size[0])
        if h <= w:
            return s, int(s * w / h)
        return int(s * h / w), s
    return int(size[0]), int(size[1])


def resize(img, size, interpolation=None, max_size=None, antialias=True):
    """torchvision ``resize``: ``size`` is (h, w), or an int for the shorter side.

    PIL images use PIL bilinear resampling (torchvision's default for PIL, antialiased by
    construction); tensors (..., H, W) use ``F.interpolate`` bilinear with antialias.
    """
    if isinstance(img, torch.Tensor):
        h, w = img.shape[-2:]
        oh, ow = _resize_shape(int(h), int(w), size)
        x = img.reshape((-1,) + tuple(img.shape[-3:])) if img.ndim >= 3 else img[None, None]
        dt = x.dtype
        y = F.interpolate(x.float(), size=(oh, ow), mode="bilinear", align_corners=False, antialias=bool(antialias))
        if not dt.is_floating_point:
            y = y.round().clamp(torch.iinfo(dt).min, torch.iinfo(dt).max)
        return y.to(dt).reshape(tuple(img.shape[:-2]) + (oh, ow))
    from PIL import Image

    w, h = img.size
    oh, ow = _resize_shape(h, w, size)
    return img.resize((ow, oh), Image.BILINEAR)


# ----------------------------------------------------------------------------- ops.boxes
def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of (K, 4) boxes in (x0, y0, x1, y1) format."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """(K1, K2) IoU matrix of xyxy boxes."""
    a1, a2 = box_area(boxes1), box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (a1[:, None] + a2[None, :] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS: indices of kept boxes, sorted by decreasing score."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    iou = box_iou(boxes[order].float(), boxes[order].float())
    n = order.numel()
    suppressed = torch.zeros(n, dtype=torch.bool)
    keep = []
    iou_c = iou.cpu()
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou_c[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.int64, device=order.device)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS done independently per category ``idxs`` (torchvision's coordinate-offset trick)."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    max_coordinate = boxes.max()
    offsets = idxs.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
    return nms(boxes + offsets[:, None], scores, iou_threshold)


# ----------------------------------------------------------------------------- registration
def torchvision_usable() -> bool:
    """True when a real (non-stub) torchvision imports cleanly."""
    mod = sys.modules.get("torchvision")
    if mod is not None:
        return not getattr(mod, COMPAT_FLAG, False)
    try:
        importlib.import_module("torchvision")
        importlib.import_module("torchvision.transforms.functional")
        importlib.import_module("torchvision.ops.boxes")
        return True
    except Exception as exc:  # ImportError, or RuntimeError "operator torchvision::nms does not exist"
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        log.debug("torchvision unavailable (%s); using fhgs_ros compat shim", exc)
        return False


def install(force: bool = False) -> bool:
    """Register the shim modules unless a real torchvision works. Returns True if the shim is active.

    ``force=True`` installs the shim even over a working torchvision (tests only).
    """
    if not force and torchvision_usable():
        return False
    mods = {name: types.ModuleType(name) for name in _MODULE_NAMES}
    for m in mods.values():
        setattr(m, COMPAT_FLAG, True)
        m.__doc__ = "fhgs_ros torchvision compat shim (see fhgs_ros.features.tv_compat)"
    fn = mods["torchvision.transforms.functional"]
    fn.resize, fn.to_pil_image = resize, to_pil_image
    bx = mods["torchvision.ops.boxes"]
    bx.batched_nms, bx.box_area, bx.box_iou, bx.nms = batched_nms, box_area, box_iou, nms
    ops = mods["torchvision.ops"]
    ops.boxes, ops.batched_nms, ops.box_area, ops.box_iou, ops.nms = bx, batched_nms, box_area, box_iou, nms
    mods["torchvision.transforms"].functional = fn
    tv = mods["torchvision"]
    tv.transforms, tv.ops, tv.__version__ = mods["torchvision.transforms"], ops, "0.0+fhgs_compat"
    sys.modules.update(mods)
    return True


def is_shim_active() -> bool:
    mod = sys.modules.get("torchvision")
    return bool(mod is not None and getattr(mod, COMPAT_FLAG, False))


def import_segment_anything():
    """Install the shim if needed, then import and return the ``segment_anything`` package.

    Raises ImportError with the install command when the package is missing.
    """
    install()
    try:
        import segment_anything  # noqa: F401
        import segment_anything.utils.transforms  # noqa: F401
    except ImportError as exc:
        if "segment_anything" in str(exc) or getattr(exc, "name", "") == "segment_anything":
            raise ImportError("the 'sam' feature extractor needs the segment_anything package: "
                              "`.venv/bin/pip install segment-anything` (pure Python)") from exc
        raise
    return segment_anything
