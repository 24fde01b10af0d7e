"""Write posed frames (a :class:`fhgs_ros.datasets.Dataset`) as a ROS 2 bag, without ROS installed.

The bag is what ``fhgs-node`` consumes live: per frame, at stamp ``start_time_s + i / rate_hz``
(header stamp == bag log time):

- the camera pose (written first, same log time as the image), one of
  ``pose_mode="tf"``: ``tf2_msgs/msg/TFMessage`` on ``/tf`` with one transform
  ``map_frame -> camera_frame``; ``"pose"``: ``geometry_msgs/msg/PoseStamped`` on ``topics.pose``
  (``header.frame_id = map_frame``); ``"odom"``: ``nav_msgs/msg/Odometry`` on ``topics.odom``
  (``frame_id = map_frame``, ``child_frame_id = body_frame``). In every mode the pose is that of the
  **camera optical frame** (OpenCV axes: x right, y down, z forward) in the map frame, i.e.
  ``Camera.cam_to_world``; for odometry this means body == camera optical frame, so a consumer
  needs no body->camera extrinsic (identity). The odometry twist and covariances are zero.
- ``sensor_msgs/msg/Image`` ``rgb8`` on ``topics.image`` (``frame_id = camera_frame``);
- ``sensor_msgs/msg/CameraInfo`` on ``topics.camera_info``: ``plumb_bob`` with zero distortion,
  ``K`` from the camera (OpenCV pixel convention), ``R = I``, ``P = [K | 0]``;
- optionally depth as ``32FC1`` (metres of camera z, 0 = unknown) on ``topics.depth`` and
  semantic labels as ``16UC1`` (label id per pixel; ids < 0 or >= 65535 become 65535) on
  ``topics.labels``.

The bag is written into a temporary sibling folder and renamed onto ``out`` only when complete.
"""

from __future__ import annotations

import logging
import math
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from fhgs_ros.bag.reader import BagError

if TYPE_CHECKING:  # pragma: no cover
    from fhgs_ros.datasets.base import Frame

log = logging.getLogger(__name__)

POSE_MODES = ("tf", "pose", "odom")
STORAGES = ("sqlite3", "mcap")
TF_TOPIC = "/tf"
LABEL_MAX = 65535

T_IMAGE = "sensor_msgs/msg/Image"
T_INFO = "sensor_msgs/msg/CameraInfo"
T_TF = "tf2_msgs/msg/TFMessage"
T_POSE = "geometry_msgs/msg/PoseStamped"
T_ODOM = "nav_msgs/msg/Odometry"


@dataclass
class BagTopics:
    """Topic names written by :func:`write_frames_bag` (the pose in ``"tf"`` mode goes to ``/tf``)."""

    image: str = "/camera/image_raw"
    camera_info: str = "/camera/camera_info"
    depth: str = "/camera/depth/image"
    labels: str = "/camera/labels"
    pose: str = "/camera/pose"
    odom: str = "/odom"


@dataclass
class BagSummary:
    """What was written: ``frames`` written, total ``messages``, per-topic counts, ``duration_s``
    (first to last stamp) and the dataset indices left out (``skipped_frames``, held-out views)."""

    path: Path
    frames: int
    messages: int
    topics: dict[str, int]
    duration_s: float
    skipped_frames: list[int] = field(default_factory=list)


class _Msgs:
    """Builds rosbags message objects from one typestore."""

    def __init__(self, ts: Any):
        self.ts = ts
        t = ts.types
        self.Time = t["builtin_interfaces/msg/Time"]
        self.Header = t["std_msgs/msg/Header"]
        self.Image = t[T_IMAGE]
        self.CameraInfo = t[T_INFO]
        self.Roi = t["sensor_msgs/msg/RegionOfInterest"]
        self.Vector3 = t["geometry_msgs/msg/Vector3"]
        self.Quaternion = t["geometry_msgs/msg/Quaternion"]
        self.Point = t["geometry_msgs/msg/Point"]
        self.Pose = t["geometry_msgs/msg/Pose"]
        self.Transform = t["geometry_msgs/msg/Transform"]
        self.TransformStamped = t["geometry_msgs/msg/TransformStamped"]
        self.TFMessage = t[T_TF]
        self.PoseStamped = t[T_POSE]
        self.PoseCov = t["geometry_msgs/msg/PoseWithCovariance"]
        self.Twist = t["geometry_msgs/msg/Twist"]
        self.TwistCov = t["geometry_msgs/msg/TwistWithCovariance"]
        self.Odometry = t[T_ODOM]

    def header(self, stamp_ns: int, frame_id: str) -> Any:
        return self.Header(stamp=self.Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000),
                           frame_id=frame_id)

    def image(self, stamp_ns: int, frame_id: str, data: np.ndarray, encoding: str) -> Any:
        """``data``: (H, W) or (H, W, C) little-endian array, row-major."""
        h, w = data.shape[:2]
        raw = np.ascontiguousarray(data)
        return self.Image(header=self.header(stamp_ns, frame_id), height=h, width=w, encoding=encoding,
                          is_bigendian=0, step=raw.strides[0], data=raw.reshape(-1).view(np.uint8))

    def camera_info(self, stamp_ns: int, frame_id: str, cam: Any) -> Any:
        k = np.array([cam.fx, 0.0, cam.cx, 0.0, cam.fy, cam.cy, 0.0, 0.0, 1.0], dtype=np.float64)
        p = np.array([cam.fx, 0.0, cam.cx, 0.0, 0.0, cam.fy, cam.cy, 0.0, 0.0, 0.0, 1.0, 0.0], dtype=np.float64)
        return self.CameraInfo(header=self.header(stamp_ns, frame_id), height=int(cam.height), width=int(cam.width),
                               distortion_model="plumb_bob", d=np.zeros(5, dtype=np.float64), k=k,
                               r=np.eye(3, dtype=np.float64).reshape(-1), p=p, binning_x=0, binning_y=0,
                               roi=self.Roi(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))

    def quat(self, q: np.ndarray) -> Any:
        return self.Quaternion(x=float(q[1]), y=float(q[2]), z=float(q[3]), w=float(q[0]))

    def tf(self, stamp_ns: int, parent: str, child: str, t: np.ndarray, q: np.ndarray) -> Any:
        tr = self.Transform(translation=self.Vector3(x=float(t[0]), y=float(t[1]), z=float(t[2])), rotation=self.quat(q))
        return self.TFMessage(transforms=[self.TransformStamped(header=self.header(stamp_ns, parent),
                                                                child_frame_id=child, transform=tr)])

    def pose(self, t: np.ndarray, q: np.ndarray) -> Any:
        return self.Pose(position=self.Point(x=float(t[0]), y=float(t[1]), z=float(t[2])), orientation=self.quat(q))

    def pose_stamped(self, stamp_ns: int, parent: str, t: np.ndarray, q: np.ndarray) -> Any:
        return self.PoseStamped(header=self.header(stamp_ns, parent), pose=self.pose(t, q))

    def odometry(self, stamp_ns: int, parent: str, child: str, t: np.ndarray, q: np.ndarray) -> Any:
        zero = self.Vector3(x=0.0, y=0.0, z=0.0)
        return self.Odometry(header=self.header(stamp_ns, parent), child_frame_id=child,
                             pose=self.PoseCov(pose=self.pose(t, q), covariance=np.zeros(36, dtype=np.float64)),
                             twist=self.TwistCov(twist=self.Twist(linear=zero, angular=zero),
                                                 covariance=np.zeros(36, dtype=np.float64)))


def _stamp_ns(start_time_s: float, i: int, rate_hz: float) -> int:
    """``start_time_s + i / rate_hz`` in integer ns (whole seconds kept exact)."""
    sec = math.floor(start_time_s)
    return sec * 1_000_000_000 + int(round((start_time_s - sec) * 1e9)) + int(round(i * 1e9 / rate_hz))


def _pose_of(frame: "Frame") -> tuple[np.ndarray, np.ndarray]:
    """(translation (3,), quaternion (w, x, y, z)) of the camera optical frame in the world/map frame."""
    from fhgs_ros.core.geometry import matrix_to_quat_wxyz, orthonormalize

    c2w = frame.camera.cam_to_world.detach().cpu().double().numpy()
    return c2w[:3, 3].copy(), matrix_to_quat_wxyz(orthonormalize(c2w[:3, :3], tol=1e-2))


def _labels_u16(labels: Any) -> np.ndarray:
    a = labels.detach().cpu().numpy().astype(np.int64)
    return np.where((a < 0) | (a > LABEL_MAX), LABEL_MAX, a).astype("<u2")


def _depth_f32(depth: Any) -> np.ndarray:
    d = depth.detach().cpu().numpy().astype("<f4")
    return np.where(np.isfinite(d), d, np.float32(0)).astype("<f4")


def check_output_path(out: str | Path, overwrite: bool = False) -> None:
    """BagError unless ``out`` can become a new bag: it must not exist, or (``overwrite``) be a rosbag2
    folder; its name must not end in ``.bag`` (readers would take it for a ROS 1 bag)."""
    out = Path(out)
    if out.suffix == ".bag":
        raise BagError(f"{out}: a ROS 2 bag folder name must not end in .bag (readers take it for a ROS 1 bag)")
    if out.exists() and not overwrite:
        raise BagError(f"{out} exists already (pass overwrite=True / --overwrite to replace it)")
    if out.exists() and not (out / "metadata.yaml").is_file():
        raise BagError(f"{out} exists and is not a rosbag2 folder (no metadata.yaml); refusing to replace it")


def write_frames_bag(frames: Sequence["Frame"], out: str | Path, *, storage: str = "sqlite3", pose_mode: str = "tf",
                     rate_hz: float = 5.0, start_time_s: float = 1_700_000_000.0, map_frame: str = "map",
                     camera_frame: str = "camera_optical", body_frame: str = "base_link",
                     topics: BagTopics = BagTopics(), with_depth: bool = True, with_labels: bool = True,
                     typestore_name: str = "ROS2_KILTED", overwrite: bool = False,
                     progress: bool = False) -> BagSummary:
    """Write ``frames`` as a ROS 2 bag folder ``out`` (see the module docstring for the messages).

    ``storage``: ``"sqlite3"`` or ``"mcap"``; ``pose_mode``: ``"tf"``, ``"pose"`` or ``"odom"``;
    ``rate_hz``: frame rate of the stamps; ``start_time_s``: stamp of frame 0 (s since the epoch);
    ``typestore_name``: ``rosbags.typesys.Stores`` member whose message definitions are used (and
    stored in the bag); ``overwrite``: replace an existing ``out`` once the new bag is complete;
    ``progress``: show a tqdm bar. BagError for bad arguments or an existing ``out``.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    from fhgs_ros.bag.reader import default_typestore
    from fhgs_ros.datasets.common import to_uint8_hwc

    out = Path(out)
    if storage not in STORAGES:
        raise BagError(f"unknown bag storage '{storage}' (choose {' or '.join(STORAGES)})")
    if pose_mode not in POSE_MODES:
        raise BagError(f"unknown pose mode '{pose_mode}' (choose one of {', '.join(POSE_MODES)})")
    if not (rate_hz > 0 and math.isfinite(rate_hz)):
        raise BagError(f"frame rate must be a positive number of Hz, got {rate_hz}")
    if not math.isfinite(start_time_s) or start_time_s < 0:
        raise BagError(f"start time must be >= 0 s since the epoch, got {start_time_s}")
    if not frames:
        raise BagError(f"no frames to write to {out}")
    check_output_path(out, overwrite)

    ts = default_typestore(typestore_name)
    msgs = _Msgs(ts)
    plugin = StoragePlugin.SQLITE3 if storage == "sqlite3" else StoragePlugin.MCAP

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_root = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp_root.mkdir()
    tmp_bag = tmp_root / out.name
    counts: dict[str, int] = {}
    stamps: list[int] = []
    try:
        with Writer(tmp_bag, version=Writer.VERSION_LATEST, storage_plugin=plugin) as writer:
            conns: dict[str, Any] = {}

            def write(topic: str, msgtype: str, msg: Any, stamp: int) -> None:
                if topic not in conns:
                    conns[topic] = writer.add_connection(topic, msgtype, typestore=ts)
                writer.write(conns[topic], stamp, ts.serialize_cdr(msg, msgtype))
                counts[topic] = counts.get(topic, 0) + 1

            it: Any = frames
            if progress:
                from tqdm import tqdm

                it = tqdm(frames, desc=f"writing {out.name}", unit="frame")
            for i, fr in enumerate(it):
                stamp = _stamp_ns(start_time_s, i, rate_hz)
                stamps.append(stamp)
                cam = fr.camera
                t, q = _pose_of(fr)
                if pose_mode == "tf":
                    write(TF_TOPIC, T_TF, msgs.tf(stamp, map_frame, camera_frame, t, q), stamp)
                elif pose_mode == "pose":
                    write(topics.pose, T_POSE, msgs.pose_stamped(stamp, map_frame, t, q), stamp)
                else:
                    write(topics.odom, T_ODOM, msgs.odometry(stamp, map_frame, body_frame, t, q), stamp)
                rgb = to_uint8_hwc(fr.image)
                if rgb.shape[:2] != (cam.height, cam.width):
                    raise BagError(f"frame {i} ({fr.path or cam.name}): image is {rgb.shape[1]}x{rgb.shape[0]} "
                                   f"but its camera is {cam.width}x{cam.height}")
                write(topics.image, T_IMAGE, msgs.image(stamp, camera_frame, rgb, "rgb8"), stamp)
                write(topics.camera_info, T_INFO, msgs.camera_info(stamp, camera_frame, cam), stamp)
                if with_depth and fr.depth is not None:
                    write(topics.depth, T_IMAGE, msgs.image(stamp, camera_frame, _depth_f32(fr.depth), "32FC1"), stamp)
                if with_labels and fr.labels is not None:
                    write(topics.labels, T_IMAGE, msgs.image(stamp, camera_frame, _labels_u16(fr.labels), "16UC1"),
                          stamp)
        if out.exists():  # overwrite: swap only now that the new bag is complete
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(old)
            tmp_bag.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp_bag.rename(out)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    n = sum(counts.values())
    log.info("wrote %s: %d frames, %d messages (%s, pose via %s)", out, len(stamps), n, storage, pose_mode)
    return BagSummary(out, len(stamps), n, counts, (stamps[-1] - stamps[0]) * 1e-9, [])


def write_dataset_bag(dataset_path: str | Path, out: str | Path, *, holdout_every: int = 0, downscale: float = 1.0,
                      **kw: Any) -> BagSummary:
    """Load a dataset folder (NeRF ``transforms.json``, COLMAP or OpenSfM; see
    :func:`fhgs_ros.datasets.load_dataset`) and write it with :func:`write_frames_bag` (``**kw``).

    ``holdout_every > 0`` leaves out the held-out views of ``Dataset.split(holdout_every)`` (the
    split the offline mapper evaluates on); their dataset indices are ``skipped_frames``. The
    written frames keep their order and get consecutive stamps.
    """
    from fhgs_ros.datasets import load_dataset

    if holdout_every < 0:
        raise BagError(f"holdout_every must be >= 0, got {holdout_every}")
    check_output_path(out, bool(kw.get("overwrite", False)))
    ds = load_dataset(dataset_path, downscale)
    skipped: list[int] = []
    idx = list(range(len(ds.frames)))
    if holdout_every > 0:
        idx, skipped = ds.split(holdout_every)
        skipped = [i for i in skipped if i not in set(idx)]
    summary = write_frames_bag([ds.frames[i] for i in idx], out, **kw)
    summary.skipped_frames = skipped
    return summary
