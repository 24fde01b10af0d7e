"""Unit tests of the node's ROS-free parts (decoding, undistortion, poses, sync, TF buffer, params,
engine) and of the message conversions. No DDS traffic."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from fhgs_ros.core.camera import Intrinsics, Undistorter, distort_normalized
from fhgs_ros.core.geometry import interpolate_pose, invert_pose, matrix_to_quat_xyzw, quat_xyzw_to_matrix
from fhgs_ros.online.imageproc import (InputError, check_quat_xyzw, decode_color, decode_compressed, decode_depth,
                                       encode_compressed, make_intrinsics, pose_matrix)
from fhgs_ros.online.keyframes import KeyframeSelector
from fhgs_ros.online.sync import FrameAssembler, PoseBuffer, StampedBuffer
from fhgs_ros.online.transforms import TransformBuffer


def _checked_matrix(q):
    return quat_xyzw_to_matrix(check_quat_xyzw(q))


def _rgb(h=6, w=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _rot(axis, deg):
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    q = np.r_[a * math.sin(math.radians(deg) / 2), math.cos(math.radians(deg) / 2)]
    return _checked_matrix(q)


def _tf(r, t):
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = r, t
    return m


# ----------------------------------------------------------------------------- decoding
def test_colour_encodings_decode_to_rgb():
    rgb = _rgb()
    h, w = rgb.shape[:2]
    assert np.array_equal(decode_color("rgb8", h, w, w * 3, rgb.tobytes()), rgb)
    assert np.array_equal(decode_color("bgr8", h, w, w * 3, rgb[:, :, ::-1].copy().tobytes()), rgb)
    rgba = np.concatenate([rgb, np.full((h, w, 1), 7, np.uint8)], 2)
    assert np.array_equal(decode_color("rgba8", h, w, w * 4, rgba.tobytes()), rgb)
    bgra = np.concatenate([rgb[:, :, ::-1], np.full((h, w, 1), 7, np.uint8)], 2)
    assert np.array_equal(decode_color("bgra8", h, w, w * 4, bgra.tobytes()), rgb)
    g = rgb[:, :, 0]
    assert np.array_equal(decode_color("mono8", h, w, w, g.tobytes()), np.repeat(g[:, :, None], 3, 2))
    g16 = (g.astype("<u2") * 257)
    assert np.array_equal(decode_color("mono16", h, w, w * 2, g16.tobytes()), np.repeat(g[:, :, None], 3, 2))
    assert np.array_equal(decode_color("mono16", h, w, w * 2, g16.astype(">u2").tobytes(), is_bigendian=True),
                          np.repeat(g[:, :, None], 3, 2))
    # padded rows (step > width * channels)
    padded = np.concatenate([rgb.reshape(h, w * 3), np.zeros((h, 4), np.uint8)], 1)
    assert np.array_equal(decode_color("rgb8", h, w, w * 3 + 4, padded.tobytes()), rgb)


@pytest.mark.parametrize("enc,step,nbytes,kind", [("yuv422", 10, 60, "bad_encoding"), ("32FC1", 20, 120, "bad_encoding"),
                                                  ("rgb8", 10, 90, "bad_image"), ("rgb8", 15, 20, "bad_image")])
def test_colour_decoding_rejects_with_reason(enc, step, nbytes, kind):
    with pytest.raises(InputError) as e:
        decode_color(enc, 6, 5, step, bytes(nbytes))
    assert e.value.kind == kind and str(e.value)


def test_compressed_jpeg_png_and_errors():
    rgb = _rgb(16, 20)
    assert np.array_equal(decode_compressed("png", encode_compressed(rgb, "png")), rgb)
    yy, xx = np.mgrid[0:16, 0:20]
    smooth = np.stack([xx * 12, yy * 15, 255 - xx * 10], -1).astype(np.uint8)
    j = decode_compressed("rgb8; jpeg compressed bgr8", encode_compressed(smooth, "jpeg", quality=95))
    assert j.shape == smooth.shape and np.abs(j.astype(int) - smooth).mean() < 4
    with pytest.raises(InputError) as e:
        decode_compressed("jpeg", b"not an image")
    assert e.value.kind == "decode_error"
    with pytest.raises(InputError):
        decode_compressed("png", b"")
    with pytest.raises(InputError) as e:
        decode_compressed("16UC1; compressedDepth", encode_compressed(rgb, "png"))
    assert e.value.kind == "bad_encoding"


def test_depth_decoding_units_and_invalid_values():
    mm = np.array([[0, 1000], [2500, 65535]], dtype="<u2")
    d = decode_depth("16UC1", 2, 2, 4, mm.tobytes())
    assert d.dtype == np.float32 and np.allclose(d, [[0, 1.0], [2.5, 65.535]])
    m = np.array([[np.nan, 1.5], [-1.0, np.inf]], dtype="<f4")
    assert np.allclose(decode_depth("32FC1", 2, 2, 8, m.tobytes()), [[0, 1.5], [0, 0]])
    with pytest.raises(InputError) as e:
        decode_depth("rgb8", 2, 2, 6, bytes(12))
    assert e.value.kind == "bad_encoding"


# ----------------------------------------------------------------------------- intrinsics / undistortion
def test_camera_info_validation():
    k = [100, 0, 32, 0, 100, 24, 0, 0, 1]
    intr = make_intrinsics(64, 48, k, [0.1, 0.01, 0, 0, 0], "plumb_bob")
    assert intr.has_distortion and intr.fx == 100 and intr.cy == 24
    assert not make_intrinsics(64, 48, k, [], "").has_distortion
    for args in [(0, 48, k, [], ""), (64, 48, [0] * 9, [], ""), (64, 48, k[:8], [], ""),
                 (64, 48, k, [0.1, 0, 0, 0, 0], "kannala_brandt"), (64, 48, k, [0.1, 0.1], "plumb_bob"),
                 (64, 48, [float("nan")] + k[1:], [], "")]:
        with pytest.raises(InputError) as e:
            make_intrinsics(*args)
        assert e.value.kind == "bad_camera_info"
    s = intr.scaled(32, 24)
    assert s.fx == 50 and s.cx == pytest.approx((32 + 0.5) * 0.5 - 0.5)


def _inverse_distort(xd, yd, model, d, iters=50):
    x, y = xd.copy(), yd.copy()
    for _ in range(iters):
        fx, fy = distort_normalized(x, y, model, d)
        x, y = x + (xd - fx), y + (yd - fy)
    return x, y


@pytest.mark.parametrize("model,d", [("plumb_bob", (-0.25, 0.08, 0.001, -0.002, 0.0)),
                                     ("equidistant", (0.05, -0.02, 0.004, -0.001))])
def test_undistortion_recovers_the_pinhole_image(model, d):
    w, h, f = 80, 60, 60.0
    intr = Intrinsics(w, h, f, f, 39.5, 29.5, model, d)

    def scene(x, y):  # smooth pattern in normalized pinhole coordinates
        return 128 + 90 * np.sin(3 * x) * np.cos(2 * y)

    u, v = np.meshgrid(np.arange(w, dtype=float), np.arange(h, dtype=float))
    xd, yd = (u - intr.cx) / f, (v - intr.cy) / f
    x, y = _inverse_distort(xd, yd, model, d)
    distorted = np.repeat(np.clip(np.round(scene(x, y)), 0, 255).astype(np.uint8)[:, :, None], 3, 2)
    und = Undistorter(intr)
    out = und.undistort_rgb(distorted)[:, :, 0].astype(float)
    want = scene((u - intr.cx) / f, (v - intr.cy) / f)
    inner = und.valid.copy()
    inner[:3], inner[-3:], inner[:, :3], inner[:, -3:] = False, False, False, False
    assert inner.mean() > 0.5
    assert np.abs(out - want)[inner].mean() < 2.0
    # without correction the error is much larger: the test measures the undistortion
    assert np.abs(distorted[:, :, 0] - want)[inner].mean() > 3 * np.abs(out - want)[inner].mean()
    # maps equal the model's formula at a sample pixel (OpenCV convention)
    xs, ys = distort_normalized(np.array([(70 - 39.5) / f]), np.array([(10 - 29.5) / f]), model, d)
    assert und.map_x[10, 70] == pytest.approx(xs[0] * f + 39.5, abs=1e-3)
    assert und.map_y[10, 70] == pytest.approx(ys[0] * f + 29.5, abs=1e-3)
    dep = np.full((h, w), 2.0, np.float32)
    ud = und.undistort_depth(dep)
    assert set(np.unique(ud)) <= {0.0, 2.0} and (ud == 2.0).mean() > 0.5


def test_equidistant_formula_matches_opencv_definition():
    k = (0.1, 0.01, 0.0, 0.0)
    x, y = np.array([0.3]), np.array([0.4])
    r = 0.5
    th = math.atan(r)
    thd = th * (1 + k[0] * th ** 2 + k[1] * th ** 4)
    xd, yd = distort_normalized(x, y, "equidistant", k)
    assert xd[0] == pytest.approx(thd / r * 0.3) and yd[0] == pytest.approx(thd / r * 0.4)


# ----------------------------------------------------------------------------- poses
def test_quaternion_validation_and_round_trip():
    r = _rot([1, 2, 3], 40)
    q = matrix_to_quat_xyzw(r)
    assert np.allclose(_checked_matrix(q), r) and abs(np.linalg.norm(q) - 1) < 1e-12
    assert np.allclose(_checked_matrix(q * 1.004), r, atol=1e-9)  # tiny deviations are normalized
    for bad, kind in [([0, 0, 0, 0], "quaternion_not_normalized"), ([0, 0, 0, 2.0], "quaternion_not_normalized"),
                      ([float("nan"), 0, 0, 1], "pose_nan"), ([0, 0, float("inf"), 1], "pose_nan")]:
        with pytest.raises(InputError) as e:
            _checked_matrix(bad)
        assert e.value.kind == kind
    with pytest.raises(InputError) as e:
        pose_matrix([0, float("nan"), 0], [0, 0, 0, 1])
    assert e.value.kind == "pose_nan"
    m = pose_matrix([1, 2, 3], q)
    assert np.allclose(invert_pose(m) @ m, np.eye(4))


def test_pose_interpolation_and_keyframe_selection():
    a = _tf(np.eye(3), [0, 0, 0])
    b = _tf(_rot([0, 0, 1], 90), [2, 0, 0])
    mid = interpolate_pose(a, 0.0, b, 1.0, 0.5)
    assert np.allclose(mid[:3, 3], [1, 0, 0]) and np.allclose(mid[:3, :3], _rot([0, 0, 1], 45))
    sel = KeyframeSelector(min_translation=0.5, min_rotation_deg=20, max_interval=3.0, min_interval=0.1)
    assert sel.check(0.0, a)[0]
    sel.commit(0.0, a)
    assert not sel.check(1.0, _tf(np.eye(3), [0.1, 0, 0]))[0]
    assert sel.check(1.0, _tf(np.eye(3), [0.6, 0, 0]))[0]
    assert sel.check(1.0, _tf(_rot([0, 1, 0], 25), [0, 0, 0]))[0]
    assert not sel.check(0.05, _tf(np.eye(3), [5, 0, 0]))[0]  # min_interval
    assert sel.check(3.5, a)[0]  # max_interval


# ----------------------------------------------------------------------------- sync
def test_stamped_buffer_and_pose_buffer():
    b = StampedBuffer(3)
    for t in (3.0, 1.0, 2.0, 4.0):
        b.add(t, t)
    assert b.stamps == [2.0, 3.0, 4.0]
    assert b.nearest(2.9, 0.2) == (3.0, 3.0) and b.nearest(10, 0.5) is None
    pb = PoseBuffer(slop=0.05, max_gap=1.0)
    assert pb.lookup(1.0)[0] is None
    pb.add(1.0, _tf(np.eye(3), [0, 0, 0]))
    pb.add(2.0, _tf(np.eye(3), [1, 0, 0]))
    p, why, final = pb.lookup(1.25)
    assert final and np.allclose(p[:3, 3], [0.25, 0, 0])
    p, why, final = pb.lookup(2.5)
    assert p is None and not final  # newer than every pose: wait
    p, why, final = pb.lookup(0.5)
    assert p is None and final  # before the buffer: never answerable
    p, _, final = pb.lookup(2.03)
    assert p is not None and not final  # within slop after the newest: usable once late


def test_frame_assembler_matching_timeouts_and_order():
    fa = FrameAssembler(slop=0.02, timeout=0.5, queue_size=3, use_depth=True)
    pose = _tf(np.eye(3), [0, 0, 0])
    look = lambda t, f: (pose, "", True)  # noqa: E731
    now = 100.0
    fa.add_info(1.0, "info1")
    fa.add_depth(1.005, "depth1", now)
    assert fa.add_image(1.0, "img1", "cam", now) == []
    frames, drops = fa.poll(now, look)
    assert len(frames) == 1 and frames[0].info == "info1" and frames[0].depth == "depth1" and not drops
    # time going backwards and duplicates
    d = fa.add_image(0.5, "old", "cam", now)
    assert d and d[0].kind == "time_backwards"
    # missing camera_info -> dropped after the timeout; depth missing -> mapped without depth
    fa.add_image(2.0, "img2", "cam", now)
    frames, drops = fa.poll(now + 0.1, look)
    assert not frames and not drops
    frames, drops = fa.poll(now + 0.6, look)
    assert [x.kind for x in drops] == ["missing_camera_info"] and "no camera_info within slop" in drops[0].reason
    fa.add_info(3.0, "info3")
    fa.add_image(3.0, "img3", "cam", now + 1.0)
    frames, drops = fa.poll(now + 1.1, look)
    assert not frames  # waits for depth (depth was seen recently)
    frames, drops = fa.poll(now + 1.6, look)
    assert len(frames) == 1 and frames[0].depth is None and frames[0].extra.get("depth_missing")
    # bounded queue
    drops = []
    for i in range(5):
        drops += fa.add_image(10.0 + i, f"q{i}", "cam", now + 2)
    assert [x.kind for x in drops] == ["queue_drop", "queue_drop"]
    # no pose: final answer drops immediately
    fa2 = FrameAssembler(slop=0.02, timeout=0.5, use_depth=False)
    fa2.add_info(1.0, "i")
    fa2.add_image(1.0, "x", "cam", 0.0)
    frames, drops = fa2.poll(0.0, lambda t, f: (None, "frame 'cam' unknown", True))
    assert not frames and drops[0].kind == "no_pose"


# ----------------------------------------------------------------------------- TF buffer
def test_transform_buffer_chain_interpolation_and_errors():
    tb = TransformBuffer(cache_time=100.0)
    base_cam = _tf(_rot([1, 0, 0], -90), [0.1, 0, 0.2])
    tb.set_transform("base_link", "camera", 0.0, base_cam, static=True)
    tb.set_transform("map", "odom", 0.0, _tf(np.eye(3), [5, 0, 0]), static=True)
    tb.set_transform("odom", "base_link", 1.0, _tf(np.eye(3), [0, 0, 0]))
    tb.set_transform("odom", "base_link", 2.0, _tf(_rot([0, 0, 1], 90), [2, 0, 0]))
    m, why, final = tb.lookup("map", "camera", 1.5)
    want = _tf(np.eye(3), [5, 0, 0]) @ interpolate_pose(_tf(np.eye(3), [0, 0, 0]), 1.0,
                                                        _tf(_rot([0, 0, 1], 90), [2, 0, 0]), 2.0, 1.5) @ base_cam
    assert final and np.allclose(m, want)
    inv, _, _ = tb.lookup("camera", "map", 1.5)
    assert np.allclose(inv, invert_pose(want))
    m, why, final = tb.lookup("map", "camera", 3.0)
    assert m is None and not final and "future" in why
    m, why, final = tb.lookup("map", "camera", 0.5)
    assert m is None and final and "past" in why
    m, why, final = tb.lookup("map", "nowhere", 1.5)
    assert m is None and "does not exist" in why
    tb.set_transform("world", "other", 0.0, np.eye(4), static=True)
    m, why, _ = tb.lookup("map", "other", 1.5)
    assert m is None and "not connected" in why
    assert tb.lookup("map", "camera", 0.0)[0] is not None  # 0 = latest
    with pytest.raises(InputError):
        tb.set_transform("a", "a", 0.0, np.eye(4))


# ----------------------------------------------------------------------------- params
def test_node_parameters_validation_and_descriptions():
    from fhgs_ros.config import ConfigError
    from fhgs_ros.config import build_config, default_parameters, parameter_specs

    flat = default_parameters()
    assert "node.map_frame" in flat and "mapper.ndfd.lam" in flat and "features.sam_checkpoint" in flat
    cfg, node = build_config(dict(flat, **{"features.sam_model": "vit_tiny", "node.sync_slop": 0.05}))
    assert cfg.features.sam_model == "vit_tiny" and node.sync_slop == 0.05
    for bad, needle in [({"node.sync_slop": -1.0}, "node.sync_slop: -1.0 is outside"),
                        ({"mapper.lambda_ext": "x"}, "mapper.lambda_ext: expected a number"),
                        ({"node.nope": 1}, "node.nope: unknown parameter"),
                        ({"node.pose_source": "gps"}, "not one of tf, pose, odom"),
                        ({"features.sam_model": "vit_q"}, "features.sam_model"),
                        ({"node.camera_extrinsic": [0.0, 0, 0, 0, 0, 0, 2]}, "not normalized"),
                        ({"node.depth_max": 0.05}, "larger than depth_min"),
                        ({"mapper.background": [0.0, 0.0]}, "expected a list of 3"),
                        ({"node.queue_size": 2.5}, "expected an integer")]:
        with pytest.raises(ConfigError) as e:
            build_config(dict(flat, **bad))
        assert needle in str(e.value), (bad, str(e.value))
    specs = parameter_specs()
    assert set(specs) == set(flat) and all(specs[k].doc for k in flat), [k for k in flat if not specs[k].doc]
    for bad, needle in [({"node.publish_period": 1e10}, "node.publish_period: 10000000000.0 is outside"),
                        ({"mapper.lambda_ext": 1e39}, "not representable as float32"),
                        ({"mapper.lambda_ext": float("nan")}, "not a finite number")]:
        with pytest.raises(ConfigError) as e:
            build_config(dict(flat, **bad))
        assert needle in str(e.value), (bad, str(e.value))


def test_node_rejects_bad_parameter_files_with_a_reason(tmp_path):
    rclpy = pytest.importorskip("rclpy")
    pytest.importorskip("fhgs_interfaces.srv")
    from fhgs_ros.config import ConfigError
    from fhgs_ros.ros.harness import write_params
    from fhgs_ros.ros.mapper_node import FHGSNode

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=231 % 232)
    try:
        cases = [({"node": {"sync_slop": -2.0}}, "node.sync_slop"),
                 ({"mapper": {"lamda_ext": 1.0}}, "mapper.lamda_ext: unknown parameter"),
                 ({"mapper": {"lambda_ext": "heavy"}}, "mapper.lambda_ext: expected a number"),
                 ({"features": {"extractor": "label"}}, "features.extractor"),
                 ({"features": {"extractor": "sam", "sam_checkpoint": ""}}, "features.sam_checkpoint")]
        for i, (params, needle) in enumerate(cases):
            p = write_params(tmp_path / f"p{i}.yaml", params)
            with pytest.raises(ConfigError) as e:
                FHGSNode(context=ctx, cli_args=["--ros-args", "--params-file", str(p)])
            assert needle in str(e.value), (params, str(e.value))
    finally:
        rclpy.shutdown(context=ctx)


# ----------------------------------------------------------------------------- conversions
def test_message_conversions_round_trip():
    pytest.importorskip("rclpy")
    pytest.importorskip("fhgs_interfaces.msg")
    from fhgs_ros.ros import conversions as conv
    from fhgs_ros.ros.streamer import encode_image

    hdr = conv.make_header("cam", 12.25)
    assert conv.stamp_to_sec(hdr.stamp) == pytest.approx(12.25)
    rgb = _rgb(7, 9)
    for enc in ("rgb8", "bgr8", "rgba8", "bgra8"):
        assert np.array_equal(conv.image_to_rgb(encode_image(rgb, hdr, enc)), rgb)
    d = np.array([[0.0, 1.234], [2.5, 0.0]], np.float32)
    assert np.allclose(conv.depth_to_array(conv.depth_to_image_msg(d, hdr, "32FC1")), d)
    assert np.allclose(conv.depth_to_array(conv.depth_to_image_msg(d, hdr, "16UC1")), d, atol=1e-3)
    m = _tf(_rot([1, 1, 0], 33), [1, -2, 3])
    assert np.allclose(conv.pose_to_matrix(conv.matrix_to_pose(m)), m)
    assert np.allclose(conv.transform_to_matrix(conv.matrix_to_transform(m)), m)
    feats = torch.randn(5, 3, 4)
    for dt, tol in (("float32", 1e-7), ("float16", 1e-2)):
        back = conv.feature_image_to_array(conv.feature_image_msg(feats, hdr, dt, "x"))
        assert np.allclose(back, feats.numpy(), atol=tol)
    xyz = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    col = np.random.default_rng(1).random((10, 3))
    pc = conv.make_pointcloud2({"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "rgb": conv.pack_rgb(col),
                                "cluster": np.arange(10, dtype=np.int32)}, hdr)
    x2, c2 = conv.pointcloud2_to_xyz_rgb(pc)
    assert np.allclose(x2, xyz) and np.allclose(c2, np.round(col * 255) / 255, atol=1e-6)
    assert list(conv.pointcloud2_to_array(pc)["cluster"]) == list(range(10))
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], float)
    mk = conv.mesh_marker(v, np.array([[0, 1, 2]]), np.array([[1, 0, 0]] * 3, float), hdr)
    assert len(mk.points) == 3 and len(mk.colors) == 3 and mk.type == mk.TRIANGLE_LIST


# ----------------------------------------------------------------------------- engine (no ROS)
@pytest.mark.timeout(120)
def test_engine_maps_frames_saves_loads_and_resets(tmp_path):
    from fhgs_ros.config import FHGSConfig
    from fhgs_ros.features.registry import make_extractor
    from fhgs_ros.features.sam import save_random_checkpoint
    from fhgs_ros.online.frames import InputFrame
    from fhgs_ros.online.engine import MappingEngine
    from fhgs_ros.config import NodeConfig
    from fhgs_ros.ros.streamer import synthetic_frames

    ckpt = save_random_checkpoint(tmp_path / "tiny.pth", "vit_tiny", input_size=256, seed=0)
    ext = make_extractor("sam", checkpoint=str(ckpt), model="vit_tiny", device="cpu")
    frames = synthetic_frames(48, 36, 6, seed=2)
    ncfg = NodeConfig(kf_min_translation=0.05, densify=False, max_new_surfels_per_keyframe=300,
                      map_path=str(tmp_path / "auto.safetensors"), autosave_every_keyframes=2, autosave_period=0.0)
    eng = MappingEngine(FHGSConfig(), ncfg, ext)
    eng.start()
    try:
        for i, (rgb, depth, cam) in enumerate(frames):
            intr = Intrinsics(cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy)
            eng.submit(InputFrame(float(i), rgb, intr, cam.cam_to_world.double().numpy(),
                                  depth if i % 2 == 0 else None))
        eng.add_seed_points(np.zeros((0, 3)), None)
        end = time.monotonic() + 60
        while time.monotonic() < end and (eng.state.keyframes_total < len(frames) or eng.state.iteration < 3):
            time.sleep(0.05)
        st = eng.state
        assert st.keyframes_total == len(frames) and len(st.surfels) > 100 and st.pca is not None
        assert st.surfels.feature_dim == 256 and st.centroids is not None
        # frozen features of the published state are shared, not copied; trainables are detached copies
        assert not st.surfels.means.requires_grad
        end = time.monotonic() + 10
        while time.monotonic() < end and not (tmp_path / "auto.safetensors").exists():
            time.sleep(0.05)
        assert (tmp_path / "auto.safetensors").exists()  # autosave every 2 keyframes
        ok, msg, saved = eng.save(str(tmp_path / "m.safetensors"))
        assert ok, msg
        n = len(saved.surfels)
        ok, msg = eng.load(str(tmp_path / "m.safetensors"))
        assert ok and len(eng.state.surfels) == n and len(eng.state.cameras) == len(frames)
        (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 64)
        ok, msg = eng.load(str(tmp_path / "bad.safetensors"))
        assert not ok and "bad.safetensors" in msg and len(eng.state.surfels) == n
        r = eng.render(frames[1][2], features=True)
        assert r.features.shape == (256, 36, 48) and float(r.alpha.max()) > 0.5
        ok, msg = eng.reset()
        assert ok and len(eng.state.surfels) == 0 and eng.state.keyframes_total == 0
    finally:
        eng.stop()
    assert eng.optimizer_error is None


def test_node_loads_the_documented_parameter_file(tmp_path):
    """config/fhgs.yaml via --params-file (+ a second file selecting the tiny SAM model): every parameter
    declared with its description and the file's value; the node section round-trips."""
    rclpy = pytest.importorskip("rclpy")
    pytest.importorskip("fhgs_interfaces.srv")
    from fhgs_ros.config import default_config_path
    from fhgs_ros.features.sam import save_random_checkpoint
    from fhgs_ros.ros.harness import write_params
    from fhgs_ros.ros.mapper_node import FHGSNode
    from fhgs_ros.config import default_parameters

    ckpt = save_random_checkpoint(tmp_path / "tiny.pth", "vit_tiny", input_size=256, seed=0)
    extra = write_params(tmp_path / "sam.yaml", {"features": {"extractor": "sam", "sam_model": "vit_tiny",
                                                             "sam_checkpoint": str(ckpt), "sam_input_size": 256},
                                                "node": {"pose_source": "odom"}})
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=230)
    node = None
    try:
        node = FHGSNode(context=ctx, cli_args=["--ros-args", "--params-file", str(default_config_path()),
                                               "--params-file", str(extra), "-p", "node.sync_slop:=0.05"])
        names = set(default_parameters())
        assert names <= set(node._parameters)
        for n in names:
            d = node.describe_parameter(n)
            assert d.description and not d.description.startswith("see "), n
        assert node.get_parameter("mapper.ndfd.lam").value == 0.5
        assert node.get_parameter("node.pose_source").value == "odom" and node.ncfg.pose_source == "odom"
        assert node.ncfg.sync_slop == 0.05 and node.cfg.features.sam_model == "vit_tiny"
        assert node.describe_parameter("mapper.lambda_ext").read_only
        assert not node.describe_parameter("node.kf_min_translation").read_only
        from rclpy.parameter import Parameter
        r = node.set_parameters([Parameter("node.kf_min_translation", value=0.3)])[0]
        assert r.successful and node.engine.frontend.selector.min_translation == 0.3
        r = node.set_parameters([Parameter("node.kf_min_translation", value=-0.3)])[0]
        assert not r.successful and "outside the valid range" in r.reason
    finally:
        if node is not None:
            node.shutdown()
            node.destroy_node()
        rclpy.shutdown(context=ctx)


def test_engine_seed_points_mono_init_and_online_schedule(tmp_path):
    from fhgs_ros.config import FHGSConfig
    from fhgs_ros.features.registry import make_extractor
    from fhgs_ros.features.sam import save_random_checkpoint
    from fhgs_ros.online.frames import InputFrame
    from fhgs_ros.online.engine import MappingEngine
    from fhgs_ros.config import NodeConfig
    from fhgs_ros.ros.streamer import synthetic_frames

    ckpt = save_random_checkpoint(tmp_path / "tiny.pth", "vit_tiny", input_size=256, seed=0)
    ext = make_extractor("sam", checkpoint=str(ckpt), model="vit_tiny", device="cpu")
    (rgb, depth, cam), (rgb2, depth2, cam2) = synthetic_frames(48, 36, 2, seed=3)
    eng = MappingEngine(FHGSConfig(), NodeConfig(kf_min_translation=0.0, steps_per_keyframe=100), ext)
    intr = Intrinsics(cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy)
    # seed points: back-projected depth of the first view, plus points behind the camera (never seen)
    ys, xs = np.mgrid[0:36:4, 0:48:4]
    z = depth[ys, xs]
    ok = z > 0
    pc = np.stack([(xs[ok] - cam.cx) / cam.fx * z[ok], (ys[ok] - cam.cy) / cam.fy * z[ok], z[ok]], -1)
    c2w = cam.cam_to_world.double().numpy()
    xyz = pc @ c2w[:3, :3].T + c2w[:3, 3]
    behind = (np.array([[0, 0, -1.0]]) @ c2w[:3, :3].T + c2w[:3, 3]).repeat(5, 0)
    eng.add_seed_points(np.concatenate([xyz, behind]), None)
    prep = eng.prepare(InputFrame(1.0, rgb, intr, c2w, None))
    assert prep is not None and len(prep.surfels) == len(xyz)  # visible seeds only, no mono init on top
    assert eng.pending_seed_points() == 5
    # frozen feature of each seeded surfel = the keyframe's grid sampled at its pixel
    from fhgs_ros.core.seeding import project, sample_grid
    xy, _ = project(torch.as_tensor(xyz, dtype=torch.float32), prep.keyframe.camera)
    want = sample_grid(prep.keyframe.target, xy)
    assert torch.allclose(prep.surfels.features_raw.float(), want, rtol=2e-3, atol=1e-3)  # float16 unit x norm
    # no depth, no seeds: nominal-depth surfels along the rays
    eng2 = MappingEngine(FHGSConfig(), NodeConfig(kf_min_translation=0.0, init_geometry="nominal", mono_init_depth=2.0,
                                                  mono_init_jitter=0.25), ext)
    p2 = eng2.prepare(InputFrame(1.0, rgb2, intr, cam2.cam_to_world.double().numpy(), None))
    zc = (p2.surfels.means.detach() @ cam2.world_to_cam[:3, :3].T + cam2.world_to_cam[:3, 3])[:, 2]
    assert len(p2.surfels) > 50 and float(zc.min()) >= 1.75 - 1e-4 and float(zc.max()) <= 2.25 + 1e-4
    # online schedule (docs/METHOD.md §8.9) around each keyframe's budget: the mapper consults it
    eng._integrate(prep)
    sc = eng.mapper.schedule
    s0 = eng.kf_start_iter
    assert [sc.dist_on(s0 + i) for i in (30, 31)] == [False, True]
    assert [sc.normal_on(s0 + i) for i in (70, 71)] == [False, True]
    assert [sc.collect_stats(s0 + i) for i in (1, 70, 71)] == [True, True, False]
    assert not any(sc.reset_opacity_now(i) or sc.prune_big(i) for i in range(1, 20000, 7))  # none online
    for _ in range(3):
        eng.mapper.step()
    eng._integrate(eng.prepare(InputFrame(2.0, rgb2, intr, cam2.cam_to_world.double().numpy(), depth2)))
    assert eng.kf_start_iter == 3 and sc.dist_on(34) and not sc.dist_on(33)
