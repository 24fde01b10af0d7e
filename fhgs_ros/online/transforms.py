"""A ROS-free transform tree with time interpolation (the TF of batch mapping and of the node
when tf2_ros is not installed).

``TransformBuffer`` holds per-edge time-stamped transforms (static edges valid at any time),
looks up along the tree through the common ancestor, and interpolates each edge (linear
translation, slerp rotation) at the requested stamp [s]. Like tf2 it never extrapolates beyond
an edge's buffered span, except by ``tolerance`` seconds. ``apply_tf_message`` inserts a
``tf2_msgs/TFMessage`` (any object with its fields: rclpy or rosbags messages).
"""

from __future__ import annotations

import bisect
import threading
from typing import Any

import numpy as np

from fhgs_ros.core.geometry import interpolate_pose, invert_pose
from fhgs_ros.online.imageproc import InputError, stamp_to_sec, transform_to_matrix


class TransformBuffer:
    """Transform tree with time interpolation (see the module docstring). Thread-safe.

    Edges are stored child -> (parent, stamps, transforms) where a transform maps points in the
    child frame to the parent frame (T_parent_child), as in geometry_msgs/TransformStamped.
    """

    def __init__(self, cache_time: float = 10.0, tolerance: float = 0.0):
        self.cache_time = cache_time
        self.tolerance = tolerance
        self._dyn: dict[str, tuple[str, list[float], list[np.ndarray]]] = {}
        self._static: dict[str, tuple[str, np.ndarray]] = {}
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._dyn.clear()
            self._static.clear()

    def set_transform(self, parent: str, child: str, stamp: float, transform: np.ndarray,
                      static: bool = False) -> None:
        parent, child = parent.lstrip("/"), child.lstrip("/")
        if not parent or not child or parent == child:
            raise InputError("bad_tf", f"transform with invalid frames parent='{parent}' child='{child}'")
        with self._lock:
            if static:
                self._static[child] = (parent, np.asarray(transform, dtype=np.float64))
                self._dyn.pop(child, None)
                return
            entry = self._dyn.get(child)
            if entry is None or entry[0] != parent:
                entry = (parent, [], [])
                self._dyn[child] = entry
            _, st, tr = entry
            i = bisect.bisect_right(st, stamp)
            if i > 0 and st[i - 1] == stamp:
                tr[i - 1] = np.asarray(transform, dtype=np.float64)
            else:
                st.insert(i, stamp)
                tr.insert(i, np.asarray(transform, dtype=np.float64))
            newest = st[-1]
            while len(st) > 2 and st[0] < newest - self.cache_time:
                st.pop(0)
                tr.pop(0)

    def frames(self) -> set[str]:
        with self._lock:
            out = set(self._dyn) | set(self._static)
            out |= {v[0] for v in self._dyn.values()} | {v[0] for v in self._static.values()}
            return out

    def _parent(self, frame: str) -> str | None:
        if frame in self._static:
            return self._static[frame][0]
        if frame in self._dyn:
            return self._dyn[frame][0]
        return None

    def _edge(self, child: str, stamp: float) -> tuple[np.ndarray | None, str, bool]:
        """T_parent_child at stamp (stamp 0 = latest)."""
        if child in self._static:
            return self._static[child][1], "", True
        parent, st, tr = self._dyn[child]
        if not st:
            return None, f"no transform {parent} -> {child} yet", False
        if stamp == 0:
            return tr[-1], "", True
        i = bisect.bisect_left(st, stamp)
        if i < len(st) and st[i] == stamp:
            return tr[i], "", True
        if 0 < i < len(st):
            return interpolate_pose(tr[i - 1], st[i - 1], tr[i], st[i], stamp), "", True
        if i == 0:
            if st[0] - stamp <= self.tolerance:
                return tr[0], "", True
            return None, (f"lookup of {parent} -> {child} at {stamp:.3f} would extrapolate into the past (oldest "
                          f"transform {st[0]:.3f})"), True
        if stamp - st[-1] <= self.tolerance:
            return tr[-1], "", True
        return None, (f"lookup of {parent} -> {child} at {stamp:.3f} would extrapolate into the future (newest "
                      f"transform {st[-1]:.3f})"), False

    def _chain(self, frame: str) -> list[str]:
        out = [frame]
        seen = {frame}
        while True:
            p = self._parent(out[-1])
            if p is None or p in seen:
                return out
            out.append(p)
            seen.add(p)

    def lookup(self, target: str, source: str, stamp: float) -> tuple[np.ndarray | None, str, bool]:
        """T_target_source at ``stamp``: maps points in ``source`` to ``target``.

        Returns (matrix or None, reason, final); final=False means the answer may come later
        (frames not yet known, data not yet arrived).
        """
        target, source = target.lstrip("/"), source.lstrip("/")
        if target == source:
            return np.eye(4), "", True
        with self._lock:
            known = set(self._dyn) | set(self._static) | {v[0] for v in self._dyn.values()} \
                | {v[0] for v in self._static.values()}
            for f in (target, source):
                if f not in known:
                    return None, f"frame '{f}' does not exist in the TF tree", False
            up_s, up_t = self._chain(source), self._chain(target)
            common = next((f for f in up_s if f in set(up_t)), None)
            if common is None:
                return None, f"frames '{target}' and '{source}' are not connected in the TF tree", False
            # T_common_source = product along source's chain
            t_cs = np.eye(4)
            for f in up_s[: up_s.index(common)]:
                e, why, final = self._edge(f, stamp)
                if e is None:
                    return None, why, final
                t_cs = e @ t_cs
            t_ct = np.eye(4)
            for f in up_t[: up_t.index(common)]:
                e, why, final = self._edge(f, stamp)
                if e is None:
                    return None, why, final
                t_ct = e @ t_ct
            return invert_pose(t_ct) @ t_cs, "", True


def apply_tf_message(buffer: TransformBuffer, msg: Any, static: bool, tolerance: float = 1e-2,
                     on_error=None) -> int:
    """Insert the transforms of a tf2_msgs/TFMessage (rclpy or rosbags message) into ``buffer``."""
    n = 0
    for t in msg.transforms:
        n += 1
        try:
            m = transform_to_matrix(t.transform, tolerance, f"transform {t.header.frame_id} -> {t.child_frame_id}")
            buffer.set_transform(t.header.frame_id, t.child_frame_id, stamp_to_sec(t.header.stamp), m, static)
        except InputError as exc:
            if on_error is not None:
                on_error(exc)
    return n
