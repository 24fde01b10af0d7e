"""Helpers shared by the loaders: checked field access, image I/O, resizing, lens distortion,
pose conversions and the optional ground-truth extras (scene.json, gt_mesh.ply, ...).

Every failure a user can cause raises :class:`DatasetError` whose message starts with the file
and names the field, e.g. ``".../transforms.json: frames[3].transform_matrix contains NaN"``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fhgs_ros.core.camera import Camera, CameraError, Intrinsics, Undistorter
from fhgs_ros.datasets.base import Dataset, DatasetError, PointCloud

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".JPG", ".JPEG", ".PNG", ".bmp", ".tif", ".tiff", ".webp")

# Optional ground-truth files shared by every format (written by the synthetic generator and the writers).
SCENE_JSON = "scene.json"
GT_MESH_PLY = "gt_mesh.ply"
GT_POINTS_PLY = "gt_points.ply"
POINTS_PLY = "points3d.ply"
TRACKS_NPZ = "tracks.npz"
DEPTH_SCALE_MM = 0.001  # 16-bit depth PNGs store millimetres


# --------------------------------------------------------------------------- errors / fields

def err(file: Any, field: str, msg: str) -> DatasetError:
    """A DatasetError 'FILE: FIELD MSG'."""
    return DatasetError(f"{file}: {field} {msg}" if field else f"{file}: {msg}")


def make_side_dirs(out: Path, frames) -> tuple[bool, bool]:
    """Create ``depth/`` and ``labels/`` under ``out`` when some frame has them; (has_depth, has_labels)."""
    has_depth = any(f.depth is not None for f in frames)
    has_labels = any(f.labels is not None for f in frames)
    if has_depth:
        (out / "depth").mkdir(exist_ok=True)
    if has_labels:
        (out / "labels").mkdir(exist_ok=True)
    return has_depth, has_labels


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read file ({exc})") from None


def get_number(d: dict, key: str, file: Any, where: str, default: Any = ..., positive: bool = False) -> float:
    """``d[key]`` as a finite float; DatasetError naming ``where.key`` otherwise."""
    field = f"{where}.{key}" if where else key
    if not isinstance(d, dict) or key not in d or d[key] is None:
        if default is ...:
            raise err(file, field, "is missing")
        return default
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise err(file, field, f"must be a number, got {type(v).__name__}")
    try:
        f = float(v)
    except ValueError:
        raise err(file, field, f"must be a number, got {v!r}") from None
    if not math.isfinite(f):
        raise err(file, field, f"is not finite ({v})")
    if positive and f <= 0:
        raise err(file, field, f"must be > 0, got {v}")
    return f


def get_matrix(value: Any, shape: tuple[int, ...], file: Any, field: str) -> np.ndarray:
    """A numeric array of exactly ``shape`` with finite entries (NaN / Inf named in the message)."""
    if value is None:
        raise err(file, field, "is missing")
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise err(file, field, f"must be a numeric array of shape {list(shape)}") from None
    if a.shape != shape:
        if len(shape) == 2 and shape == (4, 4) and a.shape == (3, 4):
            a = np.vstack([a, [0.0, 0.0, 0.0, 1.0]])
        else:
            raise err(file, field, f"must have shape {list(shape)}, got {list(a.shape)}")
    if np.isnan(a).any():
        raise err(file, field, "contains NaN")
    if not np.isfinite(a).all():
        raise err(file, field, "contains Inf")
    return a


def make_camera(file: Any, field: str, pose_field: str | None = None, intr_field: str | None = None, **kw) -> Camera:
    """Camera(...) with CameraError re-raised as DatasetError naming the file and field.

    ``pose_field`` / ``intr_field`` name the fields blamed for pose / intrinsics problems
    (default: ``field``)."""
    try:
        return Camera(**kw)
    except (CameraError, TypeError, ValueError, RuntimeError) as exc:
        msg = str(exc)
        who = field
        if pose_field and ("pose" in msg or "rotation" in msg):
            who = pose_field
        elif intr_field and ("focal" in msg or "intrinsic" in msg or "size" in msg):
            who = intr_field
        raise err(file, who, f"is invalid: {msg}") from None


def scale_factor(downscale: float) -> float:
    """Image size multiplier for a ``downscale`` argument: 2 and 0.5 both mean half resolution."""
    try:
        d = float(downscale)
    except (TypeError, ValueError):
        raise DatasetError(f"downscale must be a number, got {downscale!r}") from None
    if not math.isfinite(d) or d <= 0:
        raise DatasetError(f"downscale must be a positive number, got {downscale!r}")
    return d if d <= 1.0 else 1.0 / d


# --------------------------------------------------------------------------- lens distortion

def undistort_frame(image: torch.Tensor, sensor: Intrinsics, cam: Camera,
                    nearest: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample a (C, H, W) image of the distorted ``sensor`` (at any scale) into ``cam``'s pinhole
    with the same K: (image, (H, W) valid mask). Colour bilinear, depth/labels ``nearest``."""
    und = Undistorter(dataclasses.replace(sensor.scaled(cam.width, cam.height), fx=cam.fx, fy=cam.fy,
                                          cx=cam.cx, cy=cam.cy))
    return und.undistort_tensor(image, nearest)


# --------------------------------------------------------------------------- images

def find_file(root: Path, rel: str, exts=IMAGE_EXTS) -> Path | None:
    """``root/rel`` if it exists, else with one of ``exts`` appended; None when nothing matches."""
    rel = str(rel).replace("\\", "/")
    p = Path(rel) if os.path.isabs(rel) else root / rel
    if p.is_file():
        return p
    for e in exts:
        q = p.with_name(p.name + e)
        if q.is_file():
            return q
    return None


def image_size(path: Path, file: Any, field: str) -> tuple[int, int]:
    """(w, h) of an image file after EXIF orientation, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            try:
                orient = im.getexif().get(0x0112, 1)
            except Exception:  # noqa: BLE001 - broken EXIF: ignore orientation
                orient = 1
    except FileNotFoundError:
        raise err(file, field, f"image '{path}' not found") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise err(file, field, f"image '{path}' cannot be read ({exc})") from None
    return (h, w) if orient in (5, 6, 7, 8) else (w, h)


def open_image(path: Path, file: Any, field: str, target: tuple[int, int] | None = None):
    """PIL image (EXIF orientation applied). ``target`` (w, h) lets JPEGs decode at reduced size
    (the result is then at least ``target`` but may be smaller than the file)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        im = Image.open(path)
        if target is not None and im.format == "JPEG":
            try:
                orient = im.getexif().get(0x0112, 1)
            except Exception:  # noqa: BLE001
                orient = 1
            tw, th = (target[1], target[0]) if orient in (5, 6, 7, 8) else target
            im.draft("RGB", (int(tw), int(th)))
        im = ImageOps.exif_transpose(im)
        im.load()
        return im
    except FileNotFoundError:
        raise err(file, field, f"image '{path}' not found") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise err(file, field, f"image '{path}' cannot be read ({exc})") from None


def load_rgb(path: Path, file: Any, field: str, size: tuple[int, int] | None = None,
             background: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int]]:
    """(3, H, W) float32 RGB in [0, 1], optional (H, W) bool alpha mask, and the file's own (w, h).

    RGBA images are composited over ``background`` (grey level). With ``size`` (w, h), the image
    is resized (area average) to it.
    """
    orig = image_size(path, file, field) if size is not None else None
    im = open_image(path, file, field, target=size)
    orig = orig or im.size
    alpha = None
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        a = np.asarray(im, dtype=np.float32) / 255.0
        rgb = a[..., :3] * a[..., 3:4] + background * (1 - a[..., 3:4])
        alpha = a[..., 3]
    elif im.mode in ("I;16", "I;16B", "I", "F"):
        a = np.asarray(im, dtype=np.float32)
        a = a / (65535.0 if a.max() > 255 else 255.0)
        rgb = np.repeat(a[..., None], 3, axis=2)
    else:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    if size is not None and (rgb.shape[1], rgb.shape[0]) != tuple(size):
        rgb = _resize_float(rgb, size)
        if alpha is not None:
            alpha = _resize_float(alpha[..., None], size)[..., 0]
    img = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().clamp_(0, 1)
    mask = torch.from_numpy(alpha > 0.5) if alpha is not None else None
    return img, mask, orig


def resize_image(img: torch.Tensor, mask: torch.Tensor | None, size: tuple[int, int]):
    """Resize a (3, H, W) image (area average / antialiased) and its optional (H, W) mask to (w, h)."""
    if (img.shape[2], img.shape[1]) == tuple(size):
        return img, mask
    out = torch.from_numpy(np.ascontiguousarray(_resize_float(img.permute(1, 2, 0).numpy(), size).transpose(2, 0, 1)))
    if mask is not None:
        mask = torch.from_numpy(_resize_float(mask.float()[..., None].numpy(), size)[..., 0] > 0.5)
    return out.clamp_(0, 1), mask


def _resize_float(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-style resize of an (H, W, C) float array to (w, h) (antialiased bilinear in torch)."""
    t = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None].float()
    w, h = size
    shrink = w < a.shape[1] or h < a.shape[0]
    if shrink and a.shape[1] % w == 0 and a.shape[0] % h == 0:
        out = torch.nn.functional.avg_pool2d(t, (a.shape[0] // h, a.shape[1] // w))
    else:
        out = torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)
    return out[0].numpy().transpose(1, 2, 0)


def resize_nearest(a: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-pixel-centre resize of an (H, W) tensor to (w, h) (labels, depth)."""
    h0, w0 = a.shape
    w, h = size
    if (w, h) == (w0, h0):
        return a
    xs = torch.clamp(((torch.arange(w, dtype=torch.float64) + 0.5) * w0 / w).floor().long(), 0, w0 - 1)
    ys = torch.clamp(((torch.arange(h, dtype=torch.float64) + 0.5) * h0 / h).floor().long(), 0, h0 - 1)
    return a[ys][:, xs]


def load_depth(path: Path, file: Any, field: str, scale: float = DEPTH_SCALE_MM,
               size: tuple[int, int] | None = None) -> torch.Tensor:
    """(H, W) float32 depth in metres from a 16-bit PNG (value * scale), a float TIFF/.npy (metres)."""
    if path.suffix == ".npy":
        try:
            a = np.load(path).astype(np.float32)
        except (OSError, ValueError) as exc:
            raise err(file, field, f"depth '{path}' cannot be read ({exc})") from None
        if a.ndim == 3:
            a = a[..., 0]
    else:
        im = open_image(path, file, field)
        a = np.asarray(im)
        if a.ndim == 3:
            a = a[..., 0]
        metres = a.dtype.kind == "f"  # float TIFF: metres already
        a = a.astype(np.float32)
        if not metres:
            a = a * float(scale)
    if a.ndim != 2:
        raise err(file, field, f"depth '{path}' must be a single-channel image")
    a = np.where(np.isfinite(a) & (a > 0), a, 0.0).astype(np.float32)
    t = torch.from_numpy(a)
    return resize_nearest(t, size) if size is not None else t


def load_labels(path: Path, file: Any, field: str, size: tuple[int, int] | None = None) -> torch.Tensor:
    """(H, W) int64 label ids from an 8/16-bit single-channel (or palette) PNG."""
    im = open_image(path, file, field)
    if im.mode not in ("L", "P", "I", "I;16", "I;16B", "1"):
        raise err(file, field, f"label image '{path}' must be single-channel or palette (got mode {im.mode})")
    t = torch.from_numpy(np.asarray(im).astype(np.int64))
    return resize_nearest(t, size) if size is not None else t


def check_size(file: Any, field: str, path: Path, got: tuple[int, int], want: tuple[int, int]) -> None:
    if tuple(got) != tuple(want):
        raise err(file, field, f"image '{path}' is {got[0]}x{got[1]} but the camera says {want[0]}x{want[1]}")


def to_uint8_hwc(img: torch.Tensor) -> np.ndarray:
    """(3, H, W) float [0, 1] tensor -> (H, W, 3) uint8 (numpy: cheaper than torch for small images)."""
    a = img.detach().cpu().numpy().astype(np.float32, copy=False).transpose(1, 2, 0)
    return np.round(np.clip(np.nan_to_num(a), 0, 1) * 255).astype(np.uint8)


def labels_to_u8(labels: torch.Tensor) -> np.ndarray:
    return np.clip(labels.detach().cpu().numpy(), 0, 255).astype(np.uint8)


def depth_to_u16(depth: torch.Tensor, scale: float = DEPTH_SCALE_MM) -> np.ndarray:
    d = depth.detach().cpu().numpy().astype(np.float64) / scale
    d = np.where(np.isfinite(d), d, 0)
    return np.clip(np.round(d), 0, 65535).astype(np.uint16)


# --------------------------------------------------------------------------- extras (GT, tracks)

def load_extras(ds: Dataset, root: Path, load_points: bool = True) -> None:
    """Fill ``ds`` with the optional GT files in ``root`` (scene.json, gt_mesh.ply, gt_points.ply,
    points3d.ply + tracks.npz). Missing files are skipped; unreadable ones raise DatasetError."""
    from fhgs_ros.core.ply import PlyError, read_ply

    scene = root / SCENE_JSON
    if scene.is_file():
        s = read_json(scene)
        if not isinstance(s, dict):
            raise err(scene, "", "must contain a JSON object")
        names = s.get("label_names")
        if names is not None:
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise err(scene, "label_names", "must be a list of strings")
            ds.label_names = list(names)
        cols = s.get("label_colors")
        if cols is not None:
            ds.label_colors = [[int(c) for c in col] for col in cols]
        ds.meta["scene"] = s

    def ply(path: Path) -> dict:
        try:
            return read_ply(path)
        except PlyError as exc:
            raise DatasetError(str(exc)) from None
        except OSError as exc:
            raise DatasetError(f"{path}: cannot read PLY ({exc})") from None

    mesh = root / GT_MESH_PLY
    if mesh.is_file():
        m = ply(mesh)
        try:
            v = m["vertex"]
            verts = np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float32)
            fl = m["face"]
            key = "vertex_indices" if "vertex_indices" in fl else "vertex_index"
            faces = np.asarray(fl[key])
        except KeyError as exc:
            raise err(mesh, "", f"missing element/property {exc}") from None
        if faces.dtype == object or faces.ndim != 2 or faces.shape[1] != 3:
            raise err(mesh, "face.vertex_indices", "must be triangles")
        if faces.size and (faces.min() < 0 or faces.max() >= len(verts)):
            raise err(mesh, "face.vertex_indices", "index out of range")
        ds.gt_mesh = (torch.from_numpy(verts), torch.from_numpy(faces.astype(np.int64)))
        if "label" in fl:
            ds.gt_mesh_labels = torch.from_numpy(np.asarray(fl["label"]).astype(np.int64))

    gtp = root / GT_POINTS_PLY
    if gtp.is_file():
        ds.gt_points = _ply_points(ply(gtp), gtp)

    pts = root / POINTS_PLY
    if load_points and pts.is_file() and ds.points is None:
        pc = _ply_points(ply(pts), pts)
        tr = root / TRACKS_NPZ
        if tr.is_file():
            try:
                z = np.load(tr)
                op, of, oxy = z["obs_point"], z["obs_frame"], z["obs_xy"]
            except (OSError, ValueError, KeyError) as exc:
                raise DatasetError(f"{tr}: cannot read tracks ({exc})") from None
            if op.shape != of.shape or oxy.shape != (op.shape[0], 2):
                raise err(tr, "obs_point/obs_frame/obs_xy", "have inconsistent shapes")
            if op.size and (op.min() < 0 or op.max() >= len(pc)):
                raise err(tr, "obs_point", f"index out of range for {len(pc)} points in {POINTS_PLY}")
            if of.size and (of.min() < 0 or of.max() >= len(ds.frames)):
                raise err(tr, "obs_frame", f"index out of range for {len(ds.frames)} frames")
            if not np.isfinite(oxy).all():
                raise err(tr, "obs_xy", "contains NaN or Inf")
            pc.obs_point = torch.from_numpy(op.astype(np.int64))
            pc.obs_frame = torch.from_numpy(of.astype(np.int64))
            pc.obs_xy = torch.from_numpy(oxy.astype(np.float32))
        ds.points = pc


def _ply_points(m: dict, path: Path) -> PointCloud:
    v = m.get("vertex")
    if v is None or not all(k in v for k in "xyz"):
        raise err(path, "vertex", "needs x, y, z properties")
    xyz = np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float32)
    if not np.isfinite(xyz).all():
        raise err(path, "vertex.xyz", "contains NaN or Inf")
    if all(k in v for k in ("red", "green", "blue")):
        rgb = np.stack([v["red"], v["green"], v["blue"]], 1).astype(np.float32)
        if rgb.max(initial=0) > 1.0 or v["red"].dtype.kind in "iu":
            rgb = rgb / 255.0
    else:
        rgb = np.full_like(xyz, 0.5)
    pc = PointCloud(torch.from_numpy(xyz), torch.from_numpy(rgb))
    if "label" in v:
        pc.labels = torch.from_numpy(v["label"].astype(np.int64))
    if all(k in v for k in ("nx", "ny", "nz")):
        pc.normals = torch.from_numpy(np.stack([v["nx"], v["ny"], v["nz"]], 1).astype(np.float32))
    return pc


def write_extras(ds: Dataset, out: Path, write_points: bool = True, scene_extra: dict | None = None) -> None:
    """Write scene.json (label names/colours + ``scene_extra``), gt_mesh.ply, gt_points.ply and
    points3d.ply + tracks.npz for whatever ``ds`` has."""
    from fhgs_ros.core.fileio import atomic_write_bytes, atomic_write_json
    from fhgs_ros.core.ply import write_mesh_ply, write_point_ply

    if ds.label_names is not None or scene_extra:
        s = dict(ds.meta.get("scene", {})) if isinstance(ds.meta.get("scene"), dict) else {}
        if ds.label_names is not None:
            s["label_names"] = list(ds.label_names)
        if ds.label_colors is not None:
            s["label_colors"] = [[int(c) for c in col] for col in ds.label_colors]
        s.update(scene_extra or {})
        atomic_write_json(out / SCENE_JSON, s)
    if ds.gt_mesh is not None:
        v, f = ds.gt_mesh
        write_mesh_ply(out / GT_MESH_PLY, v.numpy(), f.numpy(),
                       None if ds.gt_mesh_labels is None else ds.gt_mesh_labels.numpy())
    if ds.gt_points is not None:
        write_point_ply(out / GT_POINTS_PLY, ds.gt_points.xyz.numpy(), ds.gt_points.rgb.numpy(),
                        _point_extra(ds.gt_points))
    if write_points and ds.points is not None:
        pc = ds.points
        write_point_ply(out / POINTS_PLY, pc.xyz.numpy(), pc.rgb.numpy(), _point_extra(pc))
        if pc.obs_point is not None:
            import io
            buf = io.BytesIO()
            np.savez(buf, obs_point=pc.obs_point.numpy().astype(np.int32),
                     obs_frame=pc.obs_frame.numpy().astype(np.int32),
                     obs_xy=pc.obs_xy.numpy().astype(np.float32))
            atomic_write_bytes(out / TRACKS_NPZ, buf.getvalue())


def _point_extra(pc: PointCloud) -> dict:
    extra = {}
    if pc.normals is not None:
        n = pc.normals.numpy().astype(np.float32)
        extra.update(nx=n[:, 0], ny=n[:, 1], nz=n[:, 2])
    if pc.labels is not None:
        extra["label"] = pc.labels.numpy().astype(np.int32)
    return extra


def scale_tracks(ds: Dataset, sizes: list[tuple[int, int]]) -> None:
    """Move track pixels from the original image sizes ``sizes`` (w, h per frame) to the frames'
    (resized) cameras: x' = (x + 0.5) * w'/w - 0.5."""
    pc = ds.points
    if pc is None or pc.obs_xy is None or pc.obs_frame is None or not len(ds.frames):
        return
    s = torch.tensor([[f.camera.width / w, f.camera.height / h] for f, (w, h) in zip(ds.frames, sizes)],
                     dtype=torch.float64)
    s = s[pc.obs_frame.long()]
    pc.obs_xy = ((pc.obs_xy.double() + 0.5) * s - 0.5).float()


def find_side_file(root: Path, folder: str, stem: str, exts=(".png", ".npy", ".tif", ".tiff", ".exr")) -> Path | None:
    """``root/folder/stem.<ext>`` for the first existing extension, else None."""
    d = root / folder
    if not d.is_dir():
        return None
    for e in exts:
        p = d / (stem + e)
        if p.is_file():
            return p
    return None
