"""``fhgs-bench raster``: forward+backward time of the rasterizer backends, with and without NDFD.

For each configuration (image size, surfel count, feature width D=256) it times one training
iteration -- render, a loss over every output (colour, alpha, depth, normal, distortion and, with
NDFD, the two NDFD losses), backward to all surfel parameters -- for

* ``reference``: the pure-PyTorch rasterizer (``core/reference.py``) with NDFD;
* ``native_rgb``: the native CPU kernels without NDFD;
* ``native_ndfd``: the native CPU kernels with NDFD,
* ``baseline_rgb``: the native CPU kernels without NDFD, run by the frozen scalar copy of the tile
  kernels as they were before the SIMD RGB path (issue 13, ``native.cpu_kernel("baseline")``),
  interleaved with ``native_rgb`` so that the speed-up is a ratio taken in one run,

prints a table and writes ``bench/results/raster.json`` (relative to the working directory), one
record per configuration with ``width, height, surfels, dim, reference_ms, native_rgb_ms,
native_ndfd_ms, speedup`` (reference / native with NDFD), ``ndfd_overhead`` (native_ndfd_ms /
native_rgb_ms), ``baseline_rgb_ms, rgb_speedup`` (baseline_rgb_ms / native_rgb_ms), the FLOP
counts per iteration, the achieved GFLOP/s, and ``profile_rgb`` / ``profile_baseline_rgb``: the
mean wall ms per iteration of each native stage (preprocess, bin, forward, backward: the
extension's own timers) and ``other`` (the rest of the iteration: allocation, autograd, the loss).

Scene: a synthetic room (floor, three walls, two spheres) covered by surfels lying on the
surfaces (normal noise, random spin), sized by the surfel spacing so that every pixel sees a
realistic depth complexity; opacity 0.3-0.95. Features: one 256-d vector per surface plus noise
(10 % of the surfels carry another surface's feature); GT: a 64-cell-long-side grid (SAM's
layout) mixing the surface features smoothly.

Timing: native times are medians over ``--repeats`` iterations (RGB and NDFD interleaved, after
a warm-up), on all CPU threads torch uses. The reference needs about 9 GB for a 128x128 frame
with D=256, so it renders the frame as 64x64 windows (same fx, fy; principal point shifted) and
its time is the sum over the windows, from one iteration. The window's GT sampling is not shifted,
which does not change its cost.

FLOP model (per iteration, forward + backward; counted, not measured): 45 per in-box
(pixel, surfel) pair evaluation, done in the forward and again in the backward; 30 (forward) + 100
(backward) per kept contributor; NDFD adds 35 + 4 D (forward: gate, losses, F . f_i and F += w f_i)
and 15 + 4 D (backward: S . f_k, S += sigma w f_k) per contributor, 2 D per lever-table cell
(f_i . F_c) and 10 D per GT-grid cell (neighbour Gram values).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from fhgs_ros.bench import write_results
from fhgs_ros.core import native
from fhgs_ros.core.camera import Camera, look_at
from fhgs_ros.core.raster_types import FeatureTarget, NDFDParams
from fhgs_ros.core.reference import rasterize_reference

PARAMS = ("means", "quats", "scales", "opacity", "colors")
DEFAULT_CONFIGS = ((128, 128, 5000), (128, 128, 20000), (256, 256, 5000), (256, 256, 20000))
STAGES = ("preprocess", "bin", "forward", "backward")


# ------------------------------------------------------------------------------------------ scene
def bench_scene(width: int, height: int, n: int, dim: int, seed: int = 0, grid_long: int = 64) -> dict:
    """The synthetic room described in the module docstring."""
    g = torch.Generator().manual_seed(seed)
    f = 0.9 * max(width, height)
    cam = Camera(width, height, f, f, (width - 1) / 2, (height - 1) / 2, look_at([0.0, -4.0, 1.2], [0.0, 0.0, 0.6]))
    T = torch.tensor

    def plane(k, origin, du, dv):
        a = torch.rand(k, 2, generator=g)
        nrm = torch.linalg.cross(du, dv)
        return origin + a[:, :1] * du + a[:, 1:] * dv, (nrm / nrm.norm()).expand(k, 3)

    def sphere(k, c, r):
        d = F.normalize(torch.randn(k, 3, generator=g), dim=-1)
        return c + r * d, d

    specs = [(0.25, lambda k: plane(k, T([-3.0, -3.0, 0.0]), T([6.0, 0, 0]), T([0, 6.0, 0]))),
             (0.25, lambda k: plane(k, T([-3.0, 3.0, 0.0]), T([6.0, 0, 0]), T([0, 0, 3.0]))),
             (0.12, lambda k: plane(k, T([-3.0, -3.0, 0.0]), T([0, 6.0, 0]), T([0, 0, 3.0]))),
             (0.12, lambda k: plane(k, T([3.0, -3.0, 0.0]), T([0, 0, 3.0]), T([0, 6.0, 0]))),
             (0.14, lambda k: sphere(k, T([-0.7, 0.3, 0.7]), 0.7)),
             (0.12, lambda k: sphere(k, T([0.9, 0.8, 0.5]), 0.5))]
    pts, nrms, lab = [], [], []
    for i, (frac, fn) in enumerate(specs):
        k = int(round(frac * n)) if i < len(specs) - 1 else n - sum(x.shape[0] for x in pts)
        p, nr = fn(k)
        pts.append(p)
        nrms.append(nr)
        lab.append(torch.full((k,), i))
    means, normal, label = torch.cat(pts), torch.cat(nrms), torch.cat(lab)
    normal = F.normalize(normal + 0.15 * torch.randn(n, 3, generator=g), dim=-1)
    z = torch.tensor([0.0, 0.0, 1.0]).expand(n, 3)
    axis = torch.linalg.cross(z, normal)
    s = axis.norm(dim=-1, keepdim=True)
    ang = torch.atan2(s, (z * normal).sum(-1, keepdim=True))
    axis = torch.where(s > 1e-8, axis / s.clamp_min(1e-12), torch.tensor([1.0, 0.0, 0.0]))
    q1 = torch.cat([torch.cos(ang / 2), axis * torch.sin(ang / 2)], -1)
    spin = torch.rand(n, 1, generator=g) * 2 * math.pi
    w1, x1, y1, z1 = q1.unbind(-1)
    w2, z2 = torch.cos(spin / 2).squeeze(-1), torch.sin(spin / 2).squeeze(-1)
    quats = torch.stack([w1 * w2 - z1 * z2, x1 * w2 + y1 * z2, -x1 * z2 + y1 * w2, w1 * z2 + z1 * w2], -1)
    area = 36 + 18 + 18 + 18 + 4 * math.pi * (0.49 + 0.25)
    spacing = math.sqrt(area / n)
    base = F.normalize(torch.randn(len(specs), dim, generator=g), dim=-1)
    feats = F.normalize(base[label] + 0.3 * torch.randn(n, dim, generator=g) / math.sqrt(dim), dim=-1)
    flip = torch.rand(n, generator=g) < 0.1
    feats[flip] = base[torch.randint(0, len(specs), (int(flip.sum()),), generator=g)]
    gw = grid_long if width >= height else max(1, round(grid_long * width / height))
    gh = grid_long if height >= width else max(1, round(grid_long * height / width))
    yy, xx = torch.meshgrid(torch.linspace(0, 1, gh), torch.linspace(0, 1, gw), indexing="ij")
    wts = torch.stack([torch.exp(-((xx - 0.2 - 0.3 * i) ** 2 + (yy - 0.5) ** 2) / 0.05) for i in range(len(specs))])
    grid = torch.einsum("sd,shw->dhw", base, wts + 0.05) + 0.05 * torch.randn(dim, gh, gw, generator=g)
    return {"camera": cam, "means": means, "quats": quats,
            "scales": spacing * (0.6 + 0.8 * torch.rand(n, 2, generator=g)),
            "opacity": 0.3 + 0.65 * torch.rand(n, generator=g), "colors": torch.rand(n, 3, generator=g),
            "features_unit": feats, "target": FeatureTarget.for_image(grid, width, height)}


# ---------------------------------------------------------------------------------------- timing
def _iteration(fn, scene: dict, ndfd: bool, camera: Camera | None = None) -> float:
    """One render + loss + backward; returns seconds."""
    ps = [scene[k].detach().clone().requires_grad_(True) for k in PARAMS]
    t0 = time.perf_counter()
    r = fn(*ps, camera or scene["camera"], None, scene["features_unit"] if ndfd else None,
           scene["target"] if ndfd else None, NDFDParams() if ndfd else None)
    loss = r.rgb.sum() + r.alpha.sum() + r.depth.sum() + r.normal.sum() + 100.0 * r.distortion.sum()
    if ndfd:
        loss = loss + r.ndfd_ext.mean() + r.ndfd_int.mean()
    loss.backward()
    return time.perf_counter() - t0


def windows(camera: Camera, size: int = 64):
    """Sub-cameras tiling the image (same intrinsics, shifted principal point)."""
    for y0 in range(0, camera.height, size):
        for x0 in range(0, camera.width, size):
            w, h = min(size, camera.width - x0), min(size, camera.height - y0)
            yield Camera(w, h, camera.fx, camera.fy, camera.cx - x0, camera.cy - y0, camera.world_to_cam.clone(),
                         camera.near, camera.far)


def time_reference(scene: dict, window: int) -> float:
    return sum(_iteration(rasterize_reference, scene, True, cam) for cam in windows(scene["camera"], window))


def _profiled(scene: dict, ndfd: bool, prof: dict, kernel: str = "fast") -> float:
    """One native iteration under ``kernel``; adds its per-stage wall ms (and ``other``) to ``prof``."""
    with native.cpu_kernel(kernel):
        native.stage_profile(reset=True)
        t = _iteration(native.rasterize_native, scene, ndfd)
        st = native.stage_profile(reset=True)
    for k in STAGES:
        prof[k] = prof.get(k, 0.0) + st.get(k, 0.0)
    prof["other"] = prof.get("other", 0.0) + 1000 * t - sum(st.values())
    return t


def time_native(scene: dict, repeats: int, baseline: bool = True):
    """Interleaved medians: RGB (fast kernels), NDFD, and (``baseline``) RGB by the frozen baseline.

    Returns (rgb, nd, base) second lists and the mean per-iteration stage profiles of the RGB runs."""
    _iteration(native.rasterize_native, scene, False)
    _iteration(native.rasterize_native, scene, True)
    if baseline:
        _profiled(scene, False, {}, "baseline")
    rgb, nd, base = [], [], []
    prof_rgb: dict = {}
    prof_base: dict = {}
    for _ in range(repeats):
        if baseline:
            base.append(_profiled(scene, False, prof_base, "baseline"))
        rgb.append(_profiled(scene, False, prof_rgb))
        nd.append(_iteration(native.rasterize_native, scene, True))
    mean = lambda p: {k: v / repeats for k, v in p.items()}  # noqa: E731
    return rgb, nd, base, mean(prof_rgb), mean(prof_base) if baseline else None


def work_counts(scene: dict) -> dict:
    """Counts behind the FLOP model: in-box pairs, kept contributors, lever cells, grid cells."""
    cam = scene["camera"]
    lever = native.lever_tables(scene["target"], cam.width, cam.height)
    grid = scene["target"].grid.permute(1, 2, 0).contiguous()
    out = native._ext.forward(*[scene[k].contiguous().float() for k in PARAMS], torch.zeros(3),
                              native.camera_vector(cam), cam.width, cam.height, scene["features_unit"].float(),
                              grid.float(), 0.5, 20.0, True, *lever, torch.empty(0), False, 0)
    names = native._ext.state_names()
    ibox = out[11 + names.index("ibox")].long()
    w = (ibox[:, 1] - ibox[:, 0] + 1).clamp_min(0)
    h = (ibox[:, 3] - ibox[:, 2] + 1).clamp_min(0)
    return {"box_pairs": int((w * h).sum()), "contributors": int(out[10].sum()),
            "lever_cells": int(out[11 + names.index("lever")].numel()),
            "grid_cells": int(grid.shape[0] * grid.shape[1]), "entries": int(out[11 + names.index("tile_list")].numel())}


def flops(counts: dict, dim: int, ndfd: bool) -> float:
    f = 2 * 45 * counts["box_pairs"] + (30 + 100) * counts["contributors"]
    if ndfd:
        f += (35 + 4 * dim + 15 + 4 * dim) * counts["contributors"]
        f += 2 * dim * counts["lever_cells"] + 10 * dim * counts["grid_cells"]
    return float(f)


def print_rgb_table(records: list[dict]) -> None:
    """The RGB-only fast kernels against the frozen baseline: times, GFLOP/s, stage breakdown."""
    print("\nRGB-only native forward+backward: frozen pre-SIMD baseline vs SIMD kernels (interleaved medians; "
          "stage ms = mean per iteration)")
    cols = ("forward", "backward", "preprocess", "bin", "other")
    hdr = (f"{'size':>9} {'surfels':>7} {'base ms':>8} {'new ms':>8} {'ratio':>6} {'GF/s base':>9} {'GF/s new':>8}  "
           + " ".join(f"{c:>17}" for c in cols))
    print(hdr)
    print(" " * 61 + "  " + " ".join(f"{'base -> new':>17}" for _ in cols))
    print("-" * len(hdr))
    for r in records:
        pb, pn = r["profile_baseline_rgb"], r["profile_rgb"]
        stages = " ".join(f"{pb.get(c, 0.0):7.1f} -> {pn.get(c, 0.0):6.1f}" for c in cols)
        print(f"{r['width']:>4}x{r['height']:<4} {r['surfels']:>7} {r['baseline_rgb_ms']:8.1f} {r['native_rgb_ms']:8.1f} "
              f"{r['rgb_speedup']:5.2f}x {r['gflops_baseline_rgb']:9.1f} {r['gflops_native_rgb']:8.1f}  {stages}")


# ------------------------------------------------------------------------------------------- main
def run(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fhgs-bench raster", description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default=",".join(f"{w}x{h}x{n}" for w, h, n in DEFAULT_CONFIGS),
                    help="comma-separated WIDTHxHEIGHTxSURFELS (or SIZExSURFELS for a square image), "
                         "default %(default)s")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the frozen pre-SIMD baseline kernels (RGB speed-up column)")
    ap.add_argument("--dim", type=int, default=256, help="feature width D")
    ap.add_argument("--repeats", type=int, default=7, help="native iterations per variant (median)")
    ap.add_argument("--no-reference", action="store_true", help="skip the (slow, memory-heavy) reference")
    ap.add_argument("--window", type=int, default=64, help="reference window size in pixels")
    ap.add_argument("--out", default=os.path.join("bench", "results", "raster.json"))
    args = ap.parse_args(argv)
    if not native.native_available():
        print(f"fhgs-bench raster: native extension not built ({native.native_import_error()}); run `make setup`")
        return 1
    configs = []
    for tok in args.configs.split(","):
        parts = [int(x) for x in tok.lower().split("x")]
        configs.append((parts[0], parts[0], parts[1]) if len(parts) == 2 else tuple(parts))

    records = []
    header = (f"{'size':>9} {'surfels':>7} {'D':>4} {'ref ms':>10} {'rgb ms':>8} {'ndfd ms':>8} {'speedup':>8} "
              f"{'ndfd ovh':>8} {'GFLOP/it':>9} {'GFLOP/s':>8}")
    print(f"fhgs-bench raster: {native.build_info()}, SIMD RGB kernels {native.cpu_isa()}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(header)
    print("-" * len(header))
    for width, height, n in configs:
        scene = bench_scene(width, height, n, args.dim)
        counts = work_counts(scene)
        rgb, nd, base, prof_rgb, prof_base = time_native(scene, args.repeats, not args.no_baseline)
        rgb_ms, nd_ms = 1000 * statistics.median(rgb), 1000 * statistics.median(nd)
        base_ms = 1000 * statistics.median(base) if base else None
        ref_ms = None if args.no_reference else 1000 * time_reference(scene, args.window)
        f_rgb, f_nd = flops(counts, args.dim, False), flops(counts, args.dim, True)
        rec = {
            "width": width, "height": height, "surfels": n, "dim": args.dim,
            "reference_ms": ref_ms, "native_rgb_ms": rgb_ms, "native_ndfd_ms": nd_ms,
            "speedup": (ref_ms / nd_ms) if ref_ms else None, "ndfd_overhead": nd_ms / rgb_ms,
            "native_rgb_ms_min": 1000 * min(rgb), "native_ndfd_ms_min": 1000 * min(nd),
            "flops_rgb": f_rgb, "flops_ndfd": f_nd,
            "gflops_native_rgb": f_rgb / rgb_ms / 1e6, "gflops_native_ndfd": f_nd / nd_ms / 1e6,
            "gflops_reference": (f_nd / ref_ms / 1e6) if ref_ms else None,
            "baseline_rgb_ms": base_ms, "rgb_speedup": (base_ms / rgb_ms) if base_ms else None,
            "gflops_baseline_rgb": (f_rgb / base_ms / 1e6) if base_ms else None,
            "profile_rgb": prof_rgb, "profile_baseline_rgb": prof_base, "cpu_isa": native.cpu_isa(),
            "samples_ms": {"rgb": [1000 * t for t in rgb], "ndfd": [1000 * t for t in nd],
                           "baseline_rgb": [1000 * t for t in base]},
            "counts": counts, "repeats": args.repeats, "reference_windows": args.window,
            "threads": torch.get_num_threads(),
        }
        records.append(rec)
        ref_s = f"{ref_ms:10.0f}" if ref_ms else f"{'-':>10}"
        sp_s = f"{rec['speedup']:7.0f}x" if ref_ms else f"{'-':>8}"
        print(f"{width:>4}x{height:<4} {n:>7} {args.dim:>4} {ref_s} {rgb_ms:8.1f} {nd_ms:8.1f} {sp_s} "
              f"{rec['ndfd_overhead']:8.2f} {f_nd / 1e9:9.2f} {rec['gflops_native_ndfd']:8.1f}", flush=True)
    if not args.no_baseline:
        print_rgb_table(records)

    ok_speed = all(r["speedup"] is None or r["speedup"] >= 30 for r in records)
    ok_ovh = all(r["ndfd_overhead"] <= 2.0 for r in records)
    ok_rgb = all(r["rgb_speedup"] is None or r["rgb_speedup"] >= 2.0 for r in records)
    print(f"targets: native >= 30x faster than the reference: {'met' if ok_speed else 'NOT met'}; "
          f"NDFD adds <= 100% to the RGB-only native time: {'met' if ok_ovh else 'NOT met'}; "
          f"RGB kernels >= 2x the pre-SIMD baseline: {'met' if ok_rgb else 'NOT met'}")
    write_results(args.out, {"benchmark": "raster", "build": native.build_info(), "records": records,
                             "targets": {"speedup_min": 30, "ndfd_overhead_max": 2.0, "speedup_met": ok_speed,
                                         "ndfd_overhead_met": ok_ovh, "rgb_speedup_min": 2.0,
                                         "rgb_speedup_met": ok_rgb}})
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(run())
