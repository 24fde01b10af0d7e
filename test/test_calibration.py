"""Calibration files -> Intrinsics (fhgs_ros.ros.calibration): ROS camera_calibration YAML, kapture
sensors.txt, COLMAP cameras.txt; every error case; the shipped T265 config; an equidistant
(fisheye) undistortion round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fhgs_ros.online.calibration import SUPPORTED_MODELS, CalibrationError, load_calibration
from fhgs_ros.core.camera import Intrinsics, Undistorter, distort_normalized

ROOT = Path(__file__).resolve().parents[1]
T265 = ROOT.parent / "shared" / "data" / "kapture_t265_rosbag"
T265_CAM001 = Intrinsics(848, 800, 284.468, 285.51, 424.355, 393.742, "equidistant", (0.0008, 0.031, -0.03, 0.005))
T265_CAM002 = Intrinsics(848, 800, 283.999, 285.266, 417.246, 400.402, "equidistant", (-0.002, 0.039, -0.038, 0.007))

KAPTURE = """# kapture format: 1.1
# sensor_id, name, sensor_type, [sensor_params]+
wifi0, , wifi
cam001, left fisheye, camera, OPENCV_FISHEYE, 848, 800, 284.468, 285.51, 424.355, 393.742, 0.0008, 0.031, -0.03, 0.005
cam002, right fisheye, camera, OPENCV_FISHEYE, 848, 800, 283.999, 285.266, 417.246, 400.402, -0.002, 0.039, \
-0.038, 0.007
gps1, , gnss, EPSG:4326
"""


def _write(tmp_path: Path, text: str, name: str = "calib.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _yaml(model: str = "plumb_bob", d=(0.1, -0.2, 0.001, 0.002, 0.05), k=None, w: int = 640, h: int = 480,
          extra: str = "") -> str:
    k = k or [500.0, 0.0, 319.5, 0.0, 505.0, 239.5, 0.0, 0.0, 1.0]
    return (f"image_width: {w}\nimage_height: {h}\ncamera_name: cam\n"
            f"camera_matrix:\n  rows: 3\n  cols: 3\n  data: {list(k)}\n"
            f"distortion_model: {model}\n"
            f"distortion_coefficients:\n  rows: 1\n  cols: {len(d)}\n  data: {list(d)}\n"
            "rectification_matrix:\n  rows: 3\n  cols: 3\n  data: [1, 0, 0, 0, 1, 0, 0, 0, 1]\n"
            "projection_matrix:\n  rows: 3\n  cols: 4\n  data: [500, 0, 319.5, 0, 0, 505, 239.5, 0, 0, 0, 1, 0]\n"
            + extra)


def _raises(path: Path, *fragments: str, sensor: str = "") -> str:
    with pytest.raises(CalibrationError) as ei:
        load_calibration(path, sensor)
    msg = str(ei.value)
    assert str(path) in msg, msg
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    return msg


# ----------------------------------------------------------------------------- ROS YAML
@pytest.mark.parametrize("model,d,want", [
    ("plumb_bob", (0.1, -0.2, 0.001, 0.002, 0.05), "plumb_bob"),
    ("rational_polynomial", (0.1, -0.2, 0.001, 0.002, 0.05, 0.01, 0.02, 0.03), "rational_polynomial"),
    ("equidistant", (0.01, 0.02, -0.03, 0.004), "equidistant"),
    ("fisheye", (0.01, 0.02, -0.03, 0.004), "equidistant"),
    ("kannala_brandt", (0.01, 0.02, -0.03, 0.004), "equidistant"),
])
def test_yaml_models(tmp_path, model, d, want):
    intr = load_calibration(_write(tmp_path, _yaml(model, d)))
    assert intr == Intrinsics(640, 480, 500.0, 505.0, 319.5, 239.5, want, tuple(d))


def test_yaml_defaults(tmp_path):
    # no distortion_model -> plumb_bob (camera_calibration_parsers); no R / P; zero coefficients; str path
    text = ("image_width: 64\nimage_height: 48\ncamera_matrix: {rows: 3, cols: 3, data: [50, 0, 31.5, 0, 50, 23.5, "
            "0, 0, 1]}\ndistortion_coefficients: {rows: 1, cols: 5, data: [0, 0, 0, 0, 0]}\n")
    intr = load_calibration(str(_write(tmp_path, text)), sensor="ignored")
    assert (intr.width, intr.height, intr.fx, intr.cx, intr.model, intr.has_distortion) == \
           (64, 48, 50.0, 31.5, "plumb_bob", False)


# ----------------------------------------------------------------------------- kapture
def test_kapture_default_first_camera_and_selection(tmp_path):
    p = _write(tmp_path, KAPTURE, "sensors.txt")
    assert load_calibration(p) == T265_CAM001
    assert load_calibration(p, "cam002") == T265_CAM002
    assert load_calibration(p, " cam001 ") == T265_CAM001


# params after w h, expected (fx, fy, cx, cy, model, d)
MODEL_CASES = [
    ("SIMPLE_PINHOLE", [300, 160, 120], (300, 300, 160, 120, "plumb_bob", ())),
    ("PINHOLE", [300, 310, 160, 120], (300, 310, 160, 120, "plumb_bob", ())),
    ("SIMPLE_RADIAL", [300, 160, 120, 0.1], (300, 300, 160, 120, "plumb_bob", (0.1, 0, 0, 0, 0))),
    ("RADIAL", [300, 160, 120, 0.1, -0.05], (300, 300, 160, 120, "plumb_bob", (0.1, -0.05, 0, 0, 0))),
    ("OPENCV", [300, 310, 160, 120, 0.1, -0.05, 0.001, 0.002],
     (300, 310, 160, 120, "plumb_bob", (0.1, -0.05, 0.001, 0.002, 0))),
    ("FULL_OPENCV", [300, 310, 160, 120, 0.1, -0.05, 0.001, 0.002, 0.01, 0.02, 0.03, 0.04],
     (300, 310, 160, 120, "rational_polynomial", (0.1, -0.05, 0.001, 0.002, 0.01, 0.02, 0.03, 0.04))),
    ("OPENCV_FISHEYE", [300, 310, 160, 120, 0.01, 0.02, -0.03, 0.004],
     (300, 310, 160, 120, "equidistant", (0.01, 0.02, -0.03, 0.004))),
    ("SIMPLE_RADIAL_FISHEYE", [300, 160, 120, 0.01], (300, 300, 160, 120, "equidistant", (0.01, 0, 0, 0))),
    ("RADIAL_FISHEYE", [300, 160, 120, 0.01, 0.02], (300, 300, 160, 120, "equidistant", (0.01, 0.02, 0, 0))),
]


@pytest.mark.parametrize("model,params,want", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_kapture_models(tmp_path, model, params, want):
    line = ", ".join(["cam", "", "camera", model, "320", "240"] + [str(v) for v in params])
    intr = load_calibration(_write(tmp_path, f"# kapture format: 1.1\n{line}\n", "sensors.txt"))
    fx, fy, cx, cy, m, d = want
    assert intr == Intrinsics(320, 240, fx, fy, cx, cy, m, tuple(float(v) for v in d))


@pytest.mark.parametrize("model,params,want", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_colmap_models(tmp_path, model, params, want):
    # COLMAP's pixel convention has the top-left pixel's corner at 0: principal point -0.5
    text = ("# Camera list with one line of data per camera:\n#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n"
            f"3 {model} 320 240 {' '.join(str(v) for v in params)}\n")
    intr = load_calibration(_write(tmp_path, text, "cameras.txt"))
    fx, fy, cx, cy, m, d = want
    assert intr == Intrinsics(320, 240, fx, fy, cx - 0.5, cy - 0.5, m, tuple(float(v) for v in d))


def test_colmap_camera_selection(tmp_path):
    p = _write(tmp_path, "1 PINHOLE 640 480 500 500 320 240\n2 OPENCV_FISHEYE 848 800 284.468 285.51 424.855 "
                         "394.242 0.0008 0.031 -0.03 0.005\n", "cameras.txt")
    assert load_calibration(p).fx == 500.0
    assert load_calibration(p, "2") == load_calibration(p, "02") == T265_CAM001
    _raises(p, "no camera id '7'", "1, 2", sensor="7")


# ----------------------------------------------------------------------------- shipped config
def test_shipped_t265_config_matches_kapture():
    cfg = load_calibration(ROOT / "config" / "t265_fisheye1.yaml")
    assert cfg == T265_CAM001
    sensors = T265 / "calibration" / "sensors.txt"
    if not sensors.is_file():
        pytest.skip(f"{sensors} not available (shared data set kapture_t265_rosbag)")
    assert load_calibration(sensors) == cfg
    assert load_calibration(sensors, "cam002") == T265_CAM002


def test_t265_bag_image_undistorts():
    """The left fisheye image of the real T265 bag: the undistorted pinhole view (same K) is fully covered."""
    bag = T265 / "t265_locoffice_ros2_db3"
    if not bag.is_dir():
        pytest.skip(f"{bag} not available (shared data set kapture_t265_rosbag)")
    highlevel = pytest.importorskip("rosbags.highlevel")
    from rosbags.typesys import Stores, get_typestore

    from fhgs_ros.online.imageproc import decode_color

    with highlevel.AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as r:
        conns = [c for c in r.connections if c.topic == "/camera/fisheye1/image_raw"]
        c, _, raw = next(iter(r.messages(connections=conns)))
        m = r.deserialize(raw, c.msgtype)
    assert (m.encoding, m.width, m.height) == ("mono8", 848, 800)
    rgb = decode_color(m.encoding, m.height, m.width, m.step, m.data)
    und = Undistorter(load_calibration(ROOT / "config" / "t265_fisheye1.yaml"))
    out = und.undistort_rgb(rgb)
    assert und.valid.all()  # ~112 x 109 deg pinhole view lies inside the fisheye image circle
    assert out.shape == rgb.shape and (out[:, :, 0] > 0).mean() > 0.99
    # the principal point maps to itself; the output corner (64 deg off-axis) samples well inside the image circle
    assert abs(float(und.map_x[394, 424]) - 424.0) < 0.5 and abs(float(und.map_y[394, 424]) - 394.0) < 0.5
    assert np.hypot(und.map_x[0, 0] - 424.355, und.map_y[0, 0] - 393.742) < 340


# ----------------------------------------------------------------------------- errors
def test_error_file_level(tmp_path):
    _raises(tmp_path / "nope.yaml", "does not exist")
    _raises(tmp_path, "is a directory")
    _raises(_write(tmp_path, "", "empty.yaml"), "is empty")
    _raises(_write(tmp_path, "  \n\n", "blank.yaml"), "is empty")
    _raises(_write(tmp_path, "# only\n# comments\n", "comments.txt"), "only comments")


def test_error_yaml(tmp_path):
    _raises(_write(tmp_path, "image_width: 640\ncamera_matrix: [1, 2\n  bad: }\n"), "unreadable YAML", "line ")
    _raises(_write(tmp_path, "just a string\n"), "not a ROS camera_calibration YAML")
    _raises(_write(tmp_path, "image_width: 640\nimage_height: 480\n"), "missing keys", "'camera_matrix'",
            "'distortion_coefficients'")
    _raises(_write(tmp_path, _yaml().replace("image_height: 480\n", "")), "missing key 'image_height'")
    _raises(_write(tmp_path, _yaml(w=0)), "image size 0x480 is not positive")
    _raises(_write(tmp_path, _yaml().replace("image_width: 640", "image_width: wide")), "key 'image_width'",
            "expected a number")
    _raises(_write(tmp_path, _yaml().replace("image_width: 640", "image_width: 640.5")), "key 'image_width'",
            "expected an integer")
    _raises(_write(tmp_path, _yaml(k=[500, 0, 319.5, 0, 505, 239.5, 0, 0])), "key 'camera_matrix.data'",
            "holds 8 values", "needs 9")
    bad_k = _yaml().replace("  rows: 3\n  cols: 3\n  data: [500", "  rows: 2\n  cols: 3\n  data: [500")
    _raises(_write(tmp_path, bad_k), "key 'camera_matrix'", "must be 3x3", "rows=2")
    _raises(_write(tmp_path, _yaml().replace("  rows: 3\n  cols: 4\n", "  rows: 3\n  cols: 3\n")),
            "key 'projection_matrix'", "must be 3x4")
    no_rows = _yaml().replace("camera_matrix:\n  rows: 3\n  cols: 3\n  data:", "camera_matrix:\n  data:")
    _raises(_write(tmp_path, no_rows), "key 'camera_matrix'", "rows, cols and data")
    _raises(_write(tmp_path, _yaml(k=[500, 0, 319.5, 0, "nan", 239.5, 0, 0, 1])), "camera_matrix.data[4]",
            "not finite")
    _raises(_write(tmp_path, _yaml(k=[-500, 0, 319.5, 0, 505, 239.5, 0, 0, 1])), "key 'camera_matrix'",
            "focal lengths must be positive", "fx=-500")
    _raises(_write(tmp_path, _yaml(k=[500, 2, 319.5, 0, 505, 239.5, 0, 0, 1])), "key 'camera_matrix'", "no skew")
    _raises(_write(tmp_path, _yaml("equidistant", (0.1, 0.2, 0.3, 0.4, 0.5))), "key 'distortion_coefficients'",
            "'equidistant' needs 4 coefficients, got 5")
    _raises(_write(tmp_path, _yaml("plumb_bob", (0.1, 0.2, 0.3, 0.4))), "'plumb_bob' needs 5 coefficients, got 4")
    _raises(_write(tmp_path, _yaml("scaramuzza")), "key 'distortion_model'", "'scaramuzza'", "equidistant")


def test_error_kapture(tmp_path):
    p = _write(tmp_path, KAPTURE, "sensors.txt")
    _raises(p, "no sensor 'cam009'", "wifi0, cam001, cam002, gps1", sensor="cam009")
    _raises(p, "line 6", "'gps1' is a 'gnss', not a camera", "cam001, cam002", sensor="gps1")
    head = "# kapture format: 1.1\n"
    _raises(_write(tmp_path, head + "wifi0, , wifi\n", "s1.txt"), "no camera sensor", "wifi0")
    _raises(_write(tmp_path, head + "cam, , camera, FOV, 320, 240, 300, 300, 160, 120, 0.9\n", "s2.txt"),
            "line 2 (sensor 'cam')", "camera model 'FOV' is not supported", "OPENCV_FISHEYE", "SIMPLE_PINHOLE")
    _raises(_write(tmp_path, head + "cam, , camera, UNKNOWN_CAMERA, 320, 240\n", "s3.txt"), "'UNKNOWN_CAMERA'")
    _raises(_write(tmp_path, head + "cam, , camera, OPENCV_FISHEYE, 320, 240, 300, 300, 160, 120, 0.1\n", "s4.txt"),
            "model OPENCV_FISHEYE needs 8 parameters", "fx fy cx cy k1 k2 k3 k4", "got 5")
    _raises(_write(tmp_path, head + "cam, , camera, PINHOLE, 320, 240, 300, x, 160, 120\n", "s5.txt"),
            "line 2 (sensor 'cam') parameter 2", "expected a number, got 'x'")
    _raises(_write(tmp_path, head + "cam, , camera, PINHOLE, 320, -240, 300, 300, 160, 120\n", "s6.txt"),
            "line 2", "image size 320x-240 is not positive")
    _raises(_write(tmp_path, head + "cam, , camera, PINHOLE, 320, 240, 0, 300, 160, 120\n", "s7.txt"),
            "line 2", "focal lengths must be positive (fx=0.0")
    _raises(_write(tmp_path, head + "cam, , camera, PINHOLE\n", "s8.txt"), "line 2", "needs model, width, height")
    _raises(_write(tmp_path, head + "cam camera\n", "s9.txt"), "line 2", "needs sensor_id, name, sensor_type")
    assert set(SUPPORTED_MODELS) >= {"OPENCV_FISHEYE", "OPENCV", "FULL_OPENCV", "PINHOLE", "SIMPLE_PINHOLE",
                                     "SIMPLE_RADIAL", "RADIAL"}


def test_error_colmap(tmp_path):
    _raises(_write(tmp_path, "1 THIN_PRISM_FISHEYE 320 240 " + " ".join(["1"] * 12) + "\n", "c1.txt"),
            "line 1 (camera 1)", "'THIN_PRISM_FISHEYE' is not supported")
    _raises(_write(tmp_path, "1 PINHOLE 320 240 300 300 160\n", "c2.txt"), "model PINHOLE needs 4 parameters",
            "got 3")
    _raises(_write(tmp_path, "1 SIMPLE_PINHOLE 320 240 -3 160 120\n", "c3.txt"), "line 1 (camera 1)",
            "focal lengths must be positive")
    _raises(_write(tmp_path, "1 PINHOLE 320 240 300 300 160 120\n2 PINHOLE 320\n", "c4.txt"), "line 2",
            "needs CAMERA_ID MODEL WIDTH HEIGHT")


# ----------------------------------------------------------------------------- undistortion round trip
def _pattern(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Smooth checkerboard on the normalized image plane z = 1 (period 0.3), values in [0, 255]."""
    return 127.5 + 120.0 * np.tanh(3.0 * np.sin(np.pi * x / 0.15) * np.sin(np.pi * y / 0.15))


def _render_pinhole(intr: Intrinsics) -> np.ndarray:
    u, v = np.meshgrid(np.arange(intr.width, dtype=float), np.arange(intr.height, dtype=float))
    return _pattern((u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy)


def _render_fisheye(intr: Intrinsics) -> np.ndarray:
    """The pattern seen through the distortion model: per pixel, invert distort_normalized by bisection on r."""
    u, v = np.meshgrid(np.arange(intr.width, dtype=float), np.arange(intr.height, dtype=float))
    xd, yd = (u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy
    rd = np.hypot(xd, yd)
    lo, hi = np.zeros_like(rd), np.full_like(rd, 20.0)  # r = tan(theta) up to ~87 deg
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        big = distort_normalized(mid, np.zeros_like(mid), intr.model, intr.d)[0] > rd
        hi, lo = np.where(big, mid, hi), np.where(big, lo, mid)
    r = 0.5 * (lo + hi)
    s = np.where(rd > 1e-12, r / np.maximum(rd, 1e-12), 1.0)
    return np.where(r < 19.0, _pattern(xd * s, yd * s), 0.0)


def test_equidistant_undistortion_round_trip():
    intr = T265_CAM001.scaled(424, 400)
    fish = np.repeat(np.round(_render_fisheye(intr)).astype(np.uint8)[:, :, None], 3, axis=2)
    want = _render_pinhole(intr)
    und = Undistorter(intr)
    got = und.undistort_rgb(fish)[:, :, 0].astype(float)
    # central region: |x|, |y| < 1 on the normalized plane (45 deg off-axis)
    u, v = np.meshgrid(np.arange(intr.width), np.arange(intr.height))
    centre = (np.abs(u - intr.cx) < intr.fx) & (np.abs(v - intr.cy) < intr.fy)
    assert und.valid[centre].all()
    err = np.abs(got - want)[centre]
    assert err.mean() < 2.0 and np.percentile(err, 99) < 12.0, (err.mean(), np.percentile(err, 99))
    # negative control: the raw fisheye image is far from the pinhole rendering there
    assert np.abs(fish[:, :, 0].astype(float) - want)[centre].mean() > 20 * err.mean()
    # and so is the same image undistorted with the wrong (plumb_bob) model
    wrong = Undistorter(Intrinsics(intr.width, intr.height, intr.fx, intr.fy, intr.cx, intr.cy, "plumb_bob",
                                   intr.d + (0.0,)))
    wrong_err = np.abs(wrong.undistort_rgb(fish)[:, :, 0].astype(float) - want)[centre & wrong.valid]
    assert wrong_err.mean() > 10 * err.mean()
