"""`fhgs-bench geometry`: geometry initialisation of RGB-only keyframes (``fhgs_ros.core.mvs``).

Two parts:
- ``speed``: seconds per keyframe of the stereo depth step (ORB range + plane sweep + back-projection)
  at 640x480 against 4 buffered keyframes, on the synthetic room rendered at that size, with
  ``torch.set_num_threads(--threads)``; and of the node's whole seeding step (the map rendered in the new
  and in the deferred keyframe's camera, stereo, new surfels) against a 100k-surfel map;
- ``quality``: the synthetic room (as in ``make demo``) through the online engine (``MappingEngine``
  in budget mode, the node's keyframe path) three times with the same steps per keyframe: keyframes
  with their depth images (``depth``), RGB + poses only seeded by stereo (``mvs``), and RGB + poses
  only seeded at the nominal depth (``nominal``, the old behaviour). Held-out PSNR, mesh Chamfer to the
  exact surface, surfel count. Also the stereo depth of every view against the exact depth (median
  relative error, coverage).

Prints tables and writes ``bench/results/geometry.json`` (relative to the working directory).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from fhgs_ros.bench import write_results

log = logging.getLogger(__name__)


def bench_speed(width: int = 640, height: int = 480, sources: int = 4, keyframes: int = 5, long_side: int = 160,
                threads: int = 2, map_surfels: int = 100_000) -> dict:
    """Seconds per keyframe of the geometry step at ``width`` x ``height``.

    ``seconds_per_keyframe``: the stereo alone (``KeyframeBuffer.add`` with its default deferral + back-projection).
    ``seed_seconds_per_keyframe``: the whole keyframe seeding of the node (``seed_keyframe`` with
    ``init_geometry`` mvs): the coverage render of the map in the new keyframe, the stereo, the render of the
    map in the deferred keyframe's camera, back-projection and the new surfels, against a map of
    ``map_surfels`` surfels seeded from the room's exact depth (0: skip this row).
    """
    from fhgs_ros.core.mvs import KeyframeBuffer, MVSConfig, backproject
    from fhgs_ros.core.raster_types import FeatureTarget
    from fhgs_ros.core.seeding import KeyframeSeedParams, points_from_depth, seed_keyframe, surfels_from_points
    from fhgs_ros.datasets.synthetic import synthetic_dataset

    torch.set_num_threads(threads)
    n = sources + keyframes
    ds = synthetic_dataset(width, height, 40, seed=0, num_points=100, supersample=1)
    idx = list(range(0, 2 * n, 2))[:n]
    cfg = MVSConfig(long_side=long_side, num_sources=sources)
    buf = KeyframeBuffer(cfg, capacity=sources + 1)
    times = []
    for k, i in enumerate(idx):
        f = ds.frames[i]
        t0 = time.perf_counter()
        out = buf.add(f.image, f.camera)
        for cam, _, _, res in out:
            backproject(res.depth, cam, res.confidence, 4)
        dt = time.perf_counter() - t0
        if k >= sources:
            times.append(dt)
    result = {"width": width, "height": height, "sources": sources, "long_side": long_side, "threads": threads,
              "seconds_per_keyframe": float(np.mean(times)), "max_seconds": float(np.max(times))}
    if map_surfels <= 0:
        return result
    # the node's whole seeding step against a map of map_surfels surfels (from the exact depth of the frames)
    gen = torch.Generator().manual_seed(0)
    xyz, rgb = [], []
    for i in range(0, len(ds.frames), 4):
        f = ds.frames[i]
        p, c, _ = points_from_depth(f.image, f.depth, f.camera, stride=2)
        xyz.append(p)
        rgb.append(c)
    xyz, rgb = torch.cat(xyz), torch.cat(rgb)
    sel = torch.randperm(len(xyz), generator=gen)[:map_surfels]
    feats = torch.randn(len(sel), 32, generator=gen)
    surfels = surfels_from_points(xyz[sel], rgb[sel], feats, 0.5, generator=gen)
    target = FeatureTarget.for_image(torch.randn(32, 48, 64, generator=gen), width, height)
    params = KeyframeSeedParams(max_new=4000, init_geometry="mvs")
    buf = KeyframeBuffer(cfg, capacity=sources + 1)
    seed_times, new = [], []
    empty = torch.zeros(0, 3)
    for k, i in enumerate(idx):
        f = ds.frames[i]
        t0 = time.perf_counter()
        s, _ = seed_keyframe(f.image, None, f.camera, target, surfels, empty, empty, params, gen, stereo=buf)
        dt = time.perf_counter() - t0
        if k >= sources:
            seed_times.append(dt)
            new.append(0 if s is None else len(s))
    result.update({"map_surfels": int(len(surfels)), "seed_seconds_per_keyframe": float(np.mean(seed_times)),
                   "seed_max_seconds": float(np.max(seed_times)), "new_surfels_per_keyframe": float(np.mean(new))})
    return result


def depth_accuracy(ds, views: list[int], long_side: int = 160) -> dict:
    """Stereo depth of each view against its exact depth: median relative error, share of > 10 % errors,
    coverage (share of pixels with a confident depth)."""
    from fhgs_ros.core.mvs import MVSConfig, estimate_depth

    cams = [ds.frames[i].camera for i in views]
    imgs = [ds.frames[i].image for i in views]
    med, out, cov, sec = [], [], [], []
    for k, i in enumerate(views):
        f = ds.frames[i]
        others = [j for j in range(len(views)) if j != k]
        r = estimate_depth(f.image, f.camera, [imgs[j] for j in others], [cams[j] for j in others],
                           MVSConfig(long_side=long_side))
        ok = (r.confidence > 0) & (f.depth > 0)
        if ok.any():
            rel = ((r.depth - f.depth).abs() / f.depth)[ok]
            med.append(float(rel.median()))
            out.append(float((rel > 0.1).float().mean()))
        cov.append(float(ok.float().mean()))
        sec.append(r.seconds)
    return {"median_rel_error": float(np.median(med)), "outliers_10pct": float(np.mean(out)),
            "coverage": float(np.mean(cov)), "seconds_per_view": float(np.mean(sec))}


def run_engine(ds, train: list[int], test: list[int], mode: str, params: dict, steps: int) -> dict:
    """Map the training views through ``MappingEngine.process_sync``; mode depth | mvs | nominal."""
    from fhgs_ros.config import build_config
    from fhgs_ros.core.camera import Intrinsics
    from fhgs_ros.core.mesh import mesh_from_surfels
    from fhgs_ros.core.metrics import (
        chamfer_distance,
        evaluate_views,
        sample_mesh_points,
    )
    from fhgs_ros.features.label import label_feature_grid, label_vectors  # noqa: F401
    from fhgs_ros.features.registry import build_extractor
    from fhgs_ros.offline import visible_gt_points
    from fhgs_ros.online.engine import MappingEngine
    from fhgs_ros.online.frames import InputFrame

    p = json.loads(json.dumps(params))
    p["node"]["steps_per_keyframe"] = steps
    p["node"]["init_geometry"] = "nominal" if mode == "nominal" else "mvs"
    p["features"]["num_labels"] = len(ds.label_names or []) or int(max(int(f.labels.max()) for f in ds.frames)) + 1
    flat = {}

    def walk(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                flat[f"{prefix}{k}"] = v
    walk(p)
    cfg, ncfg = build_config(flat)
    ext = build_extractor(cfg)
    eng = MappingEngine(cfg, ncfg, ext)
    t0 = time.perf_counter()
    for k, i in enumerate(train):
        f = ds.frames[i]
        c = f.camera
        rgb = (f.image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        intr = Intrinsics(c.width, c.height, float(c.fx), float(c.fy), float(c.cx), float(c.cy))
        depth = f.depth.numpy() if mode == "depth" and f.depth is not None else None
        labels = f.labels.numpy() if f.labels is not None else None
        eng.process_sync(InputFrame(float(k + 1), rgb, intr, c.cam_to_world.double().numpy(), depth, labels=labels))
    seconds = time.perf_counter() - t0
    st = eng.state
    s = st.surfels
    ev = evaluate_views(s, [ds.frames[i] for i in test], backend=cfg.mapper.backend,
                        background=torch.tensor(cfg.mapper.background))
    res = {"mode": mode, "psnr": ev["psnr"], "surfels": len(s), "keyframes": st.keyframes_total,
           "seconds": seconds, "densifications": int(eng.counters.snapshot().get("densifications", 0))}
    if "psnr_masked" in ev:
        res["psnr_masked"] = ev["psnr_masked"]
    if ds.gt_mesh is not None and len(s):
        mesh = mesh_from_surfels(s, [ds.frames[i].camera for i in train], backend=cfg.mapper.backend)
        if len(mesh.faces):
            a = sample_mesh_points(mesh.vertices, mesh.faces, 20000, seed=0)
            b = visible_gt_points(ds, train, 20000)
            res["chamfer"] = chamfer_distance(a, b)["chamfer"]
        else:
            res["chamfer"] = float("inf")
    return res


def _table(rows: list[dict], keys: list[str]) -> str:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    w = [max(len(k), *(len(fmt(r.get(k, ""))) for r in rows)) for k in keys]
    lines = ["  ".join(k.ljust(n) for k, n in zip(keys, w))]
    lines += ["  ".join(fmt(r.get(k, "")).ljust(n) for k, n in zip(keys, w)) for r in rows]
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fhgs-bench geometry", description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("speed", "quality", "all"), default="all")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=35, help="optimizer steps per keyframe (demo: 35)")
    ap.add_argument("--modes", nargs="+", default=["depth", "mvs", "nominal"])
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--height", type=int, default=96)
    ap.add_argument("--out", type=Path, default=Path("bench/results/geometry.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    result: dict = {}
    if a.part in ("speed", "all"):
        sp = bench_speed(threads=a.threads)
        result["speed"] = sp
        print(f"stereo depth step at {sp['width']}x{sp['height']} ({sp['sources']} sources, working long side "
              f"{sp['long_side']}, {sp['threads']} threads): {sp['seconds_per_keyframe']:.3f} s per keyframe "
              f"(max {sp['max_seconds']:.3f})")
        if "seed_seconds_per_keyframe" in sp:
            print(f"whole seeding step (coverage renders + stereo + new surfels) against a {sp['map_surfels']}-surfel "
                  f"map: {sp['seed_seconds_per_keyframe']:.3f} s per keyframe (max {sp['seed_max_seconds']:.3f}), "
                  f"{sp['new_surfels_per_keyframe']:.0f} new surfels per keyframe")
    if a.part in ("quality", "all"):
        from fhgs_ros.datasets.synthetic import synthetic_dataset
        from fhgs_ros.demo import DEMO_PARAMS, DEMO_SCENE, HOLDOUT_EVERY

        scene = dict(DEMO_SCENE, width=a.width, height=a.height)
        ds = synthetic_dataset(**scene)
        train, test = ds.split(HOLDOUT_EVERY)
        acc = depth_accuracy(ds, train)
        result["depth_accuracy"] = acc
        print(f"stereo depth vs exact depth ({len(train)} views): median relative error "
              f"{acc['median_rel_error']:.4f}, >10% errors {acc['outliers_10pct']:.3f}, coverage {acc['coverage']:.2f}")
        rows = []
        for mode in a.modes:
            torch.manual_seed(0)
            r = run_engine(ds, train, test, mode, DEMO_PARAMS, a.steps)
            rows.append(r)
            log.info("%s", r)
        result["quality"] = rows
        print(_table(rows, ["mode", "psnr", "chamfer", "surfels", "densifications", "seconds"]))
    write_results(a.out, result)
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys
    sys.exit(run())
