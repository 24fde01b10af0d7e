"""The CUDA rasterizer executed on the CPU: a test backend (issue 15).

``fhgs_ros._native_cuda_emu`` (built by ``setup_ext.py`` next to ``fhgs_ros._native``) is the
unchanged ``fhgs_ros/cuda/raster_cuda.cu`` compiled by the host C++ compiler against the CPU
execution harness ``fhgs_ros/cuda/emu/cuda_emu.h``: every CUDA thread is a fiber, ``__syncthreads``
is a real barrier, warp shuffles exchange values among the 32 lanes, ``atomicAdd`` is atomic,
shared memory is per block and undefined (0xFF bytes) when a block starts. CPU tensors go through
exactly the CUDA host code and kernels of the GPU build. Slow (each thread switch is a context
switch); meant for the tests, never for mapping.

``rasterize_cuda_emulated`` has the signature and result of ``reference.rasterize_reference``.
``schedule("random", seed)`` resumes the threads of a block in a seeded random order redrawn at
every barrier (``"uniform"``: a random pick at every scheduling point), and shuffles the block
order: results may then differ only by float reassociation of the atomics; a missing barrier or a
shared-memory race changes them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from fhgs_ros.core import native  # imports torch first: the extension links against it

log = logging.getLogger(__name__)

try:
    from fhgs_ros import _native_cuda_emu as _emu  # type: ignore[attr-defined]
    _IMPORT_ERROR: Exception | None = None
except Exception as exc:  # noqa: BLE001 - any load failure means "not available"
    _emu = None
    _IMPORT_ERROR = exc


@dataclass(frozen=True)
class EmuStats:
    """Counters of the harness since the last reset."""

    launches: int
    blocks: int
    threads: int
    barriers: int  # completed block-wide barriers
    warp_ops: int  # completed warp-wide operations (shuffles, votes)
    resumes: int  # fiber resumptions (scheduling points)
    schedule_hash: int  # FNV-1a hash of the order in which threads were resumed


def available() -> bool:
    """True when the emulator extension was built and loads."""
    return _emu is not None


def import_error() -> Exception | None:
    return _IMPORT_ERROR


def module():
    """The compiled emulator module (raises when it is not built)."""
    if _emu is None:
        raise RuntimeError(f"fhgs_ros._native_cuda_emu is not built ({_IMPORT_ERROR}); run `make setup`")
    return _emu


SCHEDULES = ("sequential", "random", "uniform")


def configure(mode: str = "sequential", seed: int = 0, poison_shared: bool = True) -> None:
    """Thread scheduling of the harness (``cuda/emu/cuda_emu.h``, enum Schedule).

    ``"sequential"``: FIFO resume order. ``"random"``: seeded random priorities redrawn at every
    block barrier (a random key per warp and per lane; the runnable thread of highest priority
    runs, so warps run ahead of each other in a random order). ``"uniform"``: a runnable thread
    picked uniformly at random at every scheduling point. Both random modes shuffle the blocks.
    ``poison_shared``: fill shared memory with 0xFF bytes at every block start."""
    if mode not in SCHEDULES:
        raise ValueError(f"unknown schedule {mode!r}; one of {SCHEDULES}")
    module().emu_configure(SCHEDULES.index(mode), int(seed) & 0x7FFFFFFFFFFFFFFF, bool(poison_shared))


@contextlib.contextmanager
def schedule(mode: str, seed: int = 0) -> Iterator[None]:
    """Run the enclosed calls with the given scheduling mode, then restore sequential order."""
    configure(mode, seed)
    try:
        yield
    finally:
        configure("sequential", 0)


def stats(reset: bool = False) -> EmuStats:
    """The harness counters (optionally resetting them)."""
    v = module().emu_stats(bool(reset))
    return EmuStats(*v[:6], schedule_hash=v[6] & 0xFFFFFFFFFFFFFFFF)


def set_poison(on: bool) -> None:
    """NaN-fill every buffer the bindings allocate (as fhgs_ros._native.set_poison)."""
    module().set_poison(bool(on))


def rasterize_cuda_emulated(means, quats, scales, opacity, colors, camera, background=None, features_unit=None,
                            target=None, ndfd=None, feature_values=None):
    """``rasterize_reference``'s call, run by the CUDA kernels on the CPU harness (CPU tensors)."""
    return native.rasterize_native(means, quats, scales, opacity, colors, camera, background, features_unit, target,
                                   ndfd, feature_values, extension=module())
