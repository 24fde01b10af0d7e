"""Dataset loaders and the synthetic labelled scene (numpy/PyTorch only, no ROS).

``load_dataset(path, downscale=1)`` detects the format:
- NeRF: ``transforms.json`` (or ``transforms_train/val/test.json``) -> :func:`load_nerf`;
- COLMAP: ``sparse/0/``, ``sparse/`` or the folder itself holding ``cameras.txt``/``cameras.bin``
  -> :func:`load_colmap`;
- OpenSfM: ``reconstruction.json`` / ``reconstruction*.json`` -> :func:`load_opensfm`;
- LLFF: ``poses_bounds.npy`` + ``images[_N]/`` (+ ``masks[_N]/``) -> :func:`load_llff`.
A path to one of those files works too. Every loader returns a :class:`Dataset` whose cameras
are OpenCV pinhole cameras (converted once, here) and raises :class:`DatasetError` naming the
file and field for bad input.

Writers for round trips: :func:`write_nerf`, :func:`write_colmap_text`. Synthetic scene:
:func:`fhgs_ros.datasets.synthetic.generate_scene`.
"""

from __future__ import annotations

from pathlib import Path

from fhgs_ros.datasets.base import Dataset, DatasetError, Frame, PointCloud
from fhgs_ros.datasets.colmap import load_colmap, write_colmap_text
from fhgs_ros.datasets.llff import load_llff
from fhgs_ros.datasets.nerf import load_nerf, write_nerf
from fhgs_ros.datasets.opensfm import load_opensfm

__all__ = ["Dataset", "DatasetError", "Frame", "PointCloud", "detect_format", "load_dataset", "load_nerf",
           "load_colmap", "load_opensfm", "load_llff", "write_nerf", "write_colmap_text"]


def detect_format(path: str | Path) -> str:
    """'nerf', 'colmap', 'opensfm' or 'llff' for a dataset folder or file; DatasetError otherwise."""
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p}: dataset path does not exist")
    if p.is_file():
        n = p.name
        if n.startswith("transforms") and n.endswith(".json"):
            return "nerf"
        if n.startswith("reconstruction") and n.endswith(".json"):
            return "opensfm"
        if n == "poses_bounds.npy":
            return "llff"
        if n in ("cameras.txt", "cameras.bin", "images.txt", "images.bin", "points3D.txt", "points3D.bin"):
            return "colmap"
        raise DatasetError(f"{p}: unknown dataset file (expected transforms*.json, reconstruction*.json or a "
                           f"COLMAP cameras/images/points3D file)")
    if (p / "transforms.json").is_file() or any((p / f"transforms_{s}.json").is_file() for s in ("train", "val", "test")):
        return "nerf"
    for cand in (p, p / "sparse" / "0", p / "sparse", p / "colmap" / "sparse" / "0"):
        if (cand / "cameras.txt").is_file() or (cand / "cameras.bin").is_file():
            return "colmap"
    if (p / "reconstruction.json").is_file() or any(p.glob("reconstruction*.json")):
        return "opensfm"
    if (p / "poses_bounds.npy").is_file():
        return "llff"
    raise DatasetError(f"{p}: no dataset found (looked for transforms.json, sparse/0/cameras.txt|bin, "
                       f"cameras.txt|bin, reconstruction*.json, poses_bounds.npy)")


def load_dataset(path: str | Path, downscale: float = 1) -> Dataset:
    """Load a dataset folder of any supported format (see module docstring).

    ``downscale``: image size divisor; 2 and 0.5 both mean half resolution, 1 keeps it.
    """
    fmt = detect_format(path)
    loader = {"nerf": load_nerf, "colmap": load_colmap, "opensfm": load_opensfm, "llff": load_llff}[fmt]
    try:
        return loader(path, downscale=downscale)
    except DatasetError:
        raise
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise DatasetError(f"{path}: cannot load {fmt} dataset ({type(exc).__name__}: {exc})") from None
