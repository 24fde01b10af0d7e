"""Map a bag the way a robot user does: ``fhgs-node`` (subprocess) + ``fhgs-replay --fast`` over DDS.

Used by ``make demo`` and the end-to-end test. The node and the replayer run on a private
``ROS_DOMAIN_ID`` with discovery limited to this machine, the node on sim time (``/clock`` from
the replayer); after the replay the map is saved and the mesh exported through the node's own
services (``save_map``, ``export_mesh``), then the node is stopped.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fhgs_ros.ros.harness import NodeProcess, Spinner, free_domain_id, ros_env, write_params

log = logging.getLogger(__name__)


@dataclass
class NodeReplayResult:
    map_path: Path
    mesh_path: Path | None
    replay: dict = field(default_factory=dict)   # fhgs-replay --summary-json
    replay_exit: int = 0
    replay_output: str = ""
    node_log: Path | None = None
    seconds: float = 0.0


def map_bag_with_node(bag: str | Path, params: dict, out_dir: str | Path, remap: list[str] | None = None,
                      topics: list[str] | None = None, timeout: float = 3600.0, export_mesh: bool = True,
                      node_args: list[str] | None = None) -> NodeReplayResult:
    """Start fhgs-node with ``params`` (nested dict of the node's parameters), replay ``bag`` into it with
    ``--fast``, save the map to ``out_dir/map.safetensors`` and the mesh to ``out_dir/mesh.ply``."""
    from fhgs_interfaces.srv import ExportMesh, SaveMap

    from fhgs_ros.ros.streamer import call

    # absolute: the node resolves relative service paths inside its node.map_dir, not our cwd
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dom = free_domain_id()
    # the node may write only inside node.map_dir: the map and mesh this run saves go to out_dir
    params = dict(params, node=dict(params.get("node") or {}))
    params["node"].setdefault("map_dir", str(out))
    pfile = write_params(out / "node_params.yaml", params)
    node = NodeProcess(pfile, out / "node.log", dom, ["-p", "use_sim_time:=true"] + list(node_args or []))
    res = NodeReplayResult(out / "map.safetensors", None, node_log=out / "node.log")
    try:
        node.wait_ready(120)
        cmd = [sys.executable, "-m", "fhgs_ros.ros.replay", str(bag), "--fast", "--summary-json",
               str(out / "replay.json")]
        if remap:
            cmd += ["--remap", *remap]
        if topics:
            cmd += ["--topics", *topics]
        log.info("replaying %s into fhgs-node (ROS_DOMAIN_ID %d)", bag, dom)
        proc = subprocess.run(cmd, env=ros_env(dom), capture_output=True, text=True, timeout=timeout)
        res.replay_exit = proc.returncode
        res.replay_output = proc.stdout + proc.stderr
        if (out / "replay.json").exists():
            res.replay = json.loads((out / "replay.json").read_text())
        if proc.returncode not in (0, 1):
            raise RuntimeError(f"fhgs-replay failed (exit {proc.returncode}):\n{res.replay_output[-3000:]}")
        sp = Spinner(dom)
        try:
            import rclpy
            client = sp.add(rclpy.create_node("fhgs_demo_client", context=sp.context))
            r = call(client, SaveMap, "/save_map", SaveMap.Request(path=str(res.map_path)), timeout=120)
            if r is None or not r.success:
                raise RuntimeError(f"save_map failed: {getattr(r, 'message', 'no answer')}\n{node.text()[-3000:]}")
            log.info("node: %s", r.message)
            if export_mesh:
                mesh = out / "mesh.ply"
                r = call(client, ExportMesh, "/export_mesh", ExportMesh.Request(path=str(mesh), refresh=True),
                         timeout=600)
                if r is not None and r.success:
                    res.mesh_path = mesh
                    log.info("node: %s", r.message)
                else:
                    log.warning("export_mesh failed: %s", getattr(r, "message", "no answer"))
        finally:
            sp.close()
    finally:
        node.stop()
    res.seconds = time.perf_counter() - t0
    return res
