"""ROS-free bag I/O (fhgs_ros.bag): writer round trips, dataset conversion, reader errors, CLI, real T265 bags.

Everything uses real files written by rosbags (no mocks); the T265 tests need ../shared/data and skip without it.
"""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fhgs_ros.bag import (BagError, BagReader, BagTopics, parse_remaps, write_dataset_bag, write_frames_bag)
from fhgs_ros.datasets import load_dataset, write_colmap_text, write_nerf
from fhgs_ros.datasets.synthetic import synthetic_dataset

T265 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kapture_t265_rosbag"
REPO = Path(__file__).resolve().parents[1]
START_NS = 1_700_000_000 * 10**9
RATE = 5.0


@pytest.fixture(scope="module")
def ds():
    return synthetic_dataset(width=32, height=24, num_frames=3, num_points=200, num_gt_points=500)


@pytest.fixture(scope="module")
def sqlite_bag(ds, tmp_path_factory) -> Path:
    return write_frames_bag(ds.frames, tmp_path_factory.mktemp("b") / "bag_sqlite").path


@pytest.fixture(scope="module")
def mcap_bag(ds, tmp_path_factory) -> Path:
    return write_frames_bag(ds.frames, tmp_path_factory.mktemp("b") / "bag_mcap", storage="mcap").path


def _storage_file(bag: Path) -> Path:
    (f,) = [p for p in bag.iterdir() if p.suffix in (".db3", ".mcap")]
    return f


def _read_all(path: Path) -> int:
    """Open, iterate and deserialize everything; the number of messages."""
    n = 0
    with BagReader(path) as r:
        for m in r.messages():
            r.deserialize(m)
            n += 1
    return n


def _quat_to_rot(x: float, y: float, z: float, w: float) -> np.ndarray:
    from fhgs_ros.core.geometry import quat_xyzw_to_matrix
    return quat_xyzw_to_matrix([x, y, z, w])


def _img_array(msg) -> np.ndarray:
    dt = {"rgb8": np.uint8, "mono8": np.uint8, "32FC1": "<f4", "16UC1": "<u2"}[msg.encoding]
    a = np.frombuffer(msg.data.tobytes(), dtype=dt)
    ch = 3 if msg.encoding == "rgb8" else 1
    assert msg.step == msg.width * ch * np.dtype(dt).itemsize
    return a.reshape(msg.height, msg.width, ch).squeeze(-1) if ch == 1 else a.reshape(msg.height, msg.width, 3)


# --------------------------------------------------------------------------- writer round trips

@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
@pytest.mark.parametrize("pose_mode", ["tf", "pose", "odom"])
def test_round_trip(ds, tmp_path, storage, pose_mode):
    s = write_frames_bag(ds.frames, tmp_path / "out", storage=storage, pose_mode=pose_mode, rate_hz=RATE)
    pose_topic, pose_type = {"tf": ("/tf", "tf2_msgs/msg/TFMessage"), "pose": ("/camera/pose", "geometry_msgs/msg/PoseStamped"),
                             "odom": ("/odom", "nav_msgs/msg/Odometry")}[pose_mode]
    t = BagTopics()
    want = {pose_topic: pose_type, t.image: "sensor_msgs/msg/Image", t.camera_info: "sensor_msgs/msg/CameraInfo",
            t.depth: "sensor_msgs/msg/Image", t.labels: "sensor_msgs/msg/Image"}
    assert s.frames == 3 and s.messages == 15 and s.topics == {k: 3 for k in want}
    assert s.duration_s == pytest.approx(2 / RATE) and s.skipped_frames == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left behind

    with BagReader(s.path) as r:
        assert r.storage == storage and r.message_count == 15 and r.unknown_types() == {}
        assert {k: (v.msgtype, v.count) for k, v in r.topics.items()} == {k: (v, 3) for k, v in want.items()}
        assert r.start_ns == START_NS and r.duration_s == pytest.approx(0.4)
        r.require(want)
        seen: dict[str, list] = {k: [] for k in want}
        order = []
        for m in r.messages():
            msg = r.deserialize(m)
            seen[m.topic].append((m.log_time_ns, msg))
            order.append(m.topic)
    # the pose comes first at each stamp
    assert order[::5] == [pose_topic] * 3
    for i, fr in enumerate(ds.frames):
        stamp = START_NS + int(round(i * 1e9 / RATE))
        cam = fr.camera
        for topic in want:
            log_t, msg = seen[topic][i]
            assert log_t == stamp
            hdr = msg.transforms[0].header if pose_mode == "tf" and topic == pose_topic else msg.header
            assert hdr.stamp.sec * 10**9 + hdr.stamp.nanosec == stamp
        img = seen[t.image][i][1]
        assert (img.encoding, img.width, img.height, img.header.frame_id) == ("rgb8", 32, 24, "camera_optical")
        expect = np.round(fr.image.permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)
        np.testing.assert_array_equal(_img_array(img), expect)
        depth = seen[t.depth][i][1]
        assert depth.encoding == "32FC1"
        np.testing.assert_array_equal(_img_array(depth), fr.depth.numpy().astype(np.float32))
        labels = seen[t.labels][i][1]
        assert labels.encoding == "16UC1"
        np.testing.assert_array_equal(_img_array(labels).astype(np.int64), fr.labels.numpy())
        info = seen[t.camera_info][i][1]
        assert info.distortion_model == "plumb_bob" and list(info.d) == [0.0] * 5
        np.testing.assert_allclose(info.k.reshape(3, 3), cam.K.double().numpy(), atol=1e-6)
        np.testing.assert_allclose(info.r, np.eye(3).reshape(-1))
        np.testing.assert_allclose(info.p.reshape(3, 4)[:, :3], cam.K.double().numpy(), atol=1e-6)
        assert (info.width, info.height) == (32, 24) and not info.p.reshape(3, 4)[:, 3].any()
        pmsg = seen[pose_topic][i][1]
        if pose_mode == "tf":
            (tr,) = pmsg.transforms
            assert (tr.header.frame_id, tr.child_frame_id) == ("map", "camera_optical")
            pos, q = tr.transform.translation, tr.transform.rotation
        elif pose_mode == "pose":
            assert pmsg.header.frame_id == "map"
            pos, q = pmsg.pose.position, pmsg.pose.orientation
        else:
            assert (pmsg.header.frame_id, pmsg.child_frame_id) == ("map", "base_link")
            pos, q = pmsg.pose.pose.position, pmsg.pose.pose.orientation
        c2w = cam.cam_to_world.double().numpy()
        np.testing.assert_allclose([pos.x, pos.y, pos.z], c2w[:3, 3], atol=1e-6)
        np.testing.assert_allclose(_quat_to_rot(q.x, q.y, q.z, q.w), c2w[:3, :3], atol=1e-6)


def test_writer_options_and_labels_clipping(ds, tmp_path):
    lab = ds.frames[0].labels.clone()
    lab[0, 0], lab[0, 1], lab[0, 2] = 70000, -3, 65534
    frames = [dataclasses.replace(ds.frames[0], labels=lab), dataclasses.replace(ds.frames[1], depth=None)]
    s = write_frames_bag(frames, tmp_path / "b", with_depth=True, with_labels=True, rate_hz=2.0, start_time_s=10.25)
    assert s.topics["/camera/depth/image"] == 1 and s.topics["/camera/labels"] == 2
    with BagReader(s.path) as r:
        assert r.start_ns == 10_250_000_000 and r.end_ns == 10_750_000_000
        m = next(r.messages(["/camera/labels"]))
        got = _img_array(r.deserialize(m))
        assert list(got[0, :3]) == [65535, 65535, 65534]
    s2 = write_frames_bag(frames, tmp_path / "c", with_depth=False, with_labels=False, pose_mode="pose",
                          topics=BagTopics(image="/rgb", pose="/p"))
    assert set(s2.topics) == {"/rgb", "/camera/camera_info", "/p"}


def test_writer_errors_and_overwrite(ds, tmp_path):
    out = tmp_path / "bag"
    write_frames_bag(ds.frames[:1], out)
    with pytest.raises(BagError, match="exists already"):
        write_frames_bag(ds.frames, out)
    s = write_frames_bag(ds.frames, out, overwrite=True, storage="mcap")  # replaced only once complete
    assert s.frames == 3 and _storage_file(out).suffix == ".mcap" and not list(out.glob("*.db3"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag"]
    (tmp_path / "notabag").mkdir()
    with pytest.raises(BagError, match="not a rosbag2 folder"):
        write_frames_bag(ds.frames, tmp_path / "notabag", overwrite=True)
    with pytest.raises(BagError, match="pose mode 'gps'"):
        write_frames_bag(ds.frames, tmp_path / "x", pose_mode="gps")
    with pytest.raises(BagError, match="storage 'zip'"):
        write_frames_bag(ds.frames, tmp_path / "x", storage="zip")
    with pytest.raises(BagError, match="frame rate"):
        write_frames_bag(ds.frames, tmp_path / "x", rate_hz=0)
    with pytest.raises(BagError, match="no frames"):
        write_frames_bag([], tmp_path / "x")
    with pytest.raises(BagError, match="must not end in .bag"):
        write_frames_bag(ds.frames, tmp_path / "x.bag")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag", "notabag"]


# --------------------------------------------------------------------------- dataset conversion

@pytest.mark.parametrize("fmt", ["nerf", "colmap"])
def test_dataset_conversion(ds, tmp_path, fmt):
    src = tmp_path / fmt
    (write_nerf if fmt == "nerf" else write_colmap_text)(ds, src)
    s = write_dataset_bag(src, tmp_path / "all", storage="mcap", pose_mode="odom")
    assert s.frames == 3 and s.skipped_frames == []
    held = write_dataset_bag(src, tmp_path / "held", holdout_every=2)
    loaded = load_dataset(src)
    train, test = loaded.split(2)
    assert held.frames == len(train) == 1 and held.skipped_frames == test == [0, 2]
    with BagReader(held.path) as r:
        assert r.topics["/camera/image_raw"].count == 1
        m = next(r.messages(["/camera/image_raw"]))
        expect = np.round(loaded.frames[1].image.permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)
        np.testing.assert_array_equal(_img_array(r.deserialize(m)), expect)
        tf = r.deserialize(next(r.messages(["/tf"]))).transforms[0].transform.translation
        np.testing.assert_allclose([tf.x, tf.y, tf.z], loaded.frames[1].camera.center.double().numpy(), atol=1e-6)
    half = write_dataset_bag(src, tmp_path / "half", downscale=2)
    with BagReader(half.path) as r:
        img = r.deserialize(next(r.messages(["/camera/image_raw"])))
        assert (img.width, img.height) == (16, 12)


# --------------------------------------------------------------------------- reader: paths and formats

def test_reader_bad_paths(tmp_path, sqlite_bag):
    with pytest.raises(BagError, match="bag path does not exist: .*nope"):
        BagReader(tmp_path / "nope")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(BagError, match="is not a ROS bag: no metadata.yaml and no .db3/.mcap"):
        BagReader(tmp_path / "empty_dir")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(BagError, match="is not a ROS bag: expected a rosbag2 folder"):
        BagReader(tmp_path / "notes.txt")
    two = tmp_path / "two"
    two.mkdir()
    shutil.copy(_storage_file(sqlite_bag), two / "a.db3")
    shutil.copy(_storage_file(sqlite_bag), two / "b.db3")
    with pytest.raises(BagError, match="no metadata.yaml and 2 storage files"):
        BagReader(two)
    missing = tmp_path / "missing_db"
    shutil.copytree(sqlite_bag, missing)
    _storage_file(missing).unlink()
    with pytest.raises(BagError, match="cannot open bag .*missing"):
        BagReader(missing)


@pytest.mark.parametrize("which", ["sqlite", "mcap"])
def test_reader_bare_files(tmp_path, sqlite_bag, mcap_bag, which):
    bag = sqlite_bag if which == "sqlite" else mcap_bag
    f = _storage_file(bag)
    for path in (bag, f, bag / "metadata.yaml"):
        with BagReader(path) as r:
            assert r.storage == ("sqlite3" if which == "sqlite" else "mcap")
            assert r.message_count == 15 and r.topics["/camera/image_raw"].count == 3
    lone = tmp_path / "lone"  # a folder with just the storage file (metadata.yaml lost)
    lone.mkdir()
    shutil.copy(f, lone / f.name)
    assert _read_all(lone) == 15


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_reader_empty_bag(tmp_path, storage):
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    plugin = StoragePlugin.SQLITE3 if storage == "sqlite3" else StoragePlugin.MCAP
    with Writer(tmp_path / "e", version=9, storage_plugin=plugin) as w:
        w.add_connection("/chatter", "std_msgs/msg/String", typestore=ts)
    with pytest.raises(BagError, match=r"bag .*/e has no messages"):
        BagReader(tmp_path / "e")
    with Writer(tmp_path / "e2", version=9, storage_plugin=plugin):
        pass
    with pytest.raises(BagError, match=r"has no messages \(and no topics\)"):
        BagReader(tmp_path / "e2")


@pytest.mark.parametrize("which", ["sqlite", "mcap"])
@pytest.mark.parametrize("damage", ["half", "garbage", "middle"])
def test_reader_truncated_or_corrupt(tmp_path, sqlite_bag, mcap_bag, which, damage):
    bag = tmp_path / "damaged"
    shutil.copytree(sqlite_bag if which == "sqlite" else mcap_bag, bag)
    f = _storage_file(bag)
    data = bytearray(f.read_bytes())
    if damage == "half":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = bytearray(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    else:  # overwrite a block in the middle with a byte pattern
        mid = len(data) // 2
        data[mid:mid + 2048] = b"\xa5" * 2048
    f.write_bytes(bytes(data))
    with pytest.raises(BagError, match="truncated|corrupt") as ei:
        _read_all(bag)
    assert str(bag) in str(ei.value)
    # the bare file too
    with pytest.raises(BagError, match="truncated|corrupt"):
        _read_all(f)


def test_reader_truncated_mid_iteration_message(tmp_path, mcap_bag):
    """A corrupt chunk after the first ones: the error says how far reading got."""
    bag = tmp_path / "mid"
    shutil.copytree(mcap_bag, bag)
    f = _storage_file(bag)
    data = bytearray(f.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 2048] = b"\xa5" * 2048
    f.write_bytes(bytes(data))
    got = []
    with pytest.raises(BagError, match=r"truncated or corrupt after \d+ messages \(t=[\d.]+ s"):
        with BagReader(bag) as r:
            for m in r.messages():
                got.append(m)


def _custom_bag(path: Path, storage: str = "sqlite3", strip_definition: bool = True) -> Path:
    """A bag with /thing (my_pkg/msg/Thing, defined only in the writer's typestore) and /chatter (String)."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    ts.register(get_types_from_msg("int32 a\nstring b\nfloat64[] c", "my_pkg/msg/Thing"))
    thing, string = ts.types["my_pkg/msg/Thing"], ts.types["std_msgs/msg/String"]
    plugin = StoragePlugin.SQLITE3 if storage == "sqlite3" else StoragePlugin.MCAP
    with Writer(path, version=9, storage_plugin=plugin) as w:
        c1 = w.add_connection("/thing", "my_pkg/msg/Thing", typestore=ts)
        c2 = w.add_connection("/chatter", "std_msgs/msg/String", typestore=ts)
        for i in range(3):
            w.write(c1, 100 + i, ts.serialize_cdr(thing(a=i, b="x", c=np.arange(2.0)), "my_pkg/msg/Thing"))
            w.write(c2, 100 + i, ts.serialize_cdr(string(data=f"hi {i}"), "std_msgs/msg/String"))
    if strip_definition:  # as if recorded where the definition was not stored (e.g. Humble sqlite3)
        with sqlite3.connect(_storage_file(path)) as con:
            con.execute("DELETE FROM message_definitions WHERE topic_type = 'my_pkg/msg/Thing'")
        con.close()
    return path


def test_reader_unknown_type(tmp_path):
    bag = _custom_bag(tmp_path / "custom")
    with BagReader(bag, remap={"/thing": "/item"}) as r:
        assert r.unknown_types() == {"/item": "my_pkg/msg/Thing"}
        r.require({"/item": "my_pkg/msg/Thing", "/chatter": "std_msgs/msg/String"})
        msgs = list(r.messages())
        assert len(msgs) == 6
        for m in msgs:
            if m.topic == "/chatter":
                assert r.deserialize(m).data.startswith("hi")
            else:
                with pytest.raises(BagError, match=r"topic '/item'.*my_pkg/msg/Thing is unknown"):
                    r.deserialize(m)
    # no stored definitions at all: standard types come from the default typestore
    with sqlite3.connect(_storage_file(bag)) as con:
        con.execute("DELETE FROM message_definitions")
    con.close()
    with BagReader(bag) as r:
        assert r.unknown_types() == {"/thing": "my_pkg/msg/Thing"}
        chat = [r.deserialize(m).data for m in r.messages(["/chatter"])]
        assert chat == ["hi 0", "hi 1", "hi 2"]


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_reader_custom_type_with_stored_definition(tmp_path, storage):
    bag = _custom_bag(tmp_path / "custom", storage, strip_definition=False)
    with BagReader(bag) as r:
        assert r.unknown_types() == {}
        things = [r.deserialize(m) for m in r.messages(["/thing"])]
        assert [t.a for t in things] == [0, 1, 2] and list(things[2].c) == [0.0, 1.0]


# --------------------------------------------------------------------------- reader: topics, remaps, windows

def test_reader_require(sqlite_bag):
    with BagReader(sqlite_bag) as r:
        r.require({"/camera/image_raw": "sensor_msgs/msg/Image", "/tf": None,
                   "/camera/camera_info": ("sensor_msgs/msg/CameraInfo", "x/msg/Y")})
        with pytest.raises(BagError) as ei:
            r.require({"/camera/image_raw": None, "/odom": "nav_msgs/msg/Odometry"})
        msg = str(ei.value)
        assert msg.startswith(f"topic '/odom' is not in the bag {sqlite_bag}; it has: ")
        assert "/camera/image_raw (sensor_msgs/msg/Image, 3 msgs)" in msg and "/tf (tf2_msgs/msg/TFMessage, 3 msgs)" in msg
        with pytest.raises(BagError, match="topic '/tf' .* has type tf2_msgs/msg/TFMessage, expected nav_msgs/msg/Odometry"):
            r.require({"/tf": "nav_msgs/msg/Odometry"})
        with pytest.raises(BagError, match="expected one of geometry_msgs/msg/PoseStamped, nav_msgs/msg/Odometry"):
            r.require({"/tf": ("geometry_msgs/msg/PoseStamped", "nav_msgs/msg/Odometry")})
        with pytest.raises(BagError, match="topic '/nope' is not in the bag"):
            list(r.messages(["/nope"]))


def test_reader_remap_and_window(sqlite_bag):
    remap = parse_remaps(["/camera/image_raw:=/image", "tf:=/tf_map"])
    assert remap == {"/camera/image_raw": "/image", "/tf": "/tf_map"}
    with BagReader(sqlite_bag, remap=remap) as r:
        assert "/image" in r.topics and "/camera/image_raw" not in r.topics
        assert r.topics["/image"].original == "/camera/image_raw"
        r.require({"/image": "sensor_msgs/msg/Image", "/tf_map": "tf2_msgs/msg/TFMessage"})
        with pytest.raises(BagError, match="topic '/camera/image_raw' is not in the bag"):
            r.require({"/camera/image_raw": None})
        ms = list(r.messages(["/image", "/tf_map"]))
        assert [m.topic for m in ms] == ["/tf_map", "/image"] * 3
        assert ms[1].original_topic == "/camera/image_raw" and ms[1].msgtype == "sensor_msgs/msg/Image"
        assert [m.log_time_ns for m in ms] == sorted(m.log_time_ns for m in ms)
        # a window from 0.1 s for 0.2 s holds only the frame at 0.2 s; from 0.2 s to the end two frames
        assert [m.log_time_ns for m in r.messages(["/image"], start=0.1, duration=0.2)] == [START_NS + 200_000_000]
        assert len(list(r.messages(["/image"], start=0.2))) == 2
        assert list(r.messages(["/image"], start=5.0)) == []
        with pytest.raises(BagError, match="bad time window"):
            r.messages(start=-1)
    with pytest.raises(BagError, match="both '/tf'"):
        BagReader(sqlite_bag, remap={"/camera/image_raw": "/tf"})


def test_parse_remaps_errors():
    assert parse_remaps([]) == {}
    for bad, why in [("/a", "expected FROM:=TO"), ("/a:=", "must name a topic"), (":=/b", "must name a topic"),
                     ("/a:=/b:=/c", "expected FROM:=TO"), ("/a b:=/c", "whitespace")]:
        with pytest.raises(BagError, match=f"bad topic remap '{bad}'.*{why}"):
            parse_remaps([bad])
    with pytest.raises(BagError, match="already remapped"):
        parse_remaps(["/a:=/b", "/a:=/c"])


# --------------------------------------------------------------------------- CLI

def _cli(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("fhgs-bag")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "fhgs_ros.bag.convert"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=120, cwd=REPO)


def test_cli_convert_info_and_errors(tmp_path):
    out = tmp_path / "synth_bag"
    p = _cli("convert", "synthetic", str(out), "--width", "32", "--height", "24", "--frames", "4", "--holdout-every", "2",
             "--storage", "mcap", "--pose", "pose", "--no-labels", "-q")
    assert p.returncode == 0, p.stderr
    assert "2 frames" in p.stdout and "2 held-out frames left out" in p.stdout
    with BagReader(out) as r:
        assert r.storage == "mcap" and set(r.topics) == {"/camera/image_raw", "/camera/camera_info",
                                                         "/camera/depth/image", "/camera/pose"}
    bad = _custom_bag(tmp_path / "custom")
    p = _cli("info", str(out))
    assert p.returncode == 0, p.stderr
    assert "storage:  mcap" in p.stdout and "messages: 8" in p.stdout
    assert any(line.split()[:3] == ["/camera/pose", "geometry_msgs/msg/PoseStamped", "2"] for line in p.stdout.splitlines())
    p = _cli("info", str(bad))
    assert p.returncode == 0 and "warning: topic /thing: message type my_pkg/msg/Thing is unknown" in p.stdout
    p = _cli("info", str(tmp_path / "nope"))
    assert p.returncode == 2 and p.stderr.strip() == f"fhgs-bag: error: bag path does not exist: {tmp_path / 'nope'}"
    p = _cli("convert", str(tmp_path), str(tmp_path / "x"))
    assert p.returncode == 2 and p.stderr.startswith("fhgs-bag: error: ") and "no dataset found" in p.stderr
    assert "Traceback" not in p.stderr
    p = _cli("convert", "synthetic", str(out))
    assert p.returncode == 2 and "exists already" in p.stderr


# --------------------------------------------------------------------------- real T265 bags

t265 = pytest.mark.skipif(not T265.is_dir(), reason=f"real T265 bags not present ({T265})")


@t265
@pytest.mark.parametrize("name", ["t265_locoffice_ros2_db3", "t265_locoffice_ros2_mcap", "trimmed_locoffice.bag",
                                  "t265_locoffice_ros2_db3/t265_locoffice_ros2_db3.db3"])
def test_t265_real_bags(name):
    path = T265 / name
    with BagReader(path) as r:
        assert r.message_count == 50 and r.unknown_types() == {}
        assert r.storage == {"db3": "sqlite3", "mcap": "mcap", "bag": "ros1"}[name.rsplit("_", 1)[-1].rsplit(".", 1)[-1]]
        assert r.duration_s == pytest.approx(0.0904, abs=1e-3)
        r.require({"/camera/fisheye1/image_raw": "sensor_msgs/msg/Image", "/camera/odom/sample": "nav_msgs/msg/Odometry",
                   "/camera/gyro/sample": "sensor_msgs/msg/Imu", "/camera/accel/sample": "sensor_msgs/msg/Imu"})
        assert r.topics["/camera/odom/sample"].count == 19
        imgs = [r.deserialize(m) for m in r.messages(["/camera/fisheye1/image_raw"])]
        assert len(imgs) == 3
        for im in imgs:
            assert (im.width, im.height, im.encoding, im.step) == (848, 800, "mono8", 848)
            assert im.data.shape == (848 * 800,) and im.header.frame_id == "camera_fisheye1_optical_frame"
        odo = [r.deserialize(m) for m in r.messages(["/camera/odom/sample"])]
        assert len(odo) == 19 and all(abs(np.linalg.norm([o.pose.pose.orientation.x, o.pose.pose.orientation.y,
                                                          o.pose.pose.orientation.z, o.pose.pose.orientation.w]) - 1) < 1e-3
                                      for o in odo)
        assert sum(1 for _ in r.messages()) == 50


@t265
def test_t265_same_content_across_formats():
    stamps = []
    for name in ("t265_locoffice_ros2_db3", "t265_locoffice_ros2_mcap", "trimmed_locoffice.bag"):
        with BagReader(T265 / name) as r:
            stamps.append([(m.topic, m.log_time_ns) for m in r.messages()])
            first = r.deserialize(next(r.messages(["/camera/fisheye1/image_raw"])))
            if name.endswith("db3"):
                ref = first.data.copy()
            else:
                np.testing.assert_array_equal(first.data, ref)
    assert stamps[0] == stamps[1] == stamps[2]
