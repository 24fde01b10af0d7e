"""COLMAP sparse models (text ``*.txt`` or binary ``*.bin``) and a text writer.

Layout: ``ROOT/images/`` + ``ROOT/sparse/0/{cameras,images,points3D}.txt|.bin`` (also
``ROOT/sparse/`` or the model files directly in ``ROOT``, images then in ``ROOT/images`` or
``ROOT/../images``).

Conventions:
- ``images.txt`` poses (qw qx qy qz, tx ty tz) are world-to-camera with OpenCV axes: used as is.
- COLMAP pixel coordinates put the top-left pixel's *corner* at (0, 0); ours put its centre
  there, so principal points and POINTS2D get ``-0.5`` on load and ``+0.5`` on write.
- Camera models: SIMPLE_PINHOLE, PINHOLE; SIMPLE_RADIAL, RADIAL, OPENCV, FULL_OPENCV are
  **undistorted on load**: each image is resampled to the pinhole camera with the same fx, fy,
  cx, cy and size (border pixels replicated and marked False in ``Frame.mask``), and every track
  keypoint is undistorted the same way (iterative inverse), so cameras, images and tracks are all
  pinhole. Fisheye / FOV / thin-prism models are rejected with a DatasetError.
- Frames are ordered by image name; tracks (points3D TRACK[] -> POINTS2D) become
  ``PointCloud.obs_*`` with frame indices in that order.
- Optional ``depth/<stem>.png`` (uint16 mm) and ``labels/<stem>.png`` beside ``images/`` and the
  extras (scene.json, gt_mesh.ply, gt_points.ply) in ROOT are loaded as for NeRF folders.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fhgs_ros.datasets.base import Dataset, DatasetError, Frame, PointCloud
from fhgs_ros.core.camera import Intrinsics
from fhgs_ros.core.geometry import matrix_to_quat_wxyz, orthonormalize, quat_wxyz_to_matrix
from fhgs_ros.datasets.common import (depth_to_u16, err, find_side_file, labels_to_u8, load_depth, load_extras,
                                      load_labels, load_rgb, make_camera, make_side_dirs, resize_image, scale_factor,
                                      to_uint8_hwc, undistort_frame, write_extras)

# model name -> (id, number of params)
MODELS = {"SIMPLE_PINHOLE": (0, 3), "PINHOLE": (1, 4), "SIMPLE_RADIAL": (2, 4), "RADIAL": (3, 5), "OPENCV": (4, 8),
          "OPENCV_FISHEYE": (5, 8), "FULL_OPENCV": (6, 12), "FOV": (7, 5), "SIMPLE_RADIAL_FISHEYE": (8, 4),
          "RADIAL_FISHEYE": (9, 5), "THIN_PRISM_FISHEYE": (10, 12)}
_BY_ID = {v[0]: k for k, v in MODELS.items()}
SUPPORTED = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV")


@dataclass
class _Cam:
    model: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float  # OpenCV convention (already -0.5)
    cy: float
    dist: Intrinsics  # the sensor: K at its full size plus its lens distortion


@dataclass
class _Img:
    image_id: int
    qvec: np.ndarray
    tvec: np.ndarray
    camera_id: int
    name: str
    xy: np.ndarray        # (K, 2) COLMAP convention
    point_ids: np.ndarray  # (K,)


def find_model_dir(path: Path) -> Path:
    """The folder holding cameras.txt/.bin for a dataset root or model folder."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    if not path.exists():
        raise DatasetError(f"{path}: dataset path does not exist")
    for cand in (path, path / "sparse" / "0", path / "sparse", path / "colmap" / "sparse" / "0"):
        if (cand / "cameras.txt").is_file() or (cand / "cameras.bin").is_file():
            return cand
    raise DatasetError(f"{path}: no COLMAP model (cameras.txt or cameras.bin in ., sparse/0 or sparse)")


def _cam_from_params(model: str, w: int, h: int, p: list[float], file, field) -> _Cam:
    if model not in SUPPORTED:
        raise err(file, field, f"camera model {model} is not supported (supported: {', '.join(SUPPORTED)}; "
                  f"undistort fisheye models with COLMAP's image_undistorter first)")
    n = MODELS[model][1]
    if len(p) != n:
        raise err(file, field, f"model {model} needs {n} parameters, got {len(p)}")
    if not all(np.isfinite(p)):
        raise err(file, field, "parameters contain NaN or Inf")
    if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        fx = fy = p[0]
        cx, cy = p[1], p[2]
        k = p[3:]
        k = k + [0.0] * (2 - len(k))
        dist = Intrinsics.brown(w, h, fx, fy, cx - 0.5, cy - 0.5, k1=k[0], k2=k[1])
    else:
        fx, fy, cx, cy = p[:4]
        if model == "PINHOLE":
            dist = Intrinsics.brown(w, h, fx, fy, cx - 0.5, cy - 0.5)
        elif model == "OPENCV":
            dist = Intrinsics.brown(w, h, fx, fy, cx - 0.5, cy - 0.5, k1=p[4], k2=p[5], p1=p[6], p2=p[7])
        else:  # FULL_OPENCV
            dist = Intrinsics.brown(w, h, fx, fy, cx - 0.5, cy - 0.5, k1=p[4], k2=p[5], p1=p[6], p2=p[7], k3=p[8],
                                    k4=p[9], k5=p[10], k6=p[11])
    if fx <= 0 or fy <= 0:
        raise err(file, field, f"focal length must be > 0, got fx={fx}, fy={fy}")
    if w <= 0 or h <= 0:
        raise err(file, field, f"image size must be positive, got {w}x{h}")
    return _Cam(model, int(w), int(h), float(fx), float(fy), float(cx) - 0.5, float(cy) - 0.5, dist)


# --------------------------------------------------------------------------- text model

def _lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read file ({exc})") from None
    return [(i + 1, ln.rstrip("\r\n")) for i, ln in enumerate(text.split("\n")) if not ln.lstrip().startswith("#")]


def _nums(tokens: list[str], file, field, conv=float) -> list:
    try:
        return [conv(t) for t in tokens]
    except ValueError:
        raise err(file, field, f"has a non-numeric value in {' '.join(tokens)!r}") from None


def read_cameras_text(path: Path) -> dict[int, _Cam]:
    cams = {}
    for ln, line in _lines(path):
        t = line.split()
        if not t:
            continue
        field = f"line {ln}"
        if len(t) < 4:
            raise err(path, field, "needs CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]")
        cid, model = _nums([t[0]], path, field + " CAMERA_ID", int)[0], t[1]
        if model not in MODELS:
            raise err(path, field + " MODEL", f"unknown camera model {model!r}")
        w, h = _nums(t[2:4], path, field + " WIDTH/HEIGHT", int)
        cams[cid] = _cam_from_params(model, w, h, _nums(t[4:], path, field + " PARAMS"), path,
                                     f"camera {cid} ({field})")
    if not cams:
        raise err(path, "", "contains no cameras")
    return cams


def read_images_text(path: Path) -> dict[int, _Img]:
    lines = _lines(path)
    imgs = {}
    i = 0
    while i < len(lines):
        ln, line = lines[i]
        if not line.strip():
            i += 1
            continue
        t = line.split()
        field = f"line {ln}"
        if len(t) < 10:
            raise err(path, field, "needs IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME")
        iid = _nums([t[0]], path, field + " IMAGE_ID", int)[0]
        q = np.array(_nums(t[1:5], path, field + " QW..QZ"))
        tv = np.array(_nums(t[5:8], path, field + " TX..TZ"))
        cid = _nums([t[8]], path, field + " CAMERA_ID", int)[0]
        name = " ".join(t[9:])
        pts_line = lines[i + 1][1] if i + 1 < len(lines) else ""
        p = pts_line.split()
        if len(p) % 3:
            raise err(path, f"line {ln + 1} POINTS2D", f"of image {iid} must be triples X Y POINT3D_ID")
        a = np.array(_nums(p, path, f"line {ln + 1} POINTS2D"), dtype=np.float64).reshape(-1, 3)
        imgs[iid] = _Img(iid, q, tv, cid, name, a[:, :2], a[:, 2].astype(np.int64))
        i += 2
    return imgs


def read_points_text(path: Path):
    """(ids (P,), xyz (P, 3), rgb (P, 3) 0..255, track image ids list, track point2D idx list)."""
    ids, xyz, rgb, tracks = [], [], [], []
    for ln, line in _lines(path):
        t = line.split()
        if not t:
            continue
        field = f"line {ln}"
        if len(t) < 8 or (len(t) - 8) % 2:
            raise err(path, field, "needs POINT3D_ID X Y Z R G B ERROR TRACK[] as (IMAGE_ID, POINT2D_IDX)")
        ids.append(_nums([t[0]], path, field + " POINT3D_ID", int)[0])
        xyz.append(_nums(t[1:4], path, field + " X Y Z"))
        rgb.append(_nums(t[4:7], path, field + " R G B"))
        tr = _nums(t[8:], path, field + " TRACK", int)
        tracks.append(np.array(tr, dtype=np.int64).reshape(-1, 2))
    return ids, xyz, rgb, tracks


# --------------------------------------------------------------------------- binary model

class _Reader:
    def __init__(self, path: Path):
        self.path = path
        try:
            self.data = path.read_bytes()
        except OSError as exc:
            raise DatasetError(f"{path}: cannot read file ({exc})") from None
        self.pos = 0

    def read(self, fmt: str):
        n = struct.calcsize("<" + fmt)
        if self.pos + n > len(self.data):
            raise err(self.path, "", "is truncated")
        out = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += n
        return out

    def array(self, dtype, count: int) -> np.ndarray:
        dt = np.dtype(dtype)
        if self.pos + dt.itemsize * count > len(self.data):
            raise err(self.path, "", "is truncated")
        a = np.frombuffer(self.data, dtype=dt, count=count, offset=self.pos)
        self.pos += dt.itemsize * count
        return a

    def cstr(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise err(self.path, "", "is truncated (image name)")
        s = self.data[self.pos:end].decode("utf-8", errors="replace")
        self.pos = end + 1
        return s


def read_cameras_bin(path: Path) -> dict[int, _Cam]:
    r = _Reader(path)
    cams = {}
    for _ in range(r.read("Q")[0]):
        cid, mid, w, h = r.read("iiQQ")
        if mid not in _BY_ID:
            raise err(path, f"camera {cid}", f"has unknown model id {mid}")
        model = _BY_ID[mid]
        p = list(r.read("d" * MODELS[model][1]))
        cams[cid] = _cam_from_params(model, w, h, p, path, f"camera {cid}")
    return cams


def read_images_bin(path: Path) -> dict[int, _Img]:
    r = _Reader(path)
    imgs = {}
    for _ in range(r.read("Q")[0]):
        iid, qw, qx, qy, qz, tx, ty, tz, cid = r.read("idddddddi")
        name = r.cstr()
        n = r.read("Q")[0]
        a = r.array([("x", "<f8"), ("y", "<f8"), ("id", "<i8")], n)
        imgs[iid] = _Img(iid, np.array([qw, qx, qy, qz]), np.array([tx, ty, tz]), cid, name,
                         np.stack([a["x"], a["y"]], 1), a["id"].astype(np.int64))
    return imgs


def read_points_bin(path: Path):
    r = _Reader(path)
    ids, xyz, rgb, tracks = [], [], [], []
    for _ in range(r.read("Q")[0]):
        pid, x, y, z, cr, cg, cb, _e = r.read("QdddBBBd")
        n = r.read("Q")[0]
        tr = r.array("<i4", 2 * n).astype(np.int64).reshape(-1, 2)
        ids.append(pid)
        xyz.append([x, y, z])
        rgb.append([cr, cg, cb])
        tracks.append(tr)
    return ids, xyz, rgb, tracks


# --------------------------------------------------------------------------- loader

def _images_dir(model_dir: Path) -> Path:
    for cand in (model_dir / "images", model_dir.parent / "images", model_dir.parent.parent / "images"):
        if cand.is_dir():
            return cand
    raise DatasetError(f"{model_dir}: images folder not found (looked for images/ next to the model and 1-2 "
                       f"levels up)")


def load_colmap(path: str | Path, downscale: float = 1.0, load_images: bool = True) -> Dataset:
    """Load a COLMAP model (text or binary) with its images as a Dataset (OpenCV pinhole cameras)."""
    model_dir = find_model_dir(Path(path))
    factor = scale_factor(downscale)
    ext = ".txt" if (model_dir / "cameras.txt").is_file() else ".bin"
    f_cam, f_img, f_pts = (model_dir / f"cameras{ext}", model_dir / f"images{ext}", model_dir / f"points3D{ext}")
    if not f_img.is_file():
        raise DatasetError(f"{f_img}: file not found")
    if ext == ".txt":
        cams, imgs = read_cameras_text(f_cam), read_images_text(f_img)
    else:
        cams, imgs = read_cameras_bin(f_cam), read_images_bin(f_img)
    if not imgs:
        raise err(f_img, "", "contains no images")
    img_dir = _images_dir(model_dir)
    root = img_dir.parent
    order = sorted(imgs.values(), key=lambda im: im.name)
    from fhgs_ros.datasets.masks import find_mask, load_mask, mask_folder
    mask_dir = mask_folder(root, img_dir.name)
    frames: list[Frame] = []
    for im in order:
        field = f"image {im.image_id} ('{im.name}')"
        if im.camera_id not in cams:
            raise err(f_img, field + " CAMERA_ID", f"{im.camera_id} is not in {f_cam.name}")
        c = cams[im.camera_id]
        if not np.isfinite(im.qvec).all() or not np.isfinite(im.tvec).all():
            raise err(f_img, field + " QW..TZ", "contains NaN or Inf")
        qn = np.linalg.norm(im.qvec)
        if qn < 1e-8:
            raise err(f_img, field + " QW..QZ", "is a zero quaternion")
        w2c = np.eye(4)
        w2c[:3, :3] = quat_wxyz_to_matrix(im.qvec)
        w2c[:3, 3] = im.tvec
        cam = make_camera(f_img, field + " QW..QZ", width=c.width, height=c.height, fx=c.fx, fy=c.fy, cx=c.cx, cy=c.cy,
                          world_to_cam=torch.from_numpy(w2c).float(), name=Path(im.name).stem)
        if factor != 1.0:
            cam = cam.scaled(factor)
        size = (cam.width, cam.height)
        ipath = img_dir / im.name
        stem = str(Path(im.name).with_suffix(""))
        image = torch.zeros(3, cam.height, cam.width)
        mask = depth = labels = None
        if load_images:
            if not ipath.is_file():
                raise err(f_img, field + " NAME", f"image '{ipath}' not found")
            image, mask, got = load_rgb(ipath, f_img, field + " NAME", size=size)
            if got != (c.width, c.height):
                raise err(f_img, field + " NAME", f"image '{ipath}' is {got[0]}x{got[1]} but camera "
                          f"{im.camera_id} in {f_cam.name} is {c.width}x{c.height}")
            image, mask = resize_image(image, mask, size)
            dp = find_side_file(root, "depth", stem)
            if dp is not None:
                depth = load_depth(dp, dp, "depth", size=size)
            lp = find_side_file(root, "labels", stem, exts=(".png",))
            if lp is not None:
                labels = load_labels(lp, lp, "labels", size=size)
            mp = find_mask(mask_dir, im.name)
            if mp is not None:  # masks/<name>.png (COLMAP convention) or masks/<stem>[_mask].png: True = object
                mk = load_mask(mp, size, mp)
                mask = mk if mask is None else mask & mk
            if c.dist.has_distortion:
                if mask is not None:
                    mask = undistort_frame(mask[None].double(), c.dist, cam, nearest=True)[0][0] > 0.5
                image, valid = undistort_frame(image, c.dist, cam)
                mask = valid if mask is None else mask & valid
        frames.append(Frame(cam, image, path=str(ipath.relative_to(root)), depth=depth, labels=labels, mask=mask))
    ds = Dataset(frames, root)
    ds.meta.update(format="colmap", model=str(model_dir),
                   distortion={str(cid): {**c.dist.distortion_dict(), "model": c.model} for cid, c in cams.items()
                               if c.dist.has_distortion})
    if f_pts.is_file():
        ds.points = _points(f_pts, ext, order, cams, frames)
    load_extras(ds, root, load_points=False)
    return ds


def _points(f_pts: Path, ext: str, order: list[_Img], cams: dict[int, _Cam], frames: list[Frame]) -> PointCloud:
    ids, xyz, rgb, tracks = read_points_text(f_pts) if ext == ".txt" else read_points_bin(f_pts)
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    rgb = np.asarray(rgb, dtype=np.float64).reshape(-1, 3)
    if not np.isfinite(xyz).all():
        bad = int(np.nonzero(~np.isfinite(xyz).all(1))[0][0])
        raise err(f_pts, f"point {ids[bad]} X Y Z", "contains NaN or Inf")
    frame_of = {im.image_id: i for i, im in enumerate(order)}
    op, of, oxy = [], [], []
    for pi, (pid, tr) in enumerate(zip(ids, tracks)):
        for iid, idx in tr:
            fi = frame_of.get(int(iid))
            if fi is None:
                raise err(f_pts, f"point {pid} TRACK", f"refers to IMAGE_ID {iid}, which is not in images{ext}")
            im = order[fi]
            if not 0 <= idx < len(im.xy):
                raise err(f_pts, f"point {pid} TRACK", f"POINT2D_IDX {idx} out of range for image {iid} "
                          f"({len(im.xy)} points)")
            op.append(pi)
            of.append(fi)
            oxy.append(im.xy[idx])
    op_a = np.asarray(op, dtype=np.int64)
    of_a = np.asarray(of, dtype=np.int64)
    oxy_a = np.asarray(oxy, dtype=np.float64).reshape(-1, 2) - 0.5  # COLMAP corner -> centre convention
    # Undistort per frame into its (possibly scaled) pinhole camera.
    for fi, im in enumerate(order):
        m = of_a == fi
        if not m.any():
            continue
        c = cams[im.camera_id]
        cam = frames[fi].camera
        if not c.dist.has_distortion:
            sx, sy = cam.width / c.width, cam.height / c.height
            oxy_a[m] = (oxy_a[m] + 0.5) * [sx, sy] - 0.5
        else:
            oxy_a[m] = c.dist.undistort_pixels(oxy_a[m], cam.intrinsics)
    order_idx = np.lexsort((of_a, op_a))
    pc = PointCloud(torch.from_numpy(xyz.astype(np.float32)), torch.from_numpy((rgb / 255.0).astype(np.float32)),
                    obs_point=torch.from_numpy(op_a[order_idx]), obs_frame=torch.from_numpy(of_a[order_idx]),
                    obs_xy=torch.from_numpy(oxy_a[order_idx].astype(np.float32)))
    return pc


# --------------------------------------------------------------------------- writer

def write_colmap_text(dataset: Dataset, out_dir: str | Path, write_extras_files: bool = True) -> Path:
    """Write ``dataset`` as ``out_dir/images/*.png`` + ``out_dir/sparse/0/{cameras,images,points3D}.txt``
    (PINHOLE cameras, one per distinct intrinsics; tracks from ``dataset.points``), plus
    ``depth/``/``labels/`` PNGs and the GT extras when present. Returns ``out_dir``."""
    from fhgs_ros.core.fileio import atomic_write_text, save_png

    out = Path(out_dir)
    model = out / "sparse" / "0"
    model.mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    frames = dataset.frames
    if not frames:
        raise DatasetError(f"{out}: cannot write a dataset with no frames")
    cam_ids: dict[tuple, int] = {}
    cam_lines = ["# Camera list with one line of data per camera:",
                 "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]"]
    frame_cam = []
    for f in frames:
        c = f.camera
        key = (int(c.width), int(c.height), float(c.fx), float(c.fy), float(c.cx), float(c.cy))
        if key not in cam_ids:
            cam_ids[key] = len(cam_ids) + 1
            cam_lines.append(f"{cam_ids[key]} PINHOLE {key[0]} {key[1]} {key[2]!r} {key[3]!r} {key[4] + 0.5!r} "
                             f"{key[5] + 0.5!r}")
        frame_cam.append(cam_ids[key])
    pc = dataset.points
    per_frame: list[list[tuple[float, float, int]]] = [[] for _ in frames]
    track_of: list[list[tuple[int, int]]] = [[] for _ in range(len(pc))] if pc is not None else []
    if pc is not None and pc.obs_point is not None:
        for p, fi, (x, y) in zip(pc.obs_point.tolist(), pc.obs_frame.tolist(), pc.obs_xy.double().tolist()):
            track_of[p].append((fi + 1, len(per_frame[fi])))
            per_frame[fi].append((x + 0.5, y + 0.5, p + 1))
    has_depth, has_labels = make_side_dirs(out, frames)
    img_lines = ["# Image list with two lines of data per image:",
                 "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
                 "#   POINTS2D[] as (X, Y, POINT3D_ID)"]
    for i, f in enumerate(frames):
        name = f"{i:04d}"
        w2c = f.camera.world_to_cam.double().numpy()
        q = matrix_to_quat_wxyz(orthonormalize(w2c[:3, :3], tol=1e-2))
        t = w2c[:3, 3]
        img_lines.append(" ".join([str(i + 1)] + [repr(float(v)) for v in q] + [repr(float(v)) for v in t]
                                  + [str(frame_cam[i]), f"{name}.png"]))
        img_lines.append(" ".join(f"{x!r} {y!r} {pid}" for x, y, pid in per_frame[i]))
        save_png(out / "images" / f"{name}.png", to_uint8_hwc(f.image))
        if f.depth is not None:
            save_png(out / "depth" / f"{name}.png", depth_to_u16(f.depth))
        if f.labels is not None:
            save_png(out / "labels" / f"{name}.png", labels_to_u8(f.labels))
    pt_lines = ["# 3D point list with one line of data per point:",
                "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)"]
    if pc is not None:
        rgb = np.round(np.clip(pc.rgb.numpy(), 0, 1) * 255).astype(int)
        for p, (xyz, c) in enumerate(zip(pc.xyz.double().tolist(), rgb.tolist())):
            tr = " ".join(f"{a} {b}" for a, b in track_of[p])
            pt_lines.append(f"{p + 1} {xyz[0]!r} {xyz[1]!r} {xyz[2]!r} {c[0]} {c[1]} {c[2]} 0.0 {tr}".rstrip())
    atomic_write_text(model / "cameras.txt", "\n".join(cam_lines) + "\n")
    atomic_write_text(model / "images.txt", "\n".join(img_lines) + "\n")
    atomic_write_text(model / "points3D.txt", "\n".join(pt_lines) + "\n")
    if write_extras_files:
        write_extras(dataset, out, write_points=False)
    return out
