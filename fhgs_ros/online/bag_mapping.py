"""Batch mapping of a ROS 2 bag in-process, without DDS (``fhgs-replay BAG --offline``).

The bag's messages (read and deserialized by ``rosbags``, no rclpy needed) go through the same
input pipeline as the live node (:class:`fhgs_ros.online.ingest.Ingest`: decoding, validation,
approximate-time sync with camera_info / depth / labels / pose, keyframe selection,
undistortion, features) into the same :class:`MappingEngine`, driven synchronously: each
keyframe gets exactly ``node.steps_per_keyframe`` optimizer iterations, like the node in
``node.step_mode: budget``. Time is the bag's log time, so a run is deterministic.

Bag topics feed node inputs by name, after ``--remap``: a bag topic named ``/image`` (in the
namespace ``ns``) feeds the node input ``image``, ``/camera_info`` feeds ``camera_info``, and so
on (:data:`NODE_INPUTS`); ``/tf`` and ``/tf_static`` feed the transform buffer. This is the same
convention as replaying the bag to a node over DDS.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fhgs_ros.config import ConfigError
from fhgs_ros.online.calibration import calibration_from_params
from fhgs_ros.online.telemetry import Counters, Problems, drop_lines
from fhgs_ros.online.engine import MappingEngine
from fhgs_ros.features.registry import build_extractor
from fhgs_ros.online.ingest import Ingest
from fhgs_ros.config import build_config, default_parameters
from fhgs_ros.online.transforms import TransformBuffer, apply_tf_message

log = logging.getLogger(__name__)

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
# node input (relative name) -> accepted message types
NODE_INPUTS: dict[str, tuple[str, ...]] = {
    "image": (IMAGE,), "image/compressed": (COMPRESSED,), "camera_info": ("sensor_msgs/msg/CameraInfo",),
    "depth": (IMAGE,), "labels": (IMAGE,), "pose": ("geometry_msgs/msg/PoseStamped",),
    "odom": ("nav_msgs/msg/Odometry",), "/tf": ("tf2_msgs/msg/TFMessage",), "/tf_static": ("tf2_msgs/msg/TFMessage",),
}


def input_topic(name: str, ns: str = "/") -> str:
    """Absolute topic of a node input in namespace ``ns`` (``/tf`` stays absolute)."""
    if name.startswith("/"):
        return name
    ns = "/" + ns.strip("/") if ns.strip("/") else ""
    return f"{ns}/{name}"


@dataclass
class BagMappingReport:
    """What happened to the bag's images (counts) and the resulting map."""

    bag: str
    messages: int = 0
    images: int = 0
    keyframes: int = 0
    not_keyframes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)    # drop / rejection kind -> count
    reasons: dict[str, str] = field(default_factory=dict)    # kind -> last message
    surfels: int = 0
    flushed_surfels: int = 0     # end of bag: surfels of the keyframes whose stereo depth waited for later ones
    iterations: int = 0
    seconds: float = 0.0
    map_path: str = ""
    topics: dict[str, str] = field(default_factory=dict)     # node input -> bag topic used

    @property
    def images_skipped(self) -> int:
        return max(0, self.images - self.keyframes - self.not_keyframes)

    def lines(self) -> list[str]:
        out = [f"bag {self.bag}: {self.messages} messages, {self.images} images -> {self.keyframes} keyframes, "
               f"{self.not_keyframes} not keyframes (too close to the previous one), {self.images_skipped} skipped; "
               f"{self.surfels} surfels after {self.iterations} iterations in {self.seconds:.1f} s"]
        if self.flushed_surfels:
            out.append(f"end of bag: {self.flushed_surfels} surfels seeded from the stereo depth of the last keyframes "
                       f"(they waited for later keyframes, seed.mvs_defer), one keyframe budget of iterations")
        if self.images_skipped:
            out.append(f"skipped {self.images_skipped} of {self.images} images:")
        return out + drop_lines(self.skipped, self.reasons)


def load_params(params_file: str | Path | None, overrides: list[str] | None = None,
                node_name: str = "fhgs_node") -> dict[str, Any]:
    """Flat parameter dict from a ROS params YAML (``<node>: ros__parameters:`` or ``/**``) plus
    ``key:=value`` overrides (YAML-typed values), exactly as the node would see them."""
    flat = dict(default_parameters())
    if params_file:
        p = Path(params_file)
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{p}: cannot read the parameter file: {exc}") from None
        section = None
        for key in (node_name, "/" + node_name, "/**"):
            if isinstance(data.get(key), dict):
                section = data[key].get("ros__parameters")
                break
        if not isinstance(section, dict):
            raise ConfigError(f"{p}: no '{node_name}: ros__parameters:' section")

        def walk(d: dict, prefix: str) -> None:
            for k, v in d.items():
                key = f"{prefix}.{k}" if prefix else str(k)
                if isinstance(v, dict):
                    walk(v, key)
                else:
                    flat[key] = v
        walk(section, "")
    for item in overrides or []:
        if ":=" not in item:
            raise ConfigError(f"parameter override '{item}': expected key:=value")
        k, v = item.split(":=", 1)
        flat[k.strip()] = yaml.safe_load(v) if v.strip() else ""
    return flat


def map_bag(bag: str | Path, flat_params: dict[str, Any], out: str | Path | None = None, *,
            remap: dict[str, str] | None = None, start: float = 0.0, duration: float | None = None,
            namespace: str = "/", progress: bool = True, only: list[str] | None = None
            ) -> tuple[BagMappingReport, MappingEngine]:
    """Map ``bag`` with the node's parameters ``flat_params``; save the map to ``out`` (atomic).

    ``only``: read just these bag topics (names after ``remap``; each must exist), like
    ``fhgs-replay --topics`` over DDS; None = every topic that feeds a node input.

    Raises BagError (unreadable bag, missing or mistyped input topics, unknown message types)
    and ConfigError (parameters)."""
    from tqdm import tqdm

    from fhgs_ros.bag.reader import BagError, BagReader

    t0 = time.perf_counter()
    cfg, ncfg = build_config(flat_params)
    if ncfg.torch_threads > 0:  # as the node does
        import torch
        torch.set_num_threads(ncfg.torch_threads)
    extractor = build_extractor(cfg)
    need_labels = getattr(extractor, "input_kind", "image") == "labels"
    fixed = calibration_from_params(ncfg)
    problems = Problems(logger=log.warning)
    counters = Counters()
    engine = MappingEngine(cfg, ncfg, extractor, problems, counters)
    tf = TransformBuffer(max(ncfg.tf_cache_time, 1e9))  # batch: keep the whole bag's history
    report = BagMappingReport(str(bag))

    with BagReader(bag, remap=remap) as reader:
        if only is not None:
            reader.require({t: None for t in only})
        topics = {name: input_topic(name, namespace) for name in NODE_INPUTS}
        present = {name: t for name, t in topics.items() if t in reader.topics and (only is None or t in only)}
        image_inputs = [n for n in ("image", "image/compressed") if n in present]
        if not image_inputs:
            raise BagError(_missing(reader, topics["image"], "the colour image stream (node input 'image')"))
        required: dict[str, tuple[str, ...] | None] = {present[n]: NODE_INPUTS[n] for n in present}
        if fixed is None and "camera_info" not in present:
            raise BagError(_missing(reader, topics["camera_info"], "camera intrinsics (or set node.camera_info_file "
                                                                   "to a calibration file)"))
        src = ncfg.pose_source
        if src == "tf" and "/tf" not in present and "/tf_static" not in present:
            raise BagError(_missing(reader, "/tf", "poses (node.pose_source: tf)"))
        if src in ("pose", "odom") and src not in present:
            raise BagError(_missing(reader, topics[src], f"poses (node.pose_source: {src})"))
        if need_labels and "labels" not in present:
            raise BagError(_missing(reader, topics["labels"], "label images (features.extractor: label)"))
        reader.require(required)
        unknown = {t: ty for t, ty in reader.unknown_types().items() if t in required}
        if unknown:
            t, ty = next(iter(unknown.items()))
            raise BagError(f"topic '{t}' has message type '{ty}', which is unknown here (no definition in the bag "
                           f"and not a standard type)")
        ingest = Ingest(ncfg, engine, problems, counters, tf_lookup=tf, need_labels=need_labels,
                        fixed_intrinsics=fixed, depth_hint=lambda: "depth" in present, submit=engine.process_sync)
        by_topic = {t: n for n, t in present.items()}
        report.topics = dict(present)
        handlers = {
            "image": lambda m, now: ingest.image(m, now),
            "image/compressed": lambda m, now: ingest.compressed(m, now),
            "camera_info": lambda m, now: ingest.camera_info(m),
            "depth": lambda m, now: ingest.depth(m, now),
            "labels": lambda m, now: ingest.labels(m, now),
            "pose": lambda m, now: ingest.pose(m),
            "odom": lambda m, now: ingest.odom(m),
            "/tf": lambda m, now: apply_tf_message(tf, m, False, ncfg.quat_tolerance, problems.report),
            "/tf_static": lambda m, now: apply_tf_message(tf, m, True, ncfg.quat_tolerance, problems.report),
        }
        total = sum(reader.topics[t].count for t in by_topic)
        now = reader.start_ns * 1e-9
        bar = tqdm(total=total, desc="bag", unit="msg", disable=not progress, mininterval=1.0)
        for m in reader.messages(list(by_topic), start=start, duration=duration):
            now = m.log_time_ns * 1e-9
            msg = reader.deserialize(m)
            name = by_topic[m.topic]
            handlers[name](msg, now)
            if name not in ("image", "image/compressed"):
                ingest.poll(now)
            report.messages += 1
            bar.update(1)
            bar.set_postfix(kf=engine.keyframes_total, surfels=len(engine.mapper.surfels), refresh=False)
        bar.close()
        # flush: let every waiting image time out (sync_timeout) with the reason it is still waiting
        ingest.poll(now + ncfg.sync_timeout + ncfg.sync_slop + 1e-3)
    # the last keyframes' stereo depth waited for later keyframes (seed.mvs_defer): none will come
    try:
        report.flushed_surfels = engine.finish_stream()
    except Exception as exc:  # noqa: BLE001 - the bag's map is saved whatever happens here
        log.warning("end-of-bag stereo seeding failed (%s: %s); the map is saved without it", type(exc).__name__, exc)

    report.images = ingest.images_received
    c = counters.snapshot()
    report.keyframes = int(c.get("frames_keyframe", 0))
    report.not_keyframes = int(c.get("frames_not_keyframe", 0))
    report.skipped = {k: v for k, v in problems.snapshot().items() if k != "camera_info_ignored"}
    report.reasons = dict(problems.last)
    st = engine.state
    report.surfels = len(st.surfels)
    report.iterations = int(st.iteration)
    if out is not None and report.keyframes:
        ok, msg, _ = engine.save(str(out), st)
        if not ok:
            raise OSError(msg)
        report.map_path = str(out)
        log.info(msg)
    report.seconds = time.perf_counter() - t0
    return report, engine


def _missing(reader, topic: str, what: str) -> str:
    have = ", ".join(f"{t} ({i.msgtype})" for t, i in sorted(reader.topics.items())) or "none"
    # the --remap example: a bag topic of a type the input accepts, preferably named like it
    name = next((n for n in NODE_INPUTS if topic == n or topic.endswith("/" + n.lstrip("/"))), "")
    types = NODE_INPUTS.get(name, ()) + (NODE_INPUTS["image/compressed"] if name == "image" else ())
    stem = {"labels": "label", "camera_info": "info"}.get(name.strip("/"), name.strip("/"))
    cands = sorted((t for t, i in reader.topics.items() if i.msgtype in types and t != topic),
                   key=lambda t: (stem not in t.lower(),
                                  any(w in t.lower() for w in ("depth", "label", "mask", "seg") if w != stem), t))
    tail = ("Map bag topics onto the node inputs with --remap, e.g. --remap "
            f"{reader.topics[cands[0]].original}:={topic}" if cands
            else f"None of them has the type {' or '.join(types)}" if types else "")
    return f"bag {reader.path}: no topic '{topic}' for {what}; the bag has: {have}. {tail}".rstrip()
