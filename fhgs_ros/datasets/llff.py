"""LLFF datasets: ``poses_bounds.npy`` + ``images[_N]/`` (+ optional ``masks[_N]/``).

``poses_bounds.npy`` is a float array (N, 17), one row per image in sorted file-name order: a
row-major 3x5 matrix ``[R | t | hwf]`` with ``R`` the camera axes in world coordinates in LLFF order
[down, right, backwards] (camera-to-world), ``t`` the camera centre and ``hwf`` = (height, width,
focal) in full-resolution pixels, then the near / far scene depth bounds of the view (kept in
``Dataset.meta['bounds']``). Converted once here to OpenCV axes: c2w = [R1, R0, -R2 | t]. The
principal point is the image centre (LLFF assumes it): cx = W / 2 - 0.5 in the OpenCV pixel convention.
Distortion: none (LLFF keeps only the focal length).

Images: ``images_<N>/`` for an integer ``downscale`` N when present, else the smallest image folder
at least that large, resized (area average). Masks: ``masks<same suffix>/`` or ``masks/``
(:mod:`fhgs_ros.datasets.masks`); ``Frame.mask`` is True on the object. No 3-D points and no depth:
``fhgs-map`` seeds such a dataset from multi-view stereo (``seed.source`` auto -> mvs).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from fhgs_ros.datasets.base import Dataset, DatasetError, Frame
from fhgs_ros.datasets.common import IMAGE_EXTS, err, image_size, load_rgb, make_camera, resize_image, scale_factor
from fhgs_ros.datasets.masks import find_mask, load_mask, mask_folder

log = logging.getLogger(__name__)


def _image_folders(root: Path) -> list[Path]:
    out = [p for p in sorted(root.iterdir()) if p.is_dir() and (p.name == "images" or p.name.startswith("images_"))]
    return [p for p in out if any(q.suffix in IMAGE_EXTS or q.suffix.lower() in (".jpg", ".jpeg", ".png")
                                  for q in p.iterdir())]


def _list_images(folder: Path) -> list[Path]:
    return sorted(q for q in folder.iterdir() if q.is_file() and q.suffix.lower() in (".jpg", ".jpeg", ".png"))


def load_llff(path: str | Path, downscale: float = 1.0, load_images: bool = True) -> Dataset:
    """Load an LLFF folder (or its ``poses_bounds.npy``) with OpenCV cameras, images and masks."""
    p = Path(path)
    root = p.parent if p.is_file() else p
    f_poses = root / "poses_bounds.npy"
    if not f_poses.is_file():
        raise DatasetError(f"{f_poses}: file not found")
    try:
        arr = np.load(f_poses)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{f_poses}: cannot read ({exc})") from None
    if arr.ndim != 2 or arr.shape[1] != 17:
        raise err(f_poses, "", f"must be an (N, 17) array, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise err(f_poses, "", "contains NaN or Inf")
    folders = _image_folders(root)
    if not folders:
        raise DatasetError(f"{root}: no images/ or images_<N>/ folder")
    w_full = float(arr[0, 9])
    factor = scale_factor(downscale)
    want_w = max(1, int(round(w_full * factor)))
    sized = []
    for f in folders:
        imgs = _list_images(f)
        if len(imgs) != len(arr):
            continue
        w, _ = image_size(imgs[0], imgs[0], "size")
        sized.append((w, f, imgs))
    if not sized:
        raise err(f_poses, "", f"{len(arr)} poses, but no image folder of {root} holds {len(arr)} images")
    big = sorted([s for s in sized if s[0] >= want_w], key=lambda s: s[0])
    w_img, folder, images = big[0] if big else max(sized, key=lambda s: s[0])
    if not big:
        log.warning("%s: largest images are %d px wide, below the requested %d; using them as they are", root, w_img,
                    want_w)
    mdir = mask_folder(root, folder.name)
    frames: list[Frame] = []
    bounds = []
    for i, (row, ipath) in enumerate(zip(arr, images)):
        m = row[:15].reshape(3, 5)
        h0, w0, f0 = m[:, 4]
        r = m[:, :3]
        c2w = np.eye(4)
        c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = r[:, 1], r[:, 0], -r[:, 2], m[:, 3]
        u, _, vt = np.linalg.svd(c2w[:3, :3])
        c2w[:3, :3] = u @ vt
        w2c = np.linalg.inv(c2w)
        s = (want_w if big else w_img) / w0
        w, h = int(round(w0 * s)), int(round(h0 * s))
        field = f"row {i} ('{ipath.name}')"
        cam = make_camera(f_poses, field, width=w, height=h, fx=float(f0 * s), fy=float(f0 * s), cx=w / 2 - 0.5, cy=h / 2 - 0.5,
                          world_to_cam=torch.from_numpy(w2c).float(), name=ipath.stem)
        image = torch.zeros(3, h, w)
        mask = None
        if load_images:
            image, mask, _ = load_rgb(ipath, ipath, "image", size=(w, h))
            image, mask = resize_image(image, mask, (w, h))
            mp = find_mask(mdir, ipath.name)
            if mp is not None:
                mk = load_mask(mp, (w, h), mp)
                mask = mk if mask is None else mask & mk
        frames.append(Frame(cam, image, path=str(ipath.relative_to(root)), mask=mask))
        bounds.append(row[15:17].tolist())
    ds = Dataset(frames, root)
    ds.meta.update(format="llff", source=str(f_poses), images=folder.name,
                   masks=mdir.name if mdir is not None else None, bounds=bounds)
    return ds


__all__ = ["load_llff"]
