"""Input pipeline: messages -> decoded, synchronized frames -> the mapping engine.

Shared by the live node (``mapper_node``: rclpy messages, ``now`` = monotonic wall time) and the
batch bag mapper (``bag_mapping``: messages deserialized from a bag by ``rosbags``, ``now`` = the
bag's log time, so batch runs are deterministic). Messages are duck-typed: anything with the
fields of the ROS 2 message (``header.stamp.sec``, ``encoding``, ``data``, ...) works. No rclpy
import here.

Every image that arrives is accounted for: it is either handed to the engine (which reports it
done as a keyframe, not a keyframe, rejected or dropped) or rejected here with an ``InputError``
(bad encoding, no pose, no camera_info, ...). ``images_received`` / ``images_done`` give the
flow control of ``fhgs-replay --fast`` (fhgs_interfaces/MapperStatus).
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np

from fhgs_ros.online.telemetry import Counters, Problems
from fhgs_ros.online.frames import InputFrame
from fhgs_ros.online.engine import MappingEngine
from fhgs_ros.online.imageproc import (InputError, decode_color, decode_compressed, decode_depth, decode_labels,
                                       make_intrinsics, pose_matrix, pose_to_matrix, stamp_to_sec)
from fhgs_ros.core.camera import Intrinsics
from fhgs_ros.config import NodeConfig
from fhgs_ros.online.guard import Rejected
from fhgs_ros.online.sync import FrameAssembler, PoseBuffer

class Ingest:
    """Decode, validate and synchronize inputs; submit frames to ``engine`` (module docstring).

    tf_lookup: ``lookup(target, source, stamp)`` for ``node.pose_source: tf``.
    fixed_intrinsics: the camera from ``node.camera_info_file`` (then camera_info messages are
    ignored and every image is paired with it).
    submit: how synchronized frames reach the engine (default ``engine.submit``; the batch mapper
    passes ``engine.process_sync``).
    on_done: called after each image is finished with (status publishing).
    """

    def __init__(self, ncfg: NodeConfig, engine: MappingEngine, problems: Problems, counters: Counters,
                 tf_lookup: Any = None, need_labels: bool = False, fixed_intrinsics: Intrinsics | None = None,
                 depth_hint: Callable[[], bool] | None = None, submit: Callable[[InputFrame], Any] | None = None,
                 on_done: Callable[[], None] | None = None):
        self.ncfg = ncfg
        self.engine = engine
        self.problems = problems
        self.counters = counters
        self.tf_lookup = tf_lookup
        self.fixed_intrinsics = fixed_intrinsics
        self.submit = submit or engine.submit
        self.on_done = on_done
        self.assembler = FrameAssembler(ncfg.sync_slop, ncfg.sync_timeout, ncfg.queue_size, ncfg.use_depth,
                                        depth_hint=depth_hint, need_labels=need_labels,
                                        max_stamp_jump=ncfg.max_stamp_jump, recover_frames=ncfg.motion_recover_frames)
        from fhgs_ros.online.motion import MotionGate, MotionLimits
        self.motion = MotionGate(MotionLimits.from_node(ncfg))  # speed / rotation plausibility of frame poses
        self.assembler.on_reanchor = self._timeline_reanchored
        self.poses = PoseBuffer(maxlen=2000, slop=max(ncfg.sync_slop, 1e-3))
        self.extrinsic = pose_matrix(ncfg.camera_extrinsic[:3], ncfg.camera_extrinsic[3:], 1e-3,
                                     "node.camera_extrinsic")
        self.last_frame_id = ncfg.camera_frame or "camera"
        self.lock = threading.Lock()
        self.images_received = 0
        self.images_done = 0
        self.last_done_stamp = 0.0
        self._info_ignored_logged = False
        engine.add_frame_done_listener(self._engine_done)

    def apply_live(self, ncfg: NodeConfig) -> None:
        """Take the live-changeable node parameters of an already validated ``ncfg``."""
        self.ncfg = ncfg
        self.assembler.slop, self.assembler.timeout = ncfg.sync_slop, ncfg.sync_timeout
        self.poses.slop = max(ncfg.sync_slop, 1e-3)
        self.assembler.timeline.max_forward = ncfg.max_stamp_jump

    # ------------------------------------------------------------------ accounting
    def _finish(self, n: int = 1, stamp: float | None = None) -> None:
        if n <= 0:
            return
        with self.lock:
            self.images_done += n
            if stamp is not None:
                self.last_done_stamp = max(self.last_done_stamp, stamp)
        if self.on_done is not None:
            self.on_done()

    def _engine_done(self, stamp: float, outcome: str) -> None:
        self.counters.inc(f"frames_{outcome}")
        self._finish(1, stamp)

    def _reject_image(self, err: InputError, stamp: float | None = None) -> None:
        self.problems.report(err)
        self._finish(1, stamp)

    # ------------------------------------------------------------------ images
    def image(self, msg, now: float) -> None:
        """sensor_msgs/Image (colour or mono)."""
        with self.lock:
            self.images_received += 1
        self.counters.tick("image", now)
        stamp = stamp_to_sec(msg.header.stamp)
        n = int(msg.width) * int(msg.height)
        if n > self.ncfg.max_input_pixels:
            return self._reject_image(InputError("image_too_large", f"image {msg.width}x{msg.height} "
                                                                    f"({n / 1e6:.1f} MP) exceeds node.max_input_pixels="
                                                                    f"{self.ncfg.max_input_pixels}; dropped"), stamp)
        try:
            rgb = decode_color(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian),
                               what=f"image ({msg.width}x{msg.height} {msg.encoding})")
        except InputError as exc:
            return self._reject_image(exc, stamp)
        self._queue_image(msg.header, rgb, now)

    def compressed(self, msg, now: float, size: tuple[int, int] | None = None) -> None:
        """sensor_msgs/CompressedImage (jpeg / png); ``size`` from the header when known (pixel cap)."""
        with self.lock:
            self.images_received += 1
        self.counters.tick("image", now)
        stamp = stamp_to_sec(msg.header.stamp)
        try:
            from fhgs_ros.online.payloads import check_compressed
            try:  # the size declared by the png/jpeg header, checked before anything is decoded
                _, w, h = check_compressed(msg.data, self.ncfg.max_input_pixels, f"compressed image ('{msg.format}')")
                size = (w, h)
            except Rejected as exc:
                raise InputError(exc.kind, exc.reason) from None
            if size is not None and size[0] * size[1] > self.ncfg.max_input_pixels:
                raise InputError("image_too_large", f"compressed image {size[0]}x{size[1]} "
                                                    f"({size[0] * size[1] / 1e6:.1f} MP) exceeds "
                                                    f"node.max_input_pixels={self.ncfg.max_input_pixels}; dropped")
            rgb = decode_compressed(msg.format, msg.data, what=f"compressed image ('{msg.format}')")
        except InputError as exc:
            return self._reject_image(exc, stamp)
        self._queue_image(msg.header, rgb, now)

    def _queue_image(self, header, rgb: np.ndarray, now: float) -> None:
        stamp = stamp_to_sec(header.stamp)
        if header.frame_id:
            self.last_frame_id = header.frame_id
        if self.fixed_intrinsics is not None:
            self.assembler.add_info(stamp, self.fixed_intrinsics)
        drops = self.assembler.add_image(stamp, (rgb, now), header.frame_id, now)
        for d in drops:
            self.problems.report(d)
        self._finish(len(drops), stamp)
        self.poll(now)

    # ------------------------------------------------------------------ partners
    def camera_info(self, msg) -> None:
        self.counters.tick("camera_info")
        if self.fixed_intrinsics is not None:
            if not self._info_ignored_logged:
                self._info_ignored_logged = True
                self.problems.report(InputError("camera_info_ignored", "camera_info messages are ignored: "
                                                                       "node.camera_info_file is set"))
            return
        try:
            intr = make_intrinsics(msg.width, msg.height, list(msg.k), list(msg.d), msg.distortion_model)
        except InputError as exc:
            return self.problems.report(exc)
        self.assembler.add_info(stamp_to_sec(msg.header.stamp), intr)

    def _aux_image(self, msg, now: float, kind: str, decode) -> Any:
        """Decoded depth / label image, or None (rejection reported)."""
        self.counters.tick(kind, now)
        if int(msg.width) * int(msg.height) > self.ncfg.max_input_pixels:
            self.problems.report(InputError("image_too_large", f"{kind} {msg.width}x{msg.height} exceeds "
                                                               f"node.max_input_pixels; dropped"))
            return None
        try:
            return decode(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian),
                          what=f"{kind} ({msg.width}x{msg.height} {msg.encoding})")
        except InputError as exc:
            self.problems.report(exc)
            return None

    def depth(self, msg, now: float) -> None:
        """sensor_msgs/Image depth (16UC1 mm / 32FC1 m), registered to the colour image."""
        d = self._aux_image(msg, now, "depth", decode_depth)
        if d is not None:
            self.assembler.add_depth(stamp_to_sec(msg.header.stamp), d, now)

    def labels(self, msg, now: float) -> None:
        """sensor_msgs/Image of integer label ids (16UC1 / mono16 / 8UC1 / mono8), registered to the image."""
        lab = self._aux_image(msg, now, "labels", decode_labels)
        if lab is not None:
            self.assembler.add_labels(stamp_to_sec(msg.header.stamp), lab)

    def body_pose(self, pose, header, what: str) -> None:
        """A pose of the tracked body in map_frame (PoseStamped / Odometry); camera = body * extrinsic."""
        try:
            m = pose_to_matrix(pose, self.ncfg.quat_tolerance, what)
        except InputError as exc:
            return self.problems.report(exc)
        if header.frame_id and header.frame_id.lstrip("/") != self.ncfg.map_frame:
            self.problems.report(InputError("pose_frame", f"{what} is in frame '{header.frame_id}', not map_frame "
                                                          f"'{self.ncfg.map_frame}'; used as if it were map_frame"))
        self.poses.add(stamp_to_sec(header.stamp), m @ self.extrinsic)

    def pose(self, msg) -> None:
        self.counters.tick("pose")
        if self.ncfg.pose_source == "pose":
            self.body_pose(msg.pose, msg.header, "pose")

    def odom(self, msg) -> None:
        self.counters.tick("odom")
        if self.ncfg.pose_source == "odom":
            self.body_pose(msg.pose.pose, msg.header, "odometry")

    # ------------------------------------------------------------------ matching
    def lookup_pose(self, stamp: float, frame_id: str):
        if self.ncfg.pose_source == "tf":
            frame = self.ncfg.camera_frame or frame_id
            if not frame:
                return None, "the image has no header.frame_id and node.camera_frame is empty", True
            if self.tf_lookup is None:
                return None, "no TF buffer", True
            return self.tf_lookup.lookup(self.ncfg.map_frame, frame, stamp)
        return self.poses.lookup(stamp)

    def poll(self, now: float) -> int:
        """Release the frames whose partners are complete (or drop timed-out ones); returns frames submitted."""
        frames, drops = self.assembler.poll(now, self.lookup_pose)
        for d in drops:
            self.problems.report(d)
        self._finish(len(drops))
        n = 0
        for f in frames:
            (rgb, received), intr = f.image, f.info
            if (rgb.shape[1], rgb.shape[0]) != (intr.width, intr.height):
                self._reject_image(InputError("size_mismatch", f"image {rgb.shape[1]}x{rgb.shape[0]} does not match "
                                                               f"its camera_info {intr.width}x{intr.height}; dropped"),
                                   f.stamp)
                continue
            try:
                if self.motion.check(f.stamp, f.pose) == "reanchored":
                    self.counters.inc("motion_reanchors")
            except Rejected as exc:  # implausible_motion / pose_out_of_range / pose_nan
                self._reject_image(InputError(exc.kind, exc.reason), f.stamp)
                continue
            if f.extra.get("depth_missing"):
                self.counters.inc("frames_without_depth")
            self.counters.inc("frames_synced")
            self.submit(InputFrame(f.stamp, rgb, intr, f.pose, f.depth, f.frame_id, received, f.labels))
            n += 1
        return n

    @property
    def pending(self) -> int:
        """Images received and not yet finished."""
        with self.lock:
            return self.images_received - self.images_done

    def _timeline_reanchored(self, stamp: float) -> None:
        """The image stamps moved to a new timeline (clock glitch, restarted bag): poses of the old one
        after ``stamp`` and the motion anchor no longer apply."""
        self.poses.drop_newer(stamp + max(self.ncfg.sync_slop, 1e-3))
        self.motion.reset()
        self.counters.inc("time_reanchors")

    def reset(self) -> None:
        """Forget every buffered input (sync queue, camera_info / depth / label buffers, poses, timeline,
        motion anchor): after reset / load_map / a ROS time jump nothing of the old stream is used."""
        self.assembler.reset()
        self.poses.clear()
        self.motion.reset()

