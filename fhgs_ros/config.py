"""The parameter table of fhgs_ros: one YAML (``config/fhgs.yaml``) -> nested dataclasses.

Every parameter is declared once, on its dataclass field, with ``fhgs_ros.core.params.param``
(default, unit, range or choices, description, live flag): the core's ``MapperConfig`` (with
``ndfd``, ``density``, ``lrs``), and here ``FeatureConfig``, ``SeedConfig``, ``OfflineConfig`` and
the node's ``NodeConfig``. The YAML is a ROS 2 parameter file (``fhgs_node: ros__parameters:
{...}``) so the node loads it with ``--ros-args --params-file``; the offline tools read the same
block. One validator (``fhgs_ros.core.params``) checks the file, CLI ``--set`` overrides and ROS
parameter updates: unknown keys, wrong types and out-of-range values are rejected with the dotted
key name and a reason.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fhgs_ros.core.mapper import MapperConfig
from fhgs_ros.core.mvs import MVSConfig
from fhgs_ros.core.params import ConfigError, from_dict, param, walk  # noqa: F401  (ConfigError re-exported)


@dataclass
class FeatureConfig:
    """Feature extractor selection (see fhgs_ros.features)."""

    extractor: str = param('auto', 'auto (SAM-family checkpoint -> sam, SAM 2 checkpoint -> sam2, num_labels > 0 -> '
                           'label, else the pretrained vgg16 backbone) | label (labelled/synthetic data) | sam (SAM / '
                           'MobileSAM image encoder) | sam2 (SAM 2.1 Hiera image encoder) | vgg16',
                           choices=('auto', 'label', 'sam', 'sam2', 'vgg16'))
    dim: int = param(64, 'label / vgg16 feature width D (SAM: 256, fixed by the model)', lo=1)
    num_labels: int = param(0, 'label extractor: number of label ids (0 = from the dataset; the node needs it > 0)',
                            lo=0)
    grid_long_side: int = param(64, "GT feature grid long side [cells]; SAM's grid is 64 (1/16 of 1024 px)", lo=1)
    sam_model: str = param('vit_b', 'vit_b | vit_l | vit_h (SAM), vit_t (MobileSAM), vit_tiny (tiny test '
                           'architecture)', choices=('vit_b', 'vit_l', 'vit_h', 'vit_t', 'vit_tiny'))
    sam_checkpoint: str = param('', 'path to the official SAM / MobileSAM checkpoint (.pth)')
    sam_input_size: int = param(1024, 'encoder input long side [px]; 512 is ~4x faster on CPU, coarser', lo=64,
                                hi=4096)
    sam2_model: str = param('hiera_t', 'SAM 2.1 image encoder: hiera_t | hiera_s | hiera_b+ | hiera_l (sam2 package '
                            'configs sam2.1_hiera_{t,s,b+,l}.yaml)', choices=('hiera_t', 'hiera_s', 'hiera_b+', 'hiera_l'))
    sam2_checkpoint: str = param('', 'path to the official SAM 2.1 checkpoint (sam2.1_hiera_*.pt); empty: no SAM 2')
    sam2_input_size: int = param(1024, 'SAM 2 square encoder input side (anisotropic resize; 1024 trained)', unit='px',
                                 lo=64, hi=4096)
    vgg16_input_size: int = param(512, 'vgg16: encoder input long side (512: 64-cell grid)', unit='px', lo=32,
                                  hi=4096)
    device: str = param('auto', 'auto | cpu | cuda', choices=('auto', 'cpu', 'cuda'))
    cache_dir: str = param('', 'embedding cache ("" = <out>/feature_cache)')


@dataclass
class SeedConfig:
    """How the map is initialised (offline tools)."""

    source: str = param('auto', 'auto: points if the dataset has them, else depth if every view has it, else mvs | '
                        'points (SfM tracks / projection index) | depth (keyframe depth) | mvs (stereo depth of the '
                        'posed RGB views, fhgs_ros.core.mvs)', choices=('auto', 'points', 'depth', 'mvs'))
    depth_stride: int = param(4, 'pixel stride for depth seeding', unit='px', lo=1)
    max_points: int = param(20000, 'random subset of seed points', lo=1)
    scale_multiplier: float = param(1.0, 'initial scale = multiplier * sqrt(mean sq. distance to 3 NN)', lo=1e-06)
    opacity: float = param(0.1, 'initial opacity', lo=0.0001, hi=0.9999)
    orient_from_normals: bool = param(False, 'align depth-seeded surfels with depth normals')
    mvs_long_side: int = param(160, 'stereo working resolution (long side)', unit='px', lo=16, hi=4096)
    mvs_sources: int = param(4, 'source views per stereo depth map', lo=1, hi=16)
    mvs_defer: int = param(2, "online stereo: a keyframe's depth waits for this many later keyframes, so that its "
                           'stereo sources lie on both sides of it (0: at once, earlier keyframes only)', lo=0, hi=8)
    mvs_sgm_p1: float = param(0.05, 'stereo semi-global matching: penalty per path for a one-hypothesis depth step '
                              '(cost (1 - ZNCC) / 2 in [0, 1])', lo=0.0, hi=1.0)
    mvs_sgm_p2: float = param(0.5, 'stereo semi-global matching: penalty for a larger depth step (0: winner-takes-all '
                              'on the ZNCC, no SGM)', lo=0.0, hi=10.0)
    mvs_fill: str = param('plane', 'stereo hole filling from smooth measured neighbourhoods: plane (weighted '
                          'least-squares plane of their inverse depth) | mean (their weighted mean inverse depth) | '
                          'none (docs/METHOD.md 9.2)', choices=('plane', 'mean', 'none'))
    mvs_fill_agree: float = param(0.05, "stereo: a hole is filled only where the pixel's own optimum (which failed "
                                  'the tests) lies within this relative distance of the fill (0: no such test)',
                                  lo=0.0, hi=1.0)

    def stereo(self) -> MVSConfig:
        """The stereo settings (:class:`fhgs_ros.core.mvs.MVSConfig`) these parameters choose."""
        return MVSConfig(long_side=self.mvs_long_side, num_sources=self.mvs_sources, sgm_p1=self.mvs_sgm_p1,
                         sgm_p2=self.mvs_sgm_p2, defer=self.mvs_defer,
                         fill_radius=0 if self.mvs_fill == 'none' else MVSConfig.fill_radius,
                         fill_order=1 if self.mvs_fill == 'plane' else 0, fill_agree=self.mvs_fill_agree)


@dataclass
class OfflineConfig:
    """fhgs-map's own schedule and evaluation."""

    iterations: int = param(10000, 'fhgs-map iterations (FHGS paper: 10k)', lo=0)
    holdout_every: int = param(8, 'every N-th frame is a held-out evaluation view', lo=0)
    downscale: float = param(1.0, 'image scale factor applied when loading', lo=0.001)
    log_every: int = param(100, 'progress-bar refresh', unit='iterations')
    mesh_max_voxels: int = param(2097152, 'TSDF grid cap [voxels] (128^3); the voxel grows to fit the scene bounds',
                                 lo=1000, hi=1073741824)


@dataclass
class FHGSConfig:
    """Everything but the node: ``mapper``, ``features``, ``seed``, ``offline``."""

    mapper: MapperConfig = field(default_factory=MapperConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    seed: SeedConfig = field(default_factory=SeedConfig)
    offline: OfflineConfig = field(default_factory=OfflineConfig)


@dataclass
class NodeConfig:
    """Parameters of the ROS node only (``node:`` section of config/fhgs.yaml)."""

    map_frame: str = param('map', 'fixed frame of the map, the published cloud/mesh and requests')
    pose_source: str = param('tf', 'tf (map_frame -> image frame) | pose (PoseStamped) | odom (Odometry)',
                             choices=('tf', 'pose', 'odom'), live=True)
    camera_frame: str = param('', 'TF: optical frame to look up ("" = the image\'s header.frame_id)')
    camera_extrinsic: list = param(doc="pose/odom: pose of the camera optical frame in the tracked body frame",
                                   unit="x y z qx qy qz qw", factory=lambda: [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    tf_backend: str = param('auto', 'auto (tf2_ros if installed, else own listener) | tf2_ros | fhgs',
                            choices=('auto', 'tf2_ros', 'fhgs'))
    tf_cache_time: float = param(10.0, 'TF history kept', unit='s', lo=0.1)
    quat_tolerance: float = param(0.01, 'reject quaternions whose norm differs from 1 by more', lo=1e-06, hi=0.5)
    camera_info_file: str = param('',
                                  'calibration file used instead of the camera_info topic (ROS camera calibration '
                                  'YAML, kapture sensors.txt or COLMAP cameras.txt)')
    camera_info_sensor: str = param('', 'sensor / camera id inside camera_info_file ("" = the first camera)')
    sync_slop: float = param(0.02, 'max stamp difference image <-> camera_info / depth / pose', unit='s', lo=0.0,
                             hi=3600.0, live=True)
    sync_timeout: float = param(3.0, 'wall time an image waits for its partners before it is dropped (on a loaded '
                                'CPU at 640x480 camera_info and pose callbacks lag an image by over 1 s)', unit='s',
                                lo=0.0, hi=3600.01, live=True)
    use_depth: bool = param(True, 'use depth images when they arrive (16UC1 mm or 32FC1 m)')
    queue_size: int = param(8, 'bounded queues (sync, frames waiting for features); drops are counted', lo=1, hi=1000)
    sensor_qos: str = param('best_effort',
                            'image / camera_info / depth / labels subscriptions: best_effort | reliable',
                            choices=('best_effort', 'reliable'))
    max_image_long_side: int = param(640, 'images are downscaled to this long side for mapping', unit='px', lo=0,
                                     hi=16384)
    max_input_pixels: int = param(8388608, 'larger input images are rejected (decoding cost / memory)', lo=1,
                                  hi=2 ** 28)
    depth_min: float = param(0.1, 'valid depth range for seeding', unit='m', lo=0.0)
    depth_max: float = param(20.0, '(depth beyond is ignored)', unit='m', lo=0.0)
    kf_min_translation: float = param(0.1, 'new keyframe after this much motion ...', unit='m', lo=0.0, live=True)
    kf_min_rotation_deg: float = param(10.0, '... or this much rotation ...', unit='deg', lo=0.0, hi=360.0, live=True)
    kf_max_interval: float = param(5.0, '... or this long since the last one (0 = never by time)', unit='s', lo=0.0,
                                   hi=3600.0, live=True)
    kf_min_interval: float = param(0.0, 'never two keyframes closer in time than this', unit='s', lo=0.0, hi=3600.0,
                                   live=True)
    max_keyframes: int = param(60, 'keyframes kept for optimization (oldest dropped; mesh keeps all poses)', lo=1)
    steps_per_keyframe: int = param(200,
                                    'iteration budget of each new keyframe: distortion after 30 %, normal after 70 '
                                    '%, densification only in the first 70 %',
                                    lo=1)
    step_mode: str = param('continuous',
                           'continuous: optimize between keyframes without pause (live robot); budget: exactly '
                           'steps_per_keyframe iterations per keyframe, then wait (deterministic bag replay, '
                           'matches fhgs-replay --offline)',
                           choices=('continuous', 'budget'))
    densify: bool = param(True, "adaptive density control inside each keyframe's budget")
    opacity_reset: bool = param(False, 'periodic opacity reset (off online: it blanks the live renders)')
    max_new_surfels_per_keyframe: int = param(4000, 'cap of surfels seeded from one keyframe', lo=0)
    init_geometry: str = param('mvs', 'keyframes without depth: mvs (stereo against earlier keyframes; the map waits '
                               'until a keyframe has a usable source) | nominal (mono_init_depth along the rays)',
                               choices=('mvs', 'nominal'))
    mono_init_depth: float = param(2.0, 'init_geometry nominal: surfels start at this depth ...', unit='m',
                                   lo=0.001)
    mono_init_jitter: float = param(0.5, '... +- this (uniform), along the pixel rays', lo=0.0)
    torch_threads: int = param(0, "torch intra-op threads (0 = leave torch's default)", lo=0, hi=256)
    idle_sleep: float = param(0.02, 'optimizer pause when there is nothing to optimize', unit='s', lo=0.0, hi=10.0)
    publish_period: float = param(1.0,
                                  're-render the latest keyframe view at most this often (also after each keyframe)',
                                  unit='s', lo=0.0, hi=3600.0, live=True)
    render_long_side: int = param(320, 'long side of the published renders (0 = keyframe size)', unit='px', lo=0,
                                  hi=8192, live=True)
    publish_features: bool = param(True, 'publish the raw rendered feature map (render/features)', live=True)
    feature_dtype: str = param('float16', 'float16 | float32 for render/features', choices=('float16', 'float32'),
                               live=True)
    cloud_period: float = param(2.0, 'map/points period (0 = off)', unit='s', lo=0.0, hi=3600.0, live=True)
    cloud_max_points: int = param(200000, 'subsample the published cloud above this', lo=1, live=True)
    cloud_features: bool = param(False, 'add the full raw features (feat_0..) to map/points', live=True)
    cloud_clusters: int = param(12, "k-means clusters of the features for the 'cluster' field", lo=1, hi=256)
    mesh_period: float = param(15.0, 'TSDF mesh refresh period (0 = off)', unit='s', lo=0.0, hi=3600.0, live=True)
    mesh_long_side: int = param(160, 'depth render size for TSDF fusion', unit='px', lo=16, hi=4096)
    mesh_max_keyframes: int = param(40, 'most recent keyframe poses fused', lo=1)
    mesh_voxel_size: float = param(0.0, '0 = automatic (2DGS recipe, capped grid)', unit='m', lo=0.0)
    mesh_max_triangles: int = param(150000, 'Marker size cap', lo=1)
    diagnostics_period: float = param(1.0, '/diagnostics period', unit='s', lo=0.0, hi=3600.05)
    map_path: str = param('', 'autosave target and default of save_map/load_map ("" = none)')
    resume: bool = param(True, 'load map_path at start-up when it exists')
    autosave_every_keyframes: int = param(10, 'autosave after this many new keyframes (0 = off)', lo=0, live=True)
    autosave_period: float = param(120.0, 'autosave at least this often while the map changes (0 = off)', unit='s',
                                   lo=0.0, hi=3600.0, live=True)
    query_threshold: float = param(0.85, 'default cosine similarity of query_feature / clicked_point', lo=-1.0,
                                   hi=1.0, live=True)
    query_max_results: int = param(100000, 'cap of returned / published matches', lo=1, hi=10 ** 7, live=True)
    segment_long_side: int = param(256, 'render size of the feature grid for segment_view', unit='px', lo=16, hi=4096)
    max_request_pixels: int = param(4194304, 'render_view / query / segment views larger than this are refused', lo=1,
                                    hi=2 ** 28)
    # security and limits (README "Security"; fhgs_ros/online/guard, limits, motion, paths)
    map_dir: str = param('', 'the only folder save_map / load_map / export_mesh may use ("" = the folder of map_path, '
                             'else $ROS_HOME/fhgs_maps)')
    map_dir_allow: str = param('', "further files requests may name outside map_dir (absolute, ':'-separated)")
    max_map_file_mb: float = param(2048.0, 'larger map files are refused before they are read', unit='MB', lo=1.0,
                                   hi=float(1 << 20))
    request_memory_mb: float = param(1024.0, 'estimated peak memory of one service request; costlier ones are refused',
                                     unit='MB', lo=16.0, hi=float(1 << 20), live=True)
    max_concurrent_requests: int = param(2, 'heavy service requests at once (others are answered "busy")', lo=1, hi=64)
    max_prompts: int = param(64, 'segment_view point prompts per request', lo=1, hi=4096, live=True)
    motion_max_speed: float = param(50.0, 'frames whose camera moved faster are rejected (implausible_motion)',
                                    unit='m/s', lo=0.0, hi=1e5)
    motion_max_jump: float = param(2.0, 'allowed on top of motion_max_speed x dt', unit='m', lo=0.0, hi=1e6)
    motion_max_angular_speed_deg: float = param(1440.0, 'frames whose camera turned faster are rejected',
                                                unit='deg/s', lo=0.0, hi=1e6)
    motion_max_turn_deg: float = param(45.0, 'allowed on top of motion_max_angular_speed_deg x dt', unit='deg', lo=0.0,
                                       hi=360.0)
    motion_max_dt: float = param(2.0, 'longer gaps between frames count as this', unit='s', lo=0.0, hi=3600.0)
    motion_recover_frames: int = param(3, 'consecutive consistent rejected frames (motion or stamps) that re-anchor '
                                          'the gate / the timeline (0 = never)', lo=0, hi=1000)
    max_stamp_jump: float = param(600.0, 'an image stamp this far ahead of the previous one is a time jump', unit='s',
                                  lo=0.001, hi=3.2e8)

    def check_consistency(self, prefix: str = "node") -> None:
        """Cross-field rules (called by the validator after the per-field checks)."""
        ext = self.camera_extrinsic
        if len(ext) != 7:
            raise ConfigError(f"{prefix}.camera_extrinsic: expected 7 finite numbers [x y z qx qy qz qw], got {ext!r}")
        if abs(math.sqrt(sum(float(x) ** 2 for x in ext[3:])) - 1.0) > 1e-3:
            raise ConfigError(f"{prefix}.camera_extrinsic: the quaternion (last 4 values) is not normalized")
        if self.depth_max <= self.depth_min:
            raise ConfigError(f"{prefix}.depth_max: must be larger than depth_min ({self.depth_min})")
        import os
        if self.map_dir_allow and not all(os.path.isabs(os.path.expanduser(p)) for p in self.map_dir_allow.split(":")
                                          if p):
            raise ConfigError(f"{prefix}.map_dir_allow: every entry must be an absolute path")


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


# ----------------------------------------------------------------------------- flat (ROS) parameter names
def default_parameters() -> dict[str, object]:
    """Every parameter the node declares -> its default (dotted names, lists for tuples)."""
    out: dict[str, object] = {k: (list(v) if isinstance(v, tuple) else v) for k, _, v in walk(FHGSConfig())}
    out.update({k: v for k, _, v in walk(NodeConfig(), "node")})
    return out


def parameter_specs() -> dict[str, object]:
    """Dotted name -> ParamSpec of every declared parameter."""
    out = {k: f.metadata["param"] for k, f, _ in walk(FHGSConfig())}
    out.update({k: f.metadata["param"] for k, f, _ in walk(NodeConfig(), "node")})
    return out


def live_parameters() -> set[str]:
    """Dotted names of the parameters that may change while the node runs."""
    return {k for k, s in parameter_specs().items() if s.live}


def unflatten(flat: dict[str, object]) -> dict:
    out: dict = {}
    for k, v in flat.items():
        cur = out
        parts = k.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = v
    return out


def build_config(flat: dict[str, object]) -> tuple[FHGSConfig, NodeConfig]:
    """Validate flat parameter values (dotted names; ROS arrays allowed) -> (FHGSConfig, NodeConfig).

    Raises ConfigError naming the key and the reason.
    """
    defaults = default_parameters()
    clean = {}
    for k, v in flat.items():
        if k not in defaults:
            raise ConfigError(f"{k}: unknown parameter")
        clean[k] = list(v) if isinstance(v, tuple) or type(v).__name__ == "array" else v
    nested = unflatten(clean)
    node = from_dict(NodeConfig, nested.pop("node", {}), "node")
    cfg = from_dict(FHGSConfig, nested)
    return cfg, node


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
