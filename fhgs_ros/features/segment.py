"""Promptable segmentation of any view of the map: SAM's prompt encoder and mask decoder on *rendered* features.

The surfels' raw frozen features are alpha-blended into a feature image of the view,
area-averaged onto SAM's embedding grid (``input_size / 16`` cells on the image's long side,
top-left aligned, zero-padded to a square exactly like SAM pads its input; the grid geometry is
:func:`fhgs_ros.features.sam.sam_valid_grid`) and fed, in place of the image encoder's output, to
SAM's prompt encoder + mask decoder with point and/or box prompts. The low-resolution mask logits
are upsampled to the image as ``Sam.postprocess_masks`` does. The result is a 2-D mask plus the
surfels inside it (:func:`fhgs_ros.core.query.surfels_in_mask`; the membership weights are
evaluated at full resolution by default, ``membership_long_side`` lowers it).

SAM 2 (a ``Sam2PromptModel`` from ``Sam2Extractor.prompt_model()``): the feature image is
area-averaged onto SAM 2's square grid (the encoder sees the image resized anisotropically to
``input_size`` x ``input_size``, no padding; :func:`fhgs_ros.features.sam2.feature_image_to_square_grid`)
and decoded by SAM 2's own prompt encoder / mask decoder. The map holds only the 256-d stride-16
embedding, not the stride-4/8 FPN features that SAM 2.1's decoder adds while upscaling its masks:
they are fed as zeros, which is exactly the decoder with ``use_high_res_features`` off (the
low-resolution path; masks are coarser at object boundaries than SAM 2 on the photo itself).

A map whose features come from one encoder family (``feature_extractor`` in its metadata:
SAM 1 / MobileSAM vs SAM 2) is never decoded with the other family's decoder (QueryError).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from fhgs_ros.core.camera import Camera
from fhgs_ros.core.query import QueryError, blend_values, pair_weights, render_camera, surfels_in_mask
from fhgs_ros.core.render import native_rasterizer, render
from fhgs_ros.core.surfels import SurfelMap
from fhgs_ros.features.sam import PATCH, SamPromptModel, sam_valid_grid


@dataclass
class SegmentResult:
    """mask (H, W) bool; indices (K,) int64 surfels inside; score: SAM's predicted IoU of the mask;
    logits (H, W) mask logits; feature_grid (256, g, g) the rendered embedding fed to the decoder;
    valid_grid (gh, gw) its non-padded part."""

    mask: torch.Tensor
    indices: torch.Tensor
    score: float
    logits: torch.Tensor
    feature_grid: torch.Tensor
    valid_grid: tuple[int, int]
    extra: dict = field(default_factory=dict)


def feature_image_to_grid(features: torch.Tensor, image_hw: tuple[int, int], input_size: int = 1024) -> torch.Tensor:
    """Area-average a (D, h, w) feature image of an (H, W) view onto SAM's (D, g, g) embedding grid.

    g = input_size / 16; grid cell (gx, gy) covers image pixels [gx, gx + 1) * max(H, W) / g (the
    cells SAM's encoder sees after its longest-side resize); the image is zero-padded bottom/right
    to whole cells, and the cells beyond the image are zero, as in SAM's padded input.
    ``features`` may be rendered at a lower resolution than (H, W) (same aspect ratio).
    """
    h0, w0 = image_hw
    d, h, w = features.shape
    g = input_size // PATCH
    gh, gw = sam_valid_grid(h0, w0, input_size)
    px_per_cell = h / h0 * max(h0, w0) / g  # rendered pixels per grid cell
    ph = max(h, int(round(gh * px_per_cell)))
    pw = max(w, int(round(gw * px_per_cell)))
    x = F.pad(features.float()[None], (0, pw - w, 0, ph - h))
    cells = F.interpolate(x, size=(gh, gw), mode="area")[0]
    out = torch.zeros(d, g, g, dtype=torch.float32, device=features.device)
    out[:, :gh, :gw] = cells
    return out


def _is_sam2(parts: Any) -> bool:
    return getattr(parts, "family", "") == "sam2" and hasattr(parts, "decode")


def _prompt_parts(parts: Any):
    if isinstance(parts, SamPromptModel) or _is_sam2(parts):
        return parts
    if hasattr(parts, "prompt_model"):
        return parts.prompt_model()
    if hasattr(parts, "image_encoder") and hasattr(parts, "mask_decoder"):
        return SamPromptModel.from_sam(parts)
    raise QueryError(f"segment_view needs a SamPromptModel / Sam2PromptModel, a SamExtractor / Sam2Extractor or a "
                     f"segment_anything Sam, got {type(parts).__name__}")


def _check_family(parts: Any, surfels: SurfelMap) -> None:
    """QueryError when the map's features come from another encoder family than the decoder's."""
    from fhgs_ros.features.selection import encoder_family, family_name

    map_id = str(surfels.meta.get("feature_extractor", "") or "")
    fam = encoder_family(map_id)
    mine = getattr(parts, "family", "sam")
    if fam and fam != mine:
        raise QueryError(f"segment_view: the map's features come from encoder '{map_id}' ({family_name(fam)}) but "
                         f"the prompt decoder is {family_name(mine)}; decode with the same family's decoder "
                         f"(features.extractor / checkpoint of the map's encoder)")


@torch.no_grad()
def render_feature_grid(surfels: SurfelMap, camera: Camera, input_size: int = 1024,
                        render_long_side: int | None = 256, backend: str = "auto", pairs=None) -> torch.Tensor:
    """The surfels' raw frozen features alpha-blended in ``camera``'s view and area-averaged onto
    SAM's (D, input_size/16, input_size/16) grid (see :func:`feature_image_to_grid`).

    The view is rendered at ``render_long_side`` pixels on its long side (4 samples per cell per
    axis at the standard 64-cell grid; None = full resolution). backend: any ``render`` backend, or
    "pairs" (blend :func:`pair_weights` in chunks: bounded memory for D = 256 on the reference
    path); "auto" uses the native rasterizer when built, else "pairs".
    """
    feats = render_feature_image(surfels, camera, render_long_side, backend, pairs)
    return feature_image_to_grid(feats, (camera.height, camera.width), input_size)


@torch.no_grad()
def render_feature_image(surfels: SurfelMap, camera: Camera, render_long_side: int | None = 256,
                         backend: str = "auto", pairs=None) -> torch.Tensor:
    """(D, h, w) raw frozen features alpha-blended in ``camera``'s view at ``render_long_side``
    (backends as :func:`render_feature_grid`)."""
    rc, _ = render_camera(camera, render_long_side)
    if backend == "auto" and native_rasterizer() is None:
        backend = "pairs"
    if backend == "pairs":
        sid, pix, w = pairs if pairs is not None else pair_weights(surfels, rc)
        return blend_values(sid, pix, w, surfels.features_raw, rc.width, rc.height)
    return render(surfels, rc, render_features=True, backend=backend).features


@torch.no_grad()
def segment_view(sam_parts: Any, surfels: SurfelMap, camera: Camera, points: Any = None, labels: Any = None,
                 box: Any = None, multimask_output: bool = True, membership: str = "dominant",
                 min_weight: float = 0.02, render_long_side: int | None = 256,
                 membership_long_side: int | None = None, backend: str = "auto") -> SegmentResult:
    """SAM mask for prompts on a *rendered* view, and the surfels inside it.

    sam_parts: a ``SamPromptModel`` (``SamExtractor.prompt_model()``), a ``SamExtractor`` or a
    ``segment_anything`` ``Sam``. points: (P, 2) pixel coordinates (x, y) in ``camera``'s image;
    labels: (P,) 1 = foreground, 0 = background (default all 1); box: (x0, y0, x1, y1) pixels.
    multimask_output: ask SAM for 3 masks and keep the one with the best predicted IoU (SAM's
    advice for single-point prompts). Surfel membership: see the module docstring.
    render_long_side: resolution of the feature render that is area-averaged onto SAM's grid
    (256 = 4 x 4 samples per cell at the 64-cell grid; None = full resolution);
    membership_long_side: resolution at which dominant-weight pixels are found (None = full).
    """
    parts = _prompt_parts(sam_parts)
    if points is None and box is None:
        raise QueryError("segment_view needs point prompts and/or a box")
    d_sam = int(parts.prompt_encoder.embed_dim)
    if surfels.feature_dim != d_sam:
        raise QueryError(f"segment_view needs SAM features ({d_sam}-d) in the map, but it holds "
                         f"{surfels.feature_dim}-d features (extractor '{surfels.meta.get('feature_extractor', '?')}')")
    _check_family(parts, surfels)
    if _is_sam2(parts):
        return _segment_view_sam2(parts, surfels, camera, points, labels, box, multimask_output, membership,
                                  min_weight, render_long_side, membership_long_side, backend)
    h0, w0 = camera.height, camera.width
    s = parts.input_size
    new_h, new_w = parts.preprocess_shape(h0, w0)
    dev = parts.device
    rc, _ = render_camera(camera, render_long_side)
    mc, _ = render_camera(camera, membership_long_side)
    use_pairs = backend == "pairs" or (backend == "auto" and native_rasterizer() is None)
    pairs = pair_weights(surfels, rc) if use_pairs else None
    grid = render_feature_grid(surfels, camera, s, render_long_side, "pairs" if use_pairs else backend, pairs)
    if membership == "dominant" and (pairs is None or (mc.width, mc.height) != (rc.width, rc.height)):
        pairs = pair_weights(surfels, mc)

    # Prompts in SAM's resized-image frame (ResizeLongestSide.apply_coords / apply_boxes).
    sx, sy = new_w / w0, new_h / h0
    pts = None
    if points is not None:
        c = torch.as_tensor(points, dtype=torch.float32).reshape(-1, 2)
        lab = torch.ones(c.shape[0]) if labels is None else torch.as_tensor(labels, dtype=torch.float32).reshape(-1)
        if lab.numel() != c.shape[0]:
            raise QueryError(f"{c.shape[0]} points but {lab.numel()} labels")
        c = c * torch.tensor([sx, sy])
        pts = (c[None].to(dev), lab[None].to(dev, torch.int))
    bx = None
    if box is not None:
        b = torch.as_tensor(box, dtype=torch.float32).reshape(1, 4)
        bx = (b * torch.tensor([sx, sy, sx, sy])).to(dev)
    pe, md = parts.prompt_encoder, parts.mask_decoder
    sparse, dense = pe(points=pts, boxes=bx, masks=None)
    low, iou = md(image_embeddings=grid[None].to(dev, next(md.parameters()).dtype), image_pe=pe.get_dense_pe(),
                  sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask_output)
    best = int(torch.argmax(iou[0])) if multimask_output else 0
    low = low[:, best:best + 1].float()
    # Sam.postprocess_masks: to the padded input size, crop the padding, to the original size.
    up = F.interpolate(low, (s, s), mode="bilinear", align_corners=False)[..., :new_h, :new_w]
    logits = F.interpolate(up, (h0, w0), mode="bilinear", align_corners=False)[0, 0].cpu()
    mask = logits > parts.mask_threshold
    idx = surfels_in_mask(surfels, camera, mask, membership, min_weight, membership_long_side, pairs=pairs,
                          backend=backend if backend != "pairs" else "auto")
    return SegmentResult(mask, idx, float(iou[0, best]), logits, grid.cpu(), sam_valid_grid(h0, w0, s),
                         {"low_res_logits": low[0, 0].cpu(), "all_iou": iou[0].float().cpu()})


def _segment_view_sam2(parts: Any, surfels: SurfelMap, camera: Camera, points: Any, labels: Any, box: Any,
                       multimask_output: bool, membership: str, min_weight: float, render_long_side: int | None,
                       membership_long_side: int | None, backend: str) -> SegmentResult:
    """``segment_view`` with SAM 2's decoder (module docstring): square grid, zero high-res features."""
    from fhgs_ros.features.base import FeatureError
    from fhgs_ros.features.sam2 import feature_image_to_square_grid

    h0, w0 = camera.height, camera.width
    rc, _ = render_camera(camera, render_long_side)
    mc, _ = render_camera(camera, membership_long_side)
    use_pairs = backend == "pairs" or (backend == "auto" and native_rasterizer() is None)
    pairs = pair_weights(surfels, rc) if use_pairs else None
    feats = render_feature_image(surfels, camera, render_long_side, "pairs" if use_pairs else backend, pairs)
    grid = feature_image_to_square_grid(feats, parts.grid_size)
    if membership == "dominant" and (pairs is None or (mc.width, mc.height) != (rc.width, rc.height)):
        pairs = pair_weights(surfels, mc)
    try:
        logits_all, low_all, iou = parts.decode(grid, (h0, w0), points, labels, box, multimask_output)
    except FeatureError as exc:
        raise QueryError(str(exc)) from None
    best = int(torch.argmax(iou)) if multimask_output else 0
    logits = logits_all[best]
    mask = logits > parts.mask_threshold
    idx = surfels_in_mask(surfels, camera, mask, membership, min_weight, membership_long_side, pairs=pairs,
                          backend=backend if backend != "pairs" else "auto")
    g = parts.grid_size
    return SegmentResult(mask, idx, float(iou[best]), logits, grid.cpu(), (g, g),
                         {"low_res_logits": low_all[best], "all_iou": iou})
