"""Native rasterizer backends (C++/OpenMP CPU, CUDA) behind the reference's call signature.

``rasterize_native`` takes exactly the arguments of ``reference.rasterize_reference`` and returns
the same ``RenderResult``. It runs the compiled extension ``fhgs_ros._native`` (built by
``make setup`` / ``pip install -e .``, see ``setup_ext.py``): the CUDA kernels when the tensors are
on a GPU and the extension was built with nvcc, the CPU kernels otherwise. The backward is a
``torch.autograd.Function`` calling the native reverse-order backward (docs/METHOD.md §4);
it produces gradients for means, raw quaternions, scales, opacity, colours and the background.
Features (unit and raw) and the GT grid never receive gradients, as in the reference, except
with ``feature_grad=True`` (CPU only, used by the Feature-3DGS-style step of ``fhgs-bench step``):
the blended feature image is then differentiable in the raw features and, through the blending
weights, in the geometry.

Kernels run in float32: float64 inputs are cast (differentiably) and outputs cast back.
A missing extension or backend is reported by one log line, never by an import error.
"""

from __future__ import annotations

import contextlib
import logging
from collections import namedtuple
from typing import NamedTuple

import torch

from fhgs_ros.core.camera import Camera
from fhgs_ros.core.raster_types import FeatureTarget, NDFDParams, RenderResult

log = logging.getLogger(__name__)

try:  # torch is imported first: the extension links against it
    from fhgs_ros import _native as _ext  # type: ignore[attr-defined]
    _IMPORT_ERROR: Exception | None = None
except Exception as exc:  # noqa: BLE001 - any load failure means "not available"
    _ext = None
    _IMPORT_ERROR = exc

_warned: set[str] = set()


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(msg)


def native_available() -> bool:
    """True when the compiled extension (CPU backend at least) can be used."""
    return _ext is not None


def native_import_error() -> Exception | None:
    return _IMPORT_ERROR


def cuda_built() -> bool:
    """True when the extension was compiled with the CUDA backend (nvcc present at build time)."""
    return _ext is not None and bool(_ext.has_cuda())


def cuda_backend_available() -> bool:
    """True when CUDA tensors can be rasterized natively (CUDA backend built and a GPU visible)."""
    return cuda_built() and torch.cuda.is_available()


def build_info() -> str:
    return _ext.build_info() if _ext is not None else f"unavailable ({_IMPORT_ERROR})"


def cpu_isa() -> str:
    """Instruction-set variant of the SIMD RGB CPU kernels in use ("x86-64-v4", "x86-64-v3", "baseline")."""
    return str(_ext.cpu_isa()) if _ext is not None and hasattr(_ext, "cpu_isa") else "unavailable"


@contextlib.contextmanager
def cpu_kernel(name: str):
    """Run the CPU tile kernels ``name`` inside the block: "fast" (default) or "baseline", the frozen
    scalar copy of the kernels before the SIMD RGB path (``fhgs-bench raster`` times both side by
    side). Forward and backward of one iteration must run under the same setting."""
    prev = _ext.cpu_kernel()
    _ext.set_cpu_kernel(name)
    try:
        yield
    finally:
        _ext.set_cpu_kernel(prev)


def stage_profile(reset: bool = True) -> dict[str, float]:
    """Accumulated wall ms per native stage (preprocess, bin, lever, forward, backward) since the last reset."""
    return {k: float(v[0]) for k, v in _ext.stage_profile(reset).items()}


def camera_vector(camera: Camera) -> torch.Tensor:
    """21 float32 values: P (3x4), world_to_cam row 2 (4), camera centre (3), near, far."""
    proj = camera.projection().to(torch.float32).reshape(-1)
    w2c = camera.world_to_cam.to(torch.float32)[2]
    centre = camera.center.to(torch.float32)
    nf = torch.tensor([camera.near, camera.far], dtype=torch.float32)
    return torch.cat([proj, w2c, centre, nf]).contiguous()


def lever_tables(target: FeatureTarget, width: int, height: int):
    """Per-column and per-row bilinear cells of the GT grid (as in reference.sample_feature_target / sample_grid).

    Returns col_c0, col_dx1, col_f, row_c0, row_dy1, row_f (int32 / float32, CPU); computed in
    float64 exactly like the float64 reference.
    """
    _, gh, gw = target.grid.shape
    out = []
    for n, g in ((width, gw), (height, gh)):
        c = ((torch.arange(n, dtype=torch.float64) + 0.5) * target.scale - 0.5).clamp(0, g - 1)
        c0 = c.floor().long().clamp(0, g - 1)
        c1 = (c0 + 1).clamp(max=g - 1)
        out += [c0.int().contiguous(), (c1 - c0).int().contiguous(), (c - c0.double()).float().contiguous()]
    return tuple(out)


class _Static:
    """Non-tensor (and non-differentiable tensor) arguments of one native call."""

    def __init__(self, camvec, width, height, feats, grid, lam, ksign, ext_use_sigma, lever,
                 need_backward, stream, ext=None, nd_mask=None, feature_grad=False):
        self.ext = ext if ext is not None else _ext  # the compiled module that runs the kernels
        self.camvec, self.width, self.height = camvec, width, height
        self.feats, self.grid = feats, grid
        self.lam, self.ksign, self.ext_use_sigma = lam, ksign, ext_use_sigma
        self.lever = lever
        self.need_backward, self.stream = need_backward, stream
        self.nd_mask = nd_mask  # uint8 (H, W) or None
        self.feature_grad = feature_grad  # fvalues is an input of the Function (differentiable)

    def common(self):
        return (self.camvec, self.width, self.height, self.feats, self.grid, self.lam, self.ksign,
                self.ext_use_sigma, *self.lever)


class ForwardOutputs(NamedTuple):
    """The images of one native forward pass (order of the extension's return list)."""

    rgb: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    median: torch.Tensor
    normal: torch.Tensor
    dist: torch.Tensor
    ext: torch.Tensor
    intl: torch.Tensor
    feat: torch.Tensor
    radii: torch.Tensor
    n_contrib: torch.Tensor


def _state_type():
    """NamedTuple of the tensors the forward pass saves for the backward pass (names from the extension)."""
    names = tuple(_ext.state_names()) if _ext is not None else ()
    return namedtuple("NativeState", names) if names else None


_NativeState = _state_type()


class NativeRasterize(torch.autograd.Function):
    """Differentiable native rasterization (forward and reverse-order backward in C++/CUDA)."""

    @staticmethod
    def forward(ctx, means, quats, scales, opacity, colors, background, fvalues, static: _Static):
        bg_cpu = background.detach().to("cpu", torch.float32).contiguous()
        extra = () if static.nd_mask is None else (static.nd_mask,)
        if static.feature_grad:
            extra = (static.nd_mask if static.nd_mask is not None else torch.empty(0, dtype=torch.uint8), True)
        outs = static.ext.forward(means, quats, scales, opacity, colors, bg_cpu, *static.common(), fvalues,
                                  static.need_backward, static.stream, *extra)
        n = len(ForwardOutputs._fields)
        main = ForwardOutputs(*outs[:n])
        ctx.static = static
        ctx.bg_cpu = bg_cpu
        ctx.save_for_backward(means, quats, scales, opacity, colors, fvalues, *outs[n:])
        if static.feature_grad:
            ctx.mark_non_differentiable(main.radii, main.n_contrib)
        else:
            ctx.mark_non_differentiable(main.feat, main.radii, main.n_contrib)
        return tuple(main)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_rgb, g_alpha, g_depth, g_median, g_normal, g_dist, g_ext, g_int, g_feat, *_unused):
        st: _Static = ctx.static
        saved = ctx.saved_tensors
        means, quats, scales, opacity, colors, fvalues = saved[:6]
        state = _NativeState(*saved[6:])
        if st.nd_mask is not None:  # NDFD outputs are constant 0 outside the mask: no gradient there
            keep_px = st.nd_mask.to(torch.bool)
            g_ext = g_ext * keep_px if g_ext is not None else None
            g_int = g_int * keep_px if g_int is not None else None
        grads = [g_rgb, g_alpha, g_depth, g_median, g_normal, g_dist, g_ext, g_int]
        grads = [g if g is not None else torch.empty(0, device=means.device) for g in grads]
        d_fv = None
        if st.feature_grad:  # the feature-image overload: also d_fvalues (N, Dr)
            g_feat = g_feat if g_feat is not None else torch.empty(0, device=means.device)
            d_means, d_quats, d_scales, d_op, d_colors, d_fv = st.ext.backward(
                means, quats, scales, opacity, colors, ctx.bg_cpu, *st.common(), list(state), grads, st.stream,
                fvalues, g_feat)
        else:
            d_means, d_quats, d_scales, d_op, d_colors = st.ext.backward(
                means, quats, scales, opacity, colors, ctx.bg_cpu, *st.common(), list(state), grads, st.stream)
        d_bg = None
        if ctx.needs_input_grad[5] and g_rgb is not None:
            t_final = state.pix_state[0]  # pix_state[0] = T_final
            d_bg = (g_rgb * t_final[None].to(g_rgb.dtype)).sum(dim=(1, 2))
        return d_means, d_quats, d_scales, d_op, d_colors, d_bg, d_fv, None


def _accepts_half() -> bool:
    """Does the loaded extension take float16 unit features (builds since issue 13)?"""
    return _ext is not None and hasattr(_ext, "accepts_half_features")


def rasterize_native(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacity: torch.Tensor,
                     colors: torch.Tensor, camera: Camera, background: torch.Tensor | None = None,
                     features_unit: torch.Tensor | None = None, target: FeatureTarget | None = None,
                     ndfd: NDFDParams | None = None, feature_values: torch.Tensor | None = None,
                     ndfd_mask: torch.Tensor | None = None, *, extension=None,
                     feature_grad: bool = False) -> RenderResult:
    """Render one view with the native kernels; same arguments and result as ``rasterize_reference``.

    ndfd_mask: (H, W) bool, the pixels where the NDFD losses are evaluated (the CPU kernel skips
    the feature terms everywhere else; ``ndfd_ext`` / ``ndfd_int`` are 0 there). None: every pixel.
    ``extension``: another build of the bindings to run instead of ``fhgs_ros._native`` (the tests
    pass the CUDA-emulator module, see ``fhgs_ros.core.cuda_emu``).
    ``feature_grad``: the feature image is differentiable in ``feature_values`` and the geometry
    (as ``rasterize_reference(..., feature_grad=True)``; CPU kernels only, no CUDA version)."""
    dev, dt = means.device, means.dtype
    if _ext is None and extension is None:
        raise RuntimeError(f"fhgs_ros native rasterizer extension is not built ({_IMPORT_ERROR}); run `make setup`")
    if means.is_cuda and extension is None and not cuda_backend_available():
        _warn_once("cuda", "fhgs_ros: CUDA tensors but the native CUDA backend is not built "
                           f"({build_info()}); using the PyTorch reference rasterizer")
        from fhgs_ros.core.reference import rasterize_reference
        return rasterize_reference(means, quats, scales, opacity, colors, camera, background, features_unit,
                                   target, ndfd, feature_values, ndfd_mask, feature_grad=feature_grad)
    width, height = int(camera.width), int(camera.height)
    bg = torch.zeros(3, dtype=dt, device=dev) if background is None else background.to(dev, dt)

    def f32(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=dev, dtype=torch.float32).contiguous()

    feats = grid = torch.empty(0)
    lam, ksign, ext_use_sigma = 0.5, 20.0, True
    lever = tuple(torch.empty(0, dtype=tt) for tt in (torch.int32, torch.int32, torch.float32) * 2)
    if ndfd is not None:
        if features_unit is None or target is None:
            raise ValueError("NDFD needs features_unit and a FeatureTarget")
        fu = features_unit.detach()
        # float16 unit features (the map's storage) go to the CPU kernels as they are: the
        # subsampled NDFD path reads them directly, the bindings copy them for every other path
        half_ok = fu.dtype == torch.float16 and not means.is_cuda and extension is None and _accepts_half()
        feats = fu.to(dev).contiguous() if half_ok else f32(fu)
        grid = f32(target.grid.detach().permute(1, 2, 0))
        if feats.shape[1] != grid.shape[2]:
            raise ValueError(f"feature width {feats.shape[1]} != GT grid width {grid.shape[2]}")
        lam = float(ndfd.lam)
        ksign = -float(ndfd.k) if ndfd.sigma_increasing else float(ndfd.k)
        ext_use_sigma = bool(ndfd.ext_use_sigma)
        lever = tuple(t.to(dev) for t in lever_tables(target, width, height))
    mask_u8 = None
    if ndfd is not None and ndfd_mask is not None:
        if tuple(ndfd_mask.shape) != (height, width):
            raise ValueError(f"ndfd_mask has shape {tuple(ndfd_mask.shape)}, expected ({height}, {width})")
        mask_u8 = ndfd_mask.to(device=dev, dtype=torch.uint8).contiguous()
    feature_grad = bool(feature_grad and feature_values is not None)
    if feature_grad and (means.is_cuda or (extension is not None and extension.__name__.endswith("_cuda_emu"))):
        raise ValueError("feature_grad: the differentiable feature image has no CUDA kernel (CPU only)")
    if feature_values is None:
        fvalues = torch.empty(0)
    else:
        fvalues = f32(feature_values) if feature_grad else f32(feature_values.detach())
    diff_inputs = (means, quats, scales, opacity, colors, bg) + ((feature_values,) if feature_grad else ())
    need_backward = torch.is_grad_enabled() and any(t.requires_grad for t in diff_inputs)
    stream = torch.cuda.current_stream(dev).cuda_stream if means.is_cuda else 0
    static = _Static(camera_vector(camera), width, height, feats.to(dev), grid.to(dev), lam, ksign, ext_use_sigma,
                     lever, need_backward, stream, extension, mask_u8, feature_grad and need_backward)
    out = ForwardOutputs(*NativeRasterize.apply(f32(means), f32(quats), f32(scales), f32(opacity.reshape(-1)),
                                                f32(colors), bg, fvalues.to(dev), static))

    def back(t: torch.Tensor) -> torch.Tensor:
        return t if t.dtype == dt else t.to(dt)

    ext, intl = out.ext, out.intl
    runs_cuda_kernels = means.is_cuda or static.ext.__name__.endswith("_cuda_emu")
    if mask_u8 is not None and runs_cuda_kernels:  # the CUDA kernels evaluate every pixel
        keep_px = mask_u8.bool()
        ext, intl = ext * keep_px, intl * keep_px

    return RenderResult(
        rgb=back(out.rgb), alpha=back(out.alpha), depth=back(out.depth), depth_median=back(out.median),
        normal=back(out.normal), distortion=back(out.dist), ndfd_ext=back(ext) if ndfd is not None else None,
        ndfd_int=back(intl) if ndfd is not None else None,
        features=back(out.feat) if feature_values is not None else None, radii=out.radii, n_contrib=out.n_contrib)
