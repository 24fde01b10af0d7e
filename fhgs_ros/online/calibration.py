"""Camera intrinsics from a calibration file, for cameras whose driver publishes no CameraInfo.

ROS-free. :func:`load_calibration` detects the format from the file's content:

1. ROS ``camera_calibration`` / camera_info_manager YAML (``image_width``, ``image_height``,
   ``camera_matrix``, ``distortion_model``, ``distortion_coefficients``, optional
   ``rectification_matrix`` / ``projection_matrix`` size-checked and otherwise unused). A missing
   ``distortion_model`` means plumb_bob, as in camera_calibration_parsers. ``fisheye`` and
   ``kannala_brandt`` are read as ``equidistant`` (the same Kannala-Brandt / OpenCV-fisheye model).
2. kapture ``sensors.txt`` (``# kapture format: 1.x`` header; ``sensor_id, name, sensor_type, model,
   w, h, params...``); ``sensor`` picks the sensor_id (default: the first ``camera``).
3. COLMAP ``cameras.txt`` (``CAMERA_ID MODEL WIDTH HEIGHT PARAMS...``); ``sensor`` picks the
   CAMERA_ID (default: the first camera).

Camera models of kapture and COLMAP (COLMAP's parameter orders) and the ROS model they become:
SIMPLE_PINHOLE (f cx cy), PINHOLE (fx fy cx cy) -> no distortion; SIMPLE_RADIAL (f cx cy k),
RADIAL (f cx cy k1 k2), OPENCV (fx fy cx cy k1 k2 p1 p2) -> plumb_bob; FULL_OPENCV (fx fy cx cy
k1 k2 p1 p2 k3 k4 k5 k6) -> rational_polynomial; OPENCV_FISHEYE (fx fy cx cy k1 k2 k3 k4),
SIMPLE_RADIAL_FISHEYE (f cx cy k), RADIAL_FISHEYE (f cx cy k1 k2) -> equidistant.

Pixel convention: the result is in the OpenCV / ROS convention (pixel centre at integer
coordinates). COLMAP puts the top-left pixel's corner at (0, 0), so COLMAP principal points get
-0.5 (as ``fhgs_ros.datasets.colmap`` does). kapture defines no convention of its own; its values
are taken as they are (they usually come from the device or ROS calibration).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from fhgs_ros.online.imageproc import InputError, make_intrinsics
from fhgs_ros.core.camera import Intrinsics

__all__ = ["CalibrationError", "load_calibration", "calibration_from_params", "SUPPORTED_MODELS"]

# model -> (parameter names after w h, ROS distortion model)
_MODELS: dict[str, tuple[tuple[str, ...], str]] = {
    "SIMPLE_PINHOLE": (("f", "cx", "cy"), "plumb_bob"),
    "PINHOLE": (("fx", "fy", "cx", "cy"), "plumb_bob"),
    "SIMPLE_RADIAL": (("f", "cx", "cy", "k"), "plumb_bob"),
    "RADIAL": (("f", "cx", "cy", "k1", "k2"), "plumb_bob"),
    "OPENCV": (("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"), "plumb_bob"),
    "FULL_OPENCV": (("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6"), "rational_polynomial"),
    "OPENCV_FISHEYE": (("fx", "fy", "cx", "cy", "k1", "k2", "k3", "k4"), "equidistant"),
    "SIMPLE_RADIAL_FISHEYE": (("f", "cx", "cy", "k"), "equidistant"),
    "RADIAL_FISHEYE": (("f", "cx", "cy", "k1", "k2"), "equidistant"),
}
SUPPORTED_MODELS = tuple(_MODELS)

# ROS distortion_model spellings -> (model, number of coefficients)
_ROS_MODELS = {"plumb_bob": ("plumb_bob", 5), "rational_polynomial": ("rational_polynomial", 8),
               "equidistant": ("equidistant", 4), "fisheye": ("equidistant", 4),
               "kannala_brandt": ("equidistant", 4)}
_COLMAP_LINE = re.compile(r"^\s*\d+\s+[A-Z][A-Z_]*\s+\S+\s+\S+")


class CalibrationError(ValueError):
    """An unreadable or invalid calibration file; the message names the file, the line/key and the problem."""


def _err(path: Path, where: str, problem: str) -> CalibrationError:
    return CalibrationError(f"{path}: {where}: {problem}" if where else f"{path}: {problem}")


def _number(v, path: Path, where: str, integer: bool = False) -> float:
    """A finite float (or int) from a YAML scalar or a text token."""
    if isinstance(v, bool) or v is None or isinstance(v, (list, dict)):
        raise _err(path, where, f"expected a number, got {v!r}")
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise _err(path, where, f"expected a number, got {v!r}") from None
    if not math.isfinite(x):
        raise _err(path, where, f"{v!r} is not finite")
    if integer and x != int(x):
        raise _err(path, where, f"expected an integer, got {v!r}")
    return int(x) if integer else x


def _finish(path: Path, where: str, w, h, fx: float, fy: float, cx: float, cy: float, d, model: str) -> Intrinsics:
    """Common checks (positive size and focal), then make_intrinsics' validation."""
    if w <= 0 or h <= 0:
        raise _err(path, where, f"image size {w}x{h} is not positive")
    if fx <= 0 or fy <= 0:
        raise _err(path, where, f"focal lengths must be positive (fx={fx}, fy={fy})")
    try:
        return make_intrinsics(w, h, [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0], d, model, what=f"{path}: {where}")
    except InputError as exc:
        raise CalibrationError(str(exc)) from None


def _from_model(model: str, w, h, params: list[float], path: Path, where: str, pp_shift: float) -> Intrinsics:
    """A kapture / COLMAP camera model with its parameters (after w h) -> Intrinsics."""
    if model not in _MODELS:
        raise _err(path, where, f"camera model '{model}' is not supported (supported: {', '.join(SUPPORTED_MODELS)})")
    names, ros_model = _MODELS[model]
    if len(params) != len(names):
        raise _err(path, where, f"model {model} needs {len(names)} parameters after width and height "
                                f"({' '.join(names)}), got {len(params)}")
    p = dict(zip(names, params))
    fx, fy = (p["f"], p["f"]) if "f" in p else (p["fx"], p["fy"])
    g = p.get
    if model in ("SIMPLE_PINHOLE", "PINHOLE"):
        d: list[float] = []
    elif model in ("SIMPLE_RADIAL", "RADIAL", "OPENCV"):
        d = [g("k", g("k1", 0.0)), g("k2", 0.0), g("p1", 0.0), g("p2", 0.0), 0.0]
    elif model == "FULL_OPENCV":
        d = [p[k] for k in ("k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6")]
    else:  # fisheye family: theta_d = theta (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8)
        d = [g("k", g("k1", 0.0)), g("k2", 0.0), g("k3", 0.0), g("k4", 0.0)]
    return _finish(path, where, w, h, fx, fy, p["cx"] - pp_shift, p["cy"] - pp_shift, d, ros_model)


# ----------------------------------------------------------------------------- ROS YAML
def _matrix(doc: dict, key: str, path: Path, rows: int | None, cols: int | None) -> list[float]:
    """A camera_calibration matrix {rows, cols, data}, size-checked; data as floats."""
    m = doc[key]
    if not isinstance(m, dict) or not all(k in m for k in ("rows", "cols", "data")):
        raise _err(path, f"key '{key}'", "must be a mapping with rows, cols and data")
    r = _number(m["rows"], path, f"key '{key}.rows'", integer=True)
    c = _number(m["cols"], path, f"key '{key}.cols'", integer=True)
    if (rows is not None and r != rows) or (cols is not None and c != cols):
        raise _err(path, f"key '{key}'", f"must be {rows if rows is not None else 'N'}x"
                                         f"{cols if cols is not None else 'N'}, got rows={r} cols={c}")
    data = m["data"]
    if not isinstance(data, list):
        raise _err(path, f"key '{key}.data'", f"must be a list of numbers, got {data!r}")
    if len(data) != r * c:
        raise _err(path, f"key '{key}.data'", f"holds {len(data)} values, rows x cols = {r}x{c} needs {r * c}")
    return [_number(v, path, f"key '{key}.data[{i}]'") for i, v in enumerate(data)]


def _load_yaml(text: str, path: Path) -> Intrinsics:
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise _err(path, where, f"unreadable YAML ({problem})") from None
    if not isinstance(doc, dict):
        raise _err(path, "", "not a ROS camera_calibration YAML (no mapping of keys), a kapture sensors.txt "
                             "('# kapture format' header) or a COLMAP cameras.txt")
    missing = [k for k in ("image_width", "image_height", "camera_matrix", "distortion_coefficients") if k not in doc]
    if missing:
        raise _err(path, "", f"missing key{'s' if len(missing) > 1 else ''} {', '.join(repr(k) for k in missing)} "
                             f"(a ROS camera_calibration YAML needs image_width, image_height, camera_matrix and "
                             f"distortion_coefficients; distortion_model defaults to plumb_bob)")
    w = _number(doc["image_width"], path, "key 'image_width'", integer=True)
    h = _number(doc["image_height"], path, "key 'image_height'", integer=True)
    if w <= 0 or h <= 0:
        raise _err(path, "keys 'image_width', 'image_height'", f"image size {w}x{h} is not positive")
    k = _matrix(doc, "camera_matrix", path, 3, 3)
    raw_model = doc.get("distortion_model", "plumb_bob")
    if not isinstance(raw_model, str) or raw_model.strip().lower() not in _ROS_MODELS:
        raise _err(path, "key 'distortion_model'", f"unsupported distortion model {raw_model!r} (supported: "
                                                   f"{', '.join(_ROS_MODELS)})")
    model, need = _ROS_MODELS[raw_model.strip().lower()]
    d = _matrix(doc, "distortion_coefficients", path, None, None)
    if d and len(d) != need:
        raise _err(path, "key 'distortion_coefficients'", f"distortion model '{raw_model}' needs {need} "
                                                          f"coefficients, got {len(d)}")
    if "rectification_matrix" in doc:
        _matrix(doc, "rectification_matrix", path, 3, 3)
    if "projection_matrix" in doc:
        _matrix(doc, "projection_matrix", path, 3, 4)
    if k[1] != 0 or k[3] != 0 or k[6] != 0 or k[7] != 0 or k[8] != 1:
        raise _err(path, "key 'camera_matrix'", f"must be [fx 0 cx; 0 fy cy; 0 0 1] (no skew), got {k}")
    return _finish(path, "key 'camera_matrix'", w, h, k[0], k[4], k[2], k[5], d, model)


# ----------------------------------------------------------------------------- kapture
def _load_kapture(text: str, path: Path, sensor: str) -> Intrinsics:
    cams: list[tuple[int, list[str]]] = []
    seen: list[tuple[int, list[str]]] = []
    for ln, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        f = [t.strip() for t in s.split(",")]
        if len(f) < 3:
            raise _err(path, f"line {ln}", "needs sensor_id, name, sensor_type[, params...]")
        seen.append((ln, f))
        if f[2] in ("camera", "depth"):
            cams.append((ln, f))
    if sensor:
        hit = [(ln, f) for ln, f in seen if f[0] == sensor]
        if not hit:
            raise _err(path, "", f"no sensor '{sensor}' (sensors: {', '.join(f[0] for _, f in seen) or 'none'})")
        ln, f = hit[0]
        if f[2] not in ("camera", "depth"):
            raise _err(path, f"line {ln}", f"sensor '{sensor}' is a '{f[2]}', not a camera "
                                           f"(cameras: {', '.join(c[0] for _, c in cams) or 'none'})")
    else:
        if not cams:
            raise _err(path, "", f"no camera sensor (sensors: {', '.join(f[0] for _, f in seen) or 'none'})")
        ln, f = next((c for c in cams if c[1][2] == "camera"), cams[0])
    where = f"line {ln} (sensor '{f[0]}')"
    if len(f) < 6:
        raise _err(path, where, "needs model, width, height and the model's parameters after the sensor type")
    model = f[3]
    w = _number(f[4], path, where + " width", integer=True)
    h = _number(f[5], path, where + " height", integer=True)
    params = [_number(t, path, f"{where} parameter {i + 1}") for i, t in enumerate(f[6:])]
    return _from_model(model, w, h, params, path, where, 0.0)


# ----------------------------------------------------------------------------- COLMAP
def _load_colmap(text: str, path: Path, sensor: str) -> Intrinsics:
    rows: list[tuple[int, list[str]]] = []
    for ln, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s and not s.startswith("#"):
            t = s.split()
            if len(t) < 4:
                raise _err(path, f"line {ln}", "needs CAMERA_ID MODEL WIDTH HEIGHT PARAMS...")
            rows.append((ln, t))
    if sensor:
        hit = [r for r in rows if r[1][0] == sensor or (sensor.isdigit() and r[1][0].isdigit()
                                                          and int(r[1][0]) == int(sensor))]
        if not hit:
            raise _err(path, "", f"no camera id '{sensor}' (camera ids: {', '.join(t[0] for _, t in rows)})")
        ln, t = hit[0]
    else:
        ln, t = rows[0]
    where = f"line {ln} (camera {t[0]})"
    w = _number(t[2], path, where + " WIDTH", integer=True)
    h = _number(t[3], path, where + " HEIGHT", integer=True)
    params = [_number(v, path, f"{where} parameter {i + 1}") for i, v in enumerate(t[4:])]
    return _from_model(t[1], w, h, params, path, where, 0.5)


# ----------------------------------------------------------------------------- entry point
def load_calibration(path: str | Path, sensor: str = "") -> Intrinsics:
    """Intrinsics of one camera from a ROS calibration YAML, kapture sensors.txt or COLMAP cameras.txt.

    ``sensor``: the kapture sensor_id or COLMAP CAMERA_ID ("" = the first camera); ignored for a
    YAML file (one camera per file). Raises :class:`CalibrationError` naming the file, the line or
    key and the problem.
    """
    p = Path(path).expanduser()
    if not p.exists() and not p.is_absolute():
        from fhgs_ros.config import default_config_path
        cfg = default_config_path()  # a relative path may name a file shipped in the package's config/
        if cfg is not None and (cfg.parent.parent / p).exists():
            p = cfg.parent.parent / p
        elif cfg is not None and (cfg.parent / p).exists():
            p = cfg.parent / p
    if not p.exists():
        raise CalibrationError(f"{p}: calibration file does not exist")
    if p.is_dir():
        raise CalibrationError(f"{p}: is a directory, expected a calibration file (ROS YAML, kapture sensors.txt "
                               f"or COLMAP cameras.txt)")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"{p}: cannot read calibration file ({exc})") from None
    if not text.strip():
        raise CalibrationError(f"{p}: calibration file is empty")
    sensor = str(sensor or "").strip()
    first = text.lstrip().splitlines()[0].strip()
    if re.match(r"#\s*kapture format", first, re.IGNORECASE):
        return _load_kapture(text, p, sensor)
    data = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not data:
        raise CalibrationError(f"{p}: calibration file holds only comments")
    if _COLMAP_LINE.match(data[0]):
        return _load_colmap(text, p, sensor)
    return _load_yaml(text, p)


def calibration_from_params(ncfg) -> Intrinsics | None:
    """The camera of ``node.camera_info_file`` / ``node.camera_info_sensor`` (None when unset);
    a bad file raises ConfigError naming the parameter (the node refuses to start)."""
    if not ncfg.camera_info_file:
        return None
    from fhgs_ros.config import ConfigError
    try:
        return load_calibration(ncfg.camera_info_file, ncfg.camera_info_sensor)
    except (CalibrationError, OSError) as exc:
        raise ConfigError(f"node.camera_info_file: {exc}") from None
