"""``fhgs-bench node``: the live mapping node over DDS, with the tiny SAM feature model.

Measures, with ``fhgs-node`` in a subprocess fed by the synthetic scene streamer (own
ROS_DOMAIN_ID, localhost):
1. keyframes per second: every frame is a keyframe (keyframe thresholds 0), frames are published
   faster than the node can map them (no drops: large queues); rate = keyframes integrated / time;
2. end-to-end latency: image published -> ``render/rgb`` of that keyframe received (frames paced
   at ``--latency-period`` so that nothing queues); median and p90;
3. peak RSS of the node process (VmHWM) with a map of 10k, 100k and 1M surfels (D = 256 frozen
   features): the node resumes from a generated map file, maps a few keyframes and optimizes;
   also its iteration time at that size.

With ``--throughput`` (default size 640x480) it instead runs the live node twice, "before" (the
previous default: NDFD evaluated at every pixel, ``mapper.ndfd_stride = 1``) and "after" (the
current defaults), each: (a) a keyframe run as in 1; (b) optimizer steps per second over
``--window`` seconds with no input (the mapper iterating on the map that run built); (c) the
keyframe-to-integrated latency as in 2 (image published -> render of the map that integrated it;
median, quartiles / IQR and p90 over ``--latency-frames`` frames per run). ``--rounds N`` repeats
the pair interleaved (before, after, after, before, ...) and pools each variant's samples.
Prints a table and writes ``bench/results/node_throughput.json``.

The feature model is SAM ``vit_tiny`` with random weights at input 256 (fhgs_ros.features.sam),
written to a temporary checkpoint, so the numbers measure the mapping system, not SAM.
Prints a table and writes ``bench/results/node.json`` (relative to the working directory).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

from fhgs_ros.bench import write_results


def _diag(cap) -> dict[str, str]:
    m = cap.last
    return {kv.key: kv.value for kv in m.status[0].values} if m is not None else {}


def _wait_diag(cap, pred, timeout: float) -> dict[str, str]:
    end = time.monotonic() + timeout
    d: dict[str, str] = {}
    while time.monotonic() < end:
        d = _diag(cap)
        if d and pred(d):
            return d
        time.sleep(0.1)
    return d


def _wait_count(cap, key: str, target: int, stall: float, timeout: float) -> tuple[dict[str, str], float]:
    """Wait until diagnostics ``key`` reaches ``target`` or stops growing for ``stall`` seconds
    (frames the node dropped, e.g. for a late pose, never arrive); returns the last diagnostics and
    the monotonic time the count last grew."""
    end = time.monotonic() + timeout
    best, since = -1, time.monotonic()
    d: dict[str, str] = {}
    while time.monotonic() < end:
        d = _diag(cap)
        v = int(d.get(key, -1)) if d else -1
        if v > best:
            best, since = v, time.monotonic()
        if v >= target or time.monotonic() - since > stall:
            return d, since
        time.sleep(0.1)
    return d, since


def _params(tmp: Path, ckpt: Path, mapper: dict | None = None, **node) -> dict:
    # reliable: best-effort sensor QoS loses fragmented 640x480 images on loopback, which is not what this measures
    base = {"pose_source": "pose", "sensor_qos": "reliable", "kf_min_translation": 0.0, "kf_min_rotation_deg": 0.0,
            "mesh_period": 0.0, "cloud_period": 0.0, "publish_period": 0.0, "diagnostics_period": 0.25, "queue_size": 64,
            "autosave_every_keyframes": 0, "autosave_period": 0.0, "resume": False}
    base.update(node)
    out = {"features": {"extractor": "sam", "sam_model": "vit_tiny", "sam_checkpoint": str(ckpt),
                        "sam_input_size": 256}, "node": base}
    if mapper:
        out["mapper"] = dict(mapper)
    return out


def _random_map(path: Path, n: int, cams, seed: int = 0) -> None:
    import torch

    from fhgs_ros.core.storage import save_map
    from fhgs_ros.core.surfels import SurfelMap

    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([3.0, 3.0, 1.0]) + torch.tensor([0.0, 0.0, 0.6])
    rgb = torch.rand(n, 3, generator=g)
    feats = torch.randn(n, 256, generator=g)
    scales = torch.full((n, 2), 0.01) * (1 + torch.rand(n, 2, generator=g))
    s = SurfelMap.create(means, rgb, feats, scales, opacity=0.5)
    save_map(path, s, {"feature_extractor": "", "keyframes": cams})


THROUGHPUT_VARIANTS = (("before", {"ndfd_stride": 1}), ("after", {}))


def live_run(a, st, diag, frames, arrivals: dict, lock, stamp0: float, window: float = 0.0) -> dict:
    """Keyframe rate, optional steps-per-second window, and image->render latency of a running node."""
    from std_srvs.srv import Trigger

    from fhgs_ros.ros.streamer import call

    out: dict = {}
    st.wait_for_subscribers(30, ("image", "camera_info", "depth", "pose"))
    with diag.cond:  # no stale diagnostics of an earlier node
        diag.msgs.clear()
    _wait_diag(diag, lambda v: True, timeout=30)
    time.sleep(1.0)
    t0 = time.monotonic()
    stamp = stamp0
    for rgb, depth, cam in frames[: a.frames]:
        stamp += 0.2
        st.publish_frame(rgb, depth, cam, stamp)
        time.sleep(a.frame_gap)
    d, t_last = _wait_count(diag, "keyframes", a.frames, stall=30.0, timeout=60 + 30 * a.frames)
    elapsed = t_last - t0
    kfs = int(d.get("keyframes", 0))
    out["keyframes_per_second"] = kfs / elapsed
    out["keyframes"] = kfs
    out["keyframe_run_seconds"] = elapsed
    out["queue_drops"] = int(d.get("queue_drops", 0))
    out["surfels_after_keyframe_run"] = int(d.get("surfels", 0))
    out["iteration_ms"] = float(d.get("iteration_ms", 0))
    out["diagnostics_after_keyframe_run"] = dict(d)  # frames_synced / frames_not_keyframes / ... say where frames went
    if window > 0:
        d0, t_a = _diag(diag), time.monotonic()
        time.sleep(window)
        d1, t_b = _diag(diag), time.monotonic()
        steps = int(d1.get("iteration", 0)) - int(d0.get("iteration", 0))
        out["steps_per_second"] = steps / (t_b - t_a)
        out["window_steps"] = steps
        out["window_iteration_ms"] = float(d1.get("iteration_ms", 0))
        out["surfels_after_window"] = int(d1.get("surfels", 0))
    call(st, Trigger, "reset", Trigger.Request(), timeout=30)
    time.sleep(1.0)
    published: dict[float, float] = {}
    for rgb, depth, cam in frames[: a.latency_frames]:
        stamp += 1.0
        published[round(stamp, 6)] = time.monotonic()
        st.publish_frame(rgb, depth, cam, stamp)
        time.sleep(a.latency_period)
    time.sleep(3.0)
    with lock:
        lat = [1000 * (arrivals[s] - t) for s, t in published.items() if s in arrivals]
    out.update(latency_stats(lat))
    out["latency_ms"] = lat
    out["live_peak_rss_mb"] = float(_diag(diag).get("peak_rss_mb", 0))
    return out


def latency_stats(lat: list[float]) -> dict:
    """Median, quartiles (IQR), p90 [ms] and sample count of image->render latencies."""
    if not lat:
        return {"latency_ms_median": None, "latency_ms_p25": None, "latency_ms_p75": None, "latency_ms_iqr": None,
                "latency_ms_p90": None, "latency_samples": 0}
    q = statistics.quantiles(lat, n=4, method="inclusive") if len(lat) > 1 else [lat[0]] * 3
    return {"latency_ms_median": statistics.median(lat), "latency_ms_p25": q[0], "latency_ms_p75": q[2],
            "latency_ms_iqr": q[2] - q[0], "latency_ms_p90": sorted(lat)[int(0.9 * (len(lat) - 1))],
            "latency_samples": len(lat)}


def summarize_throughput(rows: list[dict]) -> list[dict]:
    """Per variant over its rounds: mean kf/s and steps/s, every round's value, pooled latency statistics."""
    out = []
    for name in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == name]
        lat = [v for r in rs for v in r.get("latency_ms", [])]
        sps = [r["steps_per_second"] for r in rs if "steps_per_second" in r]
        out.append({"variant": name, "mapper": rs[0]["mapper"], "rounds": len(rs),
                    "keyframes_per_second": statistics.mean(r["keyframes_per_second"] for r in rs),
                    "keyframes_per_second_rounds": [r["keyframes_per_second"] for r in rs],
                    "steps_per_second": statistics.mean(sps) if sps else None, "steps_per_second_rounds": sps,
                    "window_steps": sum(r.get("window_steps", 0) for r in rs),
                    "iteration_ms": statistics.median(r.get("window_iteration_ms", r["iteration_ms"]) for r in rs),
                    "surfels": rs[-1].get("surfels_after_window", rs[-1]["surfels_after_keyframe_run"]),
                    **latency_stats(lat)})
    return out


def _finish_throughput(a, results: dict) -> int:
    nan = float("nan")
    lines = [(f"fhgs-bench node --throughput ({a.width}x{a.height}, synthetic stream, tiny SAM model, "
              f"{a.rounds} interleaved round(s), {a.window:.0f} s windows, {a.latency_frames} latency frames per round)"),
             "  variant  mapper               kf/s   ms/iter  steps/s  surfels  lat. med    p25    p75    IQR  n"]
    results["summary"] = summarize_throughput(results["throughput"])
    for r in results["summary"]:
        def f(k, r=r):
            v = r.get(k)
            return v if v is not None else nan
        lines.append(f"  {r['variant']:<7}  {json.dumps(r['mapper']):<18} {r['keyframes_per_second']:6.3f} "
                     f"{r['iteration_ms']:9.0f} {f('steps_per_second'):8.2f} {r['surfels']:8d} "
                     f"{f('latency_ms_median'):9.0f} {f('latency_ms_p25'):6.0f} {f('latency_ms_p75'):6.0f} "
                     f"{f('latency_ms_iqr'):6.0f} {r['latency_samples']:2d}")
    table = "\n".join(lines)
    print(table)
    results["table"] = table
    write_results(a.out, results)
    return 0


def run(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fhgs-bench node", description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--frames", type=int, default=20, help="frames for the keyframe-rate measurement")
    p.add_argument("--latency-frames", type=int, default=8)
    p.add_argument("--latency-period", type=float, default=1.5, help="[s] between frames of the latency run")
    p.add_argument("--sizes", default="10000,100000,1000000", help="map sizes for the peak-RSS runs")
    p.add_argument("--rss-frames", type=int, default=3, help="keyframes mapped on top of each loaded map")
    p.add_argument("--rss-iterations", type=int, default=5, help="optimizer iterations awaited per size")
    p.add_argument("--quick", action="store_true", help="sizes 10k,100k and fewer frames")
    p.add_argument("--throughput", action="store_true",
                   help="before/after steps per second and keyframe latency at 640x480 (see the module docstring)")
    p.add_argument("--frame-gap", type=float, default=None,
                   help="[s] between frames of the keyframe run (default 0.05; 0.5 with --throughput)")
    p.add_argument("--window", type=float, default=20.0, help="[s] steps-per-second window of --throughput")
    p.add_argument("--rounds", type=int, default=1,
                   help="--throughput: rounds of the two variants, interleaved (before, after, after, before, ...); "
                        "latencies are pooled per variant")
    p.add_argument("--sync-timeout", type=float, default=None,
                   help="[s] node.sync_timeout of the live node (default: the node's own)")
    p.add_argument("--out", type=Path, default=None, help="JSON output (default bench/results/node[_throughput].json)")
    a = p.parse_args(argv)
    if a.quick:
        a.sizes, a.frames, a.latency_frames = "10000,100000", 10, 4
    if a.throughput:
        a.width = a.width if a.width != 128 else 640
        a.height = a.height if a.height != 96 else 480
        a.frames = min(a.frames, 6)
        a.latency_period = max(a.latency_period, 6.0)
    if a.frame_gap is None:
        a.frame_gap = 0.5 if a.throughput else 0.05
    if a.out is None:
        a.out = Path("bench/results/node_throughput.json" if a.throughput else "bench/results/node.json")

    live_node = {} if a.sync_timeout is None else {"sync_timeout": a.sync_timeout}

    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    from fhgs_ros.features.sam import save_random_checkpoint
    from fhgs_ros.ros import conversions as conv
    from fhgs_ros.ros.harness import NodeProcess, Spinner, free_domain_id, write_params
    from fhgs_ros.ros.streamer import LATCHED, Capture, SceneStreamer, synthetic_frames

    tmp = Path(tempfile.mkdtemp(prefix="fhgs_bench_node_"))
    ckpt = save_random_checkpoint(tmp / "tiny_sam.pth", "vit_tiny", input_size=256, seed=0)
    frames = synthetic_frames(a.width, a.height, max(a.frames, a.latency_frames, a.rss_frames), seed=0)
    dom = free_domain_id()
    results: dict = {"width": a.width, "height": a.height, "feature_model": "sam vit_tiny (random weights) @256",
                     "machine": platform.platform(), "python": platform.python_version()}
    sp = Spinner(dom)
    st = sp.add(SceneStreamer(context=sp.context))
    diag = Capture(st, DiagnosticArray, "/diagnostics")
    arrivals: dict[float, float] = {}
    renders_lock = threading.Lock()

    def on_render(msg):
        with renders_lock:
            arrivals.setdefault(round(conv.stamp_to_sec(msg.header.stamp), 6), time.monotonic())

    st.create_subscription(Image, "render/rgb", on_render, LATCHED)
    try:
        # ---------------------------------------------------------------- 1 + 2: live node
        if a.throughput:
            rows = []
            order = []
            for k in range(max(1, a.rounds)):  # ABBA...: drifts of the machine load hit both variants alike
                order += list(THROUGHPUT_VARIANTS if k % 2 == 0 else THROUGHPUT_VARIANTS[::-1])
            for name, mapper in order:
                k = len(rows)
                node = NodeProcess(write_params(tmp / f"live_{name}_{k}.yaml", _params(tmp, ckpt, mapper, **live_node)),
                                   tmp / f"live_{name}_{k}.log", dom)
                try:
                    node.wait_ready(120)
                    row = {"variant": name, "mapper": mapper, **live_run(a, st, diag, frames, arrivals, renders_lock,
                                                                           stamp0=1000.0 + 10000 * len(rows),
                                                                           window=a.window)}
                finally:
                    node.stop()
                rows.append(row)
                print(f"  {name}: kf/s {row['keyframes_per_second']:.3f}, steps/s {row.get('steps_per_second', 0):.2f}, "
                      f"latency median {row.get('latency_ms_median') or float('nan'):.0f} ms "
                      f"({row['latency_samples']} samples)", flush=True)
            results["throughput"] = rows
            return _finish_throughput(a, results)
        node = NodeProcess(write_params(tmp / "live.yaml", _params(tmp, ckpt, **live_node)), tmp / "live.log", dom)
        try:
            node.wait_ready(120)
            results.update(live_run(a, st, diag, frames, arrivals, renders_lock, stamp0=1000.0))
        finally:
            node.stop()
        stamp = 1000.0 + 100 * (a.frames + a.latency_frames)
        # ---------------------------------------------------------------- 3: peak RSS vs map size
        rss = []
        cams = [c for _, _, c in frames]
        for n in [int(s) for s in a.sizes.split(",") if s.strip()]:
            mp = tmp / f"map_{n}.safetensors"
            t = time.monotonic()
            _random_map(mp, n, cams)
            gen_s = time.monotonic() - t
            node = NodeProcess(write_params(tmp / f"rss_{n}.yaml", _params(tmp, ckpt, map_path=str(mp), resume=True,
                                                                            queue_size=8)), tmp / f"rss_{n}.log", dom)
            row = {"surfels": n, "map_file_mb": mp.stat().st_size / 1e6, "map_generation_s": gen_s}
            try:
                node.wait_ready(600)
                st.wait_for_subscribers(30, ("image", "camera_info", "depth", "pose"))
                time.sleep(1.0)
                d0 = _wait_diag(diag, lambda v: int(v.get("surfels", 0)) >= n, timeout=60)
                it0 = int(d0.get("iteration", 0))
                for rgb, depth, cam in frames[: a.rss_frames]:
                    stamp += 0.5
                    st.publish_frame(rgb, depth, cam, stamp)
                    time.sleep(0.3)
                d = _wait_diag(diag, lambda v: int(v["keyframes"]) >= a.rss_frames
                               and int(v["iteration"]) >= it0 + a.rss_iterations, timeout=900)
                row.update(peak_rss_mb=float(d.get("peak_rss_mb", 0)), rss_mb=float(d.get("rss_mb", 0)),
                           iteration_ms=float(d.get("iteration_ms", 0)), iterations=int(d.get("iteration", 0)) - it0,
                           surfels_end=int(d.get("surfels", 0)))
            except RuntimeError as exc:
                row["error"] = str(exc)[:500]
            finally:
                node.stop()
                mp.unlink(missing_ok=True)
            rss.append(row)
        results["peak_rss"] = rss
    finally:
        sp.close()

    lines = ["fhgs-bench node (fhgs-node over DDS, synthetic stream, tiny SAM model)",
             f"  {a.width}x{a.height} images",
             f"  keyframes per second   : {results.get('keyframes_per_second', 0):.2f} "
             f"({results.get('keyframes')} keyframes in {results.get('keyframe_run_seconds', 0):.1f} s, "
             f"{results.get('queue_drops')} drops, {results.get('iteration_ms', 0):.0f} ms/iteration)",
             f"  latency image->render  : median {results.get('latency_ms_median') or float('nan'):.0f} ms, "
             f"p90 {results.get('latency_ms_p90') or float('nan'):.0f} ms ({results.get('latency_samples')} frames)",
             "  surfels    peak RSS MB   RSS MB   ms/iteration   map file MB"]
    for r in results.get("peak_rss", []):
        if "error" in r:
            lines.append(f"  {r['surfels']:>8}   error: {r['error'][:80]}")
        else:
            lines.append(f"  {r['surfels']:>8}   {r['peak_rss_mb']:>11.0f}   {r['rss_mb']:>6.0f}   "
                         f"{r['iteration_ms']:>12.0f}   {r['map_file_mb']:>11.0f}")
    table = "\n".join(lines)
    print(table)
    results["table"] = table
    write_results(a.out, results)
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(run())
