"""FHGS vs 2DGS on real photos with the pretrained ``vgg16`` features: ../shared/data/maryrose_tankard.

Experiment script (not a unit test). It maps the LLFF capture with the project's own loader
(``fhgs_ros.datasets.llff``: poses, masks) exactly as ``fhgs-map`` does (``run_offline``), seeds
from multi-view stereo (``seed.source`` auto -> mvs: the dataset has no points and no depth) and
trains with the masks (``mapper.mask_mode: ignore``: colour and NDFD losses only on object pixels;
the turntable backdrop is not multi-view consistent, SOURCE.md). Two runs with identical settings:
FHGS and 2DGS (``mapper.ndfd_enabled: false``), every 8th view held out. The table reports
held-out PSNR on the object pixels (``psnr_masked``; full-image PSNR compares an unsupervised
background with the studio backdrop and means nothing here), FE, FE plain, FL1, FE ratio and
PSNR gap. For each held-out view a PNG: rendered feature PCA (FHGS map) | the encoder's own feature
PCA of the photo (same PCA basis, the map's) | the photo.

Usage (each run < 10 min on 2 cores at the defaults):
  PYTHONPATH=. python test/experiments/maryrose_vgg16.py --out out14/maryrose --only fhgs
  PYTHONPATH=. python test/experiments/maryrose_vgg16.py --out out14/maryrose --only 2dgs
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
FULL_SIZE = 3456


def feature_pngs(data: Path, fhgs_out: Path, cfg) -> list[str]:
    """held-out view: rendered feature PCA | encoder feature PCA (map's PCA basis) | photo."""
    from PIL import Image

    from fhgs_ros.core.render import render
    from fhgs_ros.core.storage import load_map
    from fhgs_ros.datasets import load_dataset
    from fhgs_ros.features.pca import FeaturePCA
    from fhgs_ros.features.selection import build_feature_extractor

    ds = load_dataset(data, downscale=cfg.offline.downscale)
    _, test = ds.split(cfg.offline.holdout_every)
    surfels, meta, extra = load_map(fhgs_out / "map.safetensors")
    pca = FeaturePCA.from_state(extra) if FeaturePCA.has_state(extra) else FeaturePCA.fit(surfels.features_raw)
    ext = build_feature_extractor(cfg.features)
    out = []
    (fhgs_out / "feature_pca").mkdir(exist_ok=True)
    for i in test:
        fr = ds.frames[i]
        with torch.no_grad():
            r = render(surfels, fr.camera, render_features=True)
        rend = pca.to_rgb(r.features, alpha=r.alpha)
        enc = pca.to_rgb(ext.extract(fr.image).upsample())
        row = torch.cat([rend, enc, fr.image.clamp(0, 1)], 2)
        p = fhgs_out / "feature_pca" / f"{i:04d}_rendered_encoder_photo.png"
        Image.fromarray((row.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(p)
        out.append(str(p))
    return out


def table(res: dict) -> str:
    rows = [("metric", "FHGS", "2DGS")]
    for label, k, fmt in (("PSNR held-out, object pixels [dB]", "psnr_masked", "{:.2f}"),
                          ("PSNR training views, full image [dB]", "psnr_train", "{:.2f}"),
                          ("FE (sigma-gated)", "fe", "{:.4f}"), ("FE plain", "fe_plain", "{:.4f}"),
                          ("FL1", "fl1", "{:.4f}"), ("surfels", "num_surfels", "{:d}"),
                          ("time [s]", "seconds", "{:.0f}")):
        rows.append((label, *[fmt.format(res[n][k]) if n in res and k in res[n] else "-" for n in ("fhgs", "2dgs")]))
    out = ["| " + " | ".join(r) + " |" for r in rows]
    out.insert(1, "|" + "---|" * 3)
    if "fe_ratio_2dgs_over_fhgs" in res:
        out.append(f"\nFE ratio 2DGS/FHGS: {res['fe_ratio_2dgs_over_fhgs']:.2f}; "
                   f"PSNR gap 2DGS - FHGS (object pixels): {res['psnr_gap_db']:.2f} dB")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", type=int, default=216, help="image side [px] (the photos are square)")
    ap.add_argument("--iterations", type=int, default=1500)
    ap.add_argument("--only", choices=["fhgs", "2dgs"], default=None)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from fhgs_ros.config import default_config_path, load_config
    from fhgs_ros.offline import run_offline

    cfg = load_config(default_config_path(), {"features": {"extractor": "vgg16"},
                                               "offline": {"holdout_every": 8, "downscale": a.size / FULL_SIZE}})
    a.out.mkdir(parents=True, exist_ok=True)
    prev = a.out / "summary.json"
    res = json.loads(prev.read_text()) if prev.exists() else {}
    for name, ndfd in (("fhgs", True), ("2dgs", False)):
        if a.only and a.only != name:
            continue
        c = dataclasses.replace(cfg, mapper=dataclasses.replace(cfg.mapper, ndfd_enabled=ndfd))
        t0 = time.perf_counter()
        m = run_offline(c, a.data, a.out / name, a.iterations)
        res[name] = {k: m[k] for k in ("psnr", "psnr_masked", "psnr_train", "fe", "fe_plain", "fl1", "num_surfels",
                                        "feature_model", "iterations") if k in m}
        res[name]["seconds"] = time.perf_counter() - t0
        if name == "fhgs":
            res["pngs"] = feature_pngs(a.data, a.out / name, c)
    if "fhgs" in res and "2dgs" in res:
        res["fe_ratio_2dgs_over_fhgs"] = res["2dgs"]["fe"] / max(res["fhgs"]["fe"], 1e-12)
        res["psnr_gap_db"] = res["2dgs"]["psnr_masked"] - res["fhgs"]["psnr_masked"]
    res["table"] = table(res)
    (a.out / "summary.json").write_text(json.dumps(res, indent=2))
    print(res["table"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
