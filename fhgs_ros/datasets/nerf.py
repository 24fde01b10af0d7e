"""NeRF ``transforms.json`` datasets (Blender / instant-ngp / nerfstudio variants) and a writer.

Conventions handled once, here:
- ``transform_matrix`` is camera-to-world with OpenGL camera axes (x right, y up, z backward);
  it is converted to an OpenCV world-to-camera (y and z flipped). The world frame is kept.
- Principal points in NeRF files use the pixel-corner convention (nerfstudio and instant-ngp
  shoot rays through pixel + 0.5; Blender's implicit cx is w/2): ``cx_opencv = cx - 0.5``.
- Intrinsics: ``fl_x``/``fl_y`` (``fl_y`` defaults to ``fl_x``) or ``camera_angle_x``
  (+ optional ``camera_angle_y``); ``cx``/``cy`` default to the image centre; ``w``/``h`` default
  to the image file's size. Every key may be top-level or per frame (per frame wins).
- Lens distortion ``k1 k2 k3 k4 p1 p2`` (instant-ngp/nerfstudio OPENCV): images are undistorted to
  the pinhole camera with the same intrinsics (border pixels replicated, ``Frame.mask`` False there).
  Fisheye models (``camera_model: OPENCV_FISHEYE``) are rejected.
- ``file_path`` with or without extension, relative to the JSON's folder. RGBA images are
  composited over white (``background``) and their alpha becomes ``Frame.mask``.
- Optional per-frame ``depth_file_path`` (16-bit PNG scaled by top-level
  ``depth_unit_scale_factor``, default 0.001 = millimetres; or .npy metres), or ``depth/<stem>.png``;
  ``label_file_path`` or ``labels/<stem>.png``.
- Blender splits: a folder with ``transforms_train.json`` / ``_val`` / ``_test`` and no
  ``transforms.json`` loads all three in that order (``meta['splits']`` holds the index ranges).
- Extras (written by our synthetic generator and :func:`write_nerf`): ``scene.json`` (label
  names), ``gt_mesh.ply``, ``gt_points.ply``, ``points3d.ply`` + ``tracks.npz``; nerfstudio's
  top-level ``ply_file_path`` is honoured for the points.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from fhgs_ros.datasets.base import Dataset, DatasetError, Frame
from fhgs_ros.core.camera import Intrinsics
from fhgs_ros.core.geometry import opencv_w2c_to_opengl_c2w, opengl_c2w_to_opencv_w2c
from fhgs_ros.datasets.common import (make_side_dirs, DEPTH_SCALE_MM, check_size, depth_to_u16,
                                      err, find_file, find_side_file, get_matrix, get_number, load_depth,
                                      load_extras, load_labels, load_rgb, make_camera, read_json, resize_image, scale_tracks,
                                      scale_factor, to_uint8_hwc, labels_to_u8, undistort_frame, write_extras)

_INTR_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y",
              "k1", "k2", "k3", "k4", "p1", "p2")
_SPLITS = ("train", "val", "test")


def _resolve(path: Path) -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.exists():
        raise DatasetError(f"{path}: dataset path does not exist")
    if (path / "transforms.json").is_file():
        return [path / "transforms.json"]
    splits = [path / f"transforms_{s}.json" for s in _SPLITS if (path / f"transforms_{s}.json").is_file()]
    if splits:
        return splits
    raise DatasetError(f"{path / 'transforms.json'}: file not found")


def load_nerf(path: str | Path, downscale: float = 1.0, background: float = 1.0, load_images: bool = True) -> Dataset:
    """Load a NeRF-style dataset (folder or ``transforms*.json`` file) with OpenCV cameras.

    ``downscale``: 2 (or 0.5) halves the resolution (images area-averaged, depth/labels nearest,
    intrinsics scaled). Pre-shrunk ``images_<N>/`` folders are used when they exist.
    """
    files = _resolve(Path(path))
    factor = scale_factor(downscale)
    frames: list[Frame] = []
    sizes: list[tuple[int, int]] = []
    splits = {}
    for tf in files:
        start = len(frames)
        fr, sz = _load_file(tf, factor, background, load_images)
        frames += fr
        sizes += sz
        splits[tf.stem.replace("transforms_", "") if tf.stem != "transforms" else "all"] = list(range(start, len(frames)))
    if not frames:
        raise err(files[0], "frames", "is empty (no images)")
    root = files[0].parent
    ds = Dataset(frames, root)
    ds.meta["format"] = "nerf"
    ds.meta["source"] = [str(f) for f in files]
    if len(files) > 1:
        ds.meta["splits"] = splits
    meta0 = read_json(files[0])
    ply_rel = meta0.get("ply_file_path") if isinstance(meta0, dict) else None
    if isinstance(ply_rel, str) and ply_rel and Path(ply_rel).name != "points3d.ply" and (root / ply_rel).is_file():
        from fhgs_ros.datasets.common import _ply_points
        from fhgs_ros.core.ply import PlyError, read_ply
        try:
            ds.points = _ply_points(read_ply(root / ply_rel), root / ply_rel)
        except (PlyError, OSError) as exc:
            raise DatasetError(f"{root / ply_rel}: cannot read PLY ({exc})") from None
    load_extras(ds, root)
    if ds.points is not None and ds.points.obs_xy is not None and factor != 1.0:
        scale_tracks(ds, sizes)
    return ds


def _load_file(tf: Path, factor: float, background: float, load_images: bool):
    """(frames, original (w, h) per frame) of one transforms file."""
    meta = read_json(tf)
    if not isinstance(meta, dict):
        raise err(tf, "", "must contain a JSON object")
    if "frames" not in meta:
        raise err(tf, "frames", "is missing")
    fl = meta["frames"]
    if not isinstance(fl, list):
        raise err(tf, "frames", "must be a list")
    root = tf.parent
    model = str(meta.get("camera_model", "OPENCV")).upper()
    if "FISHEYE" in model or model in ("EQUIRECTANGULAR", "SPHERICAL"):
        raise err(tf, "camera_model", f"'{model}' is not supported (pinhole / OPENCV only)")
    depth_scale = get_number(meta, "depth_unit_scale_factor", tf, "", default=DEPTH_SCALE_MM, positive=True)
    frames, sizes = [], []
    for i, fr in enumerate(fl):
        where = f"frames[{i}]"
        if not isinstance(fr, dict):
            raise err(tf, where, "must be an object")
        if "file_path" not in fr or not isinstance(fr["file_path"], str):
            raise err(tf, f"{where}.file_path", "is missing")
        if "transform_matrix" not in fr:
            raise err(tf, f"{where}.transform_matrix", "is missing")
        c2w = get_matrix(fr["transform_matrix"], (4, 4), tf, f"{where}.transform_matrix")
        if np.abs(c2w[3] - [0, 0, 0, 1]).max() > 1e-6:
            raise err(tf, f"{where}.transform_matrix", "last row must be [0, 0, 0, 1]")
        intr = {k: fr[k] if k in fr else meta.get(k) for k in _INTR_KEYS}
        src = "frames[%d]" % i

        def num(k, default=..., positive=False):
            d = fr if k in fr else meta
            w = src if k in fr else ""
            return get_number(d if k in d else {}, k, tf, w, default=default, positive=positive)

        rel = fr["file_path"]
        img_path = find_file(root, rel)
        if img_path is None:
            raise err(tf, f"{where}.file_path", f"image '{root / rel}' not found")
        stem = Path(rel).name
        for e in (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG", ".exr"):
            if stem.endswith(e):
                stem = stem[: -len(e)]
        w_decl = num("w", default=None, positive=True)
        h_decl = num("h", default=None, positive=True)
        if w_decl is None or h_decl is None:
            from fhgs_ros.datasets.common import image_size
            w0, h0 = image_size(img_path, tf, f"{where}.file_path")
            w_decl = w_decl or float(w0)
            h_decl = h_decl or float(h0)
        w0, h0 = int(round(w_decl)), int(round(h_decl))
        if intr["fl_x"] is not None:
            fx = num("fl_x", positive=True)
        elif intr["camera_angle_x"] is not None:
            ax = num("camera_angle_x", positive=True)
            if ax >= math.pi:
                raise err(tf, "camera_angle_x", f"must be below pi, got {ax}")
            fx = 0.5 * w0 / math.tan(0.5 * ax)
        else:
            raise err(tf, f"{where}.fl_x", "is missing (need fl_x or camera_angle_x)")
        if intr["fl_y"] is not None:
            fy = num("fl_y", positive=True)
        elif intr["camera_angle_y"] is not None and intr["fl_x"] is None:
            ay = num("camera_angle_y", positive=True)
            fy = 0.5 * h0 / math.tan(0.5 * ay)
        else:
            fy = fx
        cx = num("cx", default=w0 / 2.0) - 0.5
        cy = num("cy", default=h0 / 2.0) - 0.5
        if num("k4", 0.0) != 0.0:  # instant-ngp's k4 belongs to its fisheye model
            raise err(tf, f"{where}.k4", "is only used by fisheye models, which are not supported")
        dist = Intrinsics.brown(w0, h0, fx, fy, cx, cy, k1=num("k1", 0.0), k2=num("k2", 0.0), k3=num("k3", 0.0),
                                p1=num("p1", 0.0), p2=num("p2", 0.0))
        w2c = opengl_c2w_to_opencv_w2c(c2w)
        cam = make_camera(tf, f"{where} camera", pose_field=f"{where}.transform_matrix",
                          intr_field=f"{where} intrinsics (fl_x, fl_y, cx, cy, w, h)", width=w0, height=h0, fx=fx, fy=fy, cx=cx, cy=cy,
                          world_to_cam=torch.from_numpy(w2c).float(), name=stem)
        if factor != 1.0:
            cam = cam.scaled(factor)
        size = (cam.width, cam.height)
        image = torch.zeros(3, cam.height, cam.width)
        mask = None
        if load_images:
            src_path = img_path
            if factor != 1.0:
                alt = _prescaled(root, rel, factor)
                if alt is not None:
                    src_path = alt
            image, mask, got = load_rgb(src_path, tf, f"{where}.file_path", background=background)
            if src_path is img_path:
                check_size(tf, f"{where}.w/h", img_path, got, (w0, h0))
            image, mask = resize_image(image, mask, size)
        depth = labels = None
        dp = fr.get("depth_file_path")
        dpath = find_file(root, dp, exts=(".png", ".npy", ".tif", ".tiff")) if isinstance(dp, str) else None
        if isinstance(dp, str) and dpath is None:
            raise err(tf, f"{where}.depth_file_path", f"file '{root / dp}' not found")
        dpath = dpath or find_side_file(root, "depth", stem)
        if dpath is not None and load_images:
            depth = load_depth(dpath, tf, f"{where}.depth_file_path", scale=depth_scale, size=size)
        lp = fr.get("label_file_path") or fr.get("mask_path_semantic")
        lpath = find_file(root, lp, exts=(".png",)) if isinstance(lp, str) else None
        if isinstance(lp, str) and lpath is None:
            raise err(tf, f"{where}.label_file_path", f"file '{root / lp}' not found")
        lpath = lpath or find_side_file(root, "labels", stem, exts=(".png",))
        if lpath is not None and load_images:
            labels = load_labels(lpath, tf, f"{where}.label_file_path", size=size)
        if dist.has_distortion and load_images:  # same pinhole intrinsics before and after
            image, valid = undistort_frame(image, dist, cam)
            mask = valid if mask is None else (mask & valid)
            if depth is not None:
                depth = undistort_frame(depth[None], dist, cam, nearest=True)[0][0]
            if labels is not None:
                labels = undistort_frame(labels[None].double(), dist, cam, nearest=True)[0][0].long()
        frames.append(Frame(cam, image, path=str(img_path.relative_to(root) if img_path.is_relative_to(root)
                                                 else img_path), depth=depth, labels=labels, mask=mask))
        sizes.append((w0, h0))
    return frames, sizes


def _prescaled(root: Path, rel: str, factor: float) -> Path | None:
    """``images_<N>/<name>`` (nerfstudio / 3DGS convention) for an integer downscale N, if present."""
    n = 1.0 / factor
    if abs(n - round(n)) > 1e-6:
        return None
    parts = Path(rel.replace("\\", "/")).parts
    parts = [p for p in parts if p not in (".",)]
    if len(parts) < 2:
        return None
    alt = find_file(root, str(Path(f"{parts[0]}_{int(round(n))}", *parts[1:])))
    return alt


def write_nerf(dataset: Dataset, out_dir: str | Path, write_extras_files: bool = True) -> Path:
    """Write ``dataset`` as a NeRF folder: transforms.json (OpenGL c2w, NeRF pixel convention),
    images/NNNN.png, depth/NNNN.png (uint16 mm, when present), labels/NNNN.png (when present), and
    the extras (scene.json, gt_mesh.ply, gt_points.ply, points3d.ply + tracks.npz). Returns the folder."""
    from fhgs_ros.core.fileio import atomic_write_json, save_png

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    frames = dataset.frames
    if not frames:
        raise DatasetError(f"{out}: cannot write a dataset with no frames")
    intr = [(f.camera.width, f.camera.height, f.camera.fx, f.camera.fy, f.camera.cx, f.camera.cy) for f in frames]
    shared = all(x == intr[0] for x in intr)

    def intr_dict(c) -> dict:
        return {"fl_x": float(c.fx), "fl_y": float(c.fy), "cx": float(c.cx) + 0.5, "cy": float(c.cy) + 0.5,
                "w": int(c.width), "h": int(c.height)}

    meta: dict = {"camera_model": "OPENCV"}
    if shared:
        meta.update(intr_dict(frames[0].camera))
    meta["depth_unit_scale_factor"] = DEPTH_SCALE_MM
    has_depth, has_labels = make_side_dirs(out, frames)
    if has_labels:
        mx = max(int(f.labels.max()) for f in frames if f.labels is not None and f.labels.numel())
        if mx > 255:
            raise DatasetError(f"{out}: label ids up to {mx} do not fit 8-bit label PNGs")
    fl = []
    for i, f in enumerate(frames):
        name = f"{i:04d}"
        entry = {"file_path": f"images/{name}.png"}
        if not shared:
            entry.update(intr_dict(f.camera))
        entry["transform_matrix"] = opencv_w2c_to_opengl_c2w(f.camera.world_to_cam.double().numpy()).tolist()
        save_png(out / "images" / f"{name}.png", to_uint8_hwc(f.image))
        if f.depth is not None:
            save_png(out / "depth" / f"{name}.png", depth_to_u16(f.depth))
            entry["depth_file_path"] = f"depth/{name}.png"
        if f.labels is not None:
            save_png(out / "labels" / f"{name}.png", labels_to_u8(f.labels))
            entry["label_file_path"] = f"labels/{name}.png"
        fl.append(entry)
    if dataset.points is not None and write_extras_files:
        meta["ply_file_path"] = "points3d.ply"
    meta["frames"] = fl
    atomic_write_json(out / "transforms.json", meta)
    if write_extras_files:
        write_extras(dataset, out)
    return out
