"""fhgs-node: live incremental FHGS mapping from posed camera streams (ROS 2, rclpy).

Run:  fhgs-node --ros-args --params-file config/fhgs.yaml [-p features.sam_checkpoint:=...]
      python -m fhgs_ros.ros.mapper_node --ros-args ...   (same thing)

Interface (names relative to the node, all remappable; docs/ARCHITECTURE.md §4):
- in: ``image`` (sensor_msgs/Image: rgb8 bgr8 rgba8 bgra8 mono8 mono16) or ``image/compressed``
  (jpeg/png), ``camera_info`` (plumb_bob / rational_polynomial / equidistant distortion:
  undistorted before mapping), optional ``depth`` (16UC1 mm, 32FC1 m), the pose from TF
  (``node.map_frame`` -> the image's optical frame), ``pose`` (PoseStamped) or ``odom``
  (Odometry) per ``node.pose_source``, optional ``seed_points`` (PointCloud2 in map_frame),
  ``/clicked_point`` (PointStamped: RViz "Publish Point" runs a 3-D-point query);
- out: ``render/rgb``, ``render/depth`` (32FC1 m), ``render/normal``, ``render/features_pca``
  (Image, from the latest keyframe pose), ``render/features`` (fhgs_interfaces/FeatureImage),
  ``map/points`` (PointCloud2: x y z rgb pca_rgb opacity cluster [feat_*]), ``map/mesh``
  (Marker TRIANGLE_LIST, TSDF over keyframes), ``query/points`` (PointCloud2), ``query/markers``
  (MarkerArray), ``/diagnostics``;
- services: ``save_map``, ``load_map``, ``reset`` (std_srvs/Trigger), ``render_view``,
  ``query_feature``, ``segment_view``, ``export_mesh`` (fhgs_interfaces/srv).

Threads: subscription callbacks only decode, validate and enqueue (bounded; drops counted);
the MappingEngine's frontend / optimizer / saver threads do the work (fhgs_ros.online.engine); a
render thread publishes the live views; services and timers read immutable map snapshots.
Every rejected input is logged once per kind with its reason and counted in /diagnostics.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PointStamped, PoseStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker, MarkerArray

from fhgs_interfaces.msg import FeatureImage, MapperStatus
from fhgs_interfaces.srv import ExportMesh, LoadMap, QueryFeature, RenderView, SaveMap, SegmentView
from fhgs_ros.config import (ConfigError, build_config, default_parameters, live_parameters,  # noqa: F401
                             parameter_specs)
from fhgs_ros.core.camera import Camera
from fhgs_ros.ros import conversions as conv
from fhgs_ros.online.telemetry import Counters, Problems
from fhgs_ros.online.engine import MappingEngine, cleanup_stale_temp_files
from fhgs_ros.online.frames import MapState
from fhgs_ros.features.registry import build_extractor
from fhgs_ros.online.calibration import calibration_from_params
from fhgs_ros.online.imageproc import InputError, fit_size
from fhgs_ros.online.ingest import Ingest
from fhgs_ros.online import requests as rq
from fhgs_ros.online.guard import Guard, Rejected, Supervisor, bounded_wait
from fhgs_ros.online.limits import SEGMENT_BYTES_PER_PIXEL, RequestGate, RequestLimits
from fhgs_ros.online.paths import MAP_SUFFIXES, MESH_SUFFIXES, MapDir, default_map_dir

STANDARD_PARAMETERS = {"use_sim_time", "start_type_description_service"}


class FHGSNode(Node):
    """The mapping node (module docstring); the constructor reads as the steps it takes."""

    def __init__(self, node_name: str = "fhgs_node", **kwargs):
        super().__init__(node_name, **kwargs)
        self.log = self.get_logger()
        self._declare_parameters()
        self._build_engine()
        self._build_guards()
        self._resume()
        self._subscribe()
        self._advertise()
        self._create_services()
        self._create_timers()
        self._start()

    # ------------------------------------------------------------------ construction steps
    def _declare_parameters(self) -> None:
        """Declare every parameter of the table (fhgs_ros.config) with its description, range and
        live flag; read and validate the values (ConfigError stops the node with the key's name)."""
        specs = parameter_specs()
        for name, default in default_parameters().items():
            spec = specs[name]
            d = ParameterDescriptor(description=spec.describe(), dynamic_typing=True, read_only=not spec.live)
            if isinstance(default, list):
                default = [float(v) for v in default]
            self.declare_parameter(name, default, d)
        flat = {k: self.get_parameter(k).value for k in default_parameters()}
        unknown = sorted(k for k in self._parameter_overrides if k not in flat and k not in STANDARD_PARAMETERS)
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown parameter" + (f" (and {len(unknown) - 1} more)"
                                                                    if len(unknown) > 1 else ""))
        self.cfg, self.ncfg = build_config(flat)
        self.flat = flat
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def _build_engine(self) -> None:
        """Feature extractor, mapping engine and input pipeline (all ROS-free)."""
        nc = self.ncfg
        if nc.torch_threads > 0:
            torch.set_num_threads(nc.torch_threads)
        self.extractor = build_extractor(self.cfg)
        self.sam_parts = None
        self.problems = Problems(logger=self.log.warning)
        self.counters = Counters()
        self._render_event = threading.Event()
        self._stop = threading.Event()
        self.engine = MappingEngine(self.cfg, nc, self.extractor, self.problems, self.counters,
                                    on_keyframe=lambda st: self._render_event.set(), on_save=self._on_autosave,
                                    info=self.log.info)
        fixed = calibration_from_params(nc)
        if fixed is not None:
            self.log.info(f"camera from {nc.camera_info_file}: {fixed.width}x{fixed.height} {fixed.model or 'pinhole'}"
                          f" fx {fixed.fx:.2f} fy {fixed.fy:.2f} (camera_info messages ignored)")
        self._depth_sub = None
        self._status_dirty = threading.Event()
        self.ingest = Ingest(nc, self.engine, self.problems, self.counters, tf_lookup=None,
                             need_labels=getattr(self.extractor, "input_kind", "image") == "labels",
                             fixed_intrinsics=fixed, on_done=self._status_dirty.set,
                             depth_hint=lambda: self._depth_sub is not None
                             and self.count_publishers(self._depth_sub.topic_name) > 0)
        self.mesh = None
        self.mesh_version = -1
        self.cloud_version = -1
        self.render_version = -1
        self._last_render_pub = 0.0
        self._last_status = 0.0

    def _build_guards(self) -> None:
        """Fault containment and request bounds (fhgs_ros/online: guard, limits, paths; README "Security")."""
        report = lambda kind, why: self.problems.report(InputError(kind, why))  # noqa: E731
        self.guard = Guard(report, self.counters.inc, self.log.error, shutting_down=lambda: not self.context.ok())
        self.supervisor = Supervisor(self._stop, report)
        self.limits = RequestLimits.from_node(self.ncfg)
        self.gate = RequestGate(self.ncfg.max_concurrent_requests)
        self.map_dir = MapDir(self.ncfg.map_dir or default_map_dir(self.ncfg.map_path),
                              [p for p in self.ncfg.map_dir_allow.split(":") if p] + self._operator_files())

    def _subscribe(self) -> None:
        """Inputs (best effort sensors or reliable per node.sensor_qos; reliable poses) and TF."""
        nc = self.ncfg
        self.cb_input = ReentrantCallbackGroup()
        self.cb_services = ReentrantCallbackGroup()
        self.cb_cloud = MutuallyExclusiveCallbackGroup()
        self.cb_mesh = MutuallyExclusiveCallbackGroup()
        self.cb_diag = MutuallyExclusiveCallbackGroup()
        sensor = QoSProfile(depth=max(2, nc.queue_size),
                            reliability=ReliabilityPolicy.RELIABLE if nc.sensor_qos == "reliable"
                            else ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST)
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
        g = self.cb_input
        cb = self.guard.callback  # an exception in a callback is a counted rejection, never the executor's
        self.create_subscription(Image, "image", cb("image", self._on_image), sensor, callback_group=g)
        self.create_subscription(CompressedImage, "image/compressed", cb("compressed", self._on_compressed), sensor,
                                 callback_group=g)
        self.create_subscription(CameraInfo, "camera_info", cb("camera_info", self._on_camera_info), sensor,
                                 callback_group=g)
        self._depth_sub = self.create_subscription(Image, "depth", cb("depth", self._on_depth), sensor,
                                                   callback_group=g)
        self.create_subscription(Image, "labels", cb("labels", self._on_labels), sensor, callback_group=g)
        self.create_subscription(PoseStamped, "pose", cb("pose", self._on_pose), reliable, callback_group=g)
        self.create_subscription(Odometry, "odom", cb("odom", self._on_odom), reliable, callback_group=g)
        self.create_subscription(PointCloud2, "seed_points", cb("seed_points", self._on_seed_points), reliable,
                                 callback_group=g)
        self.create_subscription(PointStamped, "/clicked_point", cb("clicked_point", self._on_clicked_point),
                                 reliable, callback_group=self.cb_services)
        from fhgs_ros.ros.tf import make_tf_lookup
        self.tf = make_tf_lookup(self, nc.tf_cache_time, 0.0, g, self.problems.report, nc.tf_backend)
        self.log.info(f"TF backend: {self.tf.backend}")
        self.ingest.tf_lookup = self.tf

    def _advertise(self) -> None:
        """Outputs: reliable + transient local (a late RViz gets the last image, cloud and mesh)."""
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.pub_rgb = self.create_publisher(Image, "render/rgb", latched)
        self.pub_depth = self.create_publisher(Image, "render/depth", latched)
        self.pub_normal = self.create_publisher(Image, "render/normal", latched)
        self.pub_pca = self.create_publisher(Image, "render/features_pca", latched)
        self.pub_feat = self.create_publisher(FeatureImage, "render/features", latched)
        self.pub_cloud = self.create_publisher(PointCloud2, "map/points", latched)
        self.pub_mesh = self.create_publisher(Marker, "map/mesh", latched)
        self.pub_qpoints = self.create_publisher(PointCloud2, "query/points", latched)
        self.pub_qmarkers = self.create_publisher(MarkerArray, "query/markers", latched)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.pub_status = self.create_publisher(MapperStatus, "mapper_status",
                                                QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE,
                                                           history=HistoryPolicy.KEEP_LAST))

    def _create_services(self) -> None:
        s = self.cb_services
        sv, gt = self.guard.service, self.gate  # exceptions -> success=false; heavy requests admitted by the gate
        self.create_service(SaveMap, "save_map", sv("save_map", self._srv_save, gt), callback_group=s)
        self.create_service(LoadMap, "load_map", sv("load_map", self._srv_load, gt), callback_group=s)
        self.create_service(Trigger, "reset", sv("reset", self._srv_reset), callback_group=s)
        self.create_service(RenderView, "render_view", sv("render_view", self._srv_render, gt), callback_group=s)
        self.create_service(QueryFeature, "query_feature", sv("query_feature", self._srv_query, gt), callback_group=s)
        self.create_service(SegmentView, "segment_view", sv("segment_view", self._srv_segment, gt), callback_group=s)
        self.create_service(ExportMesh, "export_mesh", sv("export_mesh", self._srv_export_mesh, gt), callback_group=s)

    def _create_timers(self) -> None:
        """Internal timers run on the steady clock: with use_sim_time a paused /clock (bag replay waiting
        for the mapper) must not stop synchronization, status, diagnostics or the cloud/mesh refresh."""
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        cb = self.guard.callback
        self.create_timer(0.05, cb("poll", self._poll), callback_group=self.cb_input, clock=steady)
        self.create_timer(0.02, cb("status", self._status_tick), callback_group=self.cb_diag, clock=steady)
        self.diag_timer = self.create_timer(self.ncfg.diagnostics_period, cb("diagnostics", self._publish_diagnostics),
                                            callback_group=self.cb_diag, clock=steady)
        self.create_timer(0.5, cb("cloud", self._cloud_tick), callback_group=self.cb_cloud, clock=steady)
        self.create_timer(1.0, cb("mesh", self._mesh_tick), callback_group=self.cb_mesh, clock=steady)
        self._watch_time_jumps()

    def _start(self) -> None:
        """Engine threads and the render thread; the ready line."""
        nc = self.ncfg
        self.engine.start(self.supervisor)  # worker loops restarted when they raise; health in /diagnostics
        self._render_thread = self.supervisor.spawn("fhgs-render", self._render_loop)
        from fhgs_ros.core.render import native_rasterizer
        from fhgs_ros.features.selection import describe_extractor
        raster = "native" if self.cfg.mapper.backend != "reference" and native_rasterizer() is not None else \
            "PyTorch reference (slow: build the native extension with make setup)"
        self.log.info(f"fhgs_node ready: features {self.engine.model_id} ({self.engine.dim}-d), pose from "
                      f"{nc.pose_source}, map_frame '{nc.map_frame}', map_path '{nc.map_path}', "
                      f"{len(self.engine.state.surfels)} surfels, rasterizer {raster}, torch threads "
                      f"{torch.get_num_threads()}; {describe_extractor(self.extractor)}")

    # ------------------------------------------------------------------ parameters
    def _on_set_parameters(self, params) -> SetParametersResult:
        try:
            return self._set_parameters(params)
        except Exception as exc:  # noqa: BLE001 - a parameter value must never break the node
            self.problems.report(InputError("bad_parameter", f"set_parameters: {type(exc).__name__}: {exc}"[:300]))
            return SetParametersResult(successful=False, reason=f"refused ({type(exc).__name__})")

    def _set_parameters(self, params) -> SetParametersResult:
        """Validate the whole new parameter set with the one validator, then let each owner apply its part."""
        new = dict(self.flat)
        live = live_parameters()
        for p in params:
            if p.name in STANDARD_PARAMETERS:
                continue
            if p.name not in new:
                return SetParametersResult(successful=False, reason=f"{p.name}: unknown parameter")
            if p.name not in live:
                return SetParametersResult(successful=False,
                                           reason=f"{p.name}: cannot change while the node runs (restart it)")
            new[p.name] = p.value
        try:
            _, ncfg = build_config(new)
        except ConfigError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.flat = new
        self.ncfg = ncfg
        self.engine.apply_live(ncfg)
        self.ingest.apply_live(ncfg)
        self.limits = RequestLimits.from_node(ncfg)
        return SetParametersResult(successful=True)

    def _operator_files(self) -> list[str]:
        """Files the operator configured (allowed outside node.map_dir): map_path and its default mesh."""
        mp = self.ncfg.map_path
        if not mp:
            return []
        p = Path(mp).expanduser()
        return [str(p), str(p.with_suffix("")) + "_mesh.ply"]

    def _watch_time_jumps(self) -> None:
        """A ROS time jump (a restarted bag, /clock going back) re-anchors the input timeline."""
        try:
            from rclpy.clock import JumpThreshold
            from rclpy.duration import Duration
            self._jump_handle = self.get_clock().create_jump_callback(
                JumpThreshold(min_forward=Duration(seconds=3600), min_backward=Duration(seconds=-0.5),
                              on_clock_change=True),
                post_callback=self.guard.callback("time_jump", self._on_time_jump))
        except Exception as exc:  # noqa: BLE001 - older rclpy: no jump handlers; Timeline recovery still works
            self.log.warning(f"no ROS time jump handler ({type(exc).__name__}: {exc})")

    def _on_time_jump(self, jump) -> None:
        from rclpy.clock import ClockChange

        if getattr(jump, "clock_change", None) in (ClockChange.ROS_TIME_ACTIVATED, ClockChange.ROS_TIME_DEACTIVATED):
            return  # sim time switched on / off (start-up): not a jump of the input timeline
        delta = getattr(getattr(jump, "delta", None), "nanoseconds", 0)
        if self.get_clock().now().nanoseconds - delta <= 0:
            return  # the first /clock message: the sim clock leaves 0, nothing was buffered on the old timeline
        self.ingest.reset()
        self.counters.inc("time_jumps")
        self.problems.report(InputError("ros_time_jump", "ROS time jumped: the input buffers were cleared"))

    # ------------------------------------------------------------------ start-up
    def _resume(self) -> None:
        nc = self.ncfg
        if not nc.map_path:
            return
        removed = cleanup_stale_temp_files(nc.map_path)
        if removed:
            self.log.warning(f"removed {len(removed)} temporary file(s) of an interrupted save: {removed}")
        if nc.resume and Path(nc.map_path).expanduser().exists():
            ok, msg = self.engine.load(nc.map_path)
            if ok:
                self.log.info(f"resumed: {msg}")
            else:
                self.log.error(f"could not resume from '{nc.map_path}' ({msg}); starting with an empty map")

    # ------------------------------------------------------------------ inputs
    def _report(self, err: InputError) -> None:
        self.problems.report(err)

    def _on_image(self, msg: Image) -> None:
        self.ingest.image(msg, time.monotonic())

    def _on_compressed(self, msg: CompressedImage) -> None:
        self.ingest.compressed(msg, time.monotonic())  # size from the png/jpeg header (online/payloads.py)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self.ingest.camera_info(msg)

    def _on_depth(self, msg: Image) -> None:
        self.ingest.depth(msg, time.monotonic())

    def _on_labels(self, msg: Image) -> None:
        self.ingest.labels(msg, time.monotonic())

    def _on_pose(self, msg: PoseStamped) -> None:
        self.ingest.pose(msg)

    def _on_odom(self, msg: Odometry) -> None:
        self.ingest.odom(msg)

    def _poll(self) -> None:
        self.ingest.poll(time.monotonic())

    @property
    def last_frame_id(self) -> str:
        return self.ingest.last_frame_id

    # ------------------------------------------------------------------ status (fhgs-replay flow control)
    def status_message(self) -> MapperStatus:
        ing, st = self.ingest, self.engine.state
        msg = MapperStatus()
        msg.header = conv.make_header(self.ncfg.map_frame, ing.last_done_stamp)
        with ing.lock:
            msg.images_received, msg.images_done = ing.images_received, ing.images_done
        msg.keyframes = int(st.keyframes_total)
        msg.iterations = int(self.engine.mapper.iteration)
        msg.surfels = len(st.surfels)
        msg.idle = bool(ing.pending == 0 and self.engine.idle)
        msg.step_mode = self.ncfg.step_mode
        counts = self.problems.snapshot()
        kinds = sorted(counts)
        msg.drop_kinds = kinds
        msg.drop_counts = [int(counts[k]) for k in kinds]
        msg.drop_reasons = [self.problems.last.get(k, "") for k in kinds]
        return msg

    def _status_tick(self) -> None:
        now = time.monotonic()
        if self._status_dirty.is_set() or now - self._last_status >= 0.5:
            self._status_dirty.clear()
            self._last_status = now
            self.pub_status.publish(self.status_message())

    def _on_seed_points(self, msg: PointCloud2) -> None:
        try:
            xyz, rgb = conv.pointcloud2_to_xyz_rgb(msg)
            frame = msg.header.frame_id.lstrip("/")
            if frame and frame != self.ncfg.map_frame:
                t, why, _ = self.tf.lookup(self.ncfg.map_frame, frame, conv.stamp_to_sec(msg.header.stamp))
                if t is None:
                    raise InputError("bad_pointcloud", f"seed points in frame '{frame}': {why}")
                xyz = (xyz.astype(np.float64) @ t[:3, :3].T + t[:3, 3]).astype(np.float32)
        except InputError as exc:
            return self._report(exc)
        n = self.engine.add_seed_points(xyz, rgb)
        self.counters.inc("seed_points", len(xyz))
        self.log.info(f"seed points: +{len(xyz)} ({n} waiting for a keyframe that sees them)")

    # ------------------------------------------------------------------ rendering
    def _header(self, t: float, frame: str | None = None):
        return conv.make_header(frame or self.last_frame_id, t)

    def _view_camera(self, cam: Camera, long_side: int) -> Camera:
        w, h = fit_size(cam.width, cam.height, long_side)
        return cam if (w, h) == (cam.width, cam.height) else cam.scaled(w / cam.width)

    def render_images(self, st: MapState, cam: Camera, include_features: bool, feature_long_side: int | None = None):
        """Renders of one view: dict of numpy images (+ raw features tensor when asked)."""
        from fhgs_ros.core.render import rasterizer, surfel_colors

        r = self.engine.render(cam, False, st)
        alpha = r.alpha.clamp(0, 1)
        out = {"rgb": (r.rgb.clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy(),
               "depth": torch.where(alpha > 0.5, r.depth_median, torch.zeros_like(r.depth_median)).numpy(),
               "alpha": alpha.numpy()}
        n = (r.normal / alpha.clamp_min(1e-6)).clamp(-1, 1)
        nimg = torch.where(alpha[None] > 0.5, n * 0.5 + 0.5, torch.zeros_like(n))
        out["normal"] = (nimg.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        pca = st.pca
        if pca is not None and len(st.surfels):
            with torch.no_grad():
                coords = pca.project(st.surfels.features_raw.float())  # (N, 3), affine in the feature
                fn = rasterizer(self.cfg.mapper.backend)
                s = st.surfels
                rr = fn(s.means, s.quats, s.scales, s.opacity, surfel_colors(s, cam), cam, None, None, None, None,
                        coords)
                p = rr.features / rr.alpha.clamp_min(1e-6)[None]  # = PCA of the alpha-normalized rendered feature
                rgb = ((p - pca.lo[:, None, None]) / (pca.hi - pca.lo)[:, None, None]).clamp(0, 1)
                rgb = torch.where(rr.alpha[None] >= 1e-3, rgb, torch.zeros_like(rgb))
            out["features_pca"] = (rgb.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        else:
            out["features_pca"] = np.zeros_like(out["rgb"])
        if include_features:
            fc = cam if feature_long_side is None else self._view_camera(cam, feature_long_side)
            f = self.engine.render(fc, True, st).features
            if f is None or f.numel() == 0:  # empty map
                f = torch.zeros(st.feature_dim, fc.height, fc.width)
            out["features"] = f
        return out

    def _render_loop(self) -> None:
        while not self._stop.is_set():
            period = self.ncfg.publish_period
            bounded_wait(self._render_event, period if period > 0 else 1.0)
            forced = self._render_event.is_set()
            self._render_event.clear()
            if self._stop.is_set():
                return
            st = self.engine.state
            if st.last_camera is None:
                continue
            if not forced and (period <= 0 or st.version == self.render_version):
                continue
            try:
                self._publish_renders(st)
            except Exception as exc:  # noqa: BLE001 - keep publishing later
                if self._stop.is_set() or not self.context.ok():
                    return
                self.log.error(f"render publishing failed: {type(exc).__name__}: {exc}")

    def _publish_renders(self, st: MapState) -> None:
        nc = self.ncfg
        cam = self._view_camera(st.last_camera, nc.render_long_side)
        feat_ls = max(16, min(nc.render_long_side or 10 ** 6, 96))
        imgs = self.render_images(st, cam, nc.publish_features, feat_ls)
        hdr = self._header(st.stamp)
        self.pub_rgb.publish(conv.rgb_to_image(imgs["rgb"], hdr))
        self.pub_depth.publish(conv.float_to_image(imgs["depth"], hdr))
        self.pub_normal.publish(conv.rgb_to_image(imgs["normal"], hdr))
        self.pub_pca.publish(conv.rgb_to_image(imgs["features_pca"], hdr))
        if "features" in imgs:
            self.pub_feat.publish(conv.feature_image_msg(imgs["features"], hdr, nc.feature_dtype, st.model_id))
        self.render_version = st.version
        if st.received > 0:
            self.counters.set("latency_ms", (time.monotonic() - st.received) * 1000)
        self.counters.inc("renders_published")

    # ------------------------------------------------------------------ cloud and mesh
    def cloud_columns(self, st: MapState, idx: torch.Tensor | None = None, scores: torch.Tensor | None = None,
                      features: bool = False) -> dict[str, np.ndarray]:
        from fhgs_ros.core.sh import C0 as SH_C0

        s = st.surfels
        sel = (lambda t: t) if idx is None else (lambda t: t[idx])
        with torch.no_grad():
            xyz = sel(s.means).float().numpy()
            rgb = (sel(s.sh_dc).reshape(-1, 3) * SH_C0 + 0.5).clamp(0, 1).numpy()
            cols = {"x": xyz[:, 0].copy(), "y": xyz[:, 1].copy(), "z": xyz[:, 2].copy(), "rgb": conv.pack_rgb(rgb)}
            if st.pca is not None:
                cols["pca_rgb"] = conv.pack_rgb(st.pca.to_rgb_points(sel(s.features_raw).float()).numpy())
            cols["opacity"] = sel(s.opacity).float().numpy()
            if st.centroids is not None:
                cols["cluster"] = (sel(s.features_unit) @ st.centroids.T).argmax(1).to(torch.int32).numpy()
            if scores is not None:
                cols["score"] = scores.float().numpy()
            if features:
                f = sel(s.features_raw).float().numpy()
                for i in range(f.shape[1]):
                    cols[f"feat_{i}"] = np.ascontiguousarray(f[:, i])
        return cols

    def _cloud_tick(self) -> None:
        nc = self.ncfg
        if nc.cloud_period <= 0:
            return
        now = time.monotonic()
        if now - getattr(self, "_last_cloud", 0.0) < nc.cloud_period:
            return
        st = self.engine.state
        if st.version == self.cloud_version:
            return
        self._last_cloud = now
        idx = None
        if len(st.surfels) > nc.cloud_max_points:
            g = torch.Generator().manual_seed(0)
            idx = torch.randperm(len(st.surfels), generator=g)[: nc.cloud_max_points].sort().values
        cols = self.cloud_columns(st, idx, features=nc.cloud_features)
        self.pub_cloud.publish(conv.make_pointcloud2(cols, self._header(st.stamp, nc.map_frame)))
        self.cloud_version = st.version
        self.counters.inc("clouds_published")

    def compute_mesh(self, st: MapState):
        from fhgs_ros.core.mesh import mesh_from_surfels

        nc = self.ncfg
        cams = [self._view_camera(c, nc.mesh_long_side) for c in st.cameras[-nc.mesh_max_keyframes:]]
        return mesh_from_surfels(st.surfels, cams, voxel_size=nc.mesh_voxel_size or None, drop_small=False,
                                 max_voxels=128 ** 3, backend=self.cfg.mapper.backend)

    def _mesh_tick(self) -> None:
        nc = self.ncfg
        if nc.mesh_period <= 0:
            return
        now = time.monotonic()
        if now - getattr(self, "_last_mesh", 0.0) < nc.mesh_period:
            return
        st = self.engine.state
        if st.version == self.mesh_version or not st.cameras or len(st.surfels) == 0:
            return
        self._last_mesh = now
        try:
            mesh = self.compute_mesh(st)
        except Exception as exc:  # noqa: BLE001
            self.log.error(f"mesh refresh failed: {type(exc).__name__}: {exc}")
            return
        self.mesh, self.mesh_version = mesh, st.version
        self._publish_mesh(mesh, st)

    def _publish_mesh(self, mesh, st: MapState) -> None:
        v = mesh.vertices.numpy() if hasattr(mesh.vertices, "numpy") else np.asarray(mesh.vertices)
        f = mesh.faces.numpy() if hasattr(mesh.faces, "numpy") else np.asarray(mesh.faces)
        c = None
        if mesh.colors is not None:
            c = mesh.colors.numpy() if hasattr(mesh.colors, "numpy") else np.asarray(mesh.colors)
        self.pub_mesh.publish(conv.mesh_marker(v, f, c, self._header(st.stamp, self.ncfg.map_frame),
                                               max_triangles=self.ncfg.mesh_max_triangles))
        self.counters.inc("meshes_published")
        self.counters.set("mesh_faces", len(f))

    # ------------------------------------------------------------------ diagnostics
    def diagnostics(self) -> DiagnosticStatus:
        now = time.monotonic()
        es = self.engine.stats()
        cs = self.counters.snapshot()
        ps = self.problems.snapshot()
        values: dict[str, object] = {}
        for name in ("image", "camera_info", "depth", "pose", "odom"):
            values[f"rate_{name}_hz"] = round(self.counters.rate(name, now), 2)
        values.update(es)
        values["tf_messages"] = getattr(self.tf, "count", 0)
        for k in ("frames_synced", "frames_without_depth", "frames_not_keyframes", "keyframes_prepared",
                  "renders_published", "clouds_published", "meshes_published", "saves", "autosaves", "latency_ms",
                  "seed_points", "densifications", "service_calls", "service_errors"):
            values[k] = round(float(cs.get(k, 0)), 2)
        values["queue_drops"] = ps.get("queue_drop", 0)
        values["rejected_total"] = sum(ps.values())
        for k, v in sorted(ps.items()):
            values[f"rejected_{k}"] = v
        values["optimizer_alive"] = self.engine.alive()
        health = self.supervisor.health()  # every worker thread: running | restarting | failed | stopped
        for name, h in health.items():
            values[f"thread_{name}"] = h.state
            values[f"thread_{name}_restarts"] = h.restarts
        values["requests_refused_busy"] = self.gate.refused
        failed = [n for n, h in health.items() if h.state == "failed"]
        level, msg = DiagnosticStatus.OK, "mapping"
        if failed:
            level, msg = DiagnosticStatus.ERROR, "worker thread(s) stopped: " + ", ".join(
                f"{n} ({health[n].last_error[:120]})" for n in failed)
        elif self.engine.optimizer_error:
            level, msg = DiagnosticStatus.ERROR, f"optimizer stopped: {self.engine.optimizer_error}"
        elif sum(ps.values()) > getattr(self, "_rejected_seen", 0):
            level, msg = DiagnosticStatus.WARN, "rejected inputs: " + ", ".join(
                f"{k} ({self.problems.last.get(k, '')[:80]})" for k in sorted(ps))[:400]
        self._rejected_seen = sum(ps.values())
        return DiagnosticStatus(level=level, name=f"{self.get_name()}: FHGS mapping", message=msg,
                                hardware_id="fhgs_ros",
                                values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])

    def _publish_diagnostics(self) -> None:
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [self.diagnostics()]
        self.pub_diag.publish(arr)

    # ------------------------------------------------------------------ services
    def _srv_error(self, kind: str, reason: str) -> str:
        self.counters.inc("service_errors")
        self.problems.report(InputError(kind, reason))
        return reason

    def _request_path(self, requested: str, suffixes: tuple[str, ...], what: str, default: str) -> Path:
        """A peer-given file name resolved inside node.map_dir (empty: the operator's ``default``)."""
        if not requested:
            if not default:
                raise InputError("bad_service_argument", f"{what}: empty path and node.map_path is not set")
            return Path(default).expanduser()
        return self.map_dir.resolve(requested, suffixes, what)

    def _srv_save(self, req, res):
        self.counters.inc("service_calls")
        p = self._request_path(req.path, MAP_SUFFIXES, "save_map", self.ncfg.map_path)
        self.map_dir.prepare_write(p, "save_map")  # never replaces a file that is not ours
        path = str(p)
        ok, msg, st = self.engine.save(path)
        res.success, res.message, res.path = ok, msg, str(Path(path).expanduser())
        res.num_surfels, res.num_keyframes = len(st.surfels), len(st.cameras)
        if not ok:
            self._srv_error("save_failed", msg)
        return res

    def _srv_load(self, req, res):
        self.counters.inc("service_calls")
        path = str(self._request_path(req.path, MAP_SUFFIXES, "load_map", self.ncfg.map_path))
        ok, msg = self.engine.load(path)
        res.success, res.message = ok, msg
        st = self.engine.state
        if ok:
            self.ingest.reset()  # sync queue, buffers, poses, timeline and motion anchor of the old map
            self._render_event.set()
            res.num_surfels, res.num_keyframes, res.feature_extractor = len(st.surfels), len(st.cameras), st.model_id
        else:
            self._srv_error("load_failed", msg)
        return res

    def _on_autosave(self, path: str, ok: bool, msg: str) -> None:
        if ok:
            self.log.debug(f"autosave: {msg}")
        else:
            self.problems.report(InputError("autosave_failed", msg))

    def _srv_reset(self, req, res):
        self.counters.inc("service_calls")
        ok, msg = self.engine.reset()
        self.ingest.reset()
        self.mesh, self.mesh_version = None, -1
        res.success, res.message = ok, msg
        return res

    def _request_camera(self, req, st: MapState, feature_channels: int = 0, per_pixel: int | None = None,
                        what: str = "view") -> Camera:
        """The request's camera, validated in float32 and priced against node.request_memory_mb."""
        p, q, info = req.pose.position, req.pose.orientation, req.camera_info
        kw = {} if per_pixel is None else {"per_pixel": per_pixel}
        return rq.request_camera((p.x, p.y, p.z), (q.x, q.y, q.z, q.w), info.width, info.height, list(info.k),
                                 st.last_camera, bool(req.use_latest_keyframe), self.limits, feature_channels,
                                 what=what, near=0.05, far=1000.0, **kw)

    def _srv_render(self, req, res):
        self.counters.inc("service_calls")
        st = self.engine.state
        try:
            cam = self._request_camera(req, st, st.feature_dim if req.include_features else 0, what="render_view")
        except (InputError, Rejected) as exc:
            res.success, res.message = False, self._srv_error(exc.kind, str(exc))
            return res
        imgs = self.render_images(st, cam, req.include_features)
        hdr = self._header(st.stamp if req.use_latest_keyframe else self.get_clock().now().nanoseconds * 1e-9)
        res.rgb = conv.rgb_to_image(imgs["rgb"], hdr)
        res.depth = conv.float_to_image(imgs["depth"], hdr)
        res.normal = conv.rgb_to_image(imgs["normal"], hdr)
        res.features_pca = conv.rgb_to_image(imgs["features_pca"], hdr)
        res.alpha = conv.float_to_image(imgs["alpha"], hdr)
        if req.include_features:
            res.features = conv.feature_image_msg(imgs["features"], hdr, self.ncfg.feature_dtype, st.model_id)
        res.num_surfels = len(st.surfels)
        res.success, res.message = True, f"rendered {cam.width}x{cam.height} from {len(st.surfels)} surfels"
        if req.publish:
            self.pub_rgb.publish(res.rgb)
            self.pub_depth.publish(res.depth)
            self.pub_normal.publish(res.normal)
            self.pub_pca.publish(res.features_pca)
        return res

    def _publish_query(self, st: MapState, idx: torch.Tensor, scores: torch.Tensor, anchor=None) -> PointCloud2:
        hdr = self._header(self.get_clock().now().nanoseconds * 1e-9, self.ncfg.map_frame)
        cols = self.cloud_columns(st, idx, scores)
        cloud = conv.make_pointcloud2(cols, hdr)
        self.pub_qpoints.publish(cloud)
        xyz = np.stack([cols["x"], cols["y"], cols["z"]], -1) if len(idx) else np.zeros((0, 3))
        ma = MarkerArray()
        clear = Marker(header=hdr, ns="fhgs_query", id=0, action=Marker.DELETEALL)
        ma.markers.append(clear)
        ma.markers.append(conv.points_marker(xyz, None, hdr, marker_id=1, size=0.02))
        if anchor is not None:
            a = conv.points_marker(np.asarray([anchor]), None, hdr, marker_id=2, size=0.06, rgba=(0.1, 0.4, 1.0, 1.0))
            ma.markers.append(a)
        txt = Marker(header=hdr, ns="fhgs_query", id=3, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD,
                     text=f"{len(idx)} matches")
        txt.pose.orientation.w = 1.0
        p = anchor if anchor is not None else (xyz.mean(0) if len(xyz) else np.zeros(3))
        txt.pose.position.x, txt.pose.position.y, txt.pose.position.z = float(p[0]), float(p[1]), float(p[2]) + 0.15
        txt.scale.z = 0.08
        txt.color.r = txt.color.g = txt.color.b = txt.color.a = 1.0
        ma.markers.append(txt)
        self.pub_qmarkers.publish(ma)
        return cloud

    def _srv_query(self, req, res):
        from fhgs_ros.core.query import QueryError, query_by_feature, query_by_pixel, query_by_point

        self.counters.inc("service_calls")
        st = self.engine.state
        res.seed_index = -1
        try:
            thr = rq.query_threshold(req.threshold, self.ncfg.query_threshold)  # NaN refused, <= 0: default
            top = rq.query_max_results(req.max_results, self.limits)
            if req.mode not in (QueryFeature.Request.BY_PIXEL, QueryFeature.Request.BY_POINT,
                                QueryFeature.Request.BY_VECTOR):
                raise InputError("bad_service_argument", f"query_feature: unknown mode {req.mode} (0 = BY_PIXEL, "
                                                         f"1 = BY_POINT, 2 = BY_VECTOR)")
            if len(st.surfels) == 0:
                raise InputError("bad_service_argument", "query_feature: the map is empty")
            anchor = None
            cam = None
            if req.mode == QueryFeature.Request.BY_PIXEL:
                pm = req.pixel_mode or "rendered"
                if pm not in ("rendered", "dominant"):
                    raise InputError("bad_service_argument", f"query_feature: unknown pixel_mode '{pm}' (rendered, "
                                                             f"dominant)")
                cam = self._request_camera(req, st, what="query_feature")
                q = query_by_pixel(st.surfels, cam, int(req.x), int(req.y), thr, mode=pm, top_k=top,
                                   backend=self.cfg.mapper.backend)
            elif req.mode == QueryFeature.Request.BY_POINT:
                p = rq.query_point(req.point.x, req.point.y, req.point.z)
                q = query_by_point(st.surfels, p, thr, radius=rq.query_radius(req.radius), top_k=top)
                anchor = p
            else:
                v = rq.query_vector(req.vector, st.feature_dim)
                q = query_by_feature(st.surfels, torch.from_numpy(v), thr, top)
        except (InputError, QueryError, Rejected) as exc:
            kind = getattr(exc, "kind", "bad_service_argument")
            res.success, res.message = False, self._srv_error(kind, f"{exc}")
            return res
        res.count = len(q)
        res.seed_index = int(q.seed)
        res.indices = [int(i) for i in q.indices.tolist()]
        res.scores = [float(s) for s in q.scores.tolist()]
        hdr = self._header(self.get_clock().now().nanoseconds * 1e-9, self.ncfg.map_frame)
        res.points = conv.make_pointcloud2(self.cloud_columns(st, q.indices, q.scores), hdr)
        if cam is not None:
            res.mask = conv.mono_to_image(self._match_mask(st, cam, q.query, thr), self._header(hdr.stamp.sec))
        if req.publish:
            self._publish_query(st, q.indices, q.scores, anchor)
        res.success, res.message = True, f"{len(q)} surfels with cosine similarity >= {thr:.3f}"
        return res

    def _match_mask(self, st: MapState, cam: Camera, query: torch.Tensor, thr: float) -> np.ndarray:
        """mono8 mask of the view's pixels whose rendered (alpha-normalized) feature matches the query."""
        small = self._view_camera(cam, 256)
        f = self.engine.render(small, True, st).features
        u = torch.nn.functional.normalize(f, dim=0)
        sim = torch.einsum("dhw,d->hw", u, query.float())
        m = ((sim >= thr).float() * 255)[None, None]
        m = torch.nn.functional.interpolate(m, size=(cam.height, cam.width), mode="nearest")[0, 0]
        return m.to(torch.uint8).numpy()

    def _on_clicked_point(self, msg: PointStamped) -> None:
        from fhgs_ros.core.query import QueryError, query_by_point

        st = self.engine.state
        p = np.array([msg.point.x, msg.point.y, msg.point.z], dtype=np.float64)
        try:
            if not np.isfinite(p).all():
                raise InputError("bad_clicked_point", "clicked point contains NaN/Inf")
            frame = msg.header.frame_id.lstrip("/")
            if frame and frame != self.ncfg.map_frame:
                t, why, _ = self.tf.lookup(self.ncfg.map_frame, frame, 0.0)
                if t is None:
                    raise InputError("bad_clicked_point", f"clicked point in frame '{frame}': {why}")
                p = t[:3, :3] @ p + t[:3, 3]
            if len(st.surfels) == 0:
                raise InputError("bad_clicked_point", "clicked point: the map is empty")
            q = query_by_point(st.surfels, p.tolist(), self.ncfg.query_threshold, top_k=self.ncfg.query_max_results)
        except (InputError, QueryError) as exc:
            self.problems.report(exc if isinstance(exc, InputError) else InputError("bad_clicked_point", str(exc)))
            return
        self._publish_query(st, q.indices, q.scores, p)
        self.counters.inc("clicked_point_queries")
        self.log.info(f"clicked point ({p[0]:.2f}, {p[1]:.2f}, {p[2]:.2f}): {len(q)} matching surfels")

    def _prompt_model(self):
        if self.sam_parts is None:
            ext = getattr(self.extractor, "inner", None) or getattr(self.extractor, "extractor", None) or self.extractor
            if not hasattr(ext, "prompt_model"):
                return None
            self.sam_parts = ext.prompt_model()
        return self.sam_parts

    def _srv_segment(self, req, res):
        from fhgs_ros.core.query import QueryError
        from fhgs_ros.features.segment import segment_view

        self.counters.inc("service_calls")
        st = self.engine.state
        try:
            parts = self._prompt_model()
            if parts is None:
                raise InputError("bad_service_argument", "segment_view: the feature extractor has no SAM prompt "
                                                         "decoder (features.extractor must be sam or sam2)")
            # prompt counts / pairs / labels / box shape first (cheap), then the view's price, then coordinates
            rq.segment_prompts(req.points, req.labels, req.box, 2 ** 31, 2 ** 31, self.limits.max_prompts)
            if len(st.surfels) == 0:
                raise InputError("bad_service_argument", "segment_view: the map is empty")
            cam = self._request_camera(req, st, per_pixel=SEGMENT_BYTES_PER_PIXEL, what="segment_view")
            pts, labels, box = rq.segment_prompts(req.points, req.labels, req.box, cam.width, cam.height,
                                                  self.limits.max_prompts)  # NaN / inverted / outside refused
            r = segment_view(parts, st.surfels, cam, points=pts, labels=labels, box=box,
                             render_long_side=self.ncfg.segment_long_side, backend=self.cfg.mapper.backend)
        except (InputError, QueryError, Rejected) as exc:
            kind = getattr(exc, "kind", "bad_service_argument")
            res.success, res.message = False, self._srv_error(kind, str(exc))
            return res
        hdr = self._header(self.get_clock().now().nanoseconds * 1e-9, self.ncfg.map_frame)
        res.mask = conv.mono_to_image((r.mask.numpy().astype(np.uint8) * 255), self._header(hdr.stamp.sec))
        res.score = float(r.score)
        res.count = int(r.indices.numel())
        res.indices = [int(i) for i in r.indices.tolist()]
        res.points = conv.make_pointcloud2(self.cloud_columns(st, r.indices), hdr)
        if req.publish:
            self._publish_query(st, r.indices, torch.ones(r.indices.numel()))
        res.success, res.message = True, f"mask of {int(r.mask.sum())} pixels, {res.count} surfels"
        return res

    def _srv_export_mesh(self, req, res):
        from fhgs_ros.core.mesh import save_mesh_ply, vertex_colors_from_surfels, write_mesh_obj

        self.counters.inc("service_calls")
        st = self.engine.state
        try:
            default = (str(Path(self.ncfg.map_path).expanduser().with_suffix("")) + "_mesh.ply"
                       if self.ncfg.map_path else "")
            fmt, color = rq.export_format(Path(req.path or default).suffix, req.format, req.color)
            p = self._request_path(req.path, MESH_SUFFIXES, "export_mesh", default)
            if p.suffix.lower() != f".{fmt}":
                raise InputError("bad_path", f"export_mesh: format '{fmt}' needs a .{fmt} file name")
            if not st.cameras or len(st.surfels) == 0:
                raise InputError("bad_service_argument", "export_mesh: the map is empty")
            mesh = self.mesh if (self.mesh is not None and not req.refresh) else self.compute_mesh(st)
            if mesh is not self.mesh:
                self.mesh, self.mesh_version = mesh, st.version
            if color == "features" and st.pca is not None:
                mesh.colors = vertex_colors_from_surfels(mesh, st.surfels.means,
                                                         st.pca.to_rgb_points(st.surfels.features_raw.float()))
            elif color == "none":
                mesh.colors = None
            self.map_dir.prepare_write(p, "export_mesh")  # never replaces a file that is not ours
            (save_mesh_ply if fmt == "ply" else write_mesh_obj)(mesh, p)
        except (InputError, Rejected) as exc:
            res.success, res.message = False, self._srv_error(exc.kind, str(exc))
            return res
        except (OSError, ValueError) as exc:
            res.success, res.message = False, self._srv_error("export_failed", f"export_mesh: {exc}")
            return res
        res.success, res.path = True, str(p)
        res.num_vertices, res.num_faces = int(mesh.num_vertices), int(mesh.num_faces)
        res.message = f"wrote {res.num_vertices} vertices, {res.num_faces} faces to '{p}'"
        return res

    # ------------------------------------------------------------------ shutdown
    def shutdown(self) -> None:
        self._stop.set()
        self._render_event.set()
        self.engine.stop()


def main(argv: list[str] | None = None) -> int:
    """Console script ``fhgs-node``."""
    args = sys.argv if argv is None else argv
    rclpy.init(args=args)
    node = None
    executor = None
    try:
        try:
            node = FHGSNode()
        except ConfigError as exc:
            print(f"fhgs-node: invalid parameter: {exc}", file=sys.stderr, flush=True)
            return 2
        except (ValueError, ImportError) as exc:  # checkpoint / extractor problems
            print(f"fhgs-node: cannot start: {exc}", file=sys.stderr, flush=True)
            return 2
        executor = MultiThreadedExecutor(num_threads=max(4, (os.cpu_count() or 2) + 2))
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.shutdown()
            node._render_thread.join(5)
        if executor is not None:
            executor.shutdown(timeout_sec=2)
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
