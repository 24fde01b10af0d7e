"""Parameters: one YAML (``config/fhgs.yaml``) -> nested dataclasses, with validation.

The YAML is a ROS 2 parameter file (``fhgs_node: ros__parameters: {...}``) so the node loads it
with ``--ros-args --params-file``; the offline tools read the same block. Unknown keys and
wrongly-typed values are rejected with the dotted key name and a reason.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fhgs_ros.core.mapper import MapperConfig


class ConfigError(ValueError):
    """Invalid parameter: the message names the dotted key and the reason."""


@dataclass
class FeatureConfig:
    """Feature extractor selection (see fhgs_ros.features)."""

    extractor: str = "label"          # label | sam
    dim: int = 64                     # width of label features (sam: fixed 256)
    num_labels: int = 0               # label extractor: label id count (0 = from the dataset)
    grid_long_side: int = 64          # GT grid long side in cells (SAM: 64)
    sam_model: str = "vit_b"          # vit_b | vit_l | vit_h
    sam_checkpoint: str = ""          # path to the official SAM .pth
    sam_input_size: int = 1024        # longest side fed to the encoder (lower = faster, coarser)
    device: str = "auto"              # auto | cpu | cuda
    cache_dir: str = ""               # embedding cache folder ("" = <out>/feature_cache)


@dataclass
class SeedConfig:
    """How the map is initialised."""

    source: str = "auto"              # auto: points if the dataset has them, else depth if every view has it, else mvs
    #                                   points (SfM/synthetic tracks) | depth (back-projected keyframe depth)
    #                                   | mvs (stereo depth of the posed RGB views, fhgs_ros.core.mvs)
    depth_stride: int = 4             # pixel stride when seeding from depth
    max_points: int = 20_000          # random subset of the seed points
    scale_multiplier: float = 1.0
    opacity: float = 0.1
    orient_from_normals: bool = False  # [OURS] align depth-seeded surfels with depth normals
    mvs_long_side: int = 160          # [OURS] stereo working resolution (long side, pixels)
    mvs_sources: int = 4              # [OURS] source views per stereo depth map


@dataclass
class OfflineConfig:
    iterations: int = 10_000
    holdout_every: int = 8
    downscale: float = 1.0
    log_every: int = 100
    mesh_max_voxels: int = 2_097_152  # TSDF grid cap (128^3); the voxel grows to fit the scene


@dataclass
class FHGSConfig:
    mapper: MapperConfig = field(default_factory=MapperConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    seed: SeedConfig = field(default_factory=SeedConfig)
    offline: OfflineConfig = field(default_factory=OfflineConfig)


def _coerce(value, tp, key: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, key)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from ``data``, starting from its defaults."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        if k not in names:
            raise ConfigError(f"{key}: unknown parameter (known: {', '.join(sorted(names))})")
        kwargs[k] = _coerce(v, hints[k], key)
    obj = cls(**kwargs)
    validate(obj, prefix)
    return obj


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


_RANGES = {
    "lambda_ext": (0, None), "lambda_int": (0, None), "lambda_dssim": (0, 1), "lambda_dist": (0, None),
    "lambda_normal": (0, None), "sh_degree_max": (0, 3), "densify_every": (1, None), "k": (0, None),
    "grad_threshold": (0, None), "min_opacity": (0, 1), "max_surfels": (1, None), "split_children": (2, None),
    "iterations": (0, None), "holdout_every": (0, None), "downscale": (1e-3, None), "dim": (1, None), "num_labels": (0, None),
    "grid_long_side": (1, None), "sam_input_size": (64, 4096), "depth_stride": (1, None), "max_points": (1, None),
    "opacity": (1e-4, 0.9999), "mvs_long_side": (16, 4096), "mvs_sources": (1, 16), "mesh_max_voxels": (1000, 1_073_741_824), "scale_multiplier": (1e-6, None),
}
_CHOICES = {"backend": ("auto", "native", "reference"), "extractor": ("label", "sam"),
            "sam_model": ("vit_b", "vit_l", "vit_h", "vit_tiny"), "device": ("auto", "cpu", "cuda"),
            "source": ("auto", "points", "depth", "mvs"), "mask_mode": ("ignore", "background")}


def validate(obj, prefix: str = "") -> None:
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in _RANGES and isinstance(v, (int, float)) and not isinstance(v, bool):
            lo, hi = _RANGES[f.name]
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                raise ConfigError(f"{key}: {v} is outside the valid range [{lo}, {hi if hi is not None else 'inf'}]")
        if f.name in _CHOICES and isinstance(v, str) and v not in _CHOICES[f.name]:
            raise ConfigError(f"{key}: {v!r} is not one of {', '.join(_CHOICES[f.name])}")


def ros_parameters_block(doc: dict, node_name: str = "fhgs_node") -> dict:
    """The ``ros__parameters`` mapping of a ROS 2 params file (``node`` or ``/**`` entry)."""
    for name in (node_name, f"/{node_name}", "/**"):
        if isinstance(doc.get(name), dict) and "ros__parameters" in doc[name]:
            return doc[name]["ros__parameters"] or {}
    return doc


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> FHGSConfig:
    """Defaults <- YAML file (if any) <- ``overrides`` (nested dict)."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        try:
            doc = yaml.safe_load(p.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read parameter file ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML ({exc})") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level")
        data = {k: v for k, v in ros_parameters_block(doc).items() if k in {"mapper", "features", "seed", "offline"}}
    if overrides:
        data = _merge(data, overrides)
    return from_dict(FHGSConfig, data)


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def default_config_path() -> Path | None:
    """config/fhgs.yaml of a source checkout, or the installed share/fhgs_ros/config copy."""
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "config" / "fhgs.yaml",):
        if cand.exists():
            return cand
    import sys
    cand = Path(sys.prefix) / "share" / "fhgs_ros" / "config" / "fhgs.yaml"
    return cand if cand.exists() else None
