"""OpenSfM ``reconstruction.json`` (+ optional ``tracks.csv``) datasets.

- File: ``reconstruction.json`` (or the first ``reconstruction*.json``) in the folder; it holds a
  list of reconstructions, and the first one (OpenSfM's largest) is loaded. Images are
  ``images/<shot id>``.
- Cameras: ``perspective`` (``focal``, ``k1``, ``k2``) and ``brown`` (``focal_x/y``, ``c_x/y``,
  ``k1 k2 k3 p1 p2``); focal lengths and principal offsets are normalised by max(w, h) and the
  principal point of ``perspective`` is the image centre, so in OpenCV pixels
  fx = focal * max(w, h), cx = w / 2 - 0.5 (+ c_x * max(w, h) for brown). Other projection types
  (fisheye, spherical, ...) are rejected.
- Distortion is **undistorted on load**: images are resampled to the pinhole camera with the
  same fx, fy, cx, cy and size (border pixels replicated; ``Frame.mask`` False there) and the
  track keypoints are undistorted (iterative inverse), so everything downstream is pinhole.
- Shots: ``rotation`` is an angle-axis vector and ``translation`` the translation of the
  world-to-camera transform, already in OpenCV axes (x = R X + t). EXIF orientation of the
  image files is applied (as OpenSfM does).
- Points: ``coordinates`` (world) and ``color`` (0..255).
- Tracks: ``tracks*.csv`` (OPENSFM_TRACKS_VERSION v0/v1/v2: image, track id, feature id, x, y,
  size, r, g, b[, segmentation, instance]) next to the reconstruction; keypoints are in OpenSfM
  normalised coordinates (origin at the image centre, divided by max(w, h)). Rows whose track id
  is a point of the reconstruction and whose image is a shot become ``PointCloud.obs_*``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from fhgs_ros.datasets.base import Dataset, DatasetError, Frame, PointCloud
from fhgs_ros.core.camera import Intrinsics
from fhgs_ros.core.geometry import angle_axis_to_matrix
from fhgs_ros.datasets.common import (err, get_matrix, get_number, load_extras, load_rgb, make_camera, read_json,
                                      resize_image, scale_factor, undistort_frame)


def find_reconstruction(path: Path) -> Path:
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise DatasetError(f"{path}: dataset path does not exist")
    if (path / "reconstruction.json").is_file():
        return path / "reconstruction.json"
    cands = sorted(path.glob("reconstruction*.json"))
    if cands:
        return cands[0]
    raise DatasetError(f"{path / 'reconstruction.json'}: file not found")


def _tracks_file(rec: Path) -> Path | None:
    suffix = rec.stem[len("reconstruction"):] if rec.stem.startswith("reconstruction") else ""
    for name in (f"tracks{suffix}.csv", "tracks.csv"):
        if (rec.parent / name).is_file():
            return rec.parent / name
    c = sorted(rec.parent.glob("tracks*.csv"))
    return c[0] if c else None


def _camera(cam: dict, file: Path, where: str):
    """(width, height, fx, fy, cx, cy, sensor Intrinsics with distortion) in OpenCV pixels for an OpenSfM camera dict."""
    if not isinstance(cam, dict):
        raise err(file, where, "must be an object")
    ptype = cam.get("projection_type", "perspective")
    w = int(get_number(cam, "width", file, where, positive=True))
    h = int(get_number(cam, "height", file, where, positive=True))
    size = max(w, h)
    if ptype == "perspective":
        f = get_number(cam, "focal", file, where, positive=True)
        fx = fy = f * size
        cx, cy = w / 2 - 0.5, h / 2 - 0.5
        dist = Intrinsics.brown(w, h, fx, fy, cx, cy, k1=get_number(cam, "k1", file, where, 0.0),
                                k2=get_number(cam, "k2", file, where, 0.0))
    elif ptype == "brown":
        fx = get_number(cam, "focal_x", file, where, positive=True) * size
        fy = get_number(cam, "focal_y", file, where, positive=True) * size
        cx = w / 2 - 0.5 + get_number(cam, "c_x", file, where, 0.0) * size
        cy = h / 2 - 0.5 + get_number(cam, "c_y", file, where, 0.0) * size
        dist = Intrinsics.brown(w, h, fx, fy, cx, cy, k1=get_number(cam, "k1", file, where, 0.0),
                                k2=get_number(cam, "k2", file, where, 0.0), k3=get_number(cam, "k3", file, where, 0.0),
                                p1=get_number(cam, "p1", file, where, 0.0), p2=get_number(cam, "p2", file, where, 0.0))
    else:
        raise err(file, f"{where}.projection_type", f"'{ptype}' is not supported (perspective or brown only)")
    return w, h, fx, fy, cx, cy, dist


def load_opensfm(path: str | Path, downscale: float = 1.0, load_images: bool = True) -> Dataset:
    """Load an OpenSfM reconstruction (first reconstruction of the file) as a Dataset."""
    rec_path = find_reconstruction(Path(path))
    factor = scale_factor(downscale)
    data = read_json(rec_path)
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not data:
        raise err(rec_path, "", "must hold a non-empty list of reconstructions")
    rec = data[0]
    if not isinstance(rec, dict):
        raise err(rec_path, "[0]", "must be an object")
    cams_raw = rec.get("cameras")
    shots = rec.get("shots")
    if not isinstance(cams_raw, dict) or not cams_raw:
        raise err(rec_path, "[0].cameras", "is missing or empty")
    if not isinstance(shots, dict) or not shots:
        raise err(rec_path, "[0].shots", "is missing or empty")
    root = rec_path.parent
    img_dir = root / "images"
    cams = {}
    for cid, c in cams_raw.items():
        cams[cid] = _camera(c, rec_path, f"[0].cameras['{cid}']")
    frames: list[Frame] = []
    names = sorted(shots)
    intr = []
    for sid in names:
        sh = shots[sid]
        where = f"[0].shots['{sid}']"
        if not isinstance(sh, dict):
            raise err(rec_path, where, "must be an object")
        cid = sh.get("camera")
        if cid not in cams:
            raise err(rec_path, f"{where}.camera", f"'{cid}' is not in cameras")
        w, h, fx, fy, cx, cy, dist = cams[cid]
        rv = get_matrix(sh.get("rotation"), (3,), rec_path, f"{where}.rotation")
        tv = get_matrix(sh.get("translation"), (3,), rec_path, f"{where}.translation")
        w2c = np.eye(4)
        w2c[:3, :3] = angle_axis_to_matrix(rv)
        w2c[:3, 3] = tv
        cam = make_camera(rec_path, where, width=w, height=h, fx=fx, fy=fy, cx=cx, cy=cy,
                          world_to_cam=torch.from_numpy(w2c).float(), name=sid, far=1000.0)
        if factor != 1.0:
            cam = cam.scaled(factor)
        size = (cam.width, cam.height)
        ipath = img_dir / sid
        image = torch.zeros(3, cam.height, cam.width)
        mask = None
        if load_images:
            if not ipath.is_file():
                raise err(rec_path, where, f"image '{ipath}' not found")
            image, mask, got = load_rgb(ipath, rec_path, where, size=size)
            if got != (w, h):
                raise err(rec_path, f"{where}.camera", f"image '{ipath}' is {got[0]}x{got[1]} but camera "
                          f"'{cid}' is {w}x{h}")
            image, mask = resize_image(image, mask, size)
            if dist.has_distortion:
                image, valid = undistort_frame(image, dist, cam)
                mask = valid if mask is None else mask & valid
        frames.append(Frame(cam, image, path=f"images/{sid}", mask=mask))
        intr.append((w, h, dist))
    ds = Dataset(frames, root)
    ds.meta.update(format="opensfm", source=str(rec_path),
                   reference_lla=rec.get("reference_lla"),
                   distortion={cid: c[6].distortion_dict() for cid, c in cams.items() if c[6].has_distortion})
    ds.points = _points(rec, rec_path, names, frames, intr)
    load_extras(ds, root, load_points=False)
    return ds


def _points(rec: dict, rec_path: Path, names: list[str], frames: list[Frame], intr) -> PointCloud | None:
    pts = rec.get("points")
    if not isinstance(pts, dict) or not pts:
        return None
    keys = list(pts)
    xyz = np.empty((len(keys), 3))
    rgb = np.empty((len(keys), 3))
    for i, k in enumerate(keys):
        p = pts[k]
        xyz[i] = get_matrix(p.get("coordinates") if isinstance(p, dict) else None, (3,), rec_path,
                            f"[0].points['{k}'].coordinates")
        c = p.get("color", [128, 128, 128])
        rgb[i] = get_matrix(c, (3,), rec_path, f"[0].points['{k}'].color")
    pc = PointCloud(torch.from_numpy(xyz.astype(np.float32)),
                    torch.from_numpy(np.clip(rgb / 255.0, 0, 1).astype(np.float32)))
    tf = _tracks_file(rec_path)
    if tf is None:
        return pc
    index = {k: i for i, k in enumerate(keys)}
    frame_of = {n: i for i, n in enumerate(names)}
    try:
        text = tf.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DatasetError(f"{tf}: cannot read file ({exc})") from None
    lines = text.splitlines()
    if lines and lines[0].startswith("OPENSFM_TRACKS_VERSION"):
        lines = lines[1:]
    op, of, oxy = [], [], []
    for ln, row in enumerate(csv.reader(io.StringIO("\n".join(lines)), delimiter="\t"), start=2):
        if not row:
            continue
        if len(row) < 5:
            raise err(tf, f"line {ln}", "needs image, track_id, feature_id, x, y, ...")
        img, tid = row[0], row[1]
        if img not in frame_of or tid not in index:
            continue
        try:
            x, y = float(row[3]), float(row[4])
        except ValueError:
            raise err(tf, f"line {ln} x/y", f"must be numbers, got {row[3]!r}, {row[4]!r}") from None
        op.append(index[tid])
        of.append(frame_of[img])
        oxy.append((x, y))
    if not op:
        return pc
    op_a, of_a = np.asarray(op, dtype=np.int64), np.asarray(of, dtype=np.int64)
    nxy = np.asarray(oxy, dtype=np.float64)
    out = np.empty_like(nxy)
    for fi, fr in enumerate(frames):
        m = of_a == fi
        if not m.any():
            continue
        w, h, dist = intr[fi]
        size = max(w, h)
        cam = fr.camera  # pinhole, possibly downscaled
        # normalised image coords -> full-res distorted pixels -> distorted ray coords -> undistorted
        px = nxy[m] * size + [w / 2 - 0.5, h / 2 - 0.5]
        out[m] = dist.undistort_pixels(px, cam.intrinsics)
    order = np.lexsort((of_a, op_a))
    pc.obs_point = torch.from_numpy(op_a[order])
    pc.obs_frame = torch.from_numpy(of_a[order])
    pc.obs_xy = torch.from_numpy(out[order].astype(np.float32))
    return pc
