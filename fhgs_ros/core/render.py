"""The one public render entry point: picks a backend and evaluates SH colours.

Backends share one signature (see ``reference.rasterize_reference``):
- ``"reference"``: pure PyTorch, autograd backward (tests' ground truth);
- ``"native"``: C++/OpenMP CPU kernel, or the CUDA kernel when tensors are on a GPU;
- ``"auto"``: native when it is built, else reference.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from fhgs_ros.core.camera import Camera
from fhgs_ros.core.raster_types import FeatureTarget, NDFDParams, RenderResult
from fhgs_ros.core.reference import rasterize_reference
from fhgs_ros.core.sh import eval_sh
from fhgs_ros.core.surfels import SurfelMap

log = logging.getLogger(__name__)
_native_fn: Callable | None = None
_native_checked = False


def native_rasterizer() -> Callable | None:
    """The native rasterize function, or None (logged once) when the extension is not built."""
    global _native_fn, _native_checked
    if not _native_checked:
        _native_checked = True
        try:
            from fhgs_ros.core.native import rasterize_native, native_available
            if native_available():
                _native_fn = rasterize_native
            else:
                log.warning("fhgs_ros: native rasterizer extension not built; using the PyTorch reference")
        except ImportError as exc:
            log.warning("fhgs_ros: native rasterizer unavailable (%s); using the PyTorch reference", exc)
    return _native_fn


def rasterizer(backend: str = "auto") -> Callable:
    if backend == "reference":
        return rasterize_reference
    fn = native_rasterizer()
    if fn is None:
        if backend == "native":
            raise RuntimeError("native rasterizer requested but the extension is not built (run `make setup`)")
        return rasterize_reference
    return fn


def surfel_colors(surfels: SurfelMap, camera: Camera, sh_degree: int | None = None) -> torch.Tensor:
    """(N, 3) view-dependent RGB of each surfel for this camera."""
    deg = surfels.sh_degree if sh_degree is None else sh_degree
    if deg == 0:
        return eval_sh(0, surfels.sh_dc, surfels.means)
    dirs = surfels.means - camera.center.to(surfels.means.device)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    return eval_sh(deg, surfels.sh_dc, dirs, surfels.sh_rest)


def render(surfels: SurfelMap, camera: Camera, *, background: torch.Tensor | None = None,
           target: FeatureTarget | None = None, ndfd: NDFDParams | None = None, render_features: bool = False,
           backend: str = "auto", sh_degree: int | None = None,
           ndfd_mask: torch.Tensor | None = None) -> RenderResult:
    """Render ``surfels`` from ``camera``; NDFD losses when ``ndfd`` and ``target`` are given.

    render_features: also alpha-blend the raw frozen features into a (D, H, W) image.
    ndfd_mask: (H, W) bool, evaluate the NDFD losses only at these pixels (see ``core/ndfd_sampling.py``).
    """
    fn = rasterizer(backend)
    colors = surfel_colors(surfels, camera, sh_degree)
    return fn(surfels.means, surfels.quats, surfels.scales, surfels.opacity, colors, camera, background,
              surfels.features_unit16 if ndfd is not None else None, target if ndfd is not None else None, ndfd,
              surfels.features_raw.float() if render_features else None,
              **({"ndfd_mask": ndfd_mask} if ndfd_mask is not None and ndfd is not None else {}))
