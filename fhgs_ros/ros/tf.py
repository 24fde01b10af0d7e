"""TF for the mapping node: tf2_ros when the ROS installation has it, else our own listener.

ROS 2 from PyPI wheels has neither tf2 nor tf2_ros. ``TFListener`` fills a ROS-free
``fhgs_ros.online.transforms.TransformBuffer`` from ``/tf`` and ``/tf_static``
(``tf2_msgs/msg/TFMessage``; the project builds a stand-in of that message into the venv when
the real one is missing, see msg/README.md).

``make_tf_lookup(node, ...)`` returns an object with ``lookup(target, source, stamp)`` ->
(T_target_source 4x4 or None, reason, final) backed by tf2_ros when importable, else by
``TFListener``; ``backend`` says which.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fhgs_ros.online.imageproc import InputError
from fhgs_ros.online.transforms import TransformBuffer, apply_tf_message  # noqa: F401  (re-exported)


class TFListener:
    """Fills a TransformBuffer from /tf and /tf_static (tf2_msgs/msg/TFMessage)."""

    backend = "fhgs"

    def __init__(self, node: Any, cache_time: float = 10.0, tolerance: float = 0.0, callback_group=None,
                 on_error=None):
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from tf2_msgs.msg import TFMessage

        self.buffer = TransformBuffer(cache_time, tolerance)
        self.on_error = on_error
        self.count = 0
        dyn = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                         durability=DurabilityPolicy.VOLATILE)
        static = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.sub_tf = node.create_subscription(TFMessage, "/tf", lambda m: self._on(m, False), dyn,
                                               callback_group=callback_group)
        self.sub_static = node.create_subscription(TFMessage, "/tf_static", lambda m: self._on(m, True), static,
                                                   callback_group=callback_group)

    def _on(self, msg, static: bool) -> None:
        self.count += apply_tf_message(self.buffer, msg, static, on_error=self.on_error)

    def lookup(self, target: str, source: str, stamp: float) -> tuple[np.ndarray | None, str, bool]:
        return self.buffer.lookup(target, source, stamp)

    def clear(self) -> None:
        self.buffer.clear()


class Tf2RosLookup:
    """The same interface on top of tf2_ros (used when the ROS installation provides it)."""

    backend = "tf2_ros"

    def __init__(self, node: Any, cache_time: float = 10.0, tolerance: float = 0.0, callback_group=None,
                 on_error=None):
        import tf2_ros
        from rclpy.duration import Duration

        from fhgs_ros.ros.conversions import sec_to_time, transform_to_matrix

        self._tf2 = tf2_ros
        self._to_time = sec_to_time
        self._to_mat = transform_to_matrix
        self.buffer = tf2_ros.Buffer(cache_time=Duration(seconds=cache_time))
        self.listener = tf2_ros.TransformListener(self.buffer, node, spin_thread=False)
        self.count = 0

    def lookup(self, target: str, source: str, stamp: float) -> tuple[np.ndarray | None, str, bool]:
        try:
            t = self.buffer.lookup_transform(target, source, self._to_time(stamp))
        except self._tf2.ExtrapolationException as exc:
            future = "future" in str(exc)
            return None, str(exc).splitlines()[0], not future
        except (self._tf2.LookupException, self._tf2.ConnectivityException) as exc:
            return None, str(exc).splitlines()[0], False
        try:
            return self._to_mat(t.transform), "", True
        except InputError as exc:
            return None, str(exc), True

    def clear(self) -> None:
        self.buffer.clear()


def make_tf_lookup(node: Any, cache_time: float = 10.0, tolerance: float = 0.0, callback_group=None,
                   on_error=None, prefer: str = "auto"):
    """tf2_ros when installed (and ``prefer`` is auto or tf2_ros), else the package's own listener."""
    if prefer in ("auto", "tf2_ros"):
        try:
            import tf2_ros  # noqa: F401
            return Tf2RosLookup(node, cache_time, tolerance, callback_group, on_error)
        except ImportError:
            if prefer == "tf2_ros":
                raise
    return TFListener(node, cache_time, tolerance, callback_group, on_error)
