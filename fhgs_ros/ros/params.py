"""Node parameters: the ``node:`` section of config/fhgs.yaml and the flat ROS parameter list.

ROS-free. The node declares one ROS parameter per leaf of the full configuration
(``mapper.*``, ``features.*``, ``seed.*``, ``offline.*`` from ``fhgs_ros.config`` and ``node.*``
from :class:`NodeConfig` here), each with its default and a description taken from the comment
beside it in config/fhgs.yaml (the documented parameter file). Values from
``--ros-args --params-file`` are validated by :func:`build_config`: a wrong type, a value out of
range or an unknown parameter raises ``ConfigError`` naming the key and the reason.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

from fhgs_ros.config import ConfigError, FHGSConfig, from_dict


@dataclass
class NodeConfig:
    """Parameters of the ROS node only (``node:`` section). Units in brackets."""

    # frames and pose
    map_frame: str = "map"                  # fixed frame of the map, the published cloud/mesh and requests
    pose_source: str = "tf"                 # tf (map_frame -> image frame) | pose (PoseStamped) | odom (Odometry)
    camera_frame: str = ""                  # TF: optical frame to look up ("" = the image's header.frame_id)
    camera_extrinsic: list = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    # ^ pose/odom: pose of the camera optical frame in the tracked body frame [x y z qx qy qz qw]
    tf_backend: str = "auto"                # auto (tf2_ros if installed, else own listener) | tf2_ros | fhgs
    tf_cache_time: float = 10.0             # [s] TF history kept
    quat_tolerance: float = 0.01            # reject quaternions whose norm differs from 1 by more
    camera_info_file: str = ""              # calibration file used instead of the camera_info topic (ROS camera
    #                                         calibration YAML, kapture sensors.txt or COLMAP cameras.txt)
    camera_info_sensor: str = ""            # sensor / camera id inside camera_info_file ("" = the first camera)
    # synchronization
    sync_slop: float = 0.02                 # [s] max stamp difference image <-> camera_info / depth / pose
    sync_timeout: float = 1.0               # [s] wall time an image waits for its partners before it is dropped
    use_depth: bool = True                  # use depth images when they arrive (16UC1 mm or 32FC1 m)
    queue_size: int = 8                     # bounded queues (sync, frames waiting for features); drops are counted
    sensor_qos: str = "best_effort"         # image / camera_info / depth / labels subscriptions: best_effort | reliable
    # images
    max_image_long_side: int = 640          # [px] images are downscaled to this long side for mapping
    max_input_pixels: int = 8_388_608       # larger input images are rejected (decoding cost / memory)
    depth_min: float = 0.1                  # [m] valid depth range for seeding
    depth_max: float = 20.0                 # [m] (depth beyond is ignored)
    # keyframes
    kf_min_translation: float = 0.10        # [m] new keyframe after this much motion ...
    kf_min_rotation_deg: float = 10.0       # [deg] ... or this much rotation ...
    kf_max_interval: float = 5.0            # [s] ... or this long since the last one (0 = never by time)
    kf_min_interval: float = 0.0            # [s] never two keyframes closer in time than this
    max_keyframes: int = 60                 # keyframes kept for optimization (oldest dropped; mesh keeps all poses)
    # online schedule (FHGS_SPEC.md 8.9)
    steps_per_keyframe: int = 200           # iteration budget of each new keyframe: distortion after 30 %, normal
    #                                         after 70 %, densification only in the first 70 %
    step_mode: str = "continuous"           # continuous: optimize between keyframes without pause (live robot);
    #                                         budget: exactly steps_per_keyframe iterations per keyframe, then
    #                                         wait (deterministic bag replay, matches fhgs-replay --offline)
    densify: bool = True                    # adaptive density control inside each keyframe's budget
    opacity_reset: bool = False             # periodic opacity reset (off online: it blanks the live renders)
    max_new_surfels_per_keyframe: int = 4000  # cap of surfels seeded from one keyframe
    init_geometry: str = "mvs"              # keyframes without depth: mvs (stereo against earlier keyframes) | nominal
    mono_init_depth: float = 2.0            # [m] init_geometry nominal: surfels start at this depth ...
    mono_init_jitter: float = 0.5           # ... +- this (uniform), along the pixel rays
    torch_threads: int = 0                  # torch intra-op threads (0 = leave torch's default)
    idle_sleep: float = 0.02                # [s] optimizer pause when there is nothing to optimize
    # outputs
    publish_period: float = 1.0             # [s] re-render the latest keyframe view at most this often (also after each keyframe)
    render_long_side: int = 320             # [px] long side of the published renders (0 = keyframe size)
    publish_features: bool = True           # publish the raw rendered feature map (render/features)
    feature_dtype: str = "float16"          # float16 | float32 for render/features
    cloud_period: float = 2.0               # [s] map/points period (0 = off)
    cloud_max_points: int = 200_000         # subsample the published cloud above this
    cloud_features: bool = False            # add the full raw features (feat_0..) to map/points
    cloud_clusters: int = 12                # k-means clusters of the features for the 'cluster' field
    mesh_period: float = 15.0               # [s] TSDF mesh refresh period (0 = off)
    mesh_long_side: int = 160               # [px] depth render size for TSDF fusion
    mesh_max_keyframes: int = 40            # most recent keyframe poses fused
    mesh_voxel_size: float = 0.0            # [m] 0 = automatic (2DGS recipe, capped grid)
    mesh_max_triangles: int = 150_000       # Marker size cap
    diagnostics_period: float = 1.0         # [s] /diagnostics period
    # map file
    map_path: str = ""                      # autosave target and default of save_map/load_map ("" = none)
    resume: bool = True                     # load map_path at start-up when it exists
    autosave_every_keyframes: int = 10      # autosave after this many new keyframes (0 = off)
    autosave_period: float = 120.0          # [s] autosave at least this often while the map changes (0 = off)
    # queries
    query_threshold: float = 0.85           # default cosine similarity of query_feature / clicked_point
    query_max_results: int = 100_000        # cap of returned / published matches
    segment_long_side: int = 256            # [px] render size of the feature grid for segment_view
    max_request_pixels: int = 4_194_304     # render_view / query / segment views larger than this are refused


_NODE_RANGES = {
    "tf_cache_time": (0.1, None), "quat_tolerance": (1e-6, 0.5), "sync_slop": (0.0, None),
    "sync_timeout": (0.01, None), "queue_size": (1, 1000), "max_image_long_side": (0, 16384),
    "max_input_pixels": (1, None), "depth_min": (0.0, None), "depth_max": (0.0, None),
    "kf_min_translation": (0.0, None), "kf_min_rotation_deg": (0.0, 360.0), "kf_max_interval": (0.0, None),
    "kf_min_interval": (0.0, None), "max_keyframes": (1, None), "steps_per_keyframe": (1, None),
    "max_new_surfels_per_keyframe": (0, None), "mono_init_depth": (1e-3, None), "mono_init_jitter": (0.0, None),
    "torch_threads": (0, 256), "idle_sleep": (0.0, 10.0), "publish_period": (0.0, None),
    "render_long_side": (0, 8192), "cloud_period": (0.0, None), "cloud_max_points": (1, None),
    "cloud_clusters": (1, 256), "mesh_period": (0.0, None), "mesh_long_side": (16, 4096),
    "mesh_max_keyframes": (1, None), "mesh_voxel_size": (0.0, None), "mesh_max_triangles": (1, None),
    "diagnostics_period": (0.05, None), "autosave_every_keyframes": (0, None), "autosave_period": (0.0, None),
    "query_threshold": (-1.0, 1.0), "query_max_results": (1, None), "segment_long_side": (16, 4096),
    "max_request_pixels": (1, None),
}
_NODE_CHOICES = {"pose_source": ("tf", "pose", "odom"), "tf_backend": ("auto", "tf2_ros", "fhgs"),
                 "feature_dtype": ("float16", "float32"), "sensor_qos": ("best_effort", "reliable"),
                 "step_mode": ("continuous", "budget"), "init_geometry": ("mvs", "nominal")}


def validate_node(cfg: NodeConfig, prefix: str = "node") -> NodeConfig:
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        key = f"{prefix}.{f.name}"
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{key}: {v} is not a finite number")
        if f.name in _NODE_RANGES and isinstance(v, (int, float)) and not isinstance(v, bool):
            lo, hi = _NODE_RANGES[f.name]
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                raise ConfigError(f"{key}: {v} is outside the valid range [{lo}, {hi if hi is not None else 'inf'}]")
        if f.name in _NODE_CHOICES and v not in _NODE_CHOICES[f.name]:
            raise ConfigError(f"{key}: {v!r} is not one of {', '.join(_NODE_CHOICES[f.name])}")
    ext = cfg.camera_extrinsic
    if len(ext) != 7 or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in ext):
        raise ConfigError(f"{prefix}.camera_extrinsic: expected 7 finite numbers [x y z qx qy qz qw], got {ext!r}")
    if abs(math.sqrt(sum(float(x) ** 2 for x in ext[3:])) - 1.0) > 1e-3:
        raise ConfigError(f"{prefix}.camera_extrinsic: the quaternion (last 4 values) is not normalized")
    if cfg.depth_max <= cfg.depth_min:
        raise ConfigError(f"{prefix}.depth_max: must be larger than depth_min ({cfg.depth_min})")
    return cfg


def node_from_dict(data: dict, prefix: str = "node") -> NodeConfig:
    hints = typing.get_type_hints(NodeConfig)
    names = {f.name for f in dataclasses.fields(NodeConfig)}
    kw = {}
    for k, v in (data or {}).items():
        key = f"{prefix}.{k}"
        if k not in names:
            raise ConfigError(f"{key}: unknown parameter (known: {', '.join(sorted(names))})")
        tp = hints[k]
        if tp is bool:
            if not isinstance(v, bool):
                raise ConfigError(f"{key}: expected true/false, got {v!r}")
        elif tp is int:
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{key}: expected an integer, got {v!r}")
        elif tp is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{key}: expected a number, got {v!r}")
            v = float(v)
        elif tp is str:
            if not isinstance(v, str):
                raise ConfigError(f"{key}: expected a string, got {v!r}")
        elif tp is list:
            if not isinstance(v, (list, tuple)):
                raise ConfigError(f"{key}: expected a list, got {v!r}")
            v = [float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else x for x in v]
        kw[k] = v
    return validate_node(NodeConfig(**kw), prefix)


# ----------------------------------------------------------------------------- flat parameter list
def _flatten(obj, prefix: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(v):
            out.update(_flatten(v, key))
        elif isinstance(v, tuple):
            out[key] = list(v)
        else:
            out[key] = v
    return out


def default_parameters() -> dict[str, object]:
    """Every parameter the node declares -> its default (dotted names, lists for tuples)."""
    d = _flatten(FHGSConfig(), "")
    d.update(_flatten(NodeConfig(), "node"))
    return d


def unflatten(flat: dict[str, object]) -> dict:
    out: dict = {}
    for k, v in flat.items():
        cur = out
        parts = k.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = v
    return out


def _restore_types(flat: dict[str, object]) -> dict[str, object]:
    """ROS parameter values -> the YAML-like values the validators expect (lists for tuples)."""
    out = {}
    for k, v in flat.items():
        if isinstance(v, (tuple,)) or type(v).__name__ == "array":
            v = list(v)
        out[k] = v
    return out


def build_config(flat: dict[str, object]) -> tuple[FHGSConfig, NodeConfig]:
    """Validate flat parameter values (dotted names) -> (FHGSConfig, NodeConfig). Raises ConfigError.

    ``features.sam_model`` may name any registered SAM architecture (for example the tiny
    test encoder ``vit_tiny``), not only the official ones that fhgs_ros.config accepts.
    """
    flat = _restore_types(flat)
    defaults = default_parameters()
    for k in flat:
        if k not in defaults:
            raise ConfigError(f"{k}: unknown parameter")
    nested = unflatten(flat)
    node = node_from_dict(nested.pop("node", {}))
    feats = nested.get("features", {})
    model = feats.get("sam_model")
    official = ("vit_b", "vit_l", "vit_h")
    if isinstance(model, str) and model not in official:
        known = _sam_arch_names()
        if model not in known:
            raise ConfigError(f"features.sam_model: {model!r} is not one of {', '.join(known)}")
        feats = dict(feats, sam_model="vit_b")
        nested["features"] = feats
    try:
        cfg = from_dict(FHGSConfig, nested)
    except TypeError as exc:  # dataclass construction with a bad nested value
        raise ConfigError(str(exc)) from None
    if isinstance(model, str) and model not in official:
        cfg.features.sam_model = model
    return cfg, node


def _sam_arch_names() -> list[str]:
    try:
        from fhgs_ros.features.sam import SAM_ARCHS
        return sorted(SAM_ARCHS)
    except ImportError:  # pragma: no cover
        return ["vit_b", "vit_h", "vit_l"]


# ----------------------------------------------------------------------------- descriptions
_COMMENT = re.compile(r"^(\s*)([A-Za-z_][A-Za-z0-9_]*)\s*:(.*?)(?:#\s?(.*))?$")


def yaml_descriptions(path: str | Path | None) -> dict[str, str]:
    """Dotted key -> the comment beside it in a documented parameter YAML (indentation based).

    Comment lines that follow a key line and start deeper than the key continue its description.
    """
    if path is None:
        return {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return {}
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    last_key = None
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            if last_key is not None and line.find("#") > 10:
                out[last_key] = (out.get(last_key, "") + " " + stripped.lstrip("#").strip()).strip()
            continue
        m = _COMMENT.match(line)
        if not m:
            last_key = None
            continue
        indent, key, value, comment = len(m.group(1)), m.group(2), m.group(3), m.group(4)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parts = [k for _, k in stack] + [key]
        dotted = ".".join(p for p in parts if p not in ("fhgs_node", "ros__parameters"))
        if not value.strip() and comment is None:
            stack.append((indent, key))
            last_key = None
            continue
        if not value.strip():
            stack.append((indent, key))
        if comment:
            out[dotted] = comment.strip()
        last_key = dotted
    return out


def node_field_comments() -> dict[str, str]:
    """node.<field> -> the comment beside the field in this module's NodeConfig source."""
    import inspect

    out: dict[str, str] = {}
    try:
        src = inspect.getsource(NodeConfig).splitlines()
    except (OSError, TypeError):  # pragma: no cover
        return out
    last = None
    for line in src:
        m = re.match(r"^\s{4}([a-z_][a-z0-9_]*)\s*:\s*[^#]*#\s?(.*)$", line)
        if m:
            last = f"node.{m.group(1)}"
            out[last] = m.group(2).strip()
            continue
        m2 = re.match(r"^\s{4}#(?:\s*\^|\s{2,})\s*(.*)$", line)
        if m2 and last:
            out[last] = (out.get(last, "") + " " + m2.group(1).strip()).strip()
            continue
        m3 = re.match(r"^\s{4}([a-z_][a-z0-9_]*)\s*:", line)
        if m3:
            last = f"node.{m3.group(1)}"
    return out


_FALLBACK = {
    "mapper.densify_until_iter": "last iteration of adaptive density control (offline schedule)",
    "mapper.densify_every": "densify every N iterations",
    "mapper.density.split_children": "children of a split surfel",
    "mapper.lrs.position_final": "[x extent] final Adam lr of the centres",
    "mapper.lrs.position_max_steps": "iterations of the exponential decay of the position lr",
    "mapper.lrs.sh_dc": "Adam lr of the SH DC colour",
    "mapper.lrs.sh_rest": "Adam lr of the higher SH coefficients",
    "mapper.lrs.opacity": "Adam lr of the opacity logit",
    "mapper.lrs.scaling": "Adam lr of the log-scales",
    "mapper.lrs.rotation": "Adam lr of the quaternions",
    "seed.orient_from_normals": "align depth-seeded surfels with depth normals",
    "offline.log_every": "fhgs-map progress log period [iterations]",
}


def describe_parameters(yaml_path: str | Path | None) -> dict[str, str]:
    """Dotted name -> description for every declared parameter (falls back to a generic text)."""
    desc = dict(_FALLBACK)
    desc.update(node_field_comments())
    desc.update(yaml_descriptions(yaml_path))
    out = {}
    for k in default_parameters():
        out[k] = desc.get(k) or f"see config/fhgs.yaml ({k})"
    return out
