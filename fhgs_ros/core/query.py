"""Semantic queries on the map's frozen features, and which surfels a 2-D mask of a view holds.

Query by example (vectorized, O(N D) for N surfels of width D: one matrix-vector product with
the unit features, then a threshold; only the K selected surfels are sorted):
- :func:`query_by_feature`: surfels whose frozen feature has cosine similarity >= threshold
  with a given vector;
- :func:`query_by_pixel`: the query vector is the alpha-blended (rendered) raw feature at a
  pixel of a view (``mode="rendered"``), or the frozen feature of the surfel with the largest
  blending weight at that pixel (``mode="dominant"``);
- :func:`query_by_point`: the frozen feature of the surfel whose centre is nearest to a 3-D
  point (within ``radius``).

Membership of a surfel in a 2-D mask (:func:`surfels_in_mask`, ``membership="dominant"``,
default): the surfel's *dominant-weight pixel* is the pixel where its blending weight w = alpha T
is largest in that view (exactly the weights of the rasterizer: same pairs, ordering, skip rules
and early termination; :func:`pair_weights` is checked against ``render`` in the tests). A surfel
is in the mask when its dominant pixel is, and its largest weight is at least ``min_weight``
(occluded or nearly transparent surfels never are). ``membership="centre"`` is a cheaper
approximation: the surfel centre projects into the mask and its depth is within ``depth_tol``
(relative) of the rendered median depth there. Promptable masks themselves (SAM's decoder on
rendered features) are :mod:`fhgs_ros.features.segment`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from fhgs_ros.core.camera import Camera
from fhgs_ros.core.reference import composite_pairs
from fhgs_ros.core.render import render
from fhgs_ros.core.surfels import SurfelMap



class QueryError(ValueError):
    """A query that cannot be answered (nothing at the pixel, bad prompt, feature width mismatch)."""


@dataclass
class QueryResult:
    """Matching surfels, best first.

    indices (K,) int64 rows of the SurfelMap; scores (K,) float32 cosine similarities;
    query (D,) the unit query vector; seed: the surfel whose feature was the query (-1 if none);
    threshold: the cosine threshold used.
    """

    indices: torch.Tensor
    scores: torch.Tensor
    query: torch.Tensor
    seed: int = -1
    threshold: float = 0.0

    def __len__(self) -> int:
        return int(self.indices.numel())

    def mask(self, n: int) -> torch.Tensor:
        """(n,) bool mask of the selected surfels."""
        m = torch.zeros(n, dtype=torch.bool)
        m[self.indices.cpu()] = True
        return m


def _unit_features(surfels: SurfelMap | torch.Tensor) -> torch.Tensor:
    if isinstance(surfels, torch.Tensor):
        return F.normalize(surfels.float(), dim=-1)
    return surfels.features_unit


def query_by_feature(surfels: SurfelMap | torch.Tensor, vector: torch.Tensor, threshold: float = 0.85,
                     top_k: int | None = None, seed: int = -1) -> QueryResult:
    """Surfels whose frozen feature has cosine similarity >= ``threshold`` with ``vector``.

    ``surfels``: a SurfelMap (its ``features_unit`` are used) or an (N, D) feature tensor.
    ``vector``: (D,) raw or unit. ``top_k``: keep at most the k best. Cost: one (N, D) x (D,)
    product plus a sort of the selected surfels only.
    """
    fu = _unit_features(surfels)
    v = torch.as_tensor(vector).detach().reshape(-1).to(fu.device, torch.float32)
    if v.numel() != fu.shape[1]:
        raise QueryError(f"query vector has {v.numel()} dims but the map's features have {fu.shape[1]}")
    if not torch.isfinite(v).all() or float(v.norm()) < 1e-12:
        raise QueryError("query vector is zero or not finite")
    v = v / v.norm()
    with torch.no_grad():
        scores = fu @ v
        idx = torch.nonzero(scores >= threshold).squeeze(1)
        s = scores[idx]
        order = torch.argsort(s, descending=True, stable=True)
        if top_k is not None:
            order = order[: max(0, int(top_k))]
    return QueryResult(idx[order], s[order].float(), v, int(seed), float(threshold))


def query_by_point(surfels: SurfelMap, xyz: Sequence[float] | torch.Tensor, threshold: float = 0.85,
                   radius: float | None = None, top_k: int | None = None) -> QueryResult:
    """Query with the frozen feature of the surfel whose centre is nearest to ``xyz`` (world).

    When ``radius`` is given and no centre lies within it, the result is empty (seed = -1).
    """
    if len(surfels) == 0:
        raise QueryError("the map is empty")
    p = torch.as_tensor(xyz, dtype=torch.float32).reshape(3).to(surfels.means.device)
    with torch.no_grad():
        d2 = ((surfels.means.detach() - p) ** 2).sum(-1)
        i = int(torch.argmin(d2))
    if radius is not None and math.sqrt(float(d2[i])) > radius:
        d = surfels.feature_dim
        return QueryResult(torch.zeros(0, dtype=torch.int64), torch.zeros(0), torch.zeros(d), -1, float(threshold))
    return query_by_feature(surfels, surfels.features_unit16[i].float(), threshold, top_k, seed=i)


# ----------------------------------------------------------------------------- blending weights
def crop_camera(camera: Camera, x0: int, y0: int, width: int, height: int) -> Camera:
    """The camera of the pixel window [x0, x0 + width) x [y0, y0 + height) of ``camera``'s image.

    Rendering it gives exactly those pixels of the full render (same rays, same surfels)."""
    return Camera(int(width), int(height), camera.fx, camera.fy, camera.cx - x0, camera.cy - y0,
                  camera.world_to_cam.clone(), camera.near, camera.far, camera.name)


@torch.no_grad()
def pair_weights(surfels: SurfelMap, camera: Camera) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Blending weight of every (surfel, pixel) pair that contributes to the view.

    Returns (sid (P,) surfel index, pix (P,) flat pixel index y * W + x, w (P,) weight alpha * T),
    with the algorithm of ``fhgs_ros.core.reference`` (pairs inside the 3-sigma boxes, skip rules,
    front-to-back order by centre depth, early termination). Pairs with w = 0 are dropped.
    """
    cp = composite_pairs(surfels.means.detach(), surfels.quats.detach(), surfels.scales.detach(),
                         surfels.opacity.detach(), camera)
    sid, pix, w = cp.sid, cp.pix, cp.w
    nz = w > 0
    return sid[nz], pix[nz], w[nz]


def blend_values(sid: torch.Tensor, pix: torch.Tensor, w: torch.Tensor, values: torch.Tensor, width: int,
                 height: int, chunk: int = 1 << 18) -> torch.Tensor:
    """(C, H, W) image sum_i w_i values_i from :func:`pair_weights`, in pair chunks (bounded memory)."""
    c = values.shape[1]
    out = torch.zeros(width * height, c, dtype=torch.float32, device=w.device)
    vals = values.detach()
    for i in range(0, sid.numel(), chunk):
        s = slice(i, i + chunk)
        out.index_add_(0, pix[s], w[s, None].float() * vals[sid[s]].float())
    return out.T.reshape(c, height, width)


def pixel_weights(surfels: SurfelMap, camera: Camera, x: int, y: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, weights) of every surfel contributing to pixel (x, y) of the view, heaviest first."""
    _check_pixel(camera, x, y)
    sid, _, w = pair_weights(surfels, crop_camera(camera, int(x), int(y), 1, 1))
    order = torch.argsort(w, descending=True, stable=True)
    return sid[order], w[order]


@torch.no_grad()
def dominant_pixels(surfels: SurfelMap, camera: Camera, pairs=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per surfel: (flat index y * W + x of its dominant-weight pixel, -1 if it never contributes;
    its largest weight, 0 if none). Ties go to the larger pixel index (deterministic)."""
    sid, pix, w = pairs if pairs is not None else pair_weights(surfels, camera)
    n = len(surfels)
    wmax = torch.zeros(n, dtype=w.dtype, device=w.device).scatter_reduce(0, sid, w, reduce="amax")
    is_max = w >= wmax[sid]
    dom = torch.full((n,), -1, dtype=torch.long, device=w.device)
    dom = dom.scatter_reduce(0, sid[is_max], pix[is_max], reduce="amax")
    return dom, wmax


def _check_pixel(camera: Camera, x: int, y: int) -> None:
    if not (0 <= int(x) < camera.width and 0 <= int(y) < camera.height):
        raise QueryError(f"pixel ({x}, {y}) is outside the {camera.width}x{camera.height} view")


def query_by_pixel(surfels: SurfelMap, camera: Camera, x: int, y: int, threshold: float = 0.85,
                   mode: str = "rendered", top_k: int | None = None, min_alpha: float = 0.05,
                   backend: str = "auto") -> QueryResult:
    """Query with the feature seen at pixel (x, y) of ``camera``'s view.

    mode="rendered": the alpha-blended raw feature sum_i w_i f_i at that pixel (rendered through
    ``render`` on the 1x1 window of the view; the result's seed is the dominant surfel);
    mode="dominant": the frozen feature of the surfel with the largest weight at that pixel.
    Raises QueryError when the pixel's alpha is below ``min_alpha`` (nothing there).
    """
    if mode not in ("rendered", "dominant"):
        raise QueryError(f"mode must be 'rendered' or 'dominant', got '{mode}'")
    idx, w = pixel_weights(surfels, camera, x, y)
    if idx.numel() == 0 or float(w.sum()) < min_alpha:
        raise QueryError(f"no surfel is visible at pixel ({x}, {y}) (alpha {float(w.sum()):.3f} < {min_alpha})")
    seed = int(idx[0])
    if mode == "dominant":
        return query_by_feature(surfels, surfels.features_unit16[seed].float(), threshold, top_k, seed=seed)
    with torch.no_grad():
        r = render(surfels, crop_camera(camera, int(x), int(y), 1, 1), render_features=True, backend=backend)
    return query_by_feature(surfels, r.features[:, 0, 0], threshold, top_k, seed=seed)


# ----------------------------------------------------------------------------- evaluation helpers
def precision_recall(result: QueryResult | torch.Tensor, gt_labels: torch.Tensor, label: int,
                     ignore_label: int | None = -1) -> dict[str, float]:
    """Precision / recall of the returned surfels against per-surfel ground-truth labels (N,).

    Surfels whose ground truth is ``ignore_label`` (unknown) count neither as hits nor as misses.
    """
    idx = result.indices if isinstance(result, QueryResult) else torch.as_tensor(result)
    gt = torch.as_tensor(gt_labels).reshape(-1).cpu()
    sel = torch.zeros(gt.numel(), dtype=torch.bool)
    sel[idx.cpu().long()] = True
    if ignore_label is not None:
        sel &= gt != ignore_label
    pos = gt == label
    tp = int((sel & pos).sum())
    n_sel, n_pos = int(sel.sum()), int(pos.sum())
    return {"precision": tp / n_sel if n_sel else 0.0, "recall": tp / n_pos if n_pos else 0.0,
            "returned": n_sel, "relevant": n_pos, "true_positives": tp}


@torch.no_grad()
def surfel_labels_from_views(surfels: SurfelMap, cameras: Sequence[Camera], label_images: Sequence[torch.Tensor],
                             min_weight: float = 0.02) -> torch.Tensor:
    """Ground-truth label of every surfel from labelled views: the label at its dominant-weight
    pixel in the view where that weight is largest. -1 for surfels never visible with weight >=
    ``min_weight``. (For scoring queries on labelled/synthetic data.)"""
    n = len(surfels)
    best_w = torch.zeros(n)
    out = torch.full((n,), -1, dtype=torch.long)
    for cam, lab in zip(cameras, label_images):
        lab = torch.as_tensor(lab).reshape(cam.height, cam.width).long().cpu()
        dom, wmax = dominant_pixels(surfels, cam)
        dom, wmax = dom.cpu(), wmax.float().cpu()
        better = (dom >= 0) & (wmax >= min_weight) & (wmax > best_w)
        out[better] = lab.reshape(-1)[dom[better]]
        best_w = torch.where(better, wmax, best_w)
    return out


def query_example_report(surfels: SurfelMap, gt_labels: torch.Tensor, label: int | None = None,
                         threshold: float = 0.85, seed_index: int | None = None,
                         ignore_label: int | None = -1) -> dict[str, Any]:
    """Query by example for one object: pick a surfel of ``label`` (the one whose feature is most
    typical of the object, i.e. closest to the mean unit feature of its surfels, unless
    ``seed_index`` is given), query with its frozen feature and score the result against
    ``gt_labels`` (N,). ``label=None`` picks the most frequent label. Returns a JSON-ready dict
    with ``precision``, ``recall``, counts and timing."""
    import time

    gt = torch.as_tensor(gt_labels).reshape(-1).cpu()
    if gt.numel() != len(surfels):
        raise QueryError(f"gt_labels has {gt.numel()} entries for {len(surfels)} surfels")
    if label is None:
        known = gt[gt != ignore_label] if ignore_label is not None else gt
        if known.numel() == 0:
            raise QueryError("no surfel has a ground-truth label")
        label = int(torch.mode(known).values)
    members = torch.nonzero(gt == label).squeeze(1)
    if members.numel() == 0:
        raise QueryError(f"no surfel carries ground-truth label {label}")
    fu = surfels.features_unit.cpu()
    if seed_index is None:
        centre = F.normalize(fu[members].mean(0), dim=0)
        seed_index = int(members[torch.argmax(fu[members] @ centre)])
    t0 = time.perf_counter()
    res = query_by_feature(surfels, fu[seed_index], threshold, seed=seed_index)
    dt = time.perf_counter() - t0
    rep = {"label": int(label), "seed_surfel": int(seed_index), "threshold": float(threshold),
           "num_surfels": len(surfels), "query_ms": 1000 * dt}
    rep.update(precision_recall(res, gt, label, ignore_label))
    return rep


def write_query_json(path: str | os.PathLike, report: dict[str, Any]) -> None:
    """Write a report (``precision``, ``recall``, ...) atomically as JSON."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


# ----------------------------------------------------------------------------- masks -> surfels
def render_camera(camera: Camera, render_long_side: int | None) -> tuple[Camera, float]:
    long_side = max(camera.width, camera.height)
    if render_long_side is None or render_long_side >= long_side:
        return camera, 1.0
    f = render_long_side / long_side
    return camera.scaled(f), f


def surfels_in_mask(surfels: SurfelMap, camera: Camera, mask: torch.Tensor, membership: str = "dominant",
                    min_weight: float = 0.02, render_long_side: int | None = None, depth_tol: float = 0.05,
                    pairs=None, backend: str = "auto") -> torch.Tensor:
    """Indices (K,) of the surfels inside a (H, W) bool mask of ``camera``'s view (module docstring).

    render_long_side: evaluate the weights (or depths) on the view scaled to this long side
    (None = full resolution, the default: at a coarser scale small surfels are hidden by their
    neighbours within one pixel and drop out). ``pairs``: precomputed :func:`pair_weights` of that
    camera.
    """
    h0, w0 = camera.height, camera.width
    m = torch.as_tensor(mask).bool().cpu()
    if tuple(m.shape) != (h0, w0):
        raise QueryError(f"mask shape {tuple(m.shape)} does not match the {w0}x{h0} view")
    rc, f = render_camera(camera, render_long_side)
    if membership == "dominant":
        dom, wmax = dominant_pixels(surfels, rc, pairs)
        dom, wmax = dom.cpu(), wmax.cpu()
        ok = (dom >= 0) & (wmax >= min_weight)
        dx = (dom % rc.width).float()
        dy = torch.div(dom, rc.width, rounding_mode="floor").float()
        x = ((dx + 0.5) / (rc.width / w0) - 0.5).round().long().clamp(0, w0 - 1)
        y = ((dy + 0.5) / (rc.height / h0) - 0.5).round().long().clamp(0, h0 - 1)
        inside = ok & m[y, x]
        return torch.nonzero(inside).squeeze(1)
    if membership == "centre":
        with torch.no_grad():
            r = render(surfels, rc, backend=backend)
            means = surfels.means.detach().cpu()
            w2c = rc.world_to_cam
            pc = means @ w2c[:3, :3].T + w2c[:3, 3]
            z = pc[:, 2]
            u = rc.fx * pc[:, 0] / z.clamp_min(1e-9) + rc.cx
            v = rc.fy * pc[:, 1] / z.clamp_min(1e-9) + rc.cy
            xi, yi = u.round().long(), v.round().long()
            ok = (z > rc.near) & (xi >= 0) & (xi < rc.width) & (yi >= 0) & (yi < rc.height)
            xi, yi = xi.clamp(0, rc.width - 1), yi.clamp(0, rc.height - 1)
            dmed = r.depth_median.detach().cpu()[yi, xi]
            ok &= (dmed > 0) & ((z - dmed).abs() <= depth_tol * dmed)
            x = ((xi.float() + 0.5) / (rc.width / w0) - 0.5).round().long().clamp(0, w0 - 1)
            y = ((yi.float() + 0.5) / (rc.height / h0) - 0.5).round().long().clamp(0, h0 - 1)
            return torch.nonzero(ok & m[y, x]).squeeze(1)
    raise QueryError(f"membership must be 'dominant' or 'centre', got '{membership}'")


