"""Run ``fhgs-node`` in a subprocess next to an in-process test node (tests, ``fhgs-bench node``).

- ``ros_env(domain_id)``: environment for an isolated run (own ROS_DOMAIN_ID, localhost only);
- ``NodeProcess``: starts ``python -m fhgs_ros.ros.mapper_node --ros-args --params-file ...``,
  logs to a file, waits for its "ready" line, stops it with SIGINT or SIGKILL;
- ``Spinner``: an rclpy Context + MultiThreadedExecutor in a background thread for the test side.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def free_domain_id() -> int:
    return random.SystemRandom().randint(1, 101)  # the range ROS recommends on Linux (no ephemeral-port clashes)


def ros_env(domain_id: int, extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.pop("ROS_LOCALHOST_ONLY", None)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("RCUTILS_COLORIZED_OUTPUT", "0")
    if extra:
        env.update(extra)
    return env


def write_params(path: str | os.PathLike, params: dict, node_name: str = "fhgs_node") -> Path:
    """A ROS 2 params file ``{node_name: {ros__parameters: params}}`` (nested dicts)."""
    p = Path(path)
    p.write_text(yaml.safe_dump({node_name: {"ros__parameters": params}}, sort_keys=False))
    return p


class NodeProcess:
    """``fhgs-node`` in a subprocess with its own log file."""

    def __init__(self, params_file: str | os.PathLike | None, log_path: str | os.PathLike, domain_id: int,
                 extra_args: list[str] | None = None, env: dict | None = None, cmd: list[str] | None = None):
        self.log_path = Path(log_path)
        args = cmd or [sys.executable, "-m", "fhgs_ros.ros.mapper_node"]
        ros_args = ["--ros-args"]
        if params_file is not None:
            ros_args += ["--params-file", str(params_file)]
        ros_args += list(extra_args or [])
        self.cmd = args + ros_args
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env or ros_env(domain_id), cwd=str(REPO), start_new_session=True)

    def text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for(self, needle: str, timeout: float = 60.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if needle in self.text():
                return True
            if self.proc.poll() is not None:
                return needle in self.text()
            time.sleep(0.1)
        return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        if not self.wait_for("fhgs_node ready", timeout):
            self.stop()
            raise RuntimeError(f"fhgs-node did not start (exit {self.proc.returncode}):\n{self.text()[-4000:]}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the node (no cleanup, no final save)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)


class Spinner:
    """rclpy context + executor spinning in a thread (``with Spinner(domain) as sp: sp.add(node)``)."""

    def __init__(self, domain_id: int):
        import rclpy
        from rclpy.executors import MultiThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.executor = MultiThreadedExecutor(num_threads=4, context=self.context)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.nodes = []
        self.thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            self.executor.spin()
        except (ExternalShutdownException, Exception):  # noqa: BLE001 - shutting down
            pass

    def add(self, node):
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def close(self) -> None:
        import rclpy

        for n in self.nodes:
            try:
                self.executor.remove_node(n)
                n.destroy_node()
            except Exception:  # noqa: BLE001
                pass
        self.executor.shutdown(timeout_sec=2)
        if self.context.ok():
            rclpy.shutdown(context=self.context)
        self.thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
