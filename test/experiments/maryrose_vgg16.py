"""FHGS vs 2DGS on real photos with the pretrained ``vgg16`` features: ../shared/data/maryrose_tankard.

Experiment script (not a unit test; another branch brings the project's LLFF loader). It converts
just enough of the LLFF capture for the offline mapper:

- ``poses_bounds.npy`` rows (sorted filename order) -> NeRF ``transforms.json`` (OpenGL c2w
  ``[R[:,1], -R[:,0], R[:,2], t]``), pinhole ``fl = 10547.2437 / 4 / factor``, principal point
  at the image centre (SOURCE.md "Camera format");
- images ``images_4`` (864 px) downscaled by ``--factor`` with their ``masks_4`` as alpha
  (RGBA PNG; the loader composites onto white), so the object is mapped, not the studio;
- seed points: a visual hull carved from the training views' masks (voxel grid, a voxel is kept when it projects
  inside the mask of every view that sees it), its surface voxels coloured from the nearest view,
  written as ``hull.ply`` (top-level ``ply_file_path``; seed.source points, projection index from
  the training views).

Then ``run_offline`` twice with identical settings (FHGS; 2DGS = ``mapper.ndfd_enabled: false``),
every 8th view held out, and for the held-out views a PNG per view: rendered feature PCA (FHGS map)
| the encoder's own feature PCA of the photo (same fixed PCA basis, the map's) | the photo.

Usage: PYTHONPATH=. python test/experiments/maryrose_vgg16.py --out /tmp/maryrose --iterations 1500
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "maryrose_tankard"
FULL_FOCAL, FULL_SIZE = 10547.2437, 3456


def convert(data: Path, out: Path, factor: int, holdout_every: int = 8) -> Path:
    from PIL import Image

    pb = np.load(data / "poses_bounds.npy")
    names = sorted(p.name for p in (data / "images_4").iterdir() if p.suffix.lower() == ".jpg")
    assert len(names) == len(pb), (len(names), pb.shape)
    size = 864 // factor
    f = FULL_FOCAL * size / FULL_SIZE
    (out / "images").mkdir(parents=True, exist_ok=True)
    frames, masks, c2ws = [], [], []
    for name, row in zip(names, pb):
        m = row[:15].reshape(3, 5)
        r, t = m[:, :3], m[:, 3]
        c2w = np.eye(4)
        c2w[:3, :3] = np.stack([r[:, 1], -r[:, 0], r[:, 2]], 1)
        c2w[:3, 3] = t
        img = Image.open(data / "images_4" / name).convert("RGB").resize((size, size), Image.BOX)
        mask = Image.open(data / "masks_4" / (Path(name).stem + "_mask.png")).convert("L").resize((size, size),
                                                                                                   Image.BOX)
        rgba = np.dstack([np.asarray(img), np.asarray(mask)])
        Image.fromarray(rgba, "RGBA").save(out / "images" / (Path(name).stem + ".png"))
        frames.append({"file_path": f"images/{Path(name).stem}.png", "transform_matrix": c2w.tolist()})
        masks.append(np.asarray(mask) >= 128)
        c2ws.append(c2w)
    train = [i for i in range(len(names)) if i % holdout_every]  # held-out masks never shape the seed
    imgs = [np.asarray(Image.open(out / "images" / (Path(names[i]).stem + ".png")).convert("RGB")) for i in train]
    xyz, rgb = visual_hull([masks[i] for i in train], [c2ws[i] for i in train], f, size, imgs)
    write_ply(out / "hull.ply", xyz, rgb)
    meta = {"fl_x": f, "fl_y": f, "cx": size / 2, "cy": size / 2, "w": size, "h": size,
            "ply_file_path": "hull.ply", "frames": frames}
    (out / "transforms.json").write_text(json.dumps(meta, indent=1))
    return out


def visual_hull(masks, c2ws, f, size, images, res: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Surface voxels of the mask hull (centres, colours from the most frontal view)."""
    centers = np.stack([c[:3, 3] for c in c2ws])
    dirs = -np.stack([c[:3, 2] for c in c2ws])  # OpenGL: camera looks along -z
    # look-at point: least squares intersection of the optical axes
    a = sum(np.eye(3) - np.outer(d, d) for d in dirs)
    b = sum((np.eye(3) - np.outer(d, d)) @ c for c, d in zip(centers, dirs))
    p0 = np.linalg.solve(a, b)
    half = 0.6 * np.median(np.linalg.norm(centers - p0, axis=1)) * (size / 2) / f * 1.2
    g = np.linspace(-half, half, res)
    pts = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3) + p0
    keep = np.ones(len(pts), bool)
    best = np.full(len(pts), -np.inf)
    col = np.zeros((len(pts), 3))
    for m, c2w, img in zip(masks, c2ws, images):
        w2c = np.linalg.inv(c2w)
        pc = pts @ w2c[:3, :3].T + w2c[:3, 3]
        z = -pc[:, 2]
        x = f * pc[:, 0] / z + size / 2 - 0.5
        y = -f * pc[:, 1] / z + size / 2 - 0.5
        inside = (z > 0) & (x >= 0) & (x <= size - 1) & (y >= 0) & (y <= size - 1)
        xi, yi = np.clip(np.round(x).astype(int), 0, size - 1), np.clip(np.round(y).astype(int), 0, size - 1)
        keep &= ~inside | m[yi, xi]
        n = (pts - c2w[:3, 3])
        frontal = -(n / np.linalg.norm(n, axis=1, keepdims=True)) @ c2w[:3, 2]
        upd = inside & (frontal > best)
        best[upd] = frontal[upd]
        col[upd] = img[yi[upd], xi[upd]] / 255.0
    occ = keep.reshape(res, res, res)
    pad = np.pad(occ, 1)
    interior = pad[2:, 1:-1, 1:-1] & pad[:-2, 1:-1, 1:-1] & pad[1:-1, 2:, 1:-1] & pad[1:-1, :-2, 1:-1] \
        & pad[1:-1, 1:-1, 2:] & pad[1:-1, 1:-1, :-2]
    surf = (occ & ~interior).reshape(-1)
    logging.info("visual hull: %d occupied voxels, %d on the surface (grid %d^3, voxel %.4f)", occ.sum(), surf.sum(),
                 res, g[1] - g[0])
    return pts[surf], col[surf]


def write_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    n = len(xyz)
    head = ("ply\nformat binary_little_endian 1.0\n"
            f"element vertex {n}\nproperty float x\nproperty float y\nproperty float z\n"
            "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n").encode()
    rec = np.zeros(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")])
    rec["x"], rec["y"], rec["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    c = np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)
    rec["r"], rec["g"], rec["b"] = c[:, 0], c[:, 1], c[:, 2]
    path.write_bytes(head + rec.tobytes())


def feature_pngs(data: Path, fhgs_out: Path, cfg) -> list[str]:
    """held-out view: rendered feature PCA | encoder feature PCA (map's fixed basis) | photo."""
    from fhgs_ros.core.render import render
    from fhgs_ros.core.storage import load_map
    from fhgs_ros.datasets import load_dataset
    from fhgs_ros.features.pca import FeaturePCA
    from fhgs_ros.features.selection import build_feature_extractor
    from PIL import Image

    ds = load_dataset(data)
    _, test = ds.split(cfg.offline.holdout_every)
    surfels, meta, extra = load_map(fhgs_out / "map.safetensors")
    pca = FeaturePCA.from_state(extra) if FeaturePCA.has_state(extra) else FeaturePCA.fit(surfels.features_raw)
    ext = build_feature_extractor(cfg.features)
    out = []
    (fhgs_out / "feature_pca").mkdir(exist_ok=True)
    for i in test:
        fr = ds.frames[i]
        with torch.no_grad():
            r = render(surfels, fr.camera, render_features=True, background=torch.ones(3))
        rend = pca.to_rgb(r.features, alpha=r.alpha)
        enc = pca.to_rgb(ext.extract(fr.image).upsample())
        row = torch.cat([rend, enc, fr.image.clamp(0, 1)], 2)
        p = fhgs_out / "feature_pca" / f"{i:04d}_rendered_encoder_photo.png"
        Image.fromarray((row.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(p)
        out.append(str(p))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--factor", type=int, default=4, help="downscale of images_4 (864 px): 4 -> 216 px")
    ap.add_argument("--iterations", type=int, default=1500)
    ap.add_argument("--only", choices=["fhgs", "2dgs"], default=None)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from fhgs_ros.config import default_config_path, load_config
    from fhgs_ros.offline import run_offline

    data = a.out / "scene"
    if not (data / "transforms.json").exists():
        convert(a.data, data, a.factor)
    cfg = load_config(default_config_path(), {"features": {"extractor": "vgg16"}, "seed": {"source": "points"},
                                               "offline": {"holdout_every": 8},
                                               "mapper": {"background": [1.0, 1.0, 1.0]}})  # masked: white
    prev = a.out / "summary.json"
    res = json.loads(prev.read_text()) if prev.exists() else {}
    for name, ndfd in (("fhgs", True), ("2dgs", False)):
        if a.only and a.only != name:
            continue
        c = dataclasses.replace(cfg, mapper=dataclasses.replace(cfg.mapper, ndfd_enabled=ndfd))
        t0 = time.perf_counter()
        m = run_offline(c, data, a.out / name, a.iterations)
        res[name] = {k: m[k] for k in ("psnr", "fe", "fe_plain", "fl1", "num_surfels") if k in m}
        res[name]["seconds"] = time.perf_counter() - t0
    if "fhgs" in res:
        res["pngs"] = feature_pngs(data, a.out / "fhgs", cfg)
    if "fhgs" in res and "2dgs" in res:
        res["fe_ratio_2dgs_over_fhgs"] = res["2dgs"]["fe"] / max(res["fhgs"]["fe"], 1e-12)
        res["psnr_gap_db"] = res["2dgs"]["psnr"] - res["fhgs"]["psnr"]
    (a.out / "summary.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
