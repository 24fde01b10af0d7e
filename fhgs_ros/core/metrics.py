"""Evaluation metrics (docs/METHOD.md §6): PSNR, FE, FL1, label accuracy / mIoU, Chamfer.

Conventions and choices:
- **PSNR** = 10 log10(1 / MSE) on [0, 1] images, over all channels and pixels. It is inf
  when the images are identical. ``evaluate_views`` clamps the render to [0, 1] first, as
  2DGS does, and averages the per-view PSNRs.
- **FE** = the mean over pixels of the per-pixel L_ext(n) = sum_i sigma_i w_i (1 - phi_i),
  taken from ``render(..., ndfd=, target=)`` with the frozen unit features. ``fe_plain`` is
  the sigma-free sum_i w_i (1 - phi_i). Pixels without contributors count as 0 (docs/METHOD.md §8.5).
  ``lam``, ``k`` and ``sigma_increasing`` come from the given NDFDParams; ``ext_use_sigma``
  is forced on for ``fe`` and off for ``fe_plain``. ``fe_int`` (mean L_int) is reported too.
- **FL1**: the raw features are alpha-blended (background 0) at image resolution, resized
  bilinearly (align_corners=True) to the GT grid, and mean |F - F_gt| is taken over C x H x W.
  ``evaluate_views`` first crops the GT grid to the cells that cover the image, which drops
  SAM's square padding.
- **Labels**: each pixel gets the label whose vector has the largest cosine with the
  rendered raw feature. Pixels with alpha < 0.5 are predicted "unknown" (-1). They count as
  wrong for accuracy and as a false negative of their GT class, but as a false positive of
  no class. GT labels outside [0, num_labels) (for example -1 or 255) are ignored.
  mIoU is the mean IoU over the labels that occur in the GT or the prediction (union > 0)
  of the accumulated confusion matrix, so labels absent from every view are not counted as 0.
- **Chamfer** (DTU style): accuracy = mean distance from the reconstruction (a) to the
  reference (b), completeness = mean distance from b to a, chamfer = their mean. With
  ``max_dist``, distances above it are left out of the means (DTUeval-python).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fhgs_ros.core.camera import Camera
from fhgs_ros.core.raster_types import FeatureTarget, NDFDParams


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


# ------------------------------------------------------------------------------------ PSNR
def psnr(pred, gt) -> float:
    """10 log10(1 / MSE) for images in [0, 1] (any matching shapes; torch or numpy)."""
    p = _as_tensor(pred).detach().double().cpu()
    g = _as_tensor(gt).detach().double().cpu()
    if p.shape != g.shape:
        raise ValueError(f"psnr: shape mismatch {tuple(p.shape)} vs {tuple(g.shape)}")
    mse = float(((p - g) ** 2).mean())
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


# ------------------------------------------------------------------------------------ FE
def feature_entropy(surfels, camera: Camera, target: FeatureTarget, ndfd: NDFDParams = NDFDParams(),
                    backend: str = "auto") -> dict:
    """FE of one view: {"fe": mean L_ext (sigma-gated), "fe_plain": mean sum w (1 - phi), "fe_int": mean L_int}."""
    from fhgs_ros.core.render import render

    with torch.no_grad():
        out = render(surfels, camera, target=target, ndfd=dataclasses.replace(ndfd, ext_use_sigma=True),
                     backend=backend)
        plain = render(surfels, camera, target=target, ndfd=dataclasses.replace(ndfd, ext_use_sigma=False),
                       backend=backend)
    return {"fe": float(out.ndfd_ext.double().mean()), "fe_plain": float(plain.ndfd_ext.double().mean()),
            "fe_int": float(out.ndfd_int.double().mean())}


# ------------------------------------------------------------------------------------ FL1
def feature_l1(rendered_features: torch.Tensor, gt_grid: torch.Tensor) -> float:
    """FL1: rendered raw features (D, H, W) resized bilinearly (align_corners=True) to gt_grid (D, gh, gw), mean |.|."""
    r = _as_tensor(rendered_features).detach().float()
    g = _as_tensor(gt_grid).detach().float().to(r.device)
    if r.dim() != 3 or g.dim() != 3 or r.shape[0] != g.shape[0]:
        raise ValueError(f"feature_l1: need (D, H, W) and (D, gh, gw) with equal D, got {tuple(r.shape)} and "
                         f"{tuple(g.shape)}")
    rs = F.interpolate(r[None], size=tuple(g.shape[1:]), mode="bilinear", align_corners=True)[0]
    return float((rs - g).abs().double().mean())


def target_valid_grid(target: FeatureTarget, width: int, height: int) -> torch.Tensor:
    """The GT grid cropped to the cells that cover a width x height image (drops SAM's square padding)."""
    d, gh, gw = target.grid.shape
    vw = min(gw, max(1, int(round(width * target.scale))))
    vh = min(gh, max(1, int(round(height * target.scale))))
    return target.grid[:, :vh, :vw]


# ------------------------------------------------------------------------------------ labels
class LabelConfusion:
    """Accumulating confusion matrix over views.

    ``matrix[g, p]`` counts pixels with GT label g predicted as p; the last column
    (index num_labels) counts pixels predicted "unknown" (any label outside [0, num_labels)).
    """

    def __init__(self, num_labels: int):
        if num_labels < 1:
            raise ValueError("LabelConfusion: num_labels must be >= 1")
        self.num_labels = int(num_labels)
        self.matrix = np.zeros((self.num_labels, self.num_labels + 1), dtype=np.int64)

    def update(self, pred_labels, gt_labels) -> None:
        p = _as_tensor(pred_labels).detach().cpu().long().reshape(-1)
        g = _as_tensor(gt_labels).detach().cpu().long().reshape(-1)
        if p.shape != g.shape:
            raise ValueError(f"LabelConfusion.update: {p.numel()} predicted vs {g.numel()} GT pixels")
        n = self.num_labels
        keep = (g >= 0) & (g < n)
        g, p = g[keep], p[keep]
        p = torch.where((p >= 0) & (p < n), p, torch.full_like(p, n))
        counts = torch.bincount(g * (n + 1) + p, minlength=n * (n + 1))
        self.matrix += counts.numpy().reshape(n, n + 1)

    def scores(self) -> dict:
        """{"accuracy", "miou", "per_class_iou" (list, NaN where the label is absent), "num_pixels"}."""
        m = self.matrix.astype(np.float64)
        n = self.num_labels
        total = m.sum()
        tp = np.diag(m[:, :n])
        gt_count = m.sum(1)              # includes "unknown" predictions (false negatives)
        pred_count = m[:, :n].sum(0)
        union = gt_count + pred_count - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
        present = union > 0
        return {"accuracy": float(tp.sum() / total) if total > 0 else math.nan,
                "miou": float(iou[present].mean()) if present.any() else math.nan,
                "per_class_iou": [float(x) for x in iou], "num_pixels": int(total)}


def label_scores(pred_labels, gt_labels, num_labels: int) -> dict:
    """Accuracy, mIoU (labels present in GT or prediction) and per-class IoU for one label image pair."""
    c = LabelConfusion(num_labels)
    c.update(pred_labels, gt_labels)
    return c.scores()


def classify_features(features: torch.Tensor, label_vectors: torch.Tensor, alpha: torch.Tensor | None = None,
                      alpha_min: float = 0.5) -> torch.Tensor:
    """(H, W) label ids: max cosine of rendered features (D, H, W) with label_vectors (L, D).

    Pixels with alpha < alpha_min get -1 ("unknown").
    """
    d, h, w = features.shape
    lv = F.normalize(_as_tensor(label_vectors).float().to(features.device), dim=-1)
    if lv.shape[1] != d:
        raise ValueError(f"classify_features: label vectors have width {lv.shape[1]}, features {d}")
    f = F.normalize(features.float().reshape(d, -1), dim=0)
    pred = (lv @ f).argmax(0).reshape(h, w)
    if alpha is not None:
        pred = torch.where(alpha.reshape(h, w) >= alpha_min, pred, torch.full_like(pred, -1))
    return pred


# ------------------------------------------------------------------------------------ geometry
def sample_mesh_points(vertices, faces, n: int, seed: int = 0) -> torch.Tensor:
    """(n, 3) float32 points uniform by area on a triangle mesh (deterministic for a seed)."""
    v = _as_tensor(vertices).detach().cpu().double().numpy().reshape(-1, 3)
    f = _as_tensor(faces).detach().cpu().long().numpy().reshape(-1, 3)
    if len(f) == 0:
        raise ValueError("sample_mesh_points: mesh has no faces")
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    if not area.sum() > 0:
        raise ValueError("sample_mesh_points: mesh has zero area")
    rng = np.random.default_rng(seed)
    tri = rng.choice(len(f), size=int(n), p=area / area.sum())
    r1 = np.sqrt(rng.random(int(n)))[:, None]
    r2 = rng.random(int(n))[:, None]
    pts = (1 - r1) * a[tri] + r1 * (1 - r2) * b[tri] + r1 * r2 * c[tri]
    return torch.from_numpy(pts.astype(np.float32))


def chamfer_distance(points_a, points_b, max_dist: float | None = None) -> dict:
    """{"accuracy": mean d(a -> b), "completeness": mean d(b -> a), "chamfer": their mean} (cKDTree)."""
    from scipy.spatial import cKDTree

    a = _as_tensor(points_a).detach().cpu().double().numpy().reshape(-1, 3)
    b = _as_tensor(points_b).detach().cpu().double().numpy().reshape(-1, 3)
    if len(a) == 0 or len(b) == 0:
        raise ValueError(f"chamfer_distance: empty point set ({len(a)} and {len(b)} points)")
    d_ab = cKDTree(b).query(a, k=1)[0]
    d_ba = cKDTree(a).query(b, k=1)[0]
    if max_dist is not None:
        d_ab = d_ab[d_ab < max_dist]
        d_ba = d_ba[d_ba < max_dist]
    acc = float(d_ab.mean()) if len(d_ab) else math.nan
    comp = float(d_ba.mean()) if len(d_ba) else math.nan
    return {"accuracy": acc, "completeness": comp, "chamfer": 0.5 * (acc + comp)}


def mesh_chamfer(pred_vertices, pred_faces, gt_vertices, gt_faces=None, n: int = 100_000, seed: int = 0,
                 max_dist: float | None = None) -> dict:
    """Chamfer between area-uniform samples of a predicted mesh and a GT mesh.

    With ``gt_faces`` None (or empty) the GT vertices are used as a point cloud.
    """
    a = sample_mesh_points(pred_vertices, pred_faces, n, seed)
    gf = None if gt_faces is None else _as_tensor(gt_faces)
    b = _as_tensor(gt_vertices).float() if gf is None or gf.numel() == 0 else \
        sample_mesh_points(gt_vertices, gt_faces, n, seed + 1)
    return chamfer_distance(a, b, max_dist)


# ------------------------------------------------------------------------------------ views
def evaluate_views(surfels, frames: Sequence, targets: Sequence[FeatureTarget | None] | None = None,
                   label_vectors: torch.Tensor | None = None, backend: str = "auto",
                   ndfd: NDFDParams = NDFDParams(), background: torch.Tensor | None = None,
                   alpha_min: float = 0.5) -> dict:
    """Render every frame (torch.no_grad) and average the metrics over views.

    frames: ``fhgs_ros.datasets.base.Frame`` (camera, image (3, H, W), optional labels (H, W)).
    targets: one FeatureTarget (or None) per frame. FE and FL1 are averaged over the frames
    that have one. label_vectors: (L, D) raw feature of each label id, with D the width of the
    raw features; label metrics are accumulated over the frames that have labels.

    Returns {"psnr", "fe", "fe_plain", "fe_int", "fl1", "num_views", "per_view": [...]}. With
    labels it also has "label_accuracy", "label_miou" and "label_per_class_iou". A metric with
    no contributing view is NaN.
    """
    from fhgs_ros.core.render import render

    if targets is not None and len(targets) != len(frames):
        raise ValueError(f"evaluate_views: {len(frames)} frames but {len(targets)} targets")
    conf = None
    if label_vectors is not None:
        label_vectors = _as_tensor(label_vectors).float()
        conf = LabelConfusion(int(label_vectors.shape[0]))
    per_view = []
    nd_sigma = dataclasses.replace(ndfd, ext_use_sigma=True)
    nd_plain = dataclasses.replace(ndfd, ext_use_sigma=False)
    with torch.no_grad():
        for i, fr in enumerate(frames):
            cam = fr.camera
            tgt = targets[i] if targets is not None else None
            has_labels = conf is not None and getattr(fr, "labels", None) is not None
            out = render(surfels, cam, background=background, target=tgt, ndfd=nd_sigma if tgt is not None else None,
                         render_features=tgt is not None or has_labels, backend=backend)
            img = fr.image.to(out.rgb.device, out.rgb.dtype)
            if tuple(img.shape) != tuple(out.rgb.shape):
                raise ValueError(f"evaluate_views: frame {i} ('{fr.path}') image {tuple(img.shape)} does not match "
                                 f"its camera {tuple(out.rgb.shape)}")
            row = {"index": i, "psnr": psnr(out.rgb.clamp(0, 1), img)}
            fmask = getattr(fr, "mask", None)
            if fmask is not None and bool(fmask.any()):
                m = fmask.to(img.device).bool()
                row["psnr_masked"] = psnr(out.rgb.clamp(0, 1)[:, m], img[:, m])
            if tgt is not None:
                plain = render(surfels, cam, background=background, target=tgt, ndfd=nd_plain, backend=backend)
                row["fe"] = float(out.ndfd_ext.double().mean())
                row["fe_int"] = float(out.ndfd_int.double().mean())
                row["fe_plain"] = float(plain.ndfd_ext.double().mean())
                row["fl1"] = feature_l1(out.features, target_valid_grid(tgt, cam.width, cam.height))
            if has_labels:
                pred = classify_features(out.features, label_vectors, out.alpha, alpha_min)
                conf.update(pred, fr.labels)
                row["label_accuracy"] = label_scores(pred, fr.labels, conf.num_labels)["accuracy"]
            per_view.append(row)

    def avg(key: str) -> float:
        vals = [r[key] for r in per_view if key in r]
        return float(np.mean(vals)) if vals else math.nan

    res = {"psnr": avg("psnr"), "fe": avg("fe"), "fe_plain": avg("fe_plain"), "fe_int": avg("fe_int"),
           "fl1": avg("fl1"), "num_views": len(per_view), "per_view": per_view}
    if any("psnr_masked" in r for r in per_view):
        res["psnr_masked"] = avg("psnr_masked")   # PSNR over the frames' mask pixels (views with a mask)
    if conf is not None:
        s = conf.scores()
        res.update(label_accuracy=s["accuracy"], label_miou=s["miou"], label_per_class_iou=s["per_class_iou"])
    return res


__all__ = ["psnr", "feature_entropy", "feature_l1", "target_valid_grid", "LabelConfusion", "label_scores",
           "classify_features", "sample_mesh_points", "chamfer_distance", "mesh_chamfer", "evaluate_views"]
