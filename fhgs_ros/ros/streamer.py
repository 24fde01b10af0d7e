"""Synthetic posed camera stream for the node's integration tests and ``fhgs-bench node``.

``SceneStreamer`` publishes frames of the synthetic labelled room (fhgs_ros.datasets.synthetic,
rendered in memory with exact depth) as a robot would: ``image`` (any colour encoding) or
``image/compressed``, ``camera_info`` (optionally with plumb_bob / equidistant distortion
applied to the image), ``depth`` (16UC1 mm or 32FC1 m) and the pose as PoseStamped, Odometry
and/or TF (map -> base_link dynamic, base_link -> camera_optical static). It also offers
blocking service calls (``call``) and topic captures (``Capture``) for tests.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import torch

from geometry_msgs.msg import PoseStamped, TransformStamped
from nav_msgs.msg import Odometry
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from fhgs_ros.core.camera import Camera, Intrinsics
from fhgs_ros.core.geometry import invert_pose
from fhgs_ros.online.imageproc import encode_compressed
from fhgs_ros.ros import conversions as conv

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
BASE_TO_CAMERA = np.array([[0.0, 0.0, 1.0, 0.1], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.2], [0, 0, 0, 1.0]])
# ^ optical frame (z forward, x right, y down) in a REP 103 body frame (x forward, y left, z up)


def synthetic_frames(width: int = 96, height: int = 72, num_frames: int = 12, seed: int = 0):
    """[(rgb uint8 (H, W, 3), depth float32 (H, W) m, Camera)] of the synthetic room orbit."""
    from fhgs_ros.datasets.synthetic import synthetic_dataset

    ds = synthetic_dataset(width, height, num_frames, seed=seed, supersample=1, num_points=200, num_gt_points=10)
    out = []
    for f in ds.frames:
        rgb = (f.image.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        out.append((rgb, f.depth.numpy().astype(np.float32), f.camera))
    return out


class Capture:
    """Keeps the latest messages of a topic (and a count); ``wait(n, timeout)``."""

    def __init__(self, node: Node, msg_type, topic: str, qos: QoSProfile = RELIABLE):
        self.msgs: list[Any] = []
        self.cond = threading.Condition()
        self.sub = node.create_subscription(msg_type, topic, self._on, qos)

    def _on(self, msg) -> None:
        with self.cond:
            self.msgs.append(msg)
            if len(self.msgs) > 20:
                self.msgs.pop(0)
            self.count = getattr(self, "count", 0) + 1
            self.cond.notify_all()

    def wait(self, n: int = 1, timeout: float = 10.0, pred=None):
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                ok = getattr(self, "count", 0) >= n and (pred is None or (self.msgs and pred(self.msgs[-1])))
                if ok:
                    return self.msgs[-1]
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    @property
    def last(self):
        with self.cond:
            return self.msgs[-1] if self.msgs else None


class SceneStreamer(Node):
    """Publishes a synthetic stream to a node under ``target_ns`` (topic names of docs/ARCHITECTURE.md §4)."""

    def __init__(self, name: str = "fhgs_test_streamer", target_ns: str = "", map_frame: str = "map",
                 camera_frame: str = "camera_optical", base_frame: str = "base_link", **kwargs):
        super().__init__(name, **kwargs)
        p = (target_ns.rstrip("/") + "/") if target_ns else ""
        self.map_frame, self.camera_frame, self.base_frame = map_frame, camera_frame, base_frame
        self.pub_image = self.create_publisher(Image, p + "image", RELIABLE)
        self.pub_comp = self.create_publisher(CompressedImage, p + "image/compressed", RELIABLE)
        self.pub_info = self.create_publisher(CameraInfo, p + "camera_info", RELIABLE)
        self.pub_depth = self.create_publisher(Image, p + "depth", RELIABLE)
        self.pub_pose = self.create_publisher(PoseStamped, p + "pose", RELIABLE)
        self.pub_odom = self.create_publisher(Odometry, p + "odom", RELIABLE)
        from tf2_msgs.msg import TFMessage

        self._tfmsg = TFMessage
        self.pub_tf = self.create_publisher(TFMessage, "/tf", QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        self.pub_tf_static = self.create_publisher(TFMessage, "/tf_static", LATCHED)
        self._static_sent = False

    def wait_for_subscribers(self, timeout: float = 15.0, topics=("image", "camera_info")) -> bool:
        pubs = {"image": self.pub_image, "camera_info": self.pub_info, "depth": self.pub_depth,
                "pose": self.pub_pose, "odom": self.pub_odom, "image/compressed": self.pub_comp}
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if all(pubs[t].get_subscription_count() > 0 for t in topics):
                return True
            time.sleep(0.05)
        return False

    def send_static_tf(self) -> None:
        t = TransformStamped()
        t.header.frame_id, t.child_frame_id = self.base_frame, self.camera_frame
        t.transform = conv.matrix_to_transform(BASE_TO_CAMERA)
        self.pub_tf_static.publish(self._tfmsg(transforms=[t]))
        self._static_sent = True

    def publish_frame(self, rgb: np.ndarray, depth: np.ndarray | None, camera: Camera, stamp: float, *,
                      pose_via=("pose",), encoding: str = "rgb8", compressed: str | None = None,
                      depth_encoding: str = "16UC1", info: bool = True, frame_id: str | None = None,
                      intrinsics: Intrinsics | None = None) -> None:
        """One frame: image (+ camera_info, depth) and the camera pose via pose/odom/tf at ``stamp``."""
        hdr = conv.make_header(frame_id or self.camera_frame, stamp)
        c2w = camera.cam_to_world.double().numpy()
        if "pose" in pose_via:
            self.pub_pose.publish(PoseStamped(header=conv.make_header(self.map_frame, stamp),
                                              pose=conv.matrix_to_pose(c2w)))
        if "odom" in pose_via:
            o = Odometry(header=conv.make_header(self.map_frame, stamp), child_frame_id=self.camera_frame)
            o.pose.pose = conv.matrix_to_pose(c2w)
            self.pub_odom.publish(o)
        if "tf" in pose_via:
            if not self._static_sent:
                self.send_static_tf()
            t = TransformStamped()
            t.header = conv.make_header(self.map_frame, stamp)
            t.child_frame_id = self.base_frame
            t.transform = conv.matrix_to_transform(c2w @ invert_pose(BASE_TO_CAMERA))
            self.pub_tf.publish(self._tfmsg(transforms=[t]))
        if info:
            intr = intrinsics or Intrinsics(camera.width, camera.height, camera.fx, camera.fy, camera.cx, camera.cy)
            self.pub_info.publish(conv.intrinsics_to_camera_info(intr, hdr))
        if depth is not None:
            self.pub_depth.publish(conv.depth_to_image_msg(depth, hdr, depth_encoding))
        if compressed:
            self.pub_comp.publish(CompressedImage(header=hdr, format=compressed,
                                                  data=encode_compressed(rgb, compressed)))
        else:
            self.pub_image.publish(encode_image(rgb, hdr, encoding))


def encode_image(rgb: np.ndarray, header, encoding: str = "rgb8") -> Image:
    """(H, W, 3) uint8 RGB -> Image in any of the accepted colour encodings."""
    a = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w = a.shape[:2]
    if encoding == "rgb8":
        return conv.rgb_to_image(a, header, "rgb8")
    if encoding == "bgr8":
        return conv.rgb_to_image(a, header, "bgr8")
    if encoding in ("rgba8", "bgra8"):
        c = a if encoding == "rgba8" else a[:, :, ::-1]
        b = np.concatenate([c, np.full((h, w, 1), 255, np.uint8)], 2)
        m = Image(header=header, height=h, width=w, encoding=encoding, is_bigendian=0, step=w * 4)
        m.data = np.ascontiguousarray(b).tobytes()
        return m
    gray = np.round(a.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)
    if encoding == "mono8":
        return conv.mono_to_image(gray, header)
    if encoding == "mono16":
        g16 = (gray.astype("<u2") * 257)
        m = Image(header=header, height=h, width=w, encoding="mono16", is_bigendian=0, step=w * 2)
        m.data = np.ascontiguousarray(g16).tobytes()
        return m
    m = Image(header=header, height=h, width=w, encoding=encoding, is_bigendian=0, step=w * 3)
    m.data = a.tobytes()
    return m


def call(node: Node, srv_type, name: str, request, timeout: float = 20.0, retry_every: float = 6.0,
         fresh: bool = False):
    """Blocking service call from a node spun by another thread; None on timeout.

    The request is re-sent after ``retry_every`` seconds without an answer, then after twice that, and so
    on: right after a server (re)starts, DDS may not have matched the client with it yet and a request
    sent then is lost (a killed server also stays in the graph until its lease expires), while a slow
    service (a mesh export on a loaded machine) must not be queued the same request again and again.
    ``fresh`` makes a new client.
    """
    clients = getattr(node, "_fhgs_clients", {})
    cli = None if fresh else clients.get(name)
    if cli is None:
        cli = node.create_client(srv_type, name)
        node._fhgs_clients = {**clients, name: cli}
    end = time.monotonic() + timeout
    while not cli.wait_for_service(timeout_sec=0.2):
        if time.monotonic() > end:
            return None
    wait = retry_every
    while time.monotonic() < end:
        fut = cli.call_async(request)
        ev = threading.Event()
        fut.add_done_callback(lambda f: ev.set())
        if ev.wait(max(0.1, min(wait, end - time.monotonic()))):
            return fut.result()
        fut.cancel()
        wait *= 2
    return None
