"""Native rasterizer extension build (issue 3): ``fhgs_ros._native``.

- CPU backend: ``fhgs_ros/cuda/raster_cpu.cpp`` (plain C++ + OpenMP, -O3) and the torch bindings
  ``fhgs_ros/cuda/bindings.cpp`` (the only translation unit that includes torch), built as a
  ``CppExtension`` against the installed (CPU) torch.
- CUDA backend: whenever ``nvcc`` is found (``$CUDA_HOME/bin/nvcc``, ``/usr/local/cuda/bin/nvcc`` or on
  ``PATH``), ``fhgs_ros/cuda/raster_cuda.cu`` (pure CUDA, no torch headers) is compiled to an object
  for the architectures in ``FHGS_CUDA_ARCHS`` (default ``75;80;86;89;90``; ``sm_`` prefixes
  allowed) and linked into the same extension with the static CUDA runtime; ``FHGS_WITH_CUDA`` is
  defined for the bindings. No GPU is needed to build; one is needed to run it.
- ``FHGS_NO_CUDA=1`` forces a CPU-only build.
- Test backend ``fhgs_ros._native_cuda_emu`` (issue 15): the same ``raster_cuda.cu`` compiled by
  the host C++ compiler against the CPU execution harness ``fhgs_ros/cuda/emu/cuda_emu.h`` (CUDA
  threads as fibers, real barriers, warp shuffles, atomics), with the bindings built with
  ``FHGS_CUDA_EMU``: CPU tensors run through the CUDA kernels. Needs only g++; it is what lets CI
  execute the CUDA kernels (``test/test_cuda_emulated.py``). ``FHGS_NO_CUDA_EMU=1`` skips it.

When nvcc is missing the build prints one line and goes on CPU-only; at run time
``fhgs_ros.core.native`` logs one line for a missing backend and never crashes the import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "fhgs_ros", "cuda")
DEFAULT_ARCHS = "75;80;86;89;90"


def find_nvcc() -> str | None:
    """Path of nvcc, or None."""
    if os.environ.get("FHGS_NO_CUDA", "") not in ("", "0"):
        return None
    cands = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            cands.append(os.path.join(os.environ[var], "bin", "nvcc"))
    cands.append("/usr/local/cuda/bin/nvcc")
    w = shutil.which("nvcc")
    if w:
        cands.append(w)
    for c in cands:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def cuda_archs() -> list[str]:
    """Compute capabilities from FHGS_CUDA_ARCHS, e.g. ['75', '80', ...]."""
    raw = os.environ.get("FHGS_CUDA_ARCHS", DEFAULT_ARCHS)
    out = []
    for tok in raw.replace(",", ";").split(";"):
        tok = tok.strip().lower().replace("sm_", "").replace("compute_", "").replace(".", "")
        if tok:
            out.append(tok)
    return out


def nvcc_command(nvcc: str, src: str, obj: str, archs: list[str], opt: str = "-O3") -> list[str]:
    """The nvcc command compiling one pure-CUDA source to a relocatable host object."""
    cmd = [nvcc, "-c", src, "-o", obj, opt, "-std=c++17", "-Xcompiler", "-fPIC", "--threads", "0",
           "-I", SRC]
    for a in archs:
        cmd += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    if archs:  # PTX of the newest arch for forward compatibility
        cmd += ["-gencode", f"arch=compute_{archs[-1]},code=compute_{archs[-1]}"]
    return cmd


def cuda_lib_dir(nvcc: str) -> str | None:
    root = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    for sub in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib")):
        d = os.path.join(root, sub)
        if os.path.isfile(os.path.join(d, "libcudart_static.a")):
            return d
    return None


def _resolve_nvcc(nvcc: str) -> str:
    """Follow wrapper scripts (e.g. /usr/local/bin/nvcc -> exec /usr/local/cuda-13.0/bin/nvcc)."""
    real = os.path.realpath(nvcc)
    try:
        with open(real, "rb") as fh:
            head = fh.read(512)
        if head.startswith(b"#!"):
            for tok in head.decode(errors="ignore").split():
                if tok.endswith("/nvcc") and os.path.isfile(tok) and tok != real:
                    return tok
    except OSError:
        pass
    return real


def native_extensions():
    """Return (cmdclass, ext_modules) for setup()."""
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    sources = [os.path.relpath(os.path.join(SRC, f), HERE) for f in ("bindings.cpp", "raster_cpu.cpp", "raster_cpu_baseline.cpp")]
    cxx = ["-O3", "-fopenmp", "-std=c++17"]
    if os.environ.get("FHGS_DEBUG_INFO", "") not in ("", "0"):  # for profiling with perf
        cxx.append("-g")
    link = ["-fopenmp"]
    extra_objects: list[str] = []
    libraries: list[str] = []
    library_dirs: list[str] = []
    nvcc = find_nvcc()
    cuda_obj = None
    if nvcc:
        nvcc = _resolve_nvcc(nvcc)
        libdir = cuda_lib_dir(nvcc)
        if libdir is None:
            print("fhgs_ros: nvcc found but no libcudart_static.a next to it; building the CPU backend only")
            nvcc = None
        else:
            cuda_obj = os.path.join(HERE, "build", "fhgs_cuda", "raster_cuda.o")
            extra_objects.append(cuda_obj)
            libraries += ["cudart_static", "rt", "dl", "pthread"]
            library_dirs.append(libdir)
            cxx.append("-DFHGS_WITH_CUDA")
    else:
        print("fhgs_ros: nvcc not found; building the native CPU backend only (no CUDA backend)")

    ext = CppExtension(
        name="fhgs_ros._native",
        sources=sources,
        include_dirs=[SRC],
        extra_compile_args={"cxx": cxx},
        extra_link_args=link,
        extra_objects=extra_objects,
        libraries=libraries,
        library_dirs=library_dirs,
        depends=[os.path.relpath(os.path.join(SRC, f), HERE) for f in ("raster_math.h", "raster_api.h", "raster_cuda.cu", "raster_cpu_rgb.h")],
    )

    exts = [ext]
    emu = cuda_emu_extension(CppExtension)
    if emu is not None:
        exts.append(emu)

    class BuildNative(BuildExtension):
        def build_extensions(self):
            if cuda_obj is not None:
                self._build_cuda_object(cuda_obj)
            super().build_extensions()

        def _build_cuda_object(self, obj: str) -> None:
            src = os.path.join(SRC, "raster_cuda.cu")
            deps = [src, os.path.join(SRC, "raster_math.h"), os.path.join(SRC, "raster_api.h"), __file__]
            archs = cuda_archs()
            stamp = obj + ".archs"
            fresh = (os.path.exists(obj) and os.path.exists(stamp)
                     and all(os.path.getmtime(obj) >= os.path.getmtime(d) for d in deps)
                     and open(stamp).read() == ";".join(archs))
            if fresh:
                return
            os.makedirs(os.path.dirname(obj), exist_ok=True)
            cmd = nvcc_command(nvcc, src, obj, archs)
            print("fhgs_ros: compiling the CUDA backend for sm_" + ", sm_".join(archs), flush=True)
            subprocess.check_call(cmd, stdout=sys.stdout, stderr=sys.stderr)
            with open(stamp, "w") as fh:
                fh.write(";".join(archs))

    return {"build_ext": BuildNative.with_options(no_python_abi_suffix=False)}, exts


def cuda_emu_extension(CppExtension):
    """The CUDA-emulator test extension ``fhgs_ros._native_cuda_emu``, or None (FHGS_NO_CUDA_EMU=1)."""
    if os.environ.get("FHGS_NO_CUDA_EMU", "") not in ("", "0"):
        return None
    emu = os.path.join(SRC, "emu")

    def rel(*p: str) -> str:
        return os.path.relpath(os.path.join(*p), HERE)

    return CppExtension(
        name="fhgs_ros._native_cuda_emu",
        sources=[rel(emu, "bindings_emu.cpp"), rel(emu, "raster_cuda_emu.cpp")],
        include_dirs=[SRC, emu],  # emu/ provides <cuda_runtime.h> and <cub/...> for the host compiler
        extra_compile_args={"cxx": ["-O2", "-std=c++17", "-DFHGS_WITH_CUDA", "-DFHGS_CUDA_EMU", "-Wno-psabi",
                                   "-Wno-maybe-uninitialized"]},
        depends=[rel(SRC, f) for f in ("raster_math.h", "raster_api.h", "raster_cuda.cu", "bindings.cpp")]
        + [rel(emu, "cuda_emu.h"), rel(emu, "cuda_runtime.h"), rel(emu, "cub", "device", "device_radix_sort.cuh")],
    )
