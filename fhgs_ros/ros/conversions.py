"""ROS message <-> numpy / torch conversions for the mapping node (no cv_bridge needed).

Images: ``image_to_rgb`` / ``compressed_to_rgb`` -> (H, W, 3) uint8 RGB; ``depth_to_array`` ->
(H, W) float32 metres; ``rgb_to_image`` / ``float_to_image`` / ``mono_to_image`` build
sensor_msgs/Image. Geometry: poses and transforms <-> 4x4 float64 (validated: NaN and
non-normalized quaternions raise InputError). Point clouds: ``make_pointcloud2`` from named
columns, ``pointcloud2_to_xyz_rgb`` reads xyz (+ rgb). Visualisation: ``mesh_marker``
(Marker TRIANGLE_LIST) and ``points_marker`` (SPHERE_LIST). Features: ``feature_image_msg``
and ``feature_image_to_array`` for fhgs_interfaces/msg/FeatureImage.
"""

from __future__ import annotations

import math

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Pose, Quaternion, Transform, Vector3
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker

from fhgs_ros.core.camera import Camera, Intrinsics
from fhgs_ros.core.geometry import matrix_to_quat_xyzw
# stamp_to_sec, pose_to_matrix, transform_to_matrix live in online.imageproc (ROS-free); re-exported here.
from fhgs_ros.online.imageproc import (InputError, decode_color, decode_compressed, decode_depth,  # noqa: F401
                                       make_intrinsics, pose_to_matrix, stamp_to_sec, transform_to_matrix)


# ----------------------------------------------------------------------------- time
def sec_to_stamp(t: float) -> Time:
    t = max(0.0, float(t))
    sec = int(math.floor(t))
    nsec = int(round((t - sec) * 1e9))
    if nsec >= 1_000_000_000:
        sec, nsec = sec + 1, nsec - 1_000_000_000
    return Time(sec=sec, nanosec=nsec)


def sec_to_time(t: float):
    """rclpy.time.Time (for tf2_ros lookups)."""
    from rclpy.time import Time as RclTime

    return RclTime(nanoseconds=int(round(t * 1e9)))


def make_header(frame_id: str, t: float) -> Header:
    return Header(stamp=sec_to_stamp(t), frame_id=frame_id)


# ----------------------------------------------------------------------------- images in
def image_to_rgb(msg: Image) -> np.ndarray:
    return decode_color(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian),
                        what=f"image ({msg.width}x{msg.height} {msg.encoding})")


def compressed_to_rgb(msg) -> np.ndarray:
    return decode_compressed(msg.format, msg.data, what=f"compressed image ('{msg.format}')")


def depth_to_array(msg: Image) -> np.ndarray:
    return decode_depth(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian),
                        what=f"depth ({msg.width}x{msg.height} {msg.encoding})")


def intrinsics_to_camera_info(intr: Intrinsics, header: Header | None = None) -> CameraInfo:
    m = CameraInfo()
    if header is not None:
        m.header = header
    m.width, m.height = int(intr.width), int(intr.height)
    m.distortion_model = intr.model
    m.d = [float(v) for v in intr.d]
    m.k = [intr.fx, 0.0, intr.cx, 0.0, intr.fy, intr.cy, 0.0, 0.0, 1.0]
    m.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    m.p = [intr.fx, 0.0, intr.cx, 0.0, 0.0, intr.fy, intr.cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return m


def camera_to_camera_info(cam: Camera, header: Header | None = None) -> CameraInfo:
    return intrinsics_to_camera_info(Intrinsics(cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy), header)


# ----------------------------------------------------------------------------- images out
def rgb_to_image(rgb: np.ndarray, header: Header, encoding: str = "rgb8") -> Image:
    """(H, W, 3) uint8 -> Image (rgb8 or bgr8; the array is taken as RGB)."""
    a = np.ascontiguousarray(rgb, dtype=np.uint8)
    if encoding == "bgr8":
        a = np.ascontiguousarray(a[:, :, ::-1])
    m = Image(header=header, height=int(a.shape[0]), width=int(a.shape[1]), encoding=encoding, is_bigendian=0,
              step=int(a.shape[1] * 3))
    m.data = a.tobytes()
    return m


def float_to_image(arr: np.ndarray, header: Header) -> Image:
    """(H, W) float -> 32FC1 Image (little-endian)."""
    a = np.ascontiguousarray(arr, dtype="<f4")
    m = Image(header=header, height=int(a.shape[0]), width=int(a.shape[1]), encoding="32FC1", is_bigendian=0,
              step=int(a.shape[1] * 4))
    m.data = a.tobytes()
    return m


def mono_to_image(arr: np.ndarray, header: Header) -> Image:
    a = np.ascontiguousarray(arr, dtype=np.uint8)
    m = Image(header=header, height=int(a.shape[0]), width=int(a.shape[1]), encoding="mono8", is_bigendian=0,
              step=int(a.shape[1]))
    m.data = a.tobytes()
    return m


def depth_to_image_msg(depth_m: np.ndarray, header: Header, encoding: str = "32FC1") -> Image:
    """Metres -> 32FC1 or 16UC1 (mm) depth Image (test publishers)."""
    if encoding == "32FC1":
        return float_to_image(depth_m, header)
    a = np.ascontiguousarray(np.clip(np.round(np.nan_to_num(depth_m) * 1000), 0, 65535).astype("<u2"))
    m = Image(header=header, height=int(a.shape[0]), width=int(a.shape[1]), encoding="16UC1", is_bigendian=0,
              step=int(a.shape[1] * 2))
    m.data = a.tobytes()
    return m


def image_msg_to_array(msg: Image) -> np.ndarray:
    """Any Image this module writes -> numpy (H, W, C) / (H, W) (tests, clients)."""
    if msg.encoding in ("rgb8", "bgr8", "rgba8", "bgra8", "mono16"):
        return decode_color(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian))
    if msg.encoding == "mono8":
        return np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)[:, :msg.width].copy()
    if msg.encoding in ("32FC1", "16UC1"):
        return decode_depth(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian)) \
            if msg.encoding == "16UC1" else \
            np.frombuffer(msg.data, ">f4" if msg.is_bigendian else "<f4").reshape(msg.height, msg.step // 4)[
                :, :msg.width].astype(np.float32)
    raise InputError("bad_encoding", f"cannot convert encoding '{msg.encoding}'")


# ----------------------------------------------------------------------------- features
def feature_image_msg(features, header: Header, dtype: str = "float32", model_id: str = ""):
    """(D, H, W) tensor/array -> fhgs_interfaces/msg/FeatureImage."""
    from fhgs_interfaces.msg import FeatureImage

    a = features.detach().cpu().numpy() if hasattr(features, "detach") else np.asarray(features)
    if dtype not in ("float32", "float16"):
        raise ValueError(f"feature dtype must be float32 or float16, got {dtype!r}")
    a = np.ascontiguousarray(a, dtype="<f4" if dtype == "float32" else "<f2")
    m = FeatureImage(header=header, height=int(a.shape[1]), width=int(a.shape[2]), channels=int(a.shape[0]),
                     dtype=dtype, is_bigendian=False, model_id=model_id)
    m.data = a.tobytes()
    return m


def feature_image_to_array(msg) -> np.ndarray:
    """FeatureImage -> (C, H, W) float32."""
    if msg.dtype not in ("float32", "float16"):
        raise InputError("bad_encoding", f"feature image dtype '{msg.dtype}' is not float32 or float16")
    dt = np.dtype("f4" if msg.dtype == "float32" else "f2").newbyteorder(">" if msg.is_bigendian else "<")
    a = np.frombuffer(msg.data, dtype=dt)
    n = msg.channels * msg.height * msg.width
    if a.size != n:
        raise InputError("bad_image", f"feature image holds {a.size} values, {msg.channels}x{msg.height}x{msg.width} "
                                      f"needs {n}")
    return a.reshape(msg.channels, msg.height, msg.width).astype(np.float32)


# ----------------------------------------------------------------------------- geometry
def matrix_to_pose(m: np.ndarray) -> Pose:
    q = matrix_to_quat_xyzw(np.asarray(m)[:3, :3])
    t = np.asarray(m)[:3, 3]
    return Pose(position=Point(x=float(t[0]), y=float(t[1]), z=float(t[2])),
                orientation=Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])))


def matrix_to_transform(m: np.ndarray) -> Transform:
    q = matrix_to_quat_xyzw(np.asarray(m)[:3, :3])
    t = np.asarray(m)[:3, 3]
    return Transform(translation=Vector3(x=float(t[0]), y=float(t[1]), z=float(t[2])),
                     rotation=Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])))


def camera_from_request(pose: Pose, info: CameraInfo, fallback: Camera | None, use_latest: bool,
                        near: float = 0.05, far: float = 100.0, max_pixels: int = 4096 * 4096) -> Camera:
    """Camera of a render/query/segment request (pose of the optical frame in the map frame).

    ``info.width == 0`` takes the intrinsics of ``fallback`` (the latest keyframe);
    ``use_latest`` takes its pose too. Raises InputError for invalid poses or intrinsics.
    """
    if use_latest:
        if fallback is None:
            raise InputError("bad_request", "no keyframe yet: use_latest_keyframe cannot be honoured")
        return fallback
    c2w = pose_to_matrix(pose, what="request pose")
    w2c = np.linalg.inv(c2w)
    if info.width == 0 or info.height == 0:
        if fallback is None:
            raise InputError("bad_request", "camera_info is empty and there is no keyframe to take intrinsics from")
        intr = Intrinsics(fallback.width, fallback.height, fallback.fx, fallback.fy, fallback.cx, fallback.cy)
    else:
        intr = make_intrinsics(info.width, info.height, list(info.k), [], "", what="request camera_info")
    if intr.width * intr.height > max_pixels:
        raise InputError("bad_request", f"requested view {intr.width}x{intr.height} exceeds {max_pixels} pixels")
    import torch

    return Camera(intr.width, intr.height, intr.fx, intr.fy, intr.cx, intr.cy,
                  torch.as_tensor(w2c, dtype=torch.float32), near=near, far=far, name="request")


# ----------------------------------------------------------------------------- point clouds
_PF = {np.dtype("float32"): PointField.FLOAT32, np.dtype("uint32"): PointField.UINT32,
       np.dtype("int32"): PointField.INT32, np.dtype("float64"): PointField.FLOAT64,
       np.dtype("uint8"): PointField.UINT8, np.dtype("uint16"): PointField.UINT16}
_NP = {PointField.FLOAT32: "<f4", PointField.UINT32: "<u4", PointField.INT32: "<i4", PointField.FLOAT64: "<f8",
       PointField.UINT8: "u1", PointField.UINT16: "<u2", PointField.INT8: "i1", PointField.INT16: "<i2"}


def pack_rgb(rgb01: np.ndarray) -> np.ndarray:
    """(N, 3) colours in [0, 1] -> (N,) float32 with the bytes of 0x00RRGGBB (RViz 'rgb' field)."""
    c = np.clip(np.round(np.asarray(rgb01, dtype=np.float64) * 255), 0, 255).astype(np.uint32)
    packed = (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]
    return packed.astype("<u4").view("<f4")


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    u = np.ascontiguousarray(packed, dtype="<f4").view("<u4")
    return np.stack([(u >> 16) & 255, (u >> 8) & 255, u & 255], -1).astype(np.float32) / 255


def make_pointcloud2(columns: dict[str, np.ndarray], header: Header) -> PointCloud2:
    """Unorganized PointCloud2 from named 1-D columns of equal length (float32/uint32/int32/...)."""
    names = list(columns)
    n = len(next(iter(columns.values()))) if columns else 0
    dt = np.dtype([(k, np.asarray(columns[k]).dtype.newbyteorder("<")) for k in names])
    arr = np.empty(n, dtype=dt)
    for k in names:
        arr[k] = columns[k]
    fields = [PointField(name=k, offset=int(dt.fields[k][1]), datatype=_PF[np.dtype(dt.fields[k][0].name)], count=1)
              for k in names]
    m = PointCloud2(header=header, height=1, width=int(n), fields=fields, is_bigendian=False,
                    point_step=int(dt.itemsize), row_step=int(dt.itemsize * n), is_dense=True)
    m.data = arr.tobytes()
    return m


def pointcloud2_to_array(msg: PointCloud2, max_points: int = 10_000_000) -> np.ndarray:
    """Structured numpy array of a PointCloud2 (fields with count 1); the layout is checked first
    (fhgs_ros.online.payloads.pointcloud_layout: unique names, fields inside point_step, sizes)."""
    from fhgs_ros.online.guard import Rejected
    from fhgs_ros.online.payloads import pointcloud_layout

    buf = np.frombuffer(msg.data, dtype=np.uint8)
    try:
        dt = pointcloud_layout(msg.fields, msg.point_step, msg.row_step, msg.width, msg.height, buf.size,
                               bool(msg.is_bigendian), max_points)
    except Rejected as exc:
        raise InputError(exc.kind, exc.reason) from None
    n = msg.width * msg.height
    if msg.height > 1 and msg.row_step != msg.width * msg.point_step:
        rows = [buf[r * msg.row_step: r * msg.row_step + msg.width * msg.point_step] for r in range(msg.height)]
        buf = np.concatenate(rows)
    return np.frombuffer(buf[: n * msg.point_step].tobytes(), dtype=dt)


def pointcloud2_to_xyz_rgb(msg: PointCloud2) -> tuple[np.ndarray, np.ndarray | None]:
    """(xyz (N, 3) float32 finite points, rgb (N, 3) in [0, 1] or None)."""
    arr = pointcloud2_to_array(msg)
    names = arr.dtype.names or ()
    if not all(k in names for k in "xyz"):
        raise InputError("bad_pointcloud", "point cloud has no x, y, z fields")
    with np.errstate(over="ignore", invalid="ignore"):
        xyz64 = np.stack([arr["x"], arr["y"], arr["z"]], -1).astype(np.float64)
    ok = np.isfinite(xyz64).all(1) & (np.abs(xyz64) <= 1e6).all(1)  # NaN / Inf / beyond 1e6 m: dropped
    xyz = np.where(ok[:, None], xyz64, 0.0).astype(np.float32)
    rgb = None
    if "rgb" in names or "rgba" in names:
        rgb = unpack_rgb(np.asarray(arr["rgb" if "rgb" in names else "rgba"]).astype("<f4"))
        rgb = rgb[ok]
    return xyz[ok], rgb


# ----------------------------------------------------------------------------- markers
def mesh_marker(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None, header: Header,
                ns: str = "fhgs_mesh", marker_id: int = 0, max_triangles: int = 300_000) -> Marker:
    """Marker TRIANGLE_LIST: 3 points per face, per-vertex colours (RGB in [0, 1]) when given."""
    m = Marker(header=header, ns=ns, id=marker_id, type=Marker.TRIANGLE_LIST, action=Marker.ADD)
    m.pose.orientation.w = 1.0
    m.scale.x = m.scale.y = m.scale.z = 1.0
    m.color = ColorRGBA(r=0.8, g=0.8, b=0.8, a=1.0)
    f = np.asarray(faces, dtype=np.int64)
    if len(f) > max_triangles:
        f = f[np.linspace(0, len(f) - 1, max_triangles).astype(np.int64)]
    v = np.asarray(vertices, dtype=np.float64)[f.reshape(-1)]
    m.points = [Point(x=float(a), y=float(b), z=float(c)) for a, b, c in v]
    if colors is not None and len(colors):
        c = np.clip(np.asarray(colors, dtype=np.float64)[f.reshape(-1)], 0, 1)
        m.colors = [ColorRGBA(r=float(r), g=float(g), b=float(b), a=1.0) for r, g, b in c]
    return m


def points_marker(xyz: np.ndarray, colors: np.ndarray | None, header: Header, ns: str = "fhgs_query",
                  marker_id: int = 0, size: float = 0.03, rgba=(1.0, 0.2, 0.2, 1.0), max_points: int = 50_000) -> Marker:
    m = Marker(header=header, ns=ns, id=marker_id, type=Marker.SPHERE_LIST, action=Marker.ADD)
    m.pose.orientation.w = 1.0
    m.scale.x = m.scale.y = m.scale.z = float(size)
    m.color = ColorRGBA(r=float(rgba[0]), g=float(rgba[1]), b=float(rgba[2]), a=float(rgba[3]))
    p = np.asarray(xyz, dtype=np.float64)[:max_points]
    m.points = [Point(x=float(a), y=float(b), z=float(c)) for a, b, c in p]
    if colors is not None:
        c = np.clip(np.asarray(colors, dtype=np.float64)[:max_points], 0, 1)
        m.colors = [ColorRGBA(r=float(r), g=float(g), b=float(b), a=1.0) for r, g, b in c]
    return m
