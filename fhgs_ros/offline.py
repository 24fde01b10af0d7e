"""Offline mapping of a dataset folder: load -> features -> seed -> optimize -> evaluate -> write.

This is what ``fhgs-map`` runs. Outputs in ``out``:
``metrics.json``, ``map.safetensors`` (versioned map file), ``mesh.ply`` (TSDF of rendered depth),
``renders/<view>_{rgb,gt,depth,normal,features}.png`` for the held-out views.
"""

from __future__ import annotations

import dataclasses

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fhgs_ros.config import FHGSConfig, to_dict
from fhgs_ros.core.fileio import atomic_write_json, save_png
from fhgs_ros.core.losses import depth_normals
from fhgs_ros.core.mapper import Keyframe, Mapper
from fhgs_ros.core.raster_types import FeatureTarget
from fhgs_ros.core.render import render
from fhgs_ros.core.seeding import (build_projection_index, points_from_depth, sample_grid, sample_point_features,
                                   surfels_from_points)
from fhgs_ros.datasets.base import Dataset, DatasetError

log = logging.getLogger(__name__)


@dataclass
class FeatureSource:
    """GT feature grids for every frame plus what is needed to interpret them."""

    targets: list[FeatureTarget]
    model_id: str
    dim: int
    label_vectors: torch.Tensor | None = None


def default_cache_dir() -> Path:
    """Shared embedding cache: $XDG_CACHE_HOME/fhgs_ros/features (default ~/.cache/...), so re-mapping
    a dataset into another output folder does not re-run SAM."""
    import os
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fhgs_ros" / "features"


def compute_features(ds: Dataset, cfg: FHGSConfig, out: Path) -> FeatureSource:
    """GT feature grids per frame from the configured extractor."""
    fc = cfg.features
    from fhgs_ros.features.selection import build_feature_extractor, resolve_extractor_name
    name = resolve_extractor_name(fc, has_labels=bool(ds.frames) and all(f.labels is not None for f in ds.frames))
    if name == "label":
        from fhgs_ros.features.label import label_feature_grid, label_vectors
        if any(f.labels is None for f in ds.frames):
            raise DatasetError(f"{ds.root}: the 'label' feature extractor needs label images for every frame "
                               f"(use --features sam for unlabelled data)")
        n_labels = len(ds.label_names) if ds.label_names else int(max(int(f.labels.max()) for f in ds.frames)) + 1
        vecs = label_vectors(n_labels, fc.dim, seed=0)
        targets = []
        for f in ds.frames:
            grid = label_feature_grid(f.labels, vecs, grid_long_side=fc.grid_long_side)
            targets.append(FeatureTarget.for_image(grid, f.camera.width, f.camera.height))
        return FeatureSource(targets, f"label-d{fc.dim}-n{n_labels}-s0-g{fc.grid_long_side}", fc.dim, vecs)
    from fhgs_ros.features.base import extract_frames
    cache = fc.cache_dir or str(default_cache_dir())
    ext = build_feature_extractor(dataclasses.replace(fc, extractor=name), cache_dir=cache)
    log.info("%s features for %d frames (cache: %s)", ext.model_id, len(ds.frames), cache)
    grids = []
    batch = 4
    for i in tqdm(range(0, len(ds.frames), batch), desc=f"{name} features", unit="batch"):
        grids.extend(extract_frames(ext, ds.frames[i:i + batch], batch_size=batch))
    targets = [g.to_target() for g in grids]
    return FeatureSource(targets, ext.model_id, ext.dim, None)


def resolve_seed_source(ds: Dataset, train: list[int], source: str) -> str:
    """``seed.source`` auto -> points (dataset has 3-D points), else depth (every training view has
    depth), else mvs (stereo depth from the posed RGB views)."""
    if source != "auto":
        return source
    if ds.points is not None and len(ds.points):
        return "points"
    if all(ds.frames[i].depth is not None for i in train):
        return "depth"
    log.info("seeding: no 3-D points and no depth images; geometry from stereo of the posed views (seed.source=mvs)")
    return "mvs"


def seed_from_stereo(ds: Dataset, train: list[int], targets: list[FeatureTarget], cfg: FHGSConfig,
                     gen: torch.Generator):
    """Surfels from the plane-sweep stereo depth of every training view (``fhgs_ros.core.mvs``), each
    point with the feature of the view it was back-projected from; only confident pixels inside
    the view's mask."""
    from fhgs_ros.core.mvs import multi_view_points
    sc = cfg.seed
    frames = [ds.frames[i] for i in train]
    mcfg = sc.stereo()
    pts = multi_view_points([f.image for f in frames], [f.camera for f in frames], [f.mask for f in frames], mcfg,
                            stride=sc.depth_stride)
    if not pts:
        raise DatasetError(f"{ds.root}: no stereo depth from the posed views (too little texture or baseline; "
                           f"give 3-D points or depth images)")
    xyz = torch.cat([p.xyz for p in pts])
    rgb = torch.cat([p.rgb for p in pts])
    f = torch.cat([sample_grid(targets[p.token], p.xy) for p in pts])
    if len(xyz) > sc.max_points:
        idx = torch.randperm(len(xyz), generator=gen)[: sc.max_points]
        xyz, rgb, f = xyz[idx], rgb[idx], f[idx]
    return surfels_from_points(xyz, rgb, f, sc.opacity, sc.scale_multiplier, generator=gen)


def seed_map(ds: Dataset, train: list[int], feats: FeatureSource, cfg: FHGSConfig, gen: torch.Generator):
    """Initial surfels with frozen features (docs/METHOD.md §1.3-§1.4)."""
    sc = cfg.seed
    cams = [ds.frames[i].camera for i in train]
    targets = [feats.targets[i] for i in train]
    source = resolve_seed_source(ds, train, sc.source)
    if source == "mvs":
        return seed_from_stereo(ds, train, targets, cfg, gen)
    if source == "points":
        pc = ds.points
        if pc is None or len(pc) == 0:
            raise DatasetError(f"{ds.root}: seed.source=points but the dataset has no 3-D points "
                               f"(use seed.source=depth with depth images)")
        xyz, rgb = pc.xyz.float(), pc.rgb.float()
        if pc.obs_point is not None and pc.obs_point.numel():
            # Dataset tracks, restricted to the training views (re-indexed).
            remap = torch.full((len(ds.frames),), -1, dtype=torch.long)
            remap[torch.tensor(train)] = torch.arange(len(train))
            fr = remap[pc.obs_frame.long()]
            keep = fr >= 0
            op, of, oxy = pc.obs_point.long()[keep], fr[keep], pc.obs_xy.float()[keep]
        else:
            depths = [ds.frames[i].depth for i in train]
            op, of, oxy = build_projection_index(xyz, cams, depths)
        if len(xyz) > sc.max_points:
            sel = torch.randperm(len(xyz), generator=gen)[: sc.max_points]
            remap = torch.full((len(xyz),), -1, dtype=torch.long)
            remap[sel] = torch.arange(len(sel))
            m = remap[op] >= 0
            op, of, oxy = remap[op][m], of[m], oxy[m]
            xyz, rgb = xyz[sel], rgb[sel]
        f, has = sample_point_features(len(xyz), op, of, oxy, targets, gen)
        if (~has).any():
            log.info("seeding: %d of %d points are seen by no training view and are dropped", int((~has).sum()), len(xyz))
        return surfels_from_points(xyz[has], rgb[has], f[has], cfg.seed.opacity, sc.scale_multiplier, generator=gen)
    # Depth seeding: every keyframe's own pixels, feature from that keyframe.
    xyzs, rgbs, fs, nrm = [], [], [], []
    for i, t in zip(train, targets):
        fr = ds.frames[i]
        if fr.depth is None:
            raise DatasetError(f"{fr.path or ds.root}: seed.source=depth but frame {i} has no depth image")
        xyz, rgb, xy = points_from_depth(fr.image, fr.depth, fr.camera, stride=sc.depth_stride)
        xyzs.append(xyz)
        rgbs.append(rgb)
        fs.append(sample_grid(t, xy))
        if sc.orient_from_normals:
            nmap = depth_normals(fr.depth, fr.camera)
            nrm.append(nmap[:, xy[:, 1].long(), xy[:, 0].long()].T)
    xyz, rgb, f = torch.cat(xyzs), torch.cat(rgbs), torch.cat(fs)
    normals = torch.cat(nrm) if nrm else None
    ok = torch.ones(len(xyz), dtype=torch.bool) if normals is None else normals.norm(dim=1) > 0.5
    idx = torch.nonzero(ok).squeeze(1)
    if len(idx) > sc.max_points:
        idx = idx[torch.randperm(len(idx), generator=gen)[: sc.max_points]]
    return surfels_from_points(xyz[idx], rgb[idx], f[idx], sc.opacity, sc.scale_multiplier,
                               normals=None if normals is None else normals[idx], generator=gen)


def _to_u8(img: torch.Tensor) -> np.ndarray:
    return (img.clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).cpu().numpy()


def _depth_png(depth: torch.Tensor, alpha: torch.Tensor, lo: float, hi: float) -> np.ndarray:
    d = ((depth - lo) / max(hi - lo, 1e-6)).clamp(0, 1)
    d = torch.where(alpha > 0.5, 1 - d, torch.zeros_like(d))  # near = bright, empty = black
    return (d * 255).round().to(torch.uint8).cpu().numpy()


def write_renders(surfels, ds: Dataset, views: list[int], out: Path, pca=None, background: torch.Tensor | None = None,
                  backend: str = "auto") -> None:
    """``out/renders/NNNN_{rgb,gt,depth,normal,features}.png`` of the dataset views ``views``."""
    rdir = out / "renders"
    rdir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        for i in views:
            fr = ds.frames[i]
            r = render(surfels, fr.camera, background=background, render_features=True, backend=backend)
            name = f"{i:04d}"
            save_png(rdir / f"{name}_rgb.png", _to_u8(r.rgb))
            save_png(rdir / f"{name}_gt.png", _to_u8(fr.image))
            dmed = r.depth_median
            valid = r.alpha > 0.5
            lo = float(dmed[valid].min()) if valid.any() else 0.0
            hi = float(dmed[valid].max()) if valid.any() else 1.0
            save_png(rdir / f"{name}_depth.png", _depth_png(dmed, r.alpha, lo, hi))
            n = r.normal / r.alpha.clamp_min(1e-6)
            save_png(rdir / f"{name}_normal.png", _to_u8(n * 0.5 + 0.5))
            if pca is not None:
                save_png(rdir / f"{name}_features.png", _to_u8(pca.to_rgb(r.features, alpha=r.alpha)))


def visible_gt_points(ds: Dataset, views: list[int], n: int) -> torch.Tensor:
    """Area-uniform samples of the GT mesh that some training view sees (the DTU-style culling of the
    reference surface to what was observed). Visibility uses the views' GT depth when present,
    otherwise only the frustum."""
    from fhgs_ros.core.metrics import sample_mesh_points
    pts = torch.as_tensor(sample_mesh_points(ds.gt_mesh[0], ds.gt_mesh[1], 4 * n, seed=1)).float()
    cams = [ds.frames[i].camera for i in views]
    depths = [ds.frames[i].depth for i in views]
    op, _, _ = build_projection_index(pts, cams, depths, depth_tolerance=0.02)
    seen = torch.zeros(len(pts), dtype=torch.bool)
    seen[op] = True
    pts = pts[seen]
    return pts[torch.randperm(len(pts), generator=torch.Generator().manual_seed(2))[:n]]


def evaluate_map_file(map_path: Path, ds: Dataset, cfg: FHGSConfig, views: list[int], out: Path | None = None,
                      mesh_path: Path | None = None, train_views: list[int] | None = None) -> dict:
    """Held-out metrics of a saved map (e.g. written by the node) on the dataset views ``views``:
    PSNR, FE (sigma-gated / plain), FL1, label mIoU/accuracy (label features), surfel count, and the
    Chamfer distance of ``mesh_path`` to the GT surface seen by ``train_views``. With ``out``, the
    renders of those views go to ``out/renders``."""
    from fhgs_ros.core.metrics import chamfer_distance, evaluate_views, sample_mesh_points
    from fhgs_ros.core.storage import load_map

    surfels, meta, extra = load_map(map_path)
    sub = Dataset([ds.frames[i] for i in views], ds.root, label_names=ds.label_names)
    feats = compute_features(sub, cfg, out or Path(map_path).parent)
    ev = evaluate_views(surfels, sub.frames, feats.targets, label_vectors=feats.label_vectors,
                        background=torch.tensor(cfg.mapper.background, dtype=torch.float32), backend=cfg.mapper.backend)
    m = {"psnr": ev["psnr"], "fe": ev["fe"], "fe_plain": ev["fe_plain"], "fl1": ev["fl1"],
         "num_surfels": len(surfels), "test_views": len(views), "keyframes": len(meta.get("keyframes") or [])}
    for k in ("label_accuracy", "label_miou", "psnr_masked"):
        if k in ev:
            m[k] = ev[k]
    if out is not None:
        pca = None
        try:
            from fhgs_ros.features.pca import FeaturePCA
            pca = FeaturePCA.from_state(extra) if FeaturePCA.has_state(extra) else FeaturePCA.fit(
                surfels.features_raw.float())
        except (ImportError, KeyError, ValueError):
            pca = None
        write_renders(surfels, ds, views, out, pca, torch.tensor(cfg.mapper.background, dtype=torch.float32),
                      cfg.mapper.backend)
    if mesh_path is not None and Path(mesh_path).exists() and ds.gt_mesh is not None:
        from fhgs_ros.core.mesh import read_mesh_ply
        mesh = read_mesh_ply(mesh_path)
        if len(mesh.faces):
            a = sample_mesh_points(mesh.vertices, mesh.faces, 20000, seed=0)
            b = visible_gt_points(ds, train_views or views, 20000)
            cd = chamfer_distance(a, b)
            m.update(chamfer=cd["chamfer"], chamfer_accuracy=cd["accuracy"], chamfer_completeness=cd["completeness"])
    return m


def run_offline(cfg: FHGSConfig, data: Path, out: Path, iterations: int | None = None) -> dict:
    """Map ``data`` into ``out``; returns the metrics dict (also written to metrics.json)."""
    from fhgs_ros.datasets import load_dataset
    from fhgs_ros.core.metrics import evaluate_views
    from fhgs_ros.core.storage import save_map

    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(data, downscale=cfg.offline.downscale)
    train, test = ds.split(cfg.offline.holdout_every)
    log.info("dataset %s: %d frames (%d train, %d held out)", data, len(ds.frames), len(train), len(test))
    gen = torch.Generator().manual_seed(cfg.mapper.seed)
    torch.manual_seed(cfg.mapper.seed)
    feats = compute_features(ds, cfg, out)
    n_iter = cfg.offline.iterations if iterations is None else iterations
    mapper = Mapper(cfg.mapper, feats.dim, extent=ds.scene_extent())
    for i in train:
        fr = ds.frames[i]
        mapper.add_keyframe(Keyframe(fr.camera, fr.image, feats.targets[i], fr.depth, fr.labels, mask=fr.mask))
    mapper.add_surfels(seed_map(ds, train, feats, cfg, gen))
    log.info("seeded %d surfels (feature width %d, %s)", len(mapper.surfels), feats.dim, feats.model_id)
    n_seed = len(mapper.surfels)
    t_opt = time.perf_counter()
    bar = tqdm(range(n_iter), desc="FHGS" if cfg.mapper.ndfd_enabled else "2DGS", unit="it", mininterval=2.0)
    for it in bar:
        terms = mapper.step()
        if it % cfg.offline.log_every == 0 and terms:
            bar.set_postfix(loss=f"{terms['total']:.4f}", n=len(mapper.surfels))
    opt_seconds = time.perf_counter() - t_opt

    surfels = mapper.snapshot()
    frames_test = [ds.frames[i] for i in test]
    frames_train = [ds.frames[i] for i in train]
    ev = evaluate_views(surfels, frames_test, [feats.targets[i] for i in test], label_vectors=feats.label_vectors,
                        background=mapper.background, backend=cfg.mapper.backend)
    ev_train = evaluate_views(surfels, frames_train, [feats.targets[i] for i in train], label_vectors=None,
                              background=mapper.background, backend=cfg.mapper.backend)
    metrics = {
        "psnr": ev["psnr"], "psnr_train": ev_train["psnr"], "fe": ev["fe"], "fe_plain": ev["fe_plain"],
        "fl1": ev["fl1"], "num_surfels": len(surfels), "num_seed_surfels": n_seed,
        "iterations": n_iter, "seconds": None, "optimize_seconds": opt_seconds,
        "ms_per_iteration": 1000 * opt_seconds / max(n_iter, 1), "ndfd": cfg.mapper.ndfd_enabled,
        "feature_model": feats.model_id, "feature_dim": feats.dim, "train_views": len(train),
        "test_views": len(test), "backend": cfg.mapper.backend,
    }
    for k in ("label_accuracy", "label_miou", "psnr_masked"):
        if k in ev:
            metrics[k] = ev[k]
    if "label_per_class_iou" in ev and ds.label_names:
        metrics["label_iou"] = dict(zip(ds.label_names, ev["label_per_class_iou"]))

    pca = None
    try:
        from fhgs_ros.features.pca import FeaturePCA
        pca = FeaturePCA.fit(surfels.features_raw.float())
    except ImportError:  # pragma: no cover - features package not installed
        log.warning("feature PCA unavailable; no feature PNGs")
    extra = pca.state_dict() if pca is not None else {}
    cams = [ds.frames[i].camera.to_dict() for i in train]
    save_map(out / "map.safetensors", surfels, {"feature_model": feats.model_id, "feature_dim": feats.dim,
                                                "keyframes": cams, "iterations": n_iter,
                                                "ndfd": cfg.mapper.ndfd_enabled}, extra_tensors=extra)
    write_renders(surfels, ds, test, out, pca, mapper.background, cfg.mapper.backend)
    if ds.gt_mesh is not None:
        from fhgs_ros.core.mesh import mesh_from_surfels, save_mesh_ply
        from fhgs_ros.core.metrics import chamfer_distance, sample_mesh_points
        mesh = mesh_from_surfels(surfels, [ds.frames[i].camera for i in train], backend=cfg.mapper.backend,
                                 max_voxels=cfg.offline.mesh_max_voxels)
        save_mesh_ply(mesh, out / "mesh.ply")
        if len(mesh.faces):
            a = sample_mesh_points(mesh.vertices, mesh.faces, 20000, seed=0)
            b = visible_gt_points(ds, train, 20000)
            cd = chamfer_distance(a, b)
            metrics.update(chamfer=cd["chamfer"], chamfer_accuracy=cd["accuracy"],
                           chamfer_completeness=cd["completeness"])
        else:
            metrics["chamfer"] = float("inf")
    metrics["seconds"] = time.perf_counter() - t_start
    metrics["config"] = to_dict(cfg)
    atomic_write_json(out / "metrics.json", metrics)
    return metrics
