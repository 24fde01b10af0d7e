"""Large-image mode (MapperConfig.coarse_factor): held-out PSNR / FE at equal wall time.

Maps the synthetic room at WIDTHxHEIGHT (label features, D = 256, depth seeding as the demo)
once per variant for ``--seconds`` of optimization each: ``full`` (coarse_factor 1) and
``coarse`` (coarse_factor 0.5 for the first 70 % of the time budget, then full resolution),
interleaved in one process, and evaluates the held-out views at full resolution. Writes
``bench/results/coarse_quality.json`` and prints a table. Run from the repository root:
``PYTHONPATH=$PWD python test/experiments/coarse_quality.py --seconds 90``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

from fhgs_ros.config import FHGSConfig
from fhgs_ros.core.fileio import atomic_write_json
from fhgs_ros.core.mapper import Keyframe, Mapper
from fhgs_ros.core.metrics import evaluate_views
from fhgs_ros.datasets import load_dataset
from fhgs_ros.datasets.synthetic import generate_scene
from fhgs_ros.offline import compute_features, seed_map


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=90.0, help="optimization wall time per variant")
    ap.add_argument("--factor", type=float, default=0.5)
    ap.add_argument("--out", default="bench/results/coarse_quality.json")
    a = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="fhgs_coarse_"))
    generate_scene(tmp / "scene", a.width, a.height, a.frames, seed=0)
    cfg = FHGSConfig()
    ds = load_dataset(tmp / "scene", downscale=1)
    train, test = ds.split(cfg.offline.holdout_every)
    feats = compute_features(ds, cfg, tmp)
    seed = seed_map(ds, train, feats, cfg, torch.Generator().manual_seed(0))
    rows = []
    for name, factor in (("full", 1.0), ("coarse", a.factor)):
        c = copy.deepcopy(cfg.mapper)
        c.coarse_factor, c.coarse_min_pixels = factor, 0
        torch.manual_seed(0)
        m = Mapper(c, feats.dim, extent=ds.scene_extent())
        for i in train:
            fr = ds.frames[i]
            m.add_keyframe(Keyframe(fr.camera, fr.image, feats.targets[i], fr.depth, fr.labels, mask=fr.mask))
        m.add_surfels(copy.deepcopy(seed))
        m.cfg.coarse_until_iter = 10 ** 9
        t0 = time.perf_counter()
        full_from = None
        while (el := time.perf_counter() - t0) < a.seconds:
            if full_from is None and el >= 0.7 * a.seconds:
                full_from = m.iteration
                m.cfg.coarse_until_iter = m.iteration  # the last 30 % of the time at full resolution
            m.step()
        ev = evaluate_views(m.snapshot(), [ds.frames[i] for i in test], [feats.targets[i] for i in test],
                            label_vectors=feats.label_vectors, background=m.background, backend=c.backend)
        rows.append({"variant": name, "coarse_factor": factor, "seconds": a.seconds, "iterations": m.iteration,
                     "full_res_from_iteration": full_from, "psnr": ev["psnr"], "fe": ev["fe"],
                     "surfels": len(m.surfels)})
        print(rows[-1], flush=True)
    print(f"{'variant':<8} {'factor':>6} {'iters':>6} {'PSNR dB':>8} {'FE':>8}")
    for r in rows:
        print(f"{r['variant']:<8} {r['coarse_factor']:6.2f} {r['iterations']:6d} {r['psnr']:8.2f} {r['fe']:8.4f}")
    atomic_write_json(a.out, {"width": a.width, "height": a.height, "frames": a.frames, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
