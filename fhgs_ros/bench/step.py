"""``fhgs-bench step``: one full mapper step, FHGS (NDFD on) against plain 2DGS (NDFD off).

For each configuration (image size, surfel count, D = 256) it builds the synthetic room of
``fhgs-bench raster`` (``bench_scene``) as a ``SurfelMap`` (SH degree 3, as after the first
3000 iterations), a ground-truth image rendered from the unperturbed scene and the scene's
64-cell GT feature grid, two ``Mapper``s (``ndfd_enabled`` True / False, otherwise the same
``MapperConfig``) on a copy of a perturbed map each, and times ``Mapper.step()`` (render, L1 +
D-SSIM, NDFD losses, backward, density statistics, Adam) interleaved FHGS / 2DGS, median over
``--repeats`` after a warm-up. It also reports, in the same run:

* ``rgb_kernel_ms``: the native RGB-only forward + backward (the loss of ``fhgs-bench raster``);
  also the same by the frozen pre-SIMD copy of the CPU tile kernels compiled into the extension
  (``native.cpu_kernel("baseline")``), or with ``--baseline-so PATH`` by another build of the
  extension (for example the previous commit's ``fhgs_ros/_native*.so``), interleaved, and the
  speed-up;
* ``ndfd_full_step_ms``: the FHGS step with NDFD evaluated at every pixel
  (``MapperConfig.ndfd_stride = 1``, the pre-subsampling behaviour) when the default subsamples;
* ``bytes_per_surfel_memory``: every per-surfel tensor the mapper holds between steps (map
  fields, Adam moments, density statistics; ``memory_breakdown`` itemizes them), per surfel;
  ``feature_fp32_copy_ms``: a float32 copy of the float16 unit features, what each NDFD step
  made for the kernel before the CPU kernels read float16 directly (no longer in
  ``fhgs_step_ms``; the full-resolution ``ndfd_stride = 1`` path still copies, in the bindings);
  ``sh_colors_ms`` / ``adam_ms``: SH colours forward + backward and one Adam update alone;
  ``bytes_per_surfel_file``: the size of the default (version-2) ``save_map`` file per surfel
  (``bytes_per_surfel_file_v1``: the version-1 file);
* with ``--f3dgs``: a Feature-3DGS-style step (``f3dgs_step``), timed interleaved with the others:
  RGB and a blended D-channel feature image rendered in one traversal by the native CPU kernel's
  differentiable feature image (``rasterize_native(..., feature_grad=True)``: the scalar
  per-pixel kernel with the channel loop inside the pixel, as Feature 3DGS's CUDA kernel; CPU
  only, there is no CUDA version), the loss of Feature 3DGS's ``train.py`` (the feature image
  resized to the GT grid, L1; RGB L1 + D-SSIM), backward into features and geometry, Adam over
  everything; ``f3dgs_over_fhgs`` is its time over the FHGS step. ``--f3dgs-speedup-dims``
  (default 128) adds Feature 3DGS's speed-up variant: render fewer channels, 1x1-conv decoder to D.

Writes ``bench/results/step.json`` (a list of records with ``width, height, surfels, dim,
fhgs_step_ms, twodgs_step_ms, ratio, rgb_kernel_ms, bytes_per_surfel_memory,
bytes_per_surfel_file`` and the extras above) and prints a table.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from fhgs_ros.bench import write_results
from fhgs_ros.bench.raster import PARAMS, bench_scene
from fhgs_ros.core import native
from fhgs_ros.core.losses import photometric_loss
from fhgs_ros.core.mapper import Keyframe, Mapper, MapperConfig
from fhgs_ros.core.render import surfel_colors
from fhgs_ros.core.storage import save_map
from fhgs_ros.core.surfels import SurfelMap

DEFAULT_CONFIGS = ((480, 270, 50_000), (640, 480, 150_000))
QUICK_CONFIGS = ((160, 96, 4_000),)


# ------------------------------------------------------------------------------------------ setup
def scene_map(scene: dict, seed: int = 1) -> SurfelMap:
    """The bench scene as a SurfelMap (features raw = the unit features), geometry and colours perturbed."""
    g = torch.Generator().manual_seed(seed)
    n = scene["means"].shape[0]
    m = SurfelMap.create(scene["means"] + 0.01 * torch.randn(n, 3, generator=g),
                         (scene["colors"] + 0.1 * torch.randn(n, 3, generator=g)).clamp(0, 1),
                         scene["features_unit"], scales=scene["scales"], quats=scene["quats"],
                         opacity=scene["opacity"])
    m.sh_rest.data.normal_(0.0, 0.02, generator=g)
    m.sh_degree = 3
    return m


def gt_image(scene: dict) -> torch.Tensor:
    with torch.no_grad():
        r = native.rasterize_native(*[scene[k] for k in PARAMS], scene["camera"])
    return r.rgb.clamp(0, 1).contiguous()


def make_mapper(scene: dict, image: torch.Tensor, ndfd: bool, **cfg_over) -> Mapper:
    cfg = MapperConfig(ndfd_enabled=ndfd, **cfg_over)
    m = Mapper(cfg, scene["features_unit"].shape[1], extent=6.0)
    m.add_surfels(scene_map(scene))
    m.surfels.sh_degree = 3
    m.add_keyframe(Keyframe(scene["camera"], image, scene["target"]))
    return m


def memory_breakdown(m: Mapper) -> dict[str, float]:
    """Bytes per surfel of every per-surfel tensor the mapper holds between steps: each map field
    (features once: float16 unit vectors + float32 norm), the Adam moments, gradients still held
    (none: ``zero_grad`` frees them) and the density statistics."""
    n = max(len(m.surfels), 1)

    def nb(t: torch.Tensor) -> int:
        return t.numel() * t.element_size()

    out = {k: nb(t) / n for k, t in m.surfels._tensor_fields().items()}
    out["adam_moments"] = sum(nb(v) for st in m.opt.opt.state.values() for v in st.values()
                              if isinstance(v, torch.Tensor) and v.dim() > 0) / n
    out["gradients"] = sum(nb(p.grad) for p in m.surfels.parameters().values() if p.grad is not None) / n
    out["density_stats"] = sum(nb(t) for t in (m.stats.grad_accum, m.stats.count, m.stats.max_radii)) / n
    return out


def bytes_per_surfel_memory(m: Mapper) -> float:
    """Bytes per surfel of the map, the optimizer state and the density statistics (see memory_breakdown)."""
    return sum(memory_breakdown(m).values())


def bytes_per_surfel_file(m: Mapper, compact: bool = True) -> float:
    """Size of the ``save_map`` file per surfel (compact: the version-2 layout, see core/storage.py)."""
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "map.safetensors")
        save_map(p, m.surfels, compact=compact)
        return os.path.getsize(p) / max(len(m.surfels), 1)


def sh_colors_fwd_bwd(m: Mapper, camera) -> None:
    """SH colours of every surfel (the mapper's degree) forward + backward into the SH and centres."""
    surfel_colors(m.surfels, camera).sum().backward()
    for p in m.surfels.parameters().values():
        p.grad = None


def adam_step(m: Mapper) -> None:
    """One Adam update of all trainable fields of the bench's auxiliary mapper (gradients set to ones)."""
    for p in m.surfels.parameters().values():
        p.grad = torch.ones_like(p)
    m.opt.step()
    m.opt.zero_grad()


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - t0)


# ------------------------------------------------------------------------------------- kernels
def rgb_kernel(scene: dict) -> None:
    """Native RGB-only forward + backward with the loss of ``fhgs-bench raster``."""
    ps = [scene[k].detach().clone().requires_grad_(True) for k in PARAMS]
    r = native.rasterize_native(*ps, scene["camera"])
    loss = r.rgb.sum() + r.alpha.sum() + r.depth.sum() + r.normal.sum() + 100.0 * r.distortion.sum()
    loss.backward()


def load_extension(path: str):
    """Load another build of ``fhgs_ros._native`` (e.g. the previous commit's) under a private name."""
    spec = importlib.util.spec_from_file_location("fhgs_bench_baseline._native", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def with_extension(ext, fn):
    """Run ``fn`` with ``native._ext`` swapped for ``ext`` ("frozen": the compiled-in baseline kernels)."""
    if ext == "frozen":
        with native.cpu_kernel("baseline"):
            return fn()
    saved = native._ext
    native._ext = ext
    try:
        return fn()
    finally:
        native._ext = saved


# --------------------------------------------------------------------------- Feature-3DGS style
def f3dgs_step(scene: dict, image: torch.Tensor, state: dict, dim_render: int | None = None) -> None:
    """One Feature-3DGS-style step (Zhou et al. 2024, its ``train.py`` loss); ``state`` keeps the map,
    the per-surfel features, the decoder and the Adam optimizer between calls.

    One native traversal renders the RGB image (SH degree 3 colours, as the FHGS map) and the
    blended ``dim_render``-channel feature image (``rasterize_native(..., feature_grad=True)``: the
    scalar per-pixel kernel with the channel loop inside the pixel, CPU only); the feature image is
    resized bilinearly (align_corners) to the GT feature grid's size, passed through the 1x1-conv
    decoder when ``dim_render`` < D (Feature 3DGS's "speed-up" variant), and compared by L1 with the
    GT grid; loss = 0.8 L1 + 0.2 D-SSIM (RGB) + L1 (features); backward into the geometry, SH,
    opacity, the features (and the decoder); Adam over all of them. No density statistics."""
    d = scene["features_unit"].shape[1]
    dr = d if dim_render is None else dim_render
    if "map" not in state:
        m = scene_map(scene)
        feats = torch.nn.Parameter(scene["features_unit"][:, :dr].clone().contiguous())
        params = list(m.parameters().values()) + [feats]
        decoder = None
        if dr < d:
            decoder = torch.nn.Conv2d(dr, d, kernel_size=1)
            params += list(decoder.parameters())
        state.update(map=m, feats=feats, decoder=decoder, opt=torch.optim.Adam(params, lr=1e-3, eps=1e-15),
                     gt_feat=scene["target"].grid.float().contiguous())  # (D, gh, gw)
    m, cam, gt = state["map"], scene["camera"], state["gt_feat"]
    colors = surfel_colors(m, cam)
    r = native.rasterize_native(m.means, m.quats, m.scales, m.opacity, colors, cam,
                                feature_values=state["feats"], feature_grad=True)
    fmap = F.interpolate(r.features[None], size=tuple(gt.shape[1:]), mode="bilinear", align_corners=True)[0]
    if state["decoder"] is not None:
        fmap = state["decoder"](fmap[None])[0]
    loss = photometric_loss(r.rgb, image, 0.2) + (fmap - gt).abs().mean()
    loss.backward()
    state["opt"].step()
    state["opt"].zero_grad(set_to_none=True)


# ------------------------------------------------------------------------------------------- main
def measure(width: int, height: int, n: int, dim: int, repeats: int, baseline, f3dgs: bool,
            f3dgs_dims: tuple[int, ...] = ()) -> dict:
    scene = bench_scene(width, height, n, dim)
    image = gt_image(scene)
    fh = make_mapper(scene, image, True)
    tw = make_mapper(scene, image, False)
    full = make_mapper(scene, image, True, ndfd_stride=1) if fh.cfg.ndfd_stride != 1 else None
    for m in (fh, tw) + ((full,) if full else ()):
        m.step()  # warm-up (allocations, first-touch)
    rgb_kernel(scene)
    if baseline is not None:
        with_extension(baseline, lambda: rgb_kernel(scene))
    t_fh, t_tw, t_full, t_k, t_kb, t_conv, t_sh, t_adam = [], [], [], [], [], [], [], []
    aux = make_mapper(scene, image, True)  # SH / Adam component timings on a map of its own
    f3_dims = ((dim,) + tuple(x for x in f3dgs_dims if 0 < x < dim)) if f3dgs else ()
    f3_state: dict[int, dict] = {x: {} for x in f3_dims}
    t_f3: dict[int, list[float]] = {x: [] for x in f3_dims}
    for x in f3_dims:
        f3dgs_step(scene, image, f3_state[x], x)  # warm-up
    for _ in range(repeats):
        t_sh.append(_timed(lambda: sh_colors_fwd_bwd(aux, scene["camera"])))
        t_adam.append(_timed(lambda: adam_step(aux)))
        t_conv.append(_timed(lambda: fh.surfels.features_unit))  # float16 -> float32 copy (no longer per step)
        t_fh.append(_timed(fh.step))
        t_tw.append(_timed(tw.step))
        if full is not None:
            t_full.append(_timed(full.step))
        t_k.append(_timed(lambda: rgb_kernel(scene)))
        if baseline is not None:
            t_kb.append(with_extension(baseline, lambda: _timed(lambda: rgb_kernel(scene))))
        for x in f3_dims:
            t_f3[x].append(_timed(lambda x=x: f3dgs_step(scene, image, f3_state[x], x)))
    med = statistics.median
    rec = {
        "width": width, "height": height, "surfels": n, "dim": dim,
        "fhgs_step_ms": med(t_fh), "twodgs_step_ms": med(t_tw), "ratio": med(t_fh) / med(t_tw),
        "rgb_kernel_ms": med(t_k),
        "bytes_per_surfel_memory": bytes_per_surfel_memory(fh),
        "memory_breakdown": memory_breakdown(fh),
        "feature_fp32_copy_ms": med(t_conv),
        "sh_colors_ms": med(t_sh), "adam_ms": med(t_adam),
        "bytes_per_surfel_file": bytes_per_surfel_file(fh),
        "bytes_per_surfel_file_v1": bytes_per_surfel_file(fh, compact=False),
        "ndfd_stride": fh.cfg.ndfd_stride,
        "ndfd_full_step_ms": med(t_full) if t_full else med(t_fh),
        "ndfd_full_ratio": (med(t_full) if t_full else med(t_fh)) / med(t_tw),
        "rgb_kernel_baseline_ms": med(t_kb) if t_kb else None,
        "rgb_kernel_speedup": med(t_kb) / med(t_k) if t_kb else None,
        "repeats": repeats, "threads": torch.get_num_threads(),
        "samples_ms": {"fhgs": t_fh, "twodgs": t_tw, "ndfd_full": t_full, "rgb_kernel": t_k,
                       "rgb_kernel_baseline": t_kb},
    }
    if f3dgs:
        rec["f3dgs_step_ms"] = med(t_f3[dim])
        rec["f3dgs_over_fhgs"] = med(t_f3[dim]) / med(t_fh)
        rec["f3dgs_over_twodgs"] = med(t_f3[dim]) / med(t_tw)
        rec["f3dgs_speedup"] = [{"dim_render": x, "step_ms": med(t_f3[x]), "over_fhgs": med(t_f3[x]) / med(t_fh)}
                                for x in f3_dims[1:]]
        rec["samples_ms"]["f3dgs"] = {str(x): v for x, v in t_f3.items()}
    return rec


def run(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fhgs-bench step", description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default=",".join(f"{w}x{h}x{n}" for w, h, n in DEFAULT_CONFIGS),
                    help="comma-separated WIDTHxHEIGHTxSURFELS, default %(default)s")
    ap.add_argument("--quick", action="store_true", help=f"smoke-test size {QUICK_CONFIGS[0]}, 2 repeats")
    ap.add_argument("--dim", type=int, default=256, help="feature width D")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved steps per variant (median)")
    ap.add_argument("--baseline-so", default=None,
                    help="another build of fhgs_ros/_native*.so to time the RGB kernel against "
                         "(default: the frozen pre-SIMD kernels compiled into this build)")
    ap.add_argument("--f3dgs", action="store_true",
                    help="also time a Feature-3DGS-style step at the first configuration (slow)")
    ap.add_argument("--f3dgs-speedup-dims", default="128",
                    help="comma-separated rendered widths of Feature 3DGS's speed-up variant (1x1-conv decoder "
                         "to D) timed with --f3dgs; empty: none")
    ap.add_argument("--out", default=os.path.join("bench", "results", "step.json"))
    args = ap.parse_args(argv)
    if not native.native_available():
        print(f"fhgs-bench step: native extension not built ({native.native_import_error()}); run `make setup`")
        return 1
    configs = QUICK_CONFIGS if args.quick else [tuple(int(v) for v in tok.lower().split("x"))
                                                for tok in args.configs.split(",")]
    repeats = 2 if args.quick else args.repeats
    baseline = load_extension(args.baseline_so) if args.baseline_so else (
        "frozen" if hasattr(native._ext, "set_cpu_kernel") else None)
    print(f"fhgs-bench step: {native.build_info()}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")
    header = (f"{'size':>9} {'surfels':>7} {'D':>4} {'fhgs ms':>8} {'2dgs ms':>8} {'ratio':>6} {'full ms':>8} "
              f"{'fullratio':>9} {'rgb ms':>7} {'base ms':>8} {'B/mem':>6} {'B/file':>6} {'f16->32':>7} "
              f"{'sh ms':>6} {'adam ms':>7} {'f3dgs':>7}")
    print(header)
    print("-" * len(header))
    records = []
    for i, (w, h, n) in enumerate(configs):
        rec = measure(w, h, n, args.dim, repeats, baseline, args.f3dgs and i == 0,
                      tuple(int(x) for x in args.f3dgs_speedup_dims.split(",") if x.strip()))
        records.append(rec)
        base = f"{rec['rgb_kernel_baseline_ms']:8.1f}" if rec["rgb_kernel_baseline_ms"] else f"{'-':>8}"
        f3 = f"{rec['f3dgs_over_fhgs']:6.1f}x" if "f3dgs_over_fhgs" in rec else f"{'-':>7}"
        print(f"{w:>4}x{h:<4} {n:>7} {args.dim:>4} {rec['fhgs_step_ms']:8.1f} {rec['twodgs_step_ms']:8.1f} "
              f"{rec['ratio']:6.3f} {rec['ndfd_full_step_ms']:8.1f} {rec['ndfd_full_ratio']:9.3f} "
              f"{rec['rgb_kernel_ms']:7.1f} {base} {rec['bytes_per_surfel_memory']:6.0f} "
              f"{rec['bytes_per_surfel_file']:6.0f} {rec['feature_fp32_copy_ms']:7.1f} "
              f"{rec['sh_colors_ms']:6.1f} {rec['adam_ms']:7.1f} {f3}", flush=True)
    for rec in records:
        if "f3dgs_step_ms" in rec:
            print(f"Feature-3DGS-style step at {rec['width']}x{rec['height']}/{rec['surfels']}: D={rec['dim']} "
                  f"{rec['f3dgs_step_ms']:.1f} ms = {rec['f3dgs_over_fhgs']:.2f}x the FHGS step "
                  f"({rec['f3dgs_over_twodgs']:.2f}x 2DGS)")
            for v in rec["f3dgs_speedup"]:
                print(f"  speed-up variant (render {v['dim_render']} channels + 1x1 conv to {rec['dim']}): "
                      f"{v['step_ms']:.1f} ms = {v['over_fhgs']:.2f}x the FHGS step")
    ok = all(r["ratio"] <= 1.15 for r in records)
    print(f"target: FHGS step <= 1.15x the 2DGS step: {'met' if ok else 'NOT met'}")
    write_results(args.out, records)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
