"""Property tests (Hypothesis) of everything untrusted input reaches before the mapping code (issue 11).

Decoders (Image, CompressedImage, CameraInfo, PointCloud2), pose and stamp checks, every service
request validator, path resolution inside node.map_dir and the map-file reader (random and mutated
headers, truncations, special files). The property everywhere: the input is either accepted with a
well-formed result or refused with the module's own error type (InputError / Rejected /
MapFileError) — never any other exception, never a hang, never file content in a message.
"""

from __future__ import annotations

import json
import os
import struct
import threading

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from fhgs_ros.core.camera import Camera, look_at
from fhgs_ros.core.mapfile_schema import json_depth
from fhgs_ros.core.storage import MapFileError, load_map, save_map
from fhgs_ros.core.surfels import SurfelMap
from fhgs_ros.online import requests as rq
from fhgs_ros.online.guard import Guard, Rejected, Supervisor, bounded_wait, finite_f32
from fhgs_ros.online.limits import RequestGate, RequestLimits, check_view, view_bytes
from fhgs_ros.online.motion import MotionGate, MotionLimits, Timeline, robust_extent
from fhgs_ros.online.paths import MapDir, is_ours
from fhgs_ros.online.payloads import check_compressed, pointcloud_layout, probe_image_size
from fhgs_ros.online.imageproc import (InputError, decode_color, decode_compressed, decode_depth, decode_labels,
                                    encode_compressed, make_intrinsics)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.function_scoped_fixture])
floats_any = st.floats(allow_nan=True, allow_infinity=True)
floats_wide = st.one_of(st.floats(-1e40, 1e40), floats_any, st.sampled_from([0.0, 1.0, -1.0, 1e39, 3.5e38, 1e-40]))
D = 8


# ----------------------------------------------------------------------------- images
@FAST
@given(enc=st.sampled_from(["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "16UC1", "32FC1", "8UC1", "yuv422",
                            ""]),
       h=st.integers(-2, 12), w=st.integers(-2, 12), step=st.integers(-4, 80), n=st.integers(0, 2000),
       big=st.booleans())
def test_raw_image_decoders_accept_or_refuse(enc, h, w, step, n, big):
    data = bytes(np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8))
    for fn in (decode_color, decode_depth, decode_labels):
        try:
            out = fn(enc, h, w, step, data, big)
        except InputError:
            continue
        assert out.shape[:2] == (h, w)
        if fn is decode_depth:
            assert np.isfinite(out).all() and (out >= 0).all()


def _jpeg_header(w: int, h: int) -> bytes:
    """A tiny JPEG stream whose frame header declares w x h (a decompression bomb for large sizes)."""
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, h, w, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + sof \
        + b"\xff\xda" + struct.pack(">H", 8) + b"\x01\x01\x00\x00\x3f\x00" + b"\x00" * 500 + b"\xff\xd9"


def _png_header(w: int, h: int) -> bytes:
    import zlib
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 300


def test_decompression_bombs_are_refused_before_decoding():
    for data in (_jpeg_header(65000, 65000), _png_header(65000, 65000), _png_header(2 ** 31, 3)):
        with pytest.raises(Rejected) as e:
            check_compressed(data, 8_388_608)
        assert e.value.kind == "image_too_large"
    # PIL itself, if reached, must not escape with its own DecompressionBombError
    for data in (_jpeg_header(65000, 65000), _png_header(65000, 65000)):
        with pytest.raises(InputError):
            decode_compressed("jpeg", data)


@FAST
@given(seed=st.integers(0, 10 ** 6), fmt=st.sampled_from(["png", "jpeg"]), nflip=st.integers(0, 12),
       cut=st.floats(0.0, 1.0))
def test_compressed_decoding_of_mutated_streams(seed, fmt, nflip, cut):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (rng.integers(1, 20), rng.integers(1, 20), 3), dtype=np.uint8)
    data = bytearray(encode_compressed(img, fmt))
    for _ in range(nflip):
        data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
    data = bytes(data[: max(1, int(len(data) * cut))]) if cut < 0.9 else bytes(data)
    try:
        _, w, h = check_compressed(data, 4096)
    except Rejected:
        return
    assert w * h <= 4096
    try:
        out = decode_compressed(fmt, data)
    except InputError:
        return
    assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.uint8


@FAST
@given(data=st.binary(max_size=300))
def test_probe_of_random_bytes(data):
    p = probe_image_size(data)
    assert p is None or (p[0] in ("png", "jpeg") and p[1] >= 0 and p[2] >= 0)


@FAST
@given(w=st.integers(-5, 70000), h=st.integers(-5, 70000), k=st.lists(floats_wide, min_size=0, max_size=10),
       d=st.lists(floats_wide, max_size=9), model=st.sampled_from(["plumb_bob", "equidistant", "rational_polynomial",
                                                                     "", "fisheye?"]))
def test_camera_info_validation(w, h, k, d, model):
    try:
        intr = make_intrinsics(w, h, k, d, model)
    except InputError:
        return
    assert intr.width > 0 and intr.height > 0 and intr.fx > 0 and intr.fy > 0


# ----------------------------------------------------------------------------- point clouds
field_st = st.builds(lambda name, off, dt, cnt: (name, off, dt, cnt), st.sampled_from(["x", "y", "z", "rgb", "i", ""]),
                     st.integers(0, 40), st.integers(0, 10), st.integers(0, 3))


@FAST
@given(fields=st.lists(field_st, max_size=6), point_step=st.integers(0, 40), width=st.integers(0, 30),
       height=st.integers(0, 3), row_extra=st.integers(-8, 8), nbytes=st.integers(0, 4000), big=st.booleans())
def test_pointcloud2_decoding(fields, point_step, width, height, row_extra, nbytes, big):
    from sensor_msgs.msg import PointCloud2, PointField

    from fhgs_ros.ros import conversions as conv

    msg = PointCloud2(height=height, width=width, point_step=point_step, is_bigendian=big,
                      row_step=max(0, width * point_step + row_extra),
                      fields=[PointField(name=n, offset=o, datatype=t, count=c) for n, o, t, c in fields])
    msg.data = bytes(np.random.default_rng(nbytes).integers(0, 256, nbytes, dtype=np.uint8))
    try:
        xyz, rgb = conv.pointcloud2_to_xyz_rgb(msg, )
    except InputError as exc:
        assert exc.kind == "bad_pointcloud"
        return
    assert xyz.dtype == np.float32 and np.isfinite(xyz).all() and (np.abs(xyz) <= 1e6).all()
    assert rgb is None or len(rgb) == len(xyz)


def test_pointcloud_layouts_that_used_to_crash():
    class F:
        def __init__(self, name, offset, datatype=7, count=1):
            self.name, self.offset, self.datatype, self.count = name, offset, datatype, count
    xyz = [F("x", 0), F("y", 4), F("z", 8)]
    for fields, step, why in [(xyz, 8, "does not fit"), (xyz + [F("x", 0)], 12, "duplicate"),
                              ([F("x", 0), F("y", 4), F("z", 2 ** 31)], 12, "does not fit"),
                              ([F("x", 0, datatype=99)], 4, "unknown datatype")]:
        with pytest.raises(Rejected, match=why):
            pointcloud_layout(fields, step, step * 4, 4, 1, step * 4, False, 100)
    with pytest.raises(Rejected, match="exceed"):
        pointcloud_layout(xyz, 12, 12 * 10 ** 6, 10 ** 6, 1, 12 * 10 ** 6, False, 1000)


# ----------------------------------------------------------------------------- poses, stamps, extent
pose_st = st.tuples(st.lists(floats_wide, min_size=3, max_size=3), st.lists(floats_wide, min_size=4, max_size=4))


@FAST
@given(p=pose_st)
def test_request_pose(p):
    try:
        m = rq.request_pose(*p)
    except Rejected as exc:
        assert exc.kind == "bad_service_argument"
        return
    assert np.isfinite(m.astype(np.float32)).all() and np.abs(m[:3, 3]).max() <= rq.MAX_ABS_COORD
    assert np.allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-5)


def _pose(t, yaw=0.0):
    m = np.eye(4)
    c, s = np.cos(yaw), np.sin(yaw)
    m[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    m[:3, 3] = t
    return m


@FAST
@given(steps=st.lists(st.tuples(st.floats(-1e12, 1e12), st.floats(-1e3, 1e3), st.floats(0, 7)), max_size=25))
def test_motion_gate_never_crashes_and_bounds_accepted_motion(steps):
    lim = MotionLimits(max_speed=5.0, max_jump=0.5, max_angular_speed_deg=90, max_turn_deg=10, max_dt=1.0,
                       recover_frames=3)
    gate = MotionGate(lim)
    t = 0.0
    for x, dt, yaw in steps:
        t += abs(dt)
        try:
            gate.check(t, _pose((x, 0.0, 0.0), yaw))
        except Rejected as exc:
            assert exc.kind in ("implausible_motion", "pose_out_of_range", "pose_nan")


def test_motion_gate_outlier_and_relocalization():
    gate = MotionGate(MotionLimits(max_speed=2.0, max_jump=0.2, recover_frames=3))
    for i in range(5):
        assert gate.check(i * 0.1, _pose((i * 0.05, 0, 0))) == ""
    with pytest.raises(Rejected, match="beyond"):
        gate.check(0.55, _pose((1e9, 0, 0)))  # one frame 1e9 m away (the issue's example)
    with pytest.raises(Rejected, match="moved"):
        gate.check(0.56, _pose((1e5, 0, 0)))  # 100 km in 10 ms
    assert gate.check(0.6, _pose((0.3, 0, 0))) == ""  # the next good frame is fine
    with pytest.raises(Rejected):
        gate.check(0.7, _pose((1e7, 1e7, 0)))  # beyond 1e6 m: out of range
    for i, t in enumerate((0.8, 0.9)):  # the pose source relocalized 50 m away: consistent frames re-anchor
        with pytest.raises(Rejected):
            gate.check(t, _pose((50 + 0.01 * i, 0, 0)))
    assert gate.check(1.0, _pose((50.02, 0, 0))) == "reanchored"
    assert gate.check(1.1, _pose((50.05, 0, 0))) == ""


@FAST
@given(stamps=st.lists(st.one_of(st.floats(-10, 1e7), floats_any), max_size=30))
def test_timeline_never_crashes(stamps):
    tl = Timeline(600.0, 3)
    newest = None
    for s in stamps:
        try:
            if tl.check(s, newest):
                newest = None
            newest = s if newest is None or s > newest else newest
        except Rejected as exc:
            assert exc.kind in ("time_backwards", "time_jump", "duplicate_stamp", "bad_stamp")


def test_timeline_recovers_from_a_glitch():
    tl = Timeline(600.0, 3)
    newest = None
    accepted = []
    for s in [100.0, 100.5, 1e6, 101.0, 101.5, 102.0, 102.5, 103.0]:
        try:
            if tl.check(s, newest):
                newest = None
            newest = s if newest is None else max(newest, s)
            accepted.append(s)
        except Rejected:
            pass
    # the 1e6 glitch was refused outright (a time jump), normal frames go on
    assert 1e6 not in accepted and accepted[-1] == 103.0
    tl2, newest, got = Timeline(600.0, 3), 1e6, []
    for s in [101.0, 101.5, 102.0, 102.5]:  # the glitch got in first: three consistent frames re-anchor
        try:
            if tl2.check(s, newest):
                newest = None
            newest = s if newest is None else max(newest, s)
            got.append(s)
        except Rejected:
            pass
    assert got == [102.0, 102.5]


@FAST
@given(c=st.lists(st.tuples(st.floats(-10, 10), st.floats(-10, 10), st.floats(-10, 10)), min_size=3, max_size=40),
       far=st.floats(1e3, 1e12))
def test_robust_extent_ignores_one_far_camera(c, far):
    pts = np.asarray(c)
    diag = float(np.linalg.norm(pts.max(0) - pts.min(0)))
    assert 1.0 <= robust_extent(pts) <= max(1.0, 1.1 * diag) + 1e-6
    with_outlier = robust_extent(np.vstack([pts, [[far, 0, 0]]]))  # one camera 1 km .. 1e12 m away
    assert with_outlier <= max(1.0, 1.1 * diag) + 1e-6


# ----------------------------------------------------------------------------- service request validators
def _fallback():
    return Camera(64, 48, 50.0, 50.0, 31.5, 23.5, look_at((1.0, 2.0, 3.0), (0, 0, 0)))


@FAST
@given(p=pose_st, w=st.integers(0, 70000), h=st.integers(0, 70000), k=st.lists(floats_wide, min_size=9, max_size=9),
       latest=st.booleans(), feat=st.sampled_from([0, 3, 256]))
def test_view_request_validator(p, w, h, k, latest, feat):
    lim = RequestLimits(memory_bytes=256 * 2 ** 20, max_pixels=2 ** 22, max_prompts=16, max_results=1000)
    try:
        cam = rq.request_camera(p[0], p[1], w, h, k, _fallback(), latest, lim, feat)
    except Rejected as exc:
        assert exc.kind in ("bad_service_argument", "request_too_large")
        return
    assert view_bytes(cam.width, cam.height, feat) <= lim.memory_bytes
    assert torch.isfinite(cam.world_to_cam).all()


def test_issue_examples_of_view_requests():
    lim = RequestLimits()
    with pytest.raises(Rejected, match="float32"):  # 1e39: finite as a double, inf as float32
        rq.request_camera((1e39, 0, 0), (0, 0, 0, 1), 0, 0, [0] * 9, _fallback(), False, lim)
    with pytest.raises(Rejected, match="request_memory_mb"):  # 2048 x 2048 with 256 channels: 4.3 GB of features
        rq.request_camera((0, 0, 0), (0, 0, 0, 1), 2048, 2048, [500, 0, 1024, 0, 500, 1024, 0, 0, 1], None, False,
                          lim, 256)


@FAST
@given(thr=floats_wide, radius=floats_wide, n=st.integers(-5, 10 ** 9), pt=st.lists(floats_wide, min_size=3,
                                                                                    max_size=3),
       vec=st.lists(floats_wide, max_size=10))
def test_query_validators(thr, radius, n, pt, vec):
    lim = RequestLimits(max_results=1000)
    for fn, args in ((rq.query_threshold, (thr, 0.85)), (rq.query_radius, (radius,)),
                     (rq.query_max_results, (n, lim)), (rq.query_point, tuple(pt)), (rq.query_vector, (vec, 4))):
        try:
            out = fn(*args)
        except Rejected as exc:
            assert exc.kind == "bad_service_argument"
            continue
        if fn is rq.query_threshold:
            assert 0 < out <= 1
        elif fn is rq.query_max_results:
            assert 1 <= out <= 1000
        elif fn is rq.query_vector:
            assert out.shape == (4,) and np.isfinite(out).all()
        elif fn is rq.query_point:
            assert all(abs(v) <= 1e6 for v in out)


@FAST
@given(points=st.lists(floats_wide, max_size=14), labels=st.lists(st.integers(-3, 3), max_size=8),
       box=st.lists(floats_wide, max_size=5))
def test_segment_prompt_validator(points, labels, box):
    try:
        pts, lab, bx = rq.segment_prompts(points, labels, box, 64, 48, 5)
    except Rejected as exc:
        assert exc.kind in ("bad_service_argument", "request_too_large")
        return
    if pts is not None:
        assert np.isfinite(pts).all() and len(pts) <= 5
        assert ((pts[:, 0] >= 0) & (pts[:, 0] < 64) & (pts[:, 1] >= 0) & (pts[:, 1] < 48)).all()
    if bx is not None:
        assert np.isfinite(bx).all() and bx[0] < bx[2] and bx[1] < bx[3]


def test_issue_examples_of_prompts():
    nan = float("nan")
    for pts, box in [([nan, 1.0], []), ([], [10.0, 10.0, 5.0, 20.0]), ([], [nan, 0.0, 5.0, 5.0]),
                     ([1.0, 1.0] * 10000, [])]:
        with pytest.raises(Rejected):
            rq.segment_prompts(pts, [], box, 64, 48, 64)
    with pytest.raises(Rejected, match="threshold"):
        rq.query_threshold(nan, 0.85)


@FAST
@given(suffix=st.sampled_from(["", ".ply", ".obj", ".stl", ".cfg"]), fmt=st.sampled_from(["", "ply", "obj", "x"]),
       color=st.sampled_from(["", "rgb", "features", "none", "plaid"]))
def test_export_validator(suffix, fmt, color):
    try:
        f, c = rq.export_format(suffix, fmt, color)
    except Rejected:
        return
    assert f in ("ply", "obj") and c in ("rgb", "features", "none")


# ----------------------------------------------------------------------------- paths
name_part = st.sampled_from(["a", "b", "..", ".", "", "~", "/", "link", "out", "map.safetensors", "m.ply", "x.cfg",
                             "/etc/passwd", "/tmp", "\x00", "m.obj", "deep/er"])


@FAST
@given(parts=st.lists(name_part, min_size=1, max_size=5))
def test_map_dir_resolution_stays_inside(tmp_path_factory, parts):
    root = tmp_path_factory.mktemp("maps")
    outside = tmp_path_factory.mktemp("outside")
    (root / "link").exists() or os.symlink(outside, root / "link")
    md = MapDir(str(root))
    name = "/".join(parts)
    for sfx in ((".safetensors",), (".ply", ".obj")):
        try:
            p = md.resolve(name, sfx, "test")
        except Rejected as exc:
            assert exc.kind == "bad_path"
            continue
        real = os.path.realpath(p)
        assert real == str(p) and (real + os.sep).startswith(os.path.realpath(root) + os.sep)
        assert p.suffix in sfx


def test_map_dir_refuses_foreign_files_and_outside_folders(tmp_path):
    root = tmp_path / "maps"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", root / "out")
    md = MapDir(str(root), [str(tmp_path / "listed.safetensors")])
    for bad in ("../x.safetensors", str(tmp_path / "x.safetensors"), "out/x.safetensors", "~/x.safetensors",
                "x.cfg", "a/../../x.safetensors"):
        with pytest.raises(Rejected):
            md.resolve(bad, (".safetensors",), "save_map")
    assert md.resolve(str(tmp_path / "listed.safetensors"), (".safetensors",), "save_map").name == "listed.safetensors"
    (root / "cfg.ply").write_text("ply\nformat ascii 1.0\nend_header\n")  # a PLY that is not ours
    with pytest.raises(Rejected, match="not written by fhgs_ros"):
        md.prepare_write(md.resolve("cfg.ply", (".ply",), "export_mesh"), "export_mesh")
    os.mkfifo(root / "fifo.safetensors")
    with pytest.raises(Rejected, match="not a regular file"):
        md.prepare_write(md.resolve("fifo.safetensors", (".safetensors",), "save_map"), "save_map")
    p = md.resolve("sub/dir/new.safetensors", (".safetensors",), "save_map")
    md.prepare_write(p, "save_map")  # folders are created inside map_dir only
    assert p.parent.is_dir()
    assert not is_ours(str(root / "cfg.ply"))


# ----------------------------------------------------------------------------- map files
def _make_map(n: int = 20) -> SurfelMap:
    g = torch.Generator().manual_seed(0)
    return SurfelMap.create(torch.randn(n, 3, generator=g), torch.rand(n, 3, generator=g),
                            torch.randn(n, D, generator=g), scales=torch.rand(n, 2, generator=g) * 0.1 + 0.01)


@pytest.fixture(scope="module")
def good_map(tmp_path_factory):
    p = tmp_path_factory.mktemp("mapfile") / "good.safetensors"
    save_map(p, _make_map(), {"feature_extractor": "x", "keyframes": [_fallback()],
                              "node": {"iteration": 3, "keyframes_total": 1, "stamp": 1.0}})
    return p, p.read_bytes()


def _load_checked(path, secret: bytes = b"") -> None:
    try:
        s, meta, _ = load_map(path, max_bytes=2 ** 24)
    except MapFileError as exc:
        if secret:
            assert secret.decode(errors="replace")[:8] not in str(exc)
        return
    assert len(s) == s.means.shape[0] and torch.isfinite(s.means).all()
    assert all(isinstance(k, Camera) for k in meta["keyframes"])


@FAST
@given(cut=st.integers(0, 10 ** 6), flips=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)),
                                                   max_size=6))
def test_map_reader_mutations_and_truncations(tmp_path_factory, good_map, cut, flips):
    _, data = good_map
    b = bytearray(data[: cut % (len(data) + 1)] if cut % 3 == 0 else data)
    hlen = struct.unpack("<Q", data[:8])[0] + 8
    for pos, val in flips:  # mostly inside the header (the JSON), sometimes in the tensor data
        i = pos % hlen if pos % 4 else pos % max(1, len(b))
        if i < len(b):
            b[i] = val
    p = tmp_path_factory.mktemp("mut") / "m.safetensors"
    p.write_bytes(bytes(b))
    _load_checked(p)


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=False),
                      st.text(max_size=8))
json_doc = st.recursive(json_leaf, lambda ch: st.one_of(st.lists(ch, max_size=4),
                                                        st.dictionaries(st.text(max_size=6), ch, max_size=4)),
                        max_leaves=20)
meta_key = st.sampled_from(["feature_dim", "sh_degree", "next_uid", "num_surfels", "keyframes", "node", "crc32",
                            "surfel_meta", "extra_tensors", "feature_extractor"])


def _rewrite(data: bytes, fn) -> bytes:
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    header["__metadata__"].pop("fhgs_meta_crc32", None)  # reach the schema checks behind the metadata CRC
    fn(header)
    raw = json.dumps(header).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + n:]


@FAST
@given(key=meta_key, value=json_doc, where=st.sampled_from(["meta", "header", "metadata"]))
def test_map_reader_random_header_values(tmp_path_factory, good_map, key, value, where):
    _, data = good_map

    def mutate(h):
        if where == "meta":
            meta = json.loads(h["__metadata__"]["fhgs_meta"])
            meta[key] = value
            h["__metadata__"]["fhgs_meta"] = json.dumps(meta)
        elif where == "header":
            h["means"] = value if not isinstance(value, dict) else {**h["means"], **value}
        else:
            h["__metadata__"][key] = value
    p = tmp_path_factory.mktemp("hdr") / "m.safetensors"
    p.write_bytes(_rewrite(data, mutate))
    _load_checked(p)


def test_map_reader_issue_examples(tmp_path, good_map):
    _, data = good_map
    deep = "[" * 200_000 + "]" * 200_000
    cases = {
        "deep_meta": lambda h: h["__metadata__"].__setitem__("fhgs_meta", deep),
        "inf": lambda h: h["__metadata__"].__setitem__(
            "fhgs_meta", h["__metadata__"]["fhgs_meta"].replace('"stamp": 1.0', '"stamp": 1e999')),
        "list_for_number": lambda h: h["__metadata__"].__setitem__(
            "fhgs_meta", h["__metadata__"]["fhgs_meta"].replace('"iteration": 3', '"iteration": [3]')),
    }
    for name, fn in cases.items():
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(_rewrite(data, fn))
        with pytest.raises(MapFileError):
            load_map(p)
    i = data.index(b'iteration\\": 3')  # one changed digit inside the metadata: caught by its CRC-32
    flipped = tmp_path / "flipped.safetensors"
    flipped.write_bytes(data[:i + 13] + b"4" + data[i + 14:])
    with pytest.raises(MapFileError, match="metadata fails its CRC"):
        load_map(flipped)
    deep_header = tmp_path / "deep_header.safetensors"
    raw = ("{" + '"a":{' * 100_000 + "}" * 100_001).encode()
    deep_header.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(MapFileError, match="nested"):
        load_map(deep_header)
    assert json_depth(b'{"a": "[[[[[[", "b": [[1]]}') == 3
    secret = tmp_path / "passwd.safetensors"
    secret.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(MapFileError) as e:
        load_map(secret)
    assert "root" not in str(e.value).replace(str(tmp_path), "")


def test_map_reader_special_files(tmp_path):
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    done = threading.Event()
    err: list = []

    def run():
        for p in (fifo, "/dev/zero", tmp_path):
            try:
                load_map(p)
            except MapFileError as exc:
                err.append(str(exc))
        done.set()
    threading.Thread(target=run, daemon=True).start()
    assert done.wait(10), "load_map blocked on a FIFO or read /dev/zero forever"
    assert len(err) == 3 and "regular file" in err[0] and "regular file" in err[1] and "directory" in err[2]
    big = tmp_path / "big.safetensors"
    with open(big, "wb") as f:
        f.truncate(2 ** 20)
    with pytest.raises(MapFileError, match="larger than the limit"):
        load_map(big, max_bytes=2 ** 19)


# ----------------------------------------------------------------------------- guard, limits, supervisor
def test_guard_turns_exceptions_into_rejections():
    from std_srvs.srv import Trigger

    seen = []
    g = Guard(lambda kind, why: seen.append((kind, why)), log_error=lambda m: None)

    def boom(*a):
        raise ZeroDivisionError("x")
    g.callback("image", boom)(object())
    r = g.service("reset", lambda req, res: boom())(Trigger.Request(), Trigger.Response())
    assert not r.success and "internal error" in r.message
    r = g.service("reset", lambda req, res: (_ for _ in ()).throw(Rejected("bad_service_argument", "no")))(
        Trigger.Request(), Trigger.Response())
    assert not r.success and r.message == "no"
    assert [k for k, _ in seen] == ["exception_image", "exception_reset", "bad_service_argument"]
    # a timer publishing after SIGINT invalidated the context is not a fault of the node
    closing = [False]
    g2 = Guard(lambda kind, why: seen.append((kind, why)), log_error=lambda m: None,
               shutting_down=lambda: closing[0])
    g2.callback("diagnostics", boom)()
    closing[0] = True
    g2.callback("diagnostics", boom)()
    assert [k for k, _ in seen][3:] == ["exception_diagnostics"]
    gate = RequestGate(1)
    with gate():
        with pytest.raises(Rejected, match="already running"):
            with gate():
                pass
    assert bounded_wait(threading.Event(), 1e-3) is False
    ev = threading.Event()
    ev.set()
    assert bounded_wait(ev, 1e10) is True  # Event.wait(1e10) would overflow
    with pytest.raises(Rejected):
        finite_f32([1e39], "x")
    with pytest.raises(Rejected):
        check_view(2048, 2048, RequestLimits(), 256)


def test_supervisor_restarts_and_gives_up():
    stop = threading.Event()
    calls = []
    sup = Supervisor(stop, max_restarts=2, window=60, backoff=0.01)

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("transient")
        stop.wait(5)
    sup.spawn("flaky", flaky)

    def dead():
        raise RuntimeError("always")
    sup.spawn("dead", dead)
    import time
    end = time.monotonic() + 5
    while time.monotonic() < end and (len(calls) < 3 or sup.health()["dead"].state != "failed"):
        time.sleep(0.02)
    h = sup.health()
    assert h["flaky"].state == "running" and h["flaky"].restarts == 2
    assert h["dead"].state == "failed" and "always" in h["dead"].last_error
    assert not sup.all_ok()
    stop.set()
    sup.join(2)


def test_sros2_policy_matches_the_node_interface():
    """config/sros2/policy.xml grants the node exactly the services it offers and the topics it uses."""
    import re
    import xml.etree.ElementTree as ET
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    src = (repo / "fhgs_ros/ros/mapper_node.py").read_text()
    services = set(re.findall(r'create_service\(\w+, "([\w/]+)"', src))
    subs = {t.lstrip("/") for t in re.findall(r'create_subscription\(\w+, "([\w/]+)"', src)}
    pubs = {t.lstrip("/") for t in re.findall(r'create_publisher\(\w+, "([\w/]+)"', src)}
    assert len(services) == 7 and "image" in subs and "render/rgb" in pubs
    root = ET.parse(repo / "config/sros2/policy.xml").getroot()
    assert root.tag == "policy" and root.get("version") == "0.2.0"
    node = root.find("./enclaves/enclave[@path='/fhgs/mapper']/profiles/profile[@node='fhgs_node']")
    assert node is not None
    replies = {s.text for s in node.findall("./services[@reply='ALLOW']/service")}
    assert services <= replies and not {r for r in replies if not r.startswith("~/")} - services
    assert subs <= {t.text for t in node.findall("./topics[@subscribe='ALLOW']/topic")}
    assert pubs <= {t.text for t in node.findall("./topics[@publish='ALLOW']/topic")}
    viewer = root.find("./enclaves/enclave[@path='/fhgs/viewer']/profiles/profile")
    assert {s.text for s in viewer.findall("./services[@request='ALLOW']/service")} == \
        {"render_view", "query_feature", "segment_view"}  # viewers cannot save, load, reset or export
