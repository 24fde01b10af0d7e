"""Hostile-but-realistic DDS peer against a running fhgs-node (issue 11), real rclpy, no mocks.

One node process (tiny random SAM, step_mode budget so the map is static between keyframes and a
render of a fixed view is a byte-exact signature of the live map). Every test sends one class of
bad input and asserts that the process stays alive and keeps answering, that the live map is
unchanged where it must be, that the map file on disk is intact, that nothing is written outside
node.map_dir, and (last test) that the node's peak memory grew by less than the stated bound:

    peak RSS growth <= max_concurrent_requests x request_memory_mb + 256 MB   (here 2 x 256 + 256 MB)

although the requests sent would have needed > 4 GB (2048 x 2048 x 256 features) and > 6 GB
(10,000 prompts) without the limits.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("fhgs_interfaces.srv")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import Pose  # noqa: E402
from sensor_msgs.msg import CompressedImage, PointCloud2, PointField  # noqa: E402

from fhgs_interfaces.srv import ExportMesh, LoadMap, QueryFeature, RenderView, SaveMap, SegmentView  # noqa: E402
from fhgs_ros.core.camera import Camera  # noqa: E402
from fhgs_ros.ros import conversions as conv  # noqa: E402
from fhgs_ros.ros.harness import NodeProcess, Spinner, free_domain_id, write_params  # noqa: E402
from fhgs_ros.ros.streamer import Capture, SceneStreamer, call, synthetic_frames  # noqa: E402
from test_ros_node import wait_diag  # noqa: E402  (one poll-the-diagnostics helper for both suites)

W, H = 64, 48
REQUEST_MB = 256
CONCURRENT = 2
MEMORY_BOUND_MB = CONCURRENT * REQUEST_MB + 256


def diag_values(msg) -> dict[str, str]:
    return {kv.key: kv.value for kv in msg.status[0].values}


def rss_mb(pid: int) -> tuple[float, float]:
    cur = peak = 0.0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return cur, peak


def tree(root: Path) -> dict[str, bytes]:
    """path -> sha256 of every regular file under root (symlinks and FIFOs listed, not followed)."""
    out = {}
    for dirpath, dirnames, files in os.walk(root, followlinks=False):
        for n in files + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, n)
            if os.path.isfile(p) and not os.path.islink(p):
                out[p] = hashlib.sha256(Path(p).read_bytes()).digest()
            else:
                out[p] = b"special"
    return out


class Live:
    pass


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from fhgs_ros.features.sam import save_random_checkpoint

    tmp = tmp_path_factory.mktemp("ros_security")
    maps, outside = tmp / "maps", tmp / "outside"
    maps.mkdir()
    outside.mkdir()
    (outside / "victim.cfg").write_text("do not touch\n")
    (outside / "victim.safetensors").write_text("not a map, not ours\n")
    ckpt = save_random_checkpoint(tmp / "tiny_sam.pth", "vit_tiny", input_size=256, seed=0)
    dom = free_domain_id()
    params = write_params(tmp / "params.yaml", {
        "features": {"extractor": "sam", "sam_model": "vit_tiny", "sam_checkpoint": str(ckpt), "sam_input_size": 256},
        "seed": {"depth_stride": 3},
        "node": {"map_path": str(maps / "map.safetensors"), "map_dir": str(maps), "pose_source": "pose",
                 "step_mode": "budget", "steps_per_keyframe": 20, "publish_period": 0.5, "kf_min_translation": 0.05,
                 "densify": False, "max_new_surfels_per_keyframe": 400, "torch_threads": 1, "mesh_period": 0.0,
                 "cloud_period": 0.0, "autosave_every_keyframes": 0, "autosave_period": 0.0, "sync_timeout": 0.5,
                 "diagnostics_period": 0.3, "resume": False, "request_memory_mb": float(REQUEST_MB),
                 "max_concurrent_requests": CONCURRENT, "max_prompts": 32},
    })
    node = NodeProcess(params, tmp / "node.log", dom)
    sp = Spinner(dom)
    lv = Live()
    lv.tmp, lv.maps, lv.outside, lv.node, lv.sp = tmp, maps, outside, node, sp
    try:
        lv.st = sp.add(SceneStreamer(context=sp.context))
        lv.frames = synthetic_frames(W, H, 10, seed=0)
        lv.diag = Capture(lv.st, DiagnosticArray, "/diagnostics")
        node.wait_ready(90)
        assert lv.st.wait_for_subscribers(30, ("image", "camera_info", "depth", "pose")), node.text()
        lv.stamp = 100.0
        for rgb, depth, cam in lv.frames[:5]:
            lv.stamp += 0.5
            lv.st.publish_frame(rgb, depth, cam, lv.stamp)
            time.sleep(0.3)
        wait_diag(lv, lambda v: int(v["keyframes"]) >= 3, what="initial keyframes")
        wait_idle(lv)
        sv = call(lv.st, SaveMap, "save_map", SaveMap.Request())
        assert sv.success, sv.message
        lv.map_bytes = (maps / "map.safetensors").read_bytes()
        lv.outside_before = tree(outside)
        lv.rss0 = rss_mb(node.proc.pid)
        yield lv
    finally:
        sp.close()
        node.stop()


def wait_idle(lv, timeout: float = 30.0) -> dict:
    """Diagnostics once the budget of every keyframe is spent (queues empty, iteration count unchanged)."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        d = wait_diag(lv, lambda v: v["keyframe_queue"] == "0" and v["frame_queue"] == "0", what="idle")
        if last is not None and d["iteration"] == last["iteration"]:
            return d
        last = d
        time.sleep(0.7)
    raise AssertionError("the node did not become idle")


def fixed_view(lv):
    cam = lv.frames[2][2]
    return conv.matrix_to_pose(cam.cam_to_world.double().numpy()), conv.camera_to_camera_info(cam)


def signature(lv) -> tuple[int, str]:
    """(surfels, sha256 of the rgb + alpha render of a fixed view): the live map, byte-exact (budget mode)."""
    wait_idle(lv)
    pose, info = fixed_view(lv)
    r = call(lv.st, RenderView, "render_view", RenderView.Request(pose=pose, camera_info=info))
    assert r is not None and r.success, r and r.message
    return int(r.num_surfels), hashlib.sha256(bytes(r.rgb.data) + bytes(r.alpha.data)).hexdigest()


def assert_alive(lv):
    assert lv.node.alive(), lv.node.text()[-3000:]
    r = call(lv.st, RenderView, "render_view", RenderView.Request(use_latest_keyframe=True), timeout=20)
    assert r is not None and r.success, (r and r.message, lv.node.text()[-2000:])


def assert_files_safe(lv):
    assert (lv.maps / "map.safetensors").read_bytes() == lv.map_bytes
    assert tree(lv.outside) == lv.outside_before
    stray = [p for p in os.listdir(lv.tmp) if p not in ("maps", "outside", "params.yaml", "node.log", "tiny_sam.pth")]
    assert not stray, stray


@pytest.mark.timeout(120)
def test_class1_exceptions_become_rejections_and_threads_report_health(live):
    lv = live
    st = lv.st
    sig = signature(lv)
    far = Pose()
    far.position.x = 1e39  # finite as a double, inf as float32 (used to kill the process)
    far.orientation.w = 1.0
    _, info = fixed_view(lv)
    for srv, name, req in [(RenderView, "render_view", RenderView.Request(pose=far, camera_info=info)),
                           (QueryFeature, "query_feature", QueryFeature.Request(mode=0, pose=far, camera_info=info,
                                                                                x=1, y=1)),
                           (SegmentView, "segment_view", SegmentView.Request(pose=far, camera_info=info,
                                                                             points=[1.0, 1.0]))]:
        r = call(st, srv, name, req)
        assert r is not None and not r.success and "float32" in r.message, (name, r and r.message)
    bad_info = conv.camera_to_camera_info(lv.frames[0][2])
    bad_info.k = [1e39, 0.0, 1.0, 0.0, 1e-45, 1.0, 0.0, 0.0, 1.0]
    r = call(st, RenderView, "render_view", RenderView.Request(pose=fixed_view(lv)[0], camera_info=bad_info))
    assert not r.success
    # durations have upper bounds; a refused value leaves the render thread running
    from rcl_interfaces.msg import Parameter as ParamMsg, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    def set_param(name, v):
        return call(st, SetParameters, "fhgs_node/set_parameters", SetParameters.Request(
            parameters=[ParamMsg(name=name, value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE,
                                                                 double_value=v))])).results[0]
    assert not set_param("node.publish_period", 1e10).successful
    assert not set_param("node.publish_period", float("nan")).successful
    assert not set_param("node.request_memory_mb", 1e39).successful
    assert set_param("node.publish_period", 3600.0).successful  # the largest allowed: a bounded wait
    assert set_param("node.publish_period", 0.5).successful
    d = wait_diag(lv, lambda v: "thread_fhgs-render" in v, what="thread health")
    for t in ("fhgs-frontend", "fhgs-optimizer", "fhgs-saver", "fhgs-render"):
        assert d[f"thread_{t}"] == "running", (t, d)
    assert signature(lv) == sig
    assert_alive(lv)


@pytest.mark.timeout(120)
def test_class2_untrusted_payloads(live):
    lv = live
    st = lv.st
    sig = signature(lv)
    base = diag_values(lv.diag.wait(1, 10))
    hdr = conv.make_header("camera_optical", lv.stamp + 0.1)
    # decompression bombs: a few hundred bytes declaring 65000 x 65000 (jpeg) / 2^31 x 3 (png), garbage
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 65000, 65000, 1) + b"\x01\x11\x00"
    jpeg = b"\xff\xd8" + sof + b"\xff\xda" + struct.pack(">H", 8) + b"\x01\x01\x00\x00\x3f\x00" + bytes(500)
    import zlib
    ihdr = struct.pack(">IIBBBBB", 2 ** 31 - 1, 3, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    for fmt, data in (("jpeg", jpeg), ("png", png), ("png", os.urandom(700)), ("jpeg", b"\xff\xd8" + os.urandom(64))):
        st.pub_comp.publish(CompressedImage(header=hdr, format=fmt, data=data))
    # PointCloud2: point_step smaller than its fields, duplicate names, offsets beyond the point, a huge claim
    pub = st.create_publisher(PointCloud2, "seed_points", 10)
    end = time.monotonic() + 10
    while pub.get_subscription_count() == 0 and time.monotonic() < end:
        time.sleep(0.05)
    f32 = PointField.FLOAT32
    xyz = [PointField(name=n, offset=4 * i, datatype=f32, count=1) for i, n in enumerate("xyz")]
    clouds = [(xyz, 8, 4), (xyz + [PointField(name="x", offset=0, datatype=f32, count=1)], 12, 4),
              ([PointField(name="x", offset=2 ** 31, datatype=f32, count=1)] + xyz[1:], 12, 4),
              (xyz, 12, 2 ** 31 - 1), ([PointField(name="x", offset=0, datatype=99, count=1)] + xyz[1:], 12, 4)]
    for fields, step, width in clouds:
        m = PointCloud2(header=conv.make_header("map", 0.0), height=1, width=width, fields=fields, point_step=step,
                        row_step=step * min(width, 4), is_dense=True)
        m.data = bytes(step * 4)
        pub.publish(m)
    nan = float("nan")
    for req, needle in [(SegmentView.Request(use_latest_keyframe=True, box=[nan, 0.0, 10.0, 10.0]), "NaN"),
                        (SegmentView.Request(use_latest_keyframe=True, box=[30.0, 30.0, 10.0, 10.0]), "inverted"),
                        (SegmentView.Request(use_latest_keyframe=True, points=[nan, 5.0]), "NaN"),
                        (SegmentView.Request(use_latest_keyframe=True, points=[5.0, 5.0], labels=[1],
                                             box=[0.0, 0.0, 3.4e38, 10.0]), "outside")]:
        r = call(st, SegmentView, "segment_view", req)
        assert r is not None and not r.success and needle in r.message, (needle, r and r.message)
    r = call(st, QueryFeature, "query_feature", QueryFeature.Request(mode=2, vector=[1.0] * 256, threshold=nan))
    assert not r.success and "threshold" in r.message  # not silently the default any more
    r = call(st, QueryFeature, "query_feature", QueryFeature.Request(mode=1, radius=nan))
    assert not r.success
    d = wait_diag(lv, lambda v: int(v.get("rejected_image_too_large", 0)) >= int(base.get("rejected_image_too_large", 0))
                  + 2 and int(v.get("rejected_bad_pointcloud", 0)) >= 5 and int(v.get("rejected_decode_error", 0))
                  >= 1, what="payload rejections")
    assert float(d.get("seed_points", 0)) == 0 and d["pending_seed_points"] == "0"  # no broken cloud got in
    assert signature(lv) == sig
    assert_alive(lv)


def _write_header(path: Path, meta_json: str) -> None:
    import json
    md = {"__metadata__": {"format": "fhgs_map", "version": "1", "fhgs_meta": meta_json}}
    raw = json.dumps(md).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


@pytest.mark.timeout(150)
def test_class3_map_files_are_untrusted_and_a_refused_load_keeps_the_map(live):
    lv = live
    st = lv.st
    sig = signature(lv)
    maps = lv.maps
    fifos = []
    for i in range(4):
        os.mkfifo(maps / f"fifo{i}.safetensors")
        fifos.append(maps / f"fifo{i}.safetensors")
    os.symlink("/dev/zero", maps / "zero.safetensors")
    (maps / "passwd.safetensors").write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 10)
    _write_header(maps / "deep.safetensors", "[" * 200_000 + "]" * 200_000)
    good_meta = '{"feature_dim": 256, "sh_degree": 0, "next_uid": 1, "node": {"stamp": %s, "iteration": %s}}'
    _write_header(maps / "inf.safetensors", good_meta % ("1e999", "0"))
    _write_header(maps / "list.safetensors", good_meta % ("1.0", "[1, 2]"))
    data = bytearray(lv.map_bytes)
    (maps / "trunc.safetensors").write_bytes(bytes(data[: len(data) // 2]))
    n = struct.unpack("<Q", data[:8])[0]
    data[8 + n // 2] ^= 0x55  # one flipped byte inside the JSON header
    (maps / "flip.safetensors").write_bytes(bytes(data))
    # four FIFO loads at once: none blocks (they used to freeze every service)
    answers: list = []

    def load(p):
        answers.append(call(st, LoadMap, "load_map", LoadMap.Request(path=p.name), timeout=20, fresh=True))
    ts = [threading.Thread(target=load, args=(p,)) for p in fifos]
    t0 = time.monotonic()
    [t.start() for t in ts]
    [t.join(30) for t in ts]
    assert len(answers) == 4 and all(a is not None and not a.success for a in answers), answers
    assert time.monotonic() - t0 < 20
    assert all("regular file" in a.message or "already running" in a.message for a in answers)
    for name, needle in [("zero.safetensors", "outside node.map_dir"), ("passwd.safetensors", "map file"),
                         ("deep.safetensors", "nested"), ("inf.safetensors", "infinity"),
                         ("list.safetensors", "schema"), ("trunc.safetensors", "map file"),
                         ("flip.safetensors", "map file"), ("/etc/passwd", "only .safetensors"), ("/etc/x.safetensors", "outside node.map_dir"),
                         ("../outside/victim.safetensors", ".."), ("missing.safetensors", "does not exist")]:
        r = call(st, LoadMap, "load_map", LoadMap.Request(path=name))
        assert r is not None and not r.success and needle in r.message, (name, r and r.message)
        assert "root:x" not in r.message
    assert signature(lv) == sig  # the live map is untouched by every refused load
    ok = call(st, LoadMap, "load_map", LoadMap.Request(path="map.safetensors"))
    assert ok.success and ok.num_surfels == sig[0], ok.message
    assert_files_safe(lv)
    assert_alive(lv)


@pytest.mark.timeout(120)
def test_class4_request_cost_is_bounded(live):
    lv = live
    st = lv.st
    pose, _ = fixed_view(lv)
    big = conv.camera_to_camera_info(Camera(2048, 2048, 1500.0, 1500.0, 1023.5, 1023.5, np.eye(4)))
    r = call(st, RenderView, "render_view", RenderView.Request(pose=pose, camera_info=big, include_features=True))
    assert not r.success and "request_memory_mb" in r.message, r.message
    r = call(st, SegmentView, "segment_view", SegmentView.Request(use_latest_keyframe=True, points=[1.0, 1.0] * 10000))
    assert not r.success and "max_prompts" in r.message, r.message
    r = call(st, QueryFeature, "query_feature", QueryFeature.Request(mode=2, vector=[1.0] * 256, threshold=0.01,
                                                                     max_results=4_000_000_000))
    assert r.success and r.count <= 100_000
    # concurrent heavy requests: at most max_concurrent_requests run, the rest are refused at once ("busy")
    mid = conv.camera_to_camera_info(Camera(320, 240, 250.0, 250.0, 159.5, 119.5, np.eye(4)))  # ~245 MB each
    answers: list = []

    def render():
        answers.append(call(st, RenderView, "render_view", RenderView.Request(pose=pose, camera_info=mid,
                                                                             include_features=True),
                            timeout=60, fresh=True))
    ts = [threading.Thread(target=render) for _ in range(6)]
    [t.start() for t in ts]
    [t.join(90) for t in ts]
    assert len(answers) == 6 and all(a is not None for a in answers)
    assert all(a.success or "already running" in a.message for a in answers), [a.message for a in answers]
    assert any(a.success for a in answers)
    assert_alive(lv)


@pytest.mark.timeout(120)
def test_class5_one_bad_frame_does_not_damage_the_map(live):
    lv = live
    st = lv.st
    rgb, depth, cam = lv.frames[5]
    synced = float(diag_values(lv.diag.wait(1, 10))["frames_synced"])
    for _ in range(5):  # the stream goes on (after class 3's load_map the motion gate has no anchor yet);
        lv.stamp += 0.5  # images are best effort: repeat until one got through
        st.publish_frame(rgb, depth, cam, lv.stamp)
        time.sleep(1.0)
        if float(diag_values(lv.diag.wait(1, 10))["frames_synced"]) > synced:
            break
    sig = signature(lv)
    base = diag_values(lv.diag.wait(1, 10))
    c2w = cam.cam_to_world.double().numpy()
    for offset in (1e9, 1e5):  # a frame 1e9 m away (beyond range), one 100 km away (implausible motion)
        far = c2w.copy()
        far[0, 3] += offset
        lv.stamp += 0.5
        st.publish_frame(rgb, depth, Camera(W, H, cam.fx, cam.fy, cam.cx, cam.cy, np.linalg.inv(far)), lv.stamp)
        time.sleep(0.4)
    lv.stamp += 1e6  # a frame stamped 1e6 s in the future: refused as a time jump
    st.publish_frame(rgb, depth, cam, lv.stamp)
    lv.stamp -= 1e6
    d = wait_diag(lv, lambda v: int(v.get("rejected_pose_out_of_range", 0)) >= 1
                  and int(v.get("rejected_implausible_motion", 0)) >= 1 and int(v.get("rejected_time_jump", 0)) >= 1,
                  what="motion / stamp rejections")
    assert int(d["keyframes"]) == int(base["keyframes"])
    assert signature(lv) == sig  # nothing of the bad frames reached the map
    # the stream goes on: consistent good frames become keyframes
    for rgb, depth, cam in lv.frames[6:9]:
        lv.stamp += 0.5
        st.publish_frame(rgb, depth, cam, lv.stamp)
        time.sleep(0.3)
    wait_diag(lv, lambda v: int(v["keyframes"]) > int(base["keyframes"]), what="keyframes after the bad frames")
    # a glitched clock that stays glitched: a consistent new timeline is adopted after a few frames
    kf = int(diag_values(lv.diag.wait(1, 10))["keyframes"])
    lv.stamp -= 50.0
    for rgb, depth, cam in lv.frames[3:9]:
        lv.stamp += 0.5
        st.publish_frame(rgb, depth, cam, lv.stamp)
        time.sleep(0.3)
    wait_diag(lv, lambda v: int(v["keyframes"]) > kf and int(v.get("rejected_time_backwards", 0)) >= 1,
              what="recovery from a clock jump back")
    assert_alive(lv)


@pytest.mark.timeout(120)
def test_class6_files_only_where_allowed_and_memory_bound(live):
    lv = live
    st = lv.st
    maps, outside = lv.maps, lv.outside
    os.symlink(outside, maps / "escape")
    (maps / "notes.safetensors").write_text("my notes, not a map\n")
    (maps / "foreign.ply").write_text("ply\nformat ascii 1.0\nelement vertex 0\nend_header\n")
    os.mkfifo(maps / "pipe.safetensors")
    cases = [(SaveMap, "save_map", SaveMap.Request(path="../outside/x.safetensors"), ".."),
             (SaveMap, "save_map", SaveMap.Request(path=str(outside / "victim.safetensors")), "outside node.map_dir"),
             (SaveMap, "save_map", SaveMap.Request(path=str(outside / "new.safetensors")), "outside node.map_dir"),
             (SaveMap, "save_map", SaveMap.Request(path="escape/x.safetensors"), "symlink"),
             (SaveMap, "save_map", SaveMap.Request(path="x.cfg"), "only .safetensors"),
             (SaveMap, "save_map", SaveMap.Request(path="notes.safetensors"), "not written by fhgs_ros"),
             (SaveMap, "save_map", SaveMap.Request(path="pipe.safetensors"), "not a regular file"),
             (SaveMap, "save_map", SaveMap.Request(path="~/x.safetensors"), "~"),
             (SaveMap, "save_map", SaveMap.Request(path="/tmp/fhgs_sec_test/new/x.safetensors"), "outside"),
             (ExportMesh, "export_mesh", ExportMesh.Request(path=str(outside / "victim.cfg"), format="ply"), "only"),
             (ExportMesh, "export_mesh", ExportMesh.Request(path="settings.cfg", format="ply"), "only"),
             (ExportMesh, "export_mesh", ExportMesh.Request(path="foreign.ply", refresh=True), "not written"),
             (ExportMesh, "export_mesh", ExportMesh.Request(path="m.obj", format="ply"), "needs a .ply")]
    for srv, name, req, needle in cases:
        r = call(st, srv, name, req)
        assert r is not None and not r.success and needle in r.message, (req, r and r.message)
    assert not Path("/tmp/fhgs_sec_test").exists()
    assert (maps / "notes.safetensors").read_text() == "my notes, not a map\n"
    # allowed: relative names inside map_dir (folders created there), re-saving our own file, meshes
    r = call(st, SaveMap, "save_map", SaveMap.Request(path="sub/dir/copy.safetensors"))
    assert r.success and (maps / "sub/dir/copy.safetensors").is_file(), r.message
    r = call(st, SaveMap, "save_map", SaveMap.Request(path="sub/dir/copy.safetensors"))
    assert r.success, r.message
    r = call(st, ExportMesh, "export_mesh", ExportMesh.Request(path="mesh.ply", refresh=True))
    assert r.success and (maps / "mesh.ply").is_file(), r.message
    r = call(st, ExportMesh, "export_mesh", ExportMesh.Request(path="mesh.ply"))
    assert r.success, r.message
    assert_files_safe(lv)
    assert_alive(lv)
    # peak memory over the whole module (bombs, 2048^2 x 256 features, 10k prompts, 6 concurrent renders)
    _, peak = rss_mb(lv.node.proc.pid)
    growth = peak - max(lv.rss0)
    print(f"node peak RSS {peak:.0f} MB, growth {growth:.0f} MB (bound {MEMORY_BOUND_MB} MB)")
    assert growth <= MEMORY_BOUND_MB, (peak, lv.rss0)
    d = diag_values(lv.diag.wait(1, 10))
    assert int(d["rejected_total"]) > 20 and d["optimizer_alive"] == "True"
