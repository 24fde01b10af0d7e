"""CI check: the CUDA backend (fhgs_ros/cuda/raster_cuda.cu) compiles for every target arch.

No GPU is needed. Each architecture of ``setup_ext.DEFAULT_ARCHS`` (sm_75, sm_80, sm_86, sm_89,
sm_90) is compiled in its own nvcc process (two at a time, ptxas at -O1 to keep the test short;
the package build itself uses -O3 for all of them in one nvcc call). Skipped only when nvcc is
not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import setup_ext  # noqa: E402

NVCC = setup_ext.find_nvcc()
ARCHS = setup_ext.DEFAULT_ARCHS.split(";")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not installed: the CUDA backend cannot be compiled here")


def test_default_archs_are_the_ci_set():
    assert ARCHS == ["75", "80", "86", "89", "90"]
    assert setup_ext.cuda_archs() == ARCHS or os.environ.get("FHGS_CUDA_ARCHS")


def test_cuda_sources_are_pure_cuda():
    """The .cu must not include torch headers (it is linked into a CppExtension of a CPU torch)."""
    src = open(os.path.join(setup_ext.SRC, "raster_cuda.cu")).read()
    for bad in ("torch/", "ATen/", "c10/"):
        assert bad not in src


def _compile(arch: str, tmp: str) -> tuple[str, int, str]:
    obj = os.path.join(tmp, f"raster_cuda_sm{arch}.o")
    cmd = setup_ext.nvcc_command(setup_ext._resolve_nvcc(NVCC), os.path.join(setup_ext.SRC, "raster_cuda.cu"), obj,
                                 [arch], opt="-O1")
    cmd = [c for c in cmd if c not in ("--threads", "0")] + ["-Xptxas", "-O1", "-Werror", "all-warnings"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    ok = proc.returncode == 0 and os.path.getsize(obj) > 0
    return arch, 0 if ok else (proc.returncode or 1), proc.stderr[-4000:]


@pytest.mark.timeout(900)
def test_compiles_for_all_archs(tmp_path):
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda a: _compile(a, str(tmp_path)), ARCHS))
    failed = [(a, err) for a, rc, err in results if rc != 0]
    assert not failed, "nvcc failed for " + ", ".join(f"sm_{a}:\n{err}" for a, err in failed)
