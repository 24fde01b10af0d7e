"""Integration tests: fhgs-node in a subprocess, fed over DDS by a synthetic scene publisher.

Own ROS_DOMAIN_ID and localhost discovery. Features: SAM with a tiny random-init checkpoint
written by the test (fhgs_ros.features.sam.save_random_checkpoint, model vit_tiny, input 256),
loaded through the node's real extractor path. The tests of this module share one node process
and run in order: outputs, services (incl. error cases), bad inputs, clicked point + parameters.
"""

from __future__ import annotations

import math
import re
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("fhgs_interfaces.srv")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PointStamped, PoseStamped  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image, PointCloud2  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from visualization_msgs.msg import Marker  # noqa: E402

from fhgs_interfaces.msg import FeatureImage  # noqa: E402
from fhgs_interfaces.srv import ExportMesh, LoadMap, QueryFeature, RenderView, SaveMap, SegmentView  # noqa: E402
from fhgs_ros.ros import conversions as conv  # noqa: E402
from fhgs_ros.ros.harness import NodeProcess, Spinner, free_domain_id, write_params  # noqa: E402
from fhgs_ros.online.imageproc import encode_compressed  # noqa: E402
from fhgs_ros.ros.streamer import LATCHED, Capture, SceneStreamer, call, synthetic_frames  # noqa: E402

W, H = 64, 48


def diag_values(msg) -> dict[str, str]:
    return {kv.key: kv.value for kv in msg.status[0].values}


class Live:
    pass


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from fhgs_ros.features.sam import save_random_checkpoint

    tmp = tmp_path_factory.mktemp("ros_node")
    ckpt = save_random_checkpoint(tmp / "tiny_sam.pth", "vit_tiny", input_size=256, seed=0)
    dom = free_domain_id()
    params = write_params(tmp / "params.yaml", {
        "features": {"extractor": "sam", "sam_model": "vit_tiny", "sam_checkpoint": str(ckpt), "sam_input_size": 256},
        "seed": {"depth_stride": 3},
        "node": {"map_path": str(tmp / "map.safetensors"), "pose_source": "pose", "publish_period": 0.5,
                 "kf_min_translation": 0.05, "densify": False, "max_new_surfels_per_keyframe": 500,
                 "torch_threads": 1, "mesh_period": 2.0, "mesh_long_side": 48, "cloud_period": 1.0,
                 "autosave_every_keyframes": 0, "autosave_period": 0.0, "sync_timeout": 0.5,
                 "diagnostics_period": 0.5, "resume": False},
    })
    node = NodeProcess(params, tmp / "node.log", dom)
    sp = Spinner(dom)
    lv = Live()
    lv.tmp, lv.node, lv.sp = tmp, node, sp
    try:
        lv.st = sp.add(SceneStreamer(context=sp.context))
        lv.frames = synthetic_frames(W, H, 14, seed=0)
        caps = {"rgb": (Image, "render/rgb"), "depth": (Image, "render/depth"), "normal": (Image, "render/normal"),
                "pca": (Image, "render/features_pca"), "feat": (FeatureImage, "render/features"),
                "cloud": (PointCloud2, "map/points"), "mesh": (Marker, "map/mesh"),
                "qpoints": (PointCloud2, "query/points")}
        lv.cap = {k: Capture(lv.st, t, n, LATCHED) for k, (t, n) in caps.items()}
        lv.diag = Capture(lv.st, DiagnosticArray, "/diagnostics")
        node.wait_ready(90)
        assert lv.st.wait_for_subscribers(30, ("image", "camera_info", "depth", "pose")), node.text()
        lv.stamp = 100.0
        yield lv
    finally:
        sp.close()
        node.stop()


def stream(lv, frames, dt=0.35, **kw):
    for rgb, depth, cam in frames:
        lv.stamp += 0.5
        lv.st.publish_frame(rgb, depth, cam, lv.stamp, **kw)
        time.sleep(dt)


def wait_diag(lv, pred, timeout=30.0, what=""):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        m = lv.diag.wait(1, 1.0)
        if m is not None:
            last = diag_values(m)
            if pred(last):
                return last
        time.sleep(0.2)
    raise AssertionError(f"diagnostics condition not met ({what}); last values: {last}\n{lv.node.text()[-3000:]}")


@pytest.mark.timeout(120)
def test_stream_produces_renders_cloud_mesh_and_diagnostics(live):
    lv = live
    stream(lv, lv.frames[:8])
    d = wait_diag(lv, lambda v: int(v["keyframes"]) >= 4 and int(v["surfels"]) > 100 and int(v["iteration"]) > 0)
    assert float(d["rate_image_hz"]) > 0 and d["optimizer_alive"] == "True"
    rgb = lv.cap["rgb"].wait(1, 30)
    assert rgb is not None and rgb.encoding == "rgb8" and (rgb.width, rgb.height) == (W, H)
    assert rgb.header.frame_id == "camera_optical"
    img = conv.image_msg_to_array(rgb)
    assert img.std() > 1.0  # something was rendered
    dep = conv.image_msg_to_array(lv.cap["depth"].wait(1, 10))
    assert dep.shape == (H, W) and np.isfinite(dep).all() and (dep > 0).mean() > 0.2
    # (median: a nearly edge-on 2DGS surfel can give single far-off ray-splat depths)
    assert 0.3 < np.median(dep[dep > 0]) < 8.0
    assert lv.cap["normal"].wait(1, 10).encoding == "rgb8"
    pca = conv.image_msg_to_array(lv.cap["pca"].wait(1, 10))
    assert pca.shape == (H, W, 3) and pca.std() > 0
    f = lv.cap["feat"].wait(1, 10)
    arr = conv.feature_image_to_array(f)
    assert arr.shape[0] == 256 and f.dtype == "float16" and f.model_id.startswith("sam_vit_tiny")
    assert np.isfinite(arr).all() and np.abs(arr).max() > 0
    cloud = lv.cap["cloud"].wait(1, 20)
    names = [fl.name for fl in cloud.fields]
    for k in ("x", "y", "z", "rgb", "pca_rgb", "opacity", "cluster"):
        assert k in names
    assert cloud.width > 100 and cloud.header.frame_id == "map"
    xyz, col = conv.pointcloud2_to_xyz_rgb(cloud)
    assert np.isfinite(xyz).all() and col is not None
    mesh = lv.cap["mesh"].wait(1, 40)
    assert mesh is not None and mesh.type == Marker.TRIANGLE_LIST and len(mesh.points) >= 3
    assert len(mesh.points) % 3 == 0 and mesh.header.frame_id == "map"
    assert float(d.get("latency_ms", 0)) >= 0


@pytest.mark.timeout(150)
def test_services_and_error_answers(live):
    lv = live
    st = lv.st
    rgb0, depth0, cam0 = lv.frames[2]
    pose = conv.matrix_to_pose(cam0.cam_to_world.double().numpy())
    info = conv.camera_to_camera_info(cam0)
    # render_view from an arbitrary pose (a keyframe-free view) and from the latest keyframe
    r = call(st, RenderView, "render_view", RenderView.Request(pose=pose, camera_info=info, include_features=True))
    assert r is not None and r.success, r and r.message
    assert (r.rgb.width, r.rgb.height) == (W, H) and r.features.channels == 256 and r.num_surfels > 100
    out = conv.image_msg_to_array(r.rgb).astype(np.float32) / 255
    assert np.abs(out - rgb0.astype(np.float32) / 255).mean() < 0.35
    a = conv.image_msg_to_array(r.alpha)
    assert a.max() > 0.5
    r = call(st, RenderView, "render_view", RenderView.Request(use_latest_keyframe=True))
    assert r.success
    bad = conv.matrix_to_pose(np.eye(4))
    bad.orientation.w = float("nan")
    r = call(st, RenderView, "render_view", RenderView.Request(pose=bad))
    assert not r.success and "NaN" in r.message
    bad.orientation.w = 3.0
    r = call(st, RenderView, "render_view", RenderView.Request(pose=bad))
    assert not r.success and "normalized" in r.message
    huge = conv.camera_to_camera_info(cam0)
    huge.width, huge.height = 40000, 30000
    r = call(st, RenderView, "render_view", RenderView.Request(pose=pose, camera_info=huge))
    assert not r.success and "exceeds" in r.message

    # queries: by pixel, by point, by vector, and unknown / invalid arguments
    q = call(st, QueryFeature, "query_feature", QueryFeature.Request(mode=QueryFeature.Request.BY_PIXEL,
                                                                     use_latest_keyframe=True, x=W // 2, y=H // 2,
                                                                     threshold=0.5, publish=True))
    assert q.success, q.message
    assert q.count >= 1 and q.seed_index >= 0 and len(q.indices) == q.count == len(q.scores)
    assert all(s >= 0.5 - 1e-6 for s in q.scores) and q.points.width == q.count
    assert (q.mask.width, q.mask.height) == (W, H)
    assert lv.cap["qpoints"].wait(1, 10) is not None
    cloud = lv.cap["cloud"].wait(1, 10)
    xyz, _ = conv.pointcloud2_to_xyz_rgb(cloud)
    p = xyz[len(xyz) // 2]
    q = call(st, QueryFeature, "query_feature", QueryFeature.Request(mode=QueryFeature.Request.BY_POINT,
                                                                     point=conv.Point(x=float(p[0]), y=float(p[1]),
                                                                                      z=float(p[2])), threshold=0.9))
    assert q.success and q.count >= 1 and q.scores[0] > 0.999
    q2 = call(st, QueryFeature, "query_feature", QueryFeature.Request(mode=QueryFeature.Request.BY_VECTOR,
                                                                      vector=[1.0] * 256, threshold=0.1,
                                                                      max_results=5))
    assert q2.success and q2.count <= 5
    for req, needle in [(QueryFeature.Request(mode=7), "unknown mode 7"),
                        (QueryFeature.Request(mode=2, vector=[1.0, 2.0]), "has 2 values"),
                        (QueryFeature.Request(mode=0, use_latest_keyframe=True, x=10 * W, y=0), "outside"),
                        (QueryFeature.Request(mode=0, use_latest_keyframe=True, pixel_mode="fuzzy"),
                         "unknown pixel_mode"),
                        (QueryFeature.Request(mode=1, point=conv.Point(x=float("nan"))), "NaN")]:
        r = call(st, QueryFeature, "query_feature", req)
        assert r is not None and not r.success and needle in r.message, (needle, r.message)

    # segment_view: SAM prompt decoding on a rendered view
    s = call(st, SegmentView, "segment_view", SegmentView.Request(use_latest_keyframe=True,
                                                                  points=[W / 2, H / 2], labels=[1], publish=True))
    assert s.success, s.message
    assert (s.mask.width, s.mask.height) == (W, H) and s.mask.encoding == "mono8"
    assert len(s.indices) == s.count and s.points.width == s.count and math.isfinite(s.score)
    for req, needle in [(SegmentView.Request(use_latest_keyframe=True, points=[1.0, 2.0, 3.0]), "pairs"),
                        (SegmentView.Request(use_latest_keyframe=True, box=[0.0, 0.0, 5.0]), "box needs 4"),
                        (SegmentView.Request(use_latest_keyframe=True), "prompts"),
                        (SegmentView.Request(use_latest_keyframe=True, points=[1.0, 1.0], labels=[5]), "labels"),
                        (SegmentView.Request(use_latest_keyframe=True, points=[1e5, 1.0]), "outside")]:
        r = call(st, SegmentView, "segment_view", req)
        assert not r.success and needle in r.message, (needle, r.message)

    # export_mesh
    for fmt in ("ply", "obj"):
        # refresh meshes the whole map: allow a loaded machine a minute
        e = call(st, ExportMesh, "export_mesh", ExportMesh.Request(path=str(lv.tmp / f"mesh.{fmt}"), refresh=True),
                 timeout=60.0)
        assert e is not None and e.success, e and e.message
        assert e.num_faces > 0 and (lv.tmp / f"mesh.{fmt}").stat().st_size > 100
    e = call(st, ExportMesh, "export_mesh", ExportMesh.Request(path=str(lv.tmp / "m.ply"), color="features"))
    assert e.success
    for req, needle in [(ExportMesh.Request(path=str(lv.tmp / "mesh.stl")), "unknown format"),
                        (ExportMesh.Request(path=str(lv.tmp / "m.ply"), color="plaid"), "unknown color")]:
        r = call(st, ExportMesh, "export_mesh", req)
        assert not r.success and needle in r.message

    # save / load (good, corrupt, foreign, missing: the map is left untouched)
    path = lv.tmp / "saved.safetensors"
    sv = call(st, SaveMap, "save_map", SaveMap.Request(path=str(path)))
    assert sv.success and path.exists() and sv.num_surfels > 100 and sv.num_keyframes >= 4
    from fhgs_ros.core.storage import load_map
    surf, meta, extra = load_map(path)
    assert len(surf) == sv.num_surfels and len(meta["keyframes"]) == sv.num_keyframes
    assert meta["feature_extractor"].startswith("sam_vit_tiny") and "pca_basis" in extra
    ld = call(st, LoadMap, "load_map", LoadMap.Request(path=str(path)))
    assert ld.success and ld.num_surfels == sv.num_surfels, ld.message
    before = call(st, RenderView, "render_view", RenderView.Request(pose=pose, camera_info=info))
    corrupt = lv.tmp / "corrupt.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\xff" * 64
    corrupt.write_bytes(bytes(data))
    truncated = lv.tmp / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: len(data) // 3])
    foreign = lv.tmp / "foreign.safetensors"
    foreign.write_text("this is not a map\n")
    for p_, needle in [(corrupt, "map file"), (truncated, "truncated"), (foreign, "map file"),
                       (lv.tmp / "missing.safetensors", "does not exist")]:
        r = call(st, LoadMap, "load_map", LoadMap.Request(path=str(p_)))
        assert not r.success and needle in r.message, (p_, r.message)
    after = call(st, RenderView, "render_view", RenderView.Request(pose=pose, camera_info=info))
    assert after.num_surfels == before.num_surfels
    r = call(st, SaveMap, "save_map", SaveMap.Request(path=str(lv.tmp / "params.yaml" / "x.safetensors")))
    assert not r.success and "cannot save" in r.message


@pytest.mark.timeout(150)
def test_bad_inputs_logged_once_counted_and_mapping_goes_on(live):
    lv = live
    st = lv.st
    base = diag_values(lv.diag.wait(1, 10))
    kf0 = int(base["keyframes"])
    rgb, depth, cam = lv.frames[8]
    for _ in range(2):  # every problem twice: logged once, counted twice
        # wrong encoding
        lv.stamp += 0.5
        hdr = conv.make_header("camera_optical", lv.stamp)
        m = Image(header=hdr, height=H, width=W, encoding="yuv422", step=W * 2)
        m.data = bytes(W * H * 2)
        st.pub_image.publish(m)
        # image / camera_info size mismatch
        lv.stamp += 0.5
        big = conv.camera_to_camera_info(cam)
        big.width, big.height = W * 2, H * 2
        big.header = conv.make_header("camera_optical", lv.stamp)
        st.pub_info.publish(big)
        st.publish_frame(rgb, depth, cam, lv.stamp, info=False)
        time.sleep(0.3)
        # NaN and non-normalized quaternions
        p = PoseStamped(header=conv.make_header("map", lv.stamp + 0.1), pose=conv.matrix_to_pose(np.eye(4)))
        p.pose.orientation.x = float("nan")
        st.pub_pose.publish(p)
        p.pose.orientation.x, p.pose.orientation.w = 0.0, 2.0
        st.pub_pose.publish(p)
        # missing camera_info
        lv.stamp += 0.5
        st.publish_frame(rgb, depth, cam, lv.stamp, info=False)
        time.sleep(0.8)  # > sync_timeout
        # time going backwards
        st.publish_frame(rgb, depth, cam, lv.stamp - 5.0)
        # 4000 x 3000 image
        lv.stamp += 0.5
        png = encode_compressed(np.full((3000, 4000, 3), 90, np.uint8), "png")
        st.pub_comp.publish(CompressedImage(header=conv.make_header("camera_optical", lv.stamp), format="png",
                                            data=png))
        # unknown service argument
        r = call(st, QueryFeature, "query_feature", QueryFeature.Request(mode=42))
        assert not r.success
        time.sleep(0.3)
    kinds = {"bad_encoding": "unsupported encoding 'yuv422'", "size_mismatch": "does not match its camera_info",
             "pose_nan": "NaN", "quaternion_not_normalized": "not normalized",
             "missing_camera_info": "camera_info", "time_backwards": "backwards",
             "image_too_large": "4000x3000", "bad_service_argument": ""}  # (first logged by the services test)
    d = wait_diag(lv, lambda v: all(int(v.get(f"rejected_{k}", 0)) >= 2 for k in kinds), timeout=20)
    log = lv.node.text()
    for k, reason in kinds.items():
        lines = [ln for ln in log.splitlines() if f"[{k}]" in ln]
        assert len(lines) == 1, (k, lines)
        assert reason in lines[0], (k, lines[0])
    assert d["optimizer_alive"] == "True"
    # mapping goes on with good frames, in every accepted encoding, compressed, 32FC1 depth, distorted
    from fhgs_ros.core.camera import Intrinsics
    variants = [dict(encoding="bgr8"), dict(encoding="rgba8", depth_encoding="32FC1"), dict(encoding="bgra8"),
                dict(encoding="mono8"), dict(encoding="mono16"), dict(compressed="jpeg"), dict(compressed="png")]
    for i, kw in enumerate(variants):
        rgb, depth, cam = lv.frames[(9 + i) % len(lv.frames)]
        lv.stamp += 0.5
        st.publish_frame(rgb, depth, cam, lv.stamp, **kw)
        time.sleep(0.3)
    rgb, depth, cam = lv.frames[13]
    lv.stamp += 0.5  # plumb_bob camera_info: undistorted before mapping (mild distortion, same image)
    st.publish_frame(rgb, depth, cam, lv.stamp, intrinsics=Intrinsics(cam.width, cam.height, cam.fx, cam.fy, cam.cx,
                                                                       cam.cy, "plumb_bob", (-0.05, 0.01, 0, 0, 0)))
    d = wait_diag(lv, lambda v: int(v["keyframes"]) >= kf0 + 6, timeout=60,
                  what=f"keyframes >= {kf0 + 6} after bad inputs")
    assert lv.node.alive()
    assert sum(int(v) for k, v in d.items() if k.startswith("rejected_") and k != "rejected_total") \
        == int(d["rejected_total"])
    for k in ("bad_encoding", "decode_error", "bad_camera_info"):  # the good variants were all accepted
        assert int(d.get(f"rejected_{k}", 0)) == (2 if k == "bad_encoding" else 0), (k, d)


@pytest.mark.timeout(120)
def test_clicked_point_odometry_and_parameters(live):
    from rcl_interfaces.msg import Parameter as ParamMsg, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    lv = live
    st = lv.st
    cloud = lv.cap["cloud"].wait(1, 10)
    xyz, _ = conv.pointcloud2_to_xyz_rgb(cloud)
    n0 = lv.cap["qpoints"].count if hasattr(lv.cap["qpoints"], "count") else 0
    pub = st.create_publisher(PointStamped, "/clicked_point", 10)
    end = time.monotonic() + 15
    while pub.get_subscription_count() == 0 and time.monotonic() < end:
        time.sleep(0.05)
    p = xyz[0]
    pub.publish(PointStamped(header=conv.make_header("map", 0.0), point=conv.Point(x=float(p[0]), y=float(p[1]),
                                                                                   z=float(p[2]))))
    q = lv.cap["qpoints"].wait(n0 + 1, 15)
    assert q is not None and q.width >= 1 and "score" in [f.name for f in q.fields]
    assert lv.node.wait_for("clicked point (", 10)

    def set_param(name, value: ParameterValue):
        return call(st, SetParameters, "fhgs_node/set_parameters",
                    SetParameters.Request(parameters=[ParamMsg(name=name, value=value)]))

    r = set_param("node.sync_slop", ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=-1.0))
    assert not r.results[0].successful and "outside the valid range" in r.results[0].reason
    r = set_param("mapper.lambda_ext", ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=0.5))
    assert not r.results[0].successful
    r = set_param("node.pose_source", ParameterValue(type=ParameterType.PARAMETER_STRING, string_value="gps"))
    assert not r.results[0].successful and "not one of" in r.results[0].reason
    r = set_param("node.pose_source", ParameterValue(type=ParameterType.PARAMETER_STRING, string_value="odom"))
    assert r.results[0].successful, r.results[0].reason
    kf0 = int(diag_values(lv.diag.wait(1, 10))["keyframes"])
    assert st.wait_for_subscribers(10, ("odom",))
    frames = synthetic_frames(W, H, 6, seed=0)  # same orbit, odometry only
    stream(lv, frames[1::2], pose_via=("odom",))
    wait_diag(lv, lambda v: int(v["keyframes"]) > kf0, timeout=40, what=f"odometry keyframes > {kf0}")
    # seed points (PointCloud2 in map_frame) wait for a keyframe that sees them
    seeds = xyz[:50] + 0.01
    spub = st.create_publisher(PointCloud2, "seed_points", 10)
    end = time.monotonic() + 10
    while spub.get_subscription_count() == 0 and time.monotonic() < end:
        time.sleep(0.05)
    spub.publish(conv.make_pointcloud2({"x": seeds[:, 0], "y": seeds[:, 1], "z": seeds[:, 2]},
                                       conv.make_header("map", 0.0)))
    assert lv.node.wait_for("seed points: +50", 10)
    # reset empties the map
    r = call(st, Trigger, "reset", Trigger.Request())
    assert r.success
    wait_diag(lv, lambda v: int(v["surfels"]) == 0 and int(v["keyframes"]) == 0, timeout=10, what="reset")
    assert re.search(r"\[ERROR\]", lv.node.text()) is None, lv.node.text()[-3000:]
