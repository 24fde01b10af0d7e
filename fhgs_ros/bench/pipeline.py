"""`fhgs-bench pipeline`: optimizer idle time while features are extracted, sequential vs pipelined.

The same keyframes (synthetic room orbit, ``--image`` WxH, depth) are mapped twice with the same
extractor and ``step_mode: budget`` (exactly ``--steps`` iterations per keyframe):

- ``sequential``: ``MappingEngine.process_sync`` (the batch mapper's path): extract, then optimize;
  the optimizer is idle for every keyframe's whole preparation (undistortion, features, seeding);
- ``pipelined``: the node's threads: the frontend thread extracts the features of keyframe k+1
  (bounded ``prepared`` queue) while the optimizer thread runs keyframe k's iterations; the
  optimizer's idle time is the time it waits for a prepared keyframe while the frontend is busy.

Both count ``optimizer_wait_for_features_s`` (engine counter). Reported: wall time, optimizer idle
time (total and share of wall), iterations, keyframes. Writes ``bench/results/pipeline.json``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from fhgs_ros.bench import write_results


def _frames(width: int, height: int, n: int):
    from fhgs_ros.online.frames import InputFrame
    from fhgs_ros.core.camera import Intrinsics
    from fhgs_ros.ros.streamer import synthetic_frames

    out = []
    for i, (rgb, depth, cam) in enumerate(synthetic_frames(width, height, n, seed=3)):
        intr = Intrinsics(cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy)
        out.append(InputFrame(float(i), rgb, intr, cam.cam_to_world.double().numpy(), depth))
    return out


def run_mode(mode: str, frames, extractor, steps: int, timeout: float = 600.0) -> dict:
    from fhgs_ros.config import FHGSConfig
    from fhgs_ros.online.engine import MappingEngine
    from fhgs_ros.config import NodeConfig

    w = max(frames[0].rgb.shape[:2])
    ncfg = NodeConfig(kf_min_translation=0.0, kf_min_rotation_deg=0.0, step_mode="budget", steps_per_keyframe=steps,
                      queue_size=len(frames) + 1, max_new_surfels_per_keyframe=3000, max_image_long_side=w,
                      autosave_every_keyframes=0, autosave_period=0.0)
    eng = MappingEngine(FHGSConfig(), ncfg, extractor)
    t0 = time.perf_counter()
    if mode == "sequential":
        for fr in frames:
            eng.process_sync(fr)
    else:
        eng.start()
        try:
            for fr in frames:
                eng.submit(fr)
            end = time.monotonic() + timeout
            while time.monotonic() < end and not (eng.state.keyframes_total == len(frames) and eng.idle):
                time.sleep(0.005)
        finally:
            eng.stop(final_save=False)
    wall = time.perf_counter() - t0
    c = eng.counters.snapshot()
    idle = float(c.get("optimizer_wait_for_features_s", 0.0))
    return {"mode": mode, "wall_s": wall, "optimizer_idle_s": idle, "idle_share": idle / wall,
            "iterations": int(c.get("iterations", 0)), "keyframes": int(eng.state.keyframes_total),
            "surfels": len(eng.state.surfels), "optimizer_error": eng.optimizer_error}


def run(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fhgs-bench pipeline", description=__doc__.splitlines()[0])
    p.add_argument("--extractor", default="vgg16", help="vgg16 | mobile_sam (random weights) | tiny")
    p.add_argument("--keyframes", type=int, default=6)
    p.add_argument("--steps", type=int, default=30, help="optimizer iterations per keyframe")
    p.add_argument("--image", default="640x480", help="keyframe size WxH")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--out", type=Path, default=Path("bench/results/pipeline.json"))
    a = p.parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    width, height = (int(v) for v in a.image.lower().split("x"))
    from fhgs_ros.features.registry import make_extractor
    if a.extractor == "vgg16":
        ext = make_extractor("vgg16", device="cpu")
    else:
        ext = make_extractor("sam", model={"mobile_sam": "vit_t", "tiny": "vit_tiny"}[a.extractor], device="cpu",
                             allow_random=True)
    frames = _frames(width, height, a.keyframes)
    ext.extract(frames[0].rgb)  # warm-up
    rows = [run_mode(m, frames, ext, a.steps) for m in ("sequential", "pipelined")]
    head = f"{'mode':<12}{'wall [s]':>10}{'optimizer idle [s]':>20}{'idle share':>12}{'iterations':>12}{'keyframes':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['mode']:<12}{r['wall_s']:>10.2f}{r['optimizer_idle_s']:>20.2f}{100 * r['idle_share']:>11.1f}%"
                     f"{r['iterations']:>12}{r['keyframes']:>11}")
    table = "\n".join(lines)
    print(f"\nOptimizer idle while features are extracted: {a.extractor} ({ext.model_id}), {width}x{height}, "
          f"{a.keyframes} keyframes x {a.steps} iterations, {torch.get_num_threads()} CPU threads\n{table}")
    out = {"benchmark": "pipeline", "extractor": ext.model_id, "image": [width, height], "steps": a.steps,
           "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "results": rows, "table": table}
    write_results(a.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
