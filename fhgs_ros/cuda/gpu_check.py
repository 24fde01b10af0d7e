#!/usr/bin/env python3
"""GPU check of the native CUDA rasterizer, in one go, writing one JSON (issue 15).

On a machine with an NVIDIA GPU, from the repository root, in a venv whose torch is a CUDA build
(see fhgs_ros/cuda/README.md, "On a GPU machine")::

    python fhgs_ros/cuda/gpu_check.py          # writes bench/results/gpu_check.json

Steps (each recorded in the JSON; a failing step does not stop the later ones, and the JSON is
always written):

1. ``environment``: GPU (nvidia-smi), driver, torch and its CUDA version, nvcc, compute capability;
2. ``build``: ``python setup.py build_ext --inplace`` with ``FHGS_CUDA_ARCHS`` set to the GPU's
   capability (unless already set): the real CUDA backend in ``fhgs_ros._native`` and the CPU
   harness build ``fhgs_ros._native_cuda_emu``; then checks that the CUDA backend loads and sees
   the GPU;
3. ``tests``: pytest on ``test_cuda_native.py`` (CUDA vs CPU native and vs the reference),
   ``test_cuda_emulated.py`` and ``test_native_equivalence.py``, with a JUnit report;
4. ``bench``: one training iteration (render + loss over every output + backward) of the CUDA
   kernels and of the native CPU kernels on the benchmark room scene (``fhgs_ros.bench.raster``)
   at 640x480, D = 32 and 256, with NDFD and without; medians over ``--repeats`` after a warm-up
   (CUDA timed with ``torch.cuda.synchronize``), plus the CUDA-vs-CPU relative differences of the
   outputs and gradients on that scene.

Exit status 0 only when every step succeeded. ``--skip-build`` reuses the built extension.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTS = ["test/test_cuda_native.py", "test/test_cuda_emulated.py", "test/test_native_equivalence.py"]


def sh(cmd: list[str], timeout: float, env: dict | None = None, log: str | None = None) -> dict:
    """Run a command; returns rc, seconds and the output tail (full output to ``log``)."""
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=timeout, check=False)
        out, rc = p.stdout, p.returncode
    except subprocess.TimeoutExpired as exc:
        raw = exc.stdout or ""
        out, rc = (raw.decode(errors="replace") if isinstance(raw, bytes) else raw), 124
    except OSError as exc:
        out, rc = str(exc), 127
    if log:
        with open(log, "w") as fh:
            fh.write(out)
    return {"cmd": " ".join(cmd), "rc": rc, "seconds": round(time.time() - t0, 2), "tail": out[-3000:]}


# ------------------------------------------------------------------------------------------- steps
def environment() -> dict:
    env: dict = {"host": platform.node(), "python": sys.version.split()[0], "cpus": os.cpu_count()}
    smi = shutil.which("nvidia-smi")
    if smi:
        r = sh([smi, "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"], 60)
        env["nvidia_smi"] = r["tail"].strip() if r["rc"] == 0 else f"rc={r['rc']}: {r['tail'][-300:]}"
    else:
        env["nvidia_smi"] = None
    try:
        import torch
        env["torch"] = torch.__version__
        env["torch_cuda"] = torch.version.cuda
        env["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
            major, minor = torch.cuda.get_device_capability(0)
            env["capability"] = f"{major}{minor}"
        env["torch_threads"] = torch.get_num_threads()
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        env["torch_error"] = repr(exc)
    sys.path.insert(0, ROOT)
    try:
        import setup_ext
        nvcc = setup_ext.find_nvcc()
        env["nvcc"] = nvcc
        if nvcc:
            env["nvcc_version"] = sh([nvcc, "--version"], 60)["tail"].strip().splitlines()[-1:]
    except Exception as exc:  # noqa: BLE001
        env["nvcc_error"] = repr(exc)
    return env


def build(env_info: dict, timeout: float, logdir: str) -> dict:
    env = dict(os.environ)
    env.pop("FHGS_NO_CUDA", None)
    if not env.get("FHGS_CUDA_ARCHS") and env_info.get("capability"):
        env["FHGS_CUDA_ARCHS"] = env_info["capability"]
    r = sh([sys.executable, "setup.py", "build_ext", "--inplace"], timeout, env, os.path.join(logdir, "build.log"))
    r["archs"] = env.get("FHGS_CUDA_ARCHS", "default")
    probe = ("import json, torch; from fhgs_ros.core import native, cuda_emu; "
             "print(json.dumps({'build_info': native.build_info(), 'cuda_built': native.cuda_built(), "
             "'cuda_backend_available': native.cuda_backend_available(), "
             "'cuda_devices': native._ext.cuda_devices() if native.native_available() else None, "
             "'cuda_emu': cuda_emu.available()}))")
    p = sh([sys.executable, "-c", probe], 300)
    try:
        r["probe"] = json.loads(p["tail"].strip().splitlines()[-1])
    except (ValueError, IndexError):
        r["probe"] = {"error": p["tail"][-1000:]}
    r["ok"] = r["rc"] == 0 and bool(r["probe"].get("cuda_backend_available"))
    return r


def tests(timeout: float, logdir: str) -> dict:
    xml = os.path.join(logdir, "pytest.xml")
    r = sh([sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", f"--junitxml={xml}", *TESTS],
           timeout, log=os.path.join(logdir, "pytest.log"))
    summary = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "failed": [], "skipped_names": []}
    try:
        root = ET.parse(xml).getroot()
        for case in root.iter("testcase"):
            summary["tests"] += 1
            name = f"{case.get('classname')}::{case.get('name')}"
            if case.find("failure") is not None:
                summary["failures"] += 1
                summary["failed"].append(name)
            elif case.find("error") is not None:
                summary["errors"] += 1
                summary["failed"].append(name)
            elif case.find("skipped") is not None:
                summary["skipped"] += 1
                summary["skipped_names"].append(name)
    except (ET.ParseError, OSError) as exc:
        summary["junit_error"] = repr(exc)
    r.update(summary)
    # a skipped CUDA test means the CUDA backend did not run: not a pass on a GPU machine
    r["cuda_tests_skipped"] = sum("test_cuda_native" in n for n in summary["skipped_names"])
    r["ok"] = r["rc"] == 0 and summary["tests"] > 0 and r["cuda_tests_skipped"] == 0
    return r


def bench(args, logdir: str) -> dict:
    """Runs this file with --bench-only in a fresh interpreter (the just-built extension)."""
    out = os.path.join(logdir, "bench.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--bench-only", "--bench-out", out, "--surfels",
           str(args.surfels), "--repeats", str(args.repeats), "--dims", args.dims, "--size", args.size]
    r = sh(cmd, args.bench_timeout, log=os.path.join(logdir, "bench.log"))
    try:
        with open(out) as fh:
            r["results"] = json.load(fh)
    except (OSError, ValueError) as exc:
        r["results"] = {"error": repr(exc)}
    r["ok"] = r["rc"] == 0 and "records" in r["results"]
    return r


# ------------------------------------------------------------------------------------- the benchmark
def bench_only(args) -> int:
    sys.path.insert(0, ROOT)
    import torch

    from fhgs_ros.bench.raster import PARAMS, bench_scene, work_counts
    from fhgs_ros.core import native
    from fhgs_ros.core.raster_types import FeatureTarget, NDFDParams

    if not native.cuda_backend_available():
        raise SystemExit(f"CUDA backend not available: {native.build_info()}, cuda={torch.cuda.is_available()}")
    width, height = (int(v) for v in args.size.lower().split("x"))

    def to(scene, dev):
        s = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in scene.items()}
        s["target"] = FeatureTarget(scene["target"].grid.to(dev), scene["target"].scale)
        return s

    def iteration(scene, ndfd: bool, sync: bool):
        ps = [scene[k].detach().clone().requires_grad_(True) for k in PARAMS]
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        r = native.rasterize_native(*ps, scene["camera"], None, scene["features_unit"] if ndfd else None,
                                    scene["target"] if ndfd else None, NDFDParams() if ndfd else None)
        loss = r.rgb.sum() + r.alpha.sum() + r.depth.sum() + r.normal.sum() + 100.0 * r.distortion.sum()
        if ndfd:
            loss = loss + r.ndfd_ext.mean() + r.ndfd_int.mean()
        loss.backward()
        if sync:
            torch.cuda.synchronize()
        return time.perf_counter() - t0, r, [p.grad for p in ps]

    def timed(scene, ndfd, sync):
        iteration(scene, ndfd, sync)  # warm-up
        ts = [iteration(scene, ndfd, sync)[0] for _ in range(args.repeats)]
        return 1000 * statistics.median(ts), 1000 * min(ts)

    def rel(a, b):
        a, b = a.detach().double().cpu(), b.detach().double().cpu()
        return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) if b.numel() else 0.0

    records = []
    for dim in (int(d) for d in args.dims.split(",")):
        cpu_scene = bench_scene(width, height, args.surfels, dim)
        gpu_scene = to(cpu_scene, "cuda")
        rec = {"width": width, "height": height, "surfels": args.surfels, "dim": dim, "repeats": args.repeats,
               "counts": work_counts(cpu_scene), "cpu_threads": torch.get_num_threads()}
        for ndfd in (True, False):
            tag = "ndfd" if ndfd else "rgb"
            rec[f"cuda_{tag}_ms"], rec[f"cuda_{tag}_ms_min"] = timed(gpu_scene, ndfd, True)
            rec[f"cpu_{tag}_ms"], rec[f"cpu_{tag}_ms_min"] = timed(cpu_scene, ndfd, False)
            rec[f"speedup_{tag}"] = rec[f"cpu_{tag}_ms"] / rec[f"cuda_{tag}_ms"]
        _, rc, gc = iteration(cpu_scene, True, False)
        _, rg, gg = iteration(gpu_scene, True, True)
        rec["cuda_vs_cpu_rel"] = {name: rel(getattr(rg, name), getattr(rc, name))
                                  for name in ("rgb", "alpha", "depth", "normal", "distortion", "ndfd_ext", "ndfd_int")}
        rec["cuda_vs_cpu_rel"].update({f"grad_{k}": rel(a, b) for k, a, b in zip(PARAMS, gg, gc)})
        rec["n_contrib_equal"] = bool(torch.equal(rg.n_contrib.cpu(), rc.n_contrib))
        records.append(rec)
        print(json.dumps({k: v for k, v in rec.items() if k != "cuda_vs_cpu_rel"}), flush=True)
    with open(args.bench_out, "w") as fh:
        json.dump({"device": torch.cuda.get_device_name(0), "build": native.build_info(), "records": records}, fh,
                  indent=2)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join("bench", "results", "gpu_check.json"))
    ap.add_argument("--logdir", default=os.path.join("build", "gpu_check"))
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--dims", default="32,256")
    ap.add_argument("--surfels", type=int, default=100000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--build-timeout", type=float, default=1800)
    ap.add_argument("--test-timeout", type=float, default=1800)
    ap.add_argument("--bench-timeout", type=float, default=1800)
    ap.add_argument("--bench-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bench-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.bench_only:
        return bench_only(args)

    logdir = os.path.join(ROOT, args.logdir)
    os.makedirs(logdir, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    report: dict = {"check": "fhgs_ros gpu_check", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    git = sh(["git", "rev-parse", "HEAD"], 30)
    report["commit"] = git["tail"].strip() if git["rc"] == 0 else None
    steps = [("environment", lambda: environment())]
    if not args.skip_build:
        steps.append(("build", lambda: build(report["environment"], args.build_timeout, logdir)))
    steps += [("tests", lambda: tests(args.test_timeout, logdir)), ("bench", lambda: bench(args, logdir))]
    ok = True
    for name, fn in steps:
        print(f"gpu_check: {name} ...", flush=True)
        try:
            report[name] = fn()
        except Exception:  # noqa: BLE001 - recorded; the next steps still run
            report[name] = {"ok": False, "exception": traceback.format_exc()}
        ok = ok and report[name].get("ok", True)
        with open(args.out, "w") as fh:  # written after every step: a crash keeps what was done
            json.dump(report, fh, indent=2)
    report["ok"] = ok
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=2)
    print(f"gpu_check: {'OK' if ok else 'FAILED'}; wrote {args.out} (logs in {logdir})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
