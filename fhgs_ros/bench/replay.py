"""``fhgs-bench replay``: messages/s and keyframes/s of ``fhgs-replay --fast`` on the synthetic bag.

Writes the synthetic scene (``fhgs_ros.datasets.synthetic``; 128x96, 40 frames by default, like
the demo) as a ROS 2 bag (rgb8 image, camera_info, 32FC1 depth, 16UC1 labels, pose on ``/tf`` by
default) and maps it in three ways, all with the same node parameters (label features with
``num_labels`` of the scene and D = 32, ``node.step_mode: budget`` with ``--steps-per-keyframe``
iterations per keyframe, ``node.kf_min_translation: 0.01`` so that every frame is a keyframe,
``node.torch_threads`` = ``--threads``, TSDF mesh and point cloud publishing off, no autosave):

* ``fast``: ``fhgs-node`` in a subprocess (``use_sim_time:=true``, reliable sensor QoS, its own
  ROS_DOMAIN_ID, localhost only) fed by ``fhgs-replay BAG --fast`` (flow control on
  ``mapper_status``: each image is published when the node has finished the previous one);
* ``offline``: ``fhgs-replay BAG --offline``: the same input pipeline and mapper in one process,
  no DDS (the in-process rate);
* ``transport``: ``--fast`` against a node with ``node.steps_per_keyframe: 1`` and
  ``node.max_new_surfels_per_keyframe: 0`` (no mapping work to speak of): the replay / DDS /
  input-pipeline overhead per frame (leave it out with ``--no-transport``).

Rates: ``messages/s`` = bag messages played / wall time, ``keyframes/s`` = keyframes integrated /
wall time, where wall time is what ``fhgs-replay`` reports: for ``--fast`` from the first message
to the node having finished the last image (node start-up excluded; the node still renders its
``render/*`` images after each keyframe); for ``--offline`` the whole ``map_bag`` call (parameters,
extractor, mapping, map save).

The JSON rows also carry ``process_seconds`` (wall time of the ``fhgs-replay`` process) and
``cpu_seconds`` (user + system CPU time of the row's child processes, node and ``fhgs-replay``,
start-up included), which helps to read the rates on a shared machine.

Runtime: the default keeps the demo's bag (128x96, 40 frames) but uses 20 iterations per keyframe
instead of 50 (50 took about 10 minutes on 2 shared CPU cores), so that the run takes about 4-5
minutes there (two 800-iteration mapping runs of 1.5 min each, node start-ups, bag writing);
``--steps-per-keyframe 50`` restores the heavier schedule. ``--quick`` (64x48, 8 frames, 10
iterations per keyframe) takes about 25 s (CI).

Prints a table and writes ``bench/results/replay.json`` and ``replay.md`` next to it (relative to
the working directory; ``--out`` moves both).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fhgs_ros.bench import write_results

COLUMNS = ("mode", "messages", "images", "keyframes", "wall s", "messages/s", "keyframes/s", "surfels", "iterations")


def _remaps(pose_mode: str) -> list[str]:
    """Bag topics (``fhgs_ros.bag.writer.BagTopics``) -> node inputs."""
    from fhgs_ros.bag.writer import BagTopics

    t = BagTopics()
    out = [f"{t.image}:=/image", f"{t.camera_info}:=/camera_info", f"{t.depth}:=/depth", f"{t.labels}:=/labels"]
    if pose_mode == "pose":
        out.append(f"{t.pose}:=/pose")
    elif pose_mode == "odom" and t.odom != "/odom":
        out.append(f"{t.odom}:=/odom")
    return out


def _params(num_labels: int, pose_mode: str, steps: int, threads: int, dim: int, **node) -> dict:
    base = {"pose_source": pose_mode, "step_mode": "budget", "steps_per_keyframe": steps, "sensor_qos": "reliable",
            "kf_min_translation": 0.01, "torch_threads": threads, "mesh_period": 0.0, "cloud_period": 0.0,
            "autosave_every_keyframes": 0, "autosave_period": 0.0, "resume": False}
    base.update(node)
    return {"features": {"extractor": "label", "num_labels": num_labels, "dim": dim}, "node": base}


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _row(mode: str, summary: dict, rc: int, wall_process: float) -> dict:
    secs = float(summary.get("seconds", 0.0))
    msgs, kfs = int(summary.get("messages", 0)), int(summary.get("keyframes", 0))
    return {"mode": mode, "rc": rc, "messages": msgs, "images": int(summary.get("images", 0)), "keyframes": kfs,
            "seconds": secs, "messages_per_s": msgs / secs if secs > 0 else 0.0,
            "keyframes_per_s": kfs / secs if secs > 0 else 0.0, "surfels": int(summary.get("surfels", 0)),
            "iterations": int(summary.get("iterations", 0)), "process_seconds": wall_process,
            "images_lost": int(summary.get("images_lost", 0)), "summary": summary}


def _replay(cmd_args: list[str], env: dict, summary_path: Path, log_path: Path,
            timeout: float) -> tuple[int, dict, float]:
    """Run ``fhgs-replay`` (``python -m fhgs_ros.ros.replay``); returns (exit code, summary dict, wall s)."""
    cmd = [sys.executable, "-m", "fhgs_ros.ros.replay", *cmd_args, "--summary-json", str(summary_path)]
    t0 = time.monotonic()
    with open(log_path, "ab") as log:
        try:
            rc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    wall = time.monotonic() - t0
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return rc, summary, wall


def _fast_row(mode: str, bag: Path, params_file: Path, tmp: Path, remaps: list[str], timeout: float) -> dict:
    """``fhgs-node`` (own domain) + ``fhgs-replay --fast``; the node is always stopped."""
    from fhgs_ros.ros.harness import NodeProcess, free_domain_id, ros_env

    cpu0 = _children_cpu()
    dom = free_domain_id()
    node = NodeProcess(params_file, tmp / f"node_{mode}.log", dom, ["-p", "use_sim_time:=true"])
    try:
        node.wait_ready(180)
        rc, summary, wall = _replay([str(bag), "--fast", "--remap", *remaps, "--wait", "60"], ros_env(dom),
                                    tmp / f"summary_{mode}.json", tmp / f"replay_{mode}.log", timeout)
    finally:
        node.stop()
    row = _row(mode, summary, rc, wall)
    row["cpu_seconds"] = _children_cpu() - cpu0
    row["domain_id"] = dom
    if rc != 0:
        row["log_tail"] = ((tmp / f"replay_{mode}.log").read_text(errors="replace")[-1500:] + "\n--- node ---\n" +
                           node.text()[-1500:])
    return row


def _offline_row(bag: Path, params_file: Path, tmp: Path, remaps: list[str], threads: int, timeout: float) -> dict:
    from fhgs_ros.ros.harness import free_domain_id, ros_env

    cpu0 = _children_cpu()
    env = ros_env(free_domain_id(), {"OMP_NUM_THREADS": str(threads)} if threads > 0 else None)
    rc, summary, wall = _replay([str(bag), "--offline", "--params-file", str(params_file), "--remap", *remaps,
                                 "--out", str(tmp / "offline_map.safetensors")], env, tmp / "summary_offline.json",
                                tmp / "replay_offline.log", timeout)
    row = _row("offline", summary, rc, wall)
    row["cpu_seconds"] = _children_cpu() - cpu0
    if rc != 0:
        row["log_tail"] = (tmp / "replay_offline.log").read_text(errors="replace")[-3000:]
    return row


def _cells(r: dict) -> list[str]:
    if not r.get("summary"):
        return [r["mode"]] + ["-"] * (len(COLUMNS) - 1)
    return [r["mode"], str(r["messages"]), str(r["images"]), str(r["keyframes"]), f"{r['seconds']:.1f}",
            f"{r['messages_per_s']:.1f}", f"{r['keyframes_per_s']:.2f}", str(r["surfels"]), str(r["iterations"])]


def format_table(rows: list[dict]) -> str:
    cells = [list(COLUMNS)] + [_cells(r) for r in rows]
    w = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    fmt = lambda c: "  ".join(x.ljust(w[0]) if i == 0 else x.rjust(w[i]) for i, x in enumerate(c))  # noqa: E731
    return "\n".join([fmt(cells[0]), "-" * len(fmt(cells[0]))] + [fmt(c) for c in cells[1:]])


def format_markdown(results: dict) -> str:
    s = results["settings"]
    lines = ["# fhgs-bench replay", "",
             f"Synthetic bag: {s['width']}x{s['height']}, {s['frames']} frames, pose via {s['pose']}, "
             f"{s['storage']}; label features D={s['dim']}; {s['steps_per_keyframe']} iterations per keyframe "
             f"(step_mode budget); torch threads {s['threads']}; {results['machine']}.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---"] + ["---:"] * (len(COLUMNS) - 1)) + "|"]
    for r in results["rows"]:
        lines.append("| " + " | ".join(_cells(r)) + " |")
    return "\n".join(lines) + "\n"


def run(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fhgs-bench replay", description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--frames", type=int, default=40, help="frames in the bag (every one is a keyframe)")
    p.add_argument("--steps-per-keyframe", type=int, default=20,
                   help="node.steps_per_keyframe (budget mode); default 20, see the module docstring")
    p.add_argument("--pose", choices=["tf", "pose", "odom"], default="tf", help="how the bag carries the poses")
    p.add_argument("--storage", choices=["sqlite3", "mcap"], default="sqlite3", help="bag storage plugin")
    p.add_argument("--dim", type=int, default=32, help="label feature width D")
    p.add_argument("--threads", type=int, default=2, help="node.torch_threads (and OMP threads of --offline)")
    p.add_argument("--no-transport", action="store_true", help="skip the transport-only row")
    p.add_argument("--quick", action="store_true", help="64x48, 8 frames, 10 steps per keyframe (CI)")
    p.add_argument("--timeout", type=float, default=900.0, help="[s] limit of each fhgs-replay run")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (bag, logs, map)")
    p.add_argument("--out", type=Path, default=Path("bench/results/replay.json"),
                   help="JSON result; the markdown table goes next to it (.md)")
    a = p.parse_args(argv)
    if a.quick:
        a.width, a.height, a.frames, a.steps_per_keyframe = 64, 48, 8, 10

    from fhgs_ros.bag.writer import write_frames_bag
    from fhgs_ros.datasets.synthetic import synthetic_dataset
    from fhgs_ros.ros.harness import write_params

    tmp = Path(tempfile.mkdtemp(prefix="fhgs_bench_replay_"))
    settings = {"width": a.width, "height": a.height, "frames": a.frames, "steps_per_keyframe": a.steps_per_keyframe,
                "pose": a.pose, "storage": a.storage, "dim": a.dim, "threads": a.threads}
    results: dict = {"benchmark": "replay", "settings": settings, "machine": platform.platform(),
                     "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
                     "rows": []}
    rows: list[dict] = results["rows"]
    try:
        t = time.monotonic()
        ds = synthetic_dataset(a.width, a.height, a.frames, seed=0, num_points=500)
        bag = tmp / "synthetic_bag"
        bs = write_frames_bag(ds.frames, bag, storage=a.storage, pose_mode=a.pose)
        results["bag"] = {"messages": bs.messages, "topics": bs.topics, "duration_s": bs.duration_s,
                          "bytes": sum(f.stat().st_size for f in bag.rglob("*") if f.is_file()),
                          "generation_s": time.monotonic() - t}
        print(f"fhgs-bench replay: synthetic bag {a.width}x{a.height}, {bs.frames} frames, {bs.messages} messages "
              f"(pose via {a.pose}, {a.storage}); {a.steps_per_keyframe} iterations per keyframe, "
              f"label features D={a.dim}, {a.threads} torch threads", flush=True)
        remaps = _remaps(a.pose)
        nl = len(ds.label_names)
        pf = write_params(tmp / "params.yaml", _params(nl, a.pose, a.steps_per_keyframe, a.threads, a.dim))
        rows.append(_fast_row("fast", bag, pf, tmp, remaps, a.timeout))
        print(f"  fast: {rows[-1]['keyframes']} keyframes in {rows[-1]['seconds']:.1f} s", flush=True)
        rows.append(_offline_row(bag, pf, tmp, remaps, a.threads, a.timeout))
        print(f"  offline: {rows[-1]['keyframes']} keyframes in {rows[-1]['seconds']:.1f} s", flush=True)
        if not a.no_transport:
            pt = write_params(tmp / "params_transport.yaml", _params(nl, a.pose, 1, a.threads, a.dim,
                                                                     max_new_surfels_per_keyframe=0))
            rows.append(_fast_row("transport", bag, pt, tmp, remaps, a.timeout))
    finally:
        if a.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    table = format_table(rows)
    print(table)
    for r in rows:
        if r["rc"] != 0:
            print(f"{r['mode']}: fhgs-replay exited with {r['rc']}\n{r.get('log_tail', '')}")
    results["table"] = table
    from fhgs_ros.core.fileio import atomic_write_text

    write_results(a.out, results)
    md = a.out.with_suffix(".md")
    atomic_write_text(md, format_markdown(results))
    print(f"wrote {md}")
    return 0 if rows and all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
