"""The online mapping engine behind the ROS node (ROS-free: runs in tests and batch jobs too).

Threads (DESIGN.md "Threads"):
- callers (the node's subscription callbacks) only ``submit()`` decoded, validated frames to a
  bounded queue (a full queue drops its oldest frame; drops are counted);
- the **frontend** thread selects keyframes (translation / rotation / time), undistorts, downscales,
  runs the feature extractor and prepares the new surfels of each keyframe (from its depth, from
  pending seed points, or at a nominal depth along the rays where the map is empty), each with
  the frozen feature sampled from that keyframe's feature grid (FHGS_SPEC.md 8.11);
- the **optimizer** thread owns the ``Mapper``: it integrates prepared keyframes, keeps calling
  ``step()`` between keyframes with the per-keyframe schedule of FHGS_SPEC.md 8.9, executes
  commands (reset, load) and publishes an immutable :class:`MapState` (a snapshot taken under
  its own lock, the frozen features shared, never copied) that readers use without waiting;
- the **saver** thread writes autosaves (every N keyframes and/or T seconds) from those snapshots,
  atomically, so a crash at any moment leaves the previous complete map file.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fhgs_ros.config import ConfigError, FHGSConfig
from fhgs_ros.core.camera import Camera, CameraError
from fhgs_ros.core.mapper import Keyframe, Mapper
from fhgs_ros.core.render import render
from fhgs_ros.core.seeding import points_from_depth, project, sample_grid, surfels_from_points
from fhgs_ros.core.surfels import SurfelMap
from fhgs_ros.ros.imageproc import (InputError, Intrinsics, KeyframeSelector, Undistorter, fit_size, invert,
                                    resize_depth, resize_rgb)
from fhgs_ros.ros.params import NodeConfig

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- problems / counters
class Problems:
    """Counts rejected inputs by kind and logs each kind once, with its reason."""

    def __init__(self, logger: Callable[[str], None] | None = None):
        self.counts: dict[str, int] = {}
        self.last: dict[str, str] = {}
        self.logger = logger or (lambda msg: log.warning(msg))
        self.lock = threading.Lock()
        self.total = 0

    def report(self, err: InputError | str, reason: str | None = None) -> None:
        kind, why = (err.kind, err.reason) if isinstance(err, InputError) else (str(err), reason or "")
        with self.lock:
            n = self.counts.get(kind, 0) + 1
            self.counts[kind] = n
            self.last[kind] = why
            self.total += 1
        if n == 1:
            self.logger(f"[{kind}] {why} (logged once; further '{kind}' problems are counted in /diagnostics)")

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counts)


def drop_lines(counts: dict[str, int], reasons: dict[str, str], indent: str = "  ") -> list[str]:
    """One line per rejection / drop kind, most frequent first: ``<kind>: <count>  (<last reason>)``."""
    return [f"{indent}{k}: {n}  ({reasons.get(k, '')})" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]) if n]


class Counters:
    """Thread-safe named counters and event-rate estimators."""

    def __init__(self):
        self.values: dict[str, float] = {}
        self.times: dict[str, list[float]] = {}
        self.lock = threading.Lock()

    def inc(self, name: str, n: float = 1) -> None:
        with self.lock:
            self.values[name] = self.values.get(name, 0) + n

    def set(self, name: str, v: float) -> None:
        with self.lock:
            self.values[name] = v

    def tick(self, name: str, now: float | None = None, window: float = 5.0) -> None:
        now = time.monotonic() if now is None else now
        with self.lock:
            ts = self.times.setdefault(name, [])
            ts.append(now)
            while ts and ts[0] < now - window:
                ts.pop(0)
            self.values[name + "_count"] = self.values.get(name + "_count", 0) + 1

    def rate(self, name: str, now: float | None = None, window: float = 5.0) -> float:
        now = time.monotonic() if now is None else now
        with self.lock:
            ts = [t for t in self.times.get(name, []) if t >= now - window]
        if len(ts) < 2:
            return 0.0
        return (len(ts) - 1) / max(ts[-1] - ts[0], 1e-6)

    def snapshot(self) -> dict[str, float]:
        with self.lock:
            return dict(self.values)


def memory_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MB (Linux /proc)."""
    cur = peak = 0.0
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    cur = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) / 1024
    except OSError:
        pass
    return cur, peak


# ----------------------------------------------------------------------------- data
@dataclass
class InputFrame:
    """A synchronized, decoded, validated input frame (what the node's callbacks submit)."""

    stamp: float
    rgb: np.ndarray                 # (H, W, 3) uint8 RGB, as received (distorted)
    intr: Intrinsics                # of ``rgb``
    c2w: np.ndarray                 # (4, 4) camera optical frame -> map
    depth: np.ndarray | None = None  # (h, w) metres, 0 = unknown; registered to the colour camera
    frame_id: str = ""
    received: float = 0.0           # monotonic time the image arrived (latency measurement)
    labels: np.ndarray | None = None  # (h, w) integer label ids registered to the image (``label`` extractor)


@dataclass
class PreparedKeyframe:
    keyframe: Keyframe
    surfels: SurfelMap | None
    c2w: np.ndarray
    received: float
    reason: str


@dataclass
class MapState:
    """Immutable view of the map for readers (never modified after publication)."""

    surfels: SurfelMap
    cameras: list[Camera]           # every keyframe camera, oldest first (including loaded ones)
    version: int
    iteration: int
    model_id: str
    feature_dim: int
    pca: Any = None                 # FeaturePCA or None
    centroids: torch.Tensor | None = None  # (K, D) unit cluster centres of the features
    stamp: float = 0.0              # stamp of the latest keyframe
    received: float = 0.0           # arrival time of the latest keyframe's image
    keyframes_total: int = 0

    @property
    def last_camera(self) -> Camera | None:
        return self.cameras[-1] if self.cameras else None


def light_snapshot(m: SurfelMap) -> SurfelMap:
    """Detached copy of the trainable tensors; frozen features and ids are shared. Call under the mapper lock."""
    return m.snapshot(share_frozen=True)


def kmeans_centroids(x: torch.Tensor, k: int, iters: int = 15, seed: int = 0, max_samples: int = 20000) -> torch.Tensor:
    """Spherical k-means on unit features (N, D) -> (k', D) unit centres (deterministic)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(x.float(), dim=-1)
    if x.shape[0] > max_samples:
        x = x[torch.randperm(x.shape[0], generator=g)[:max_samples]]
    k = max(1, min(k, x.shape[0]))
    c = x[torch.randperm(x.shape[0], generator=g)[:k]].clone()
    for _ in range(iters):
        a = (x @ c.T).argmax(1)
        for j in range(k):
            m = a == j
            if m.any():
                c[j] = torch.nn.functional.normalize(x[m].mean(0), dim=0)
    return c


# ----------------------------------------------------------------------------- engine
def build_extractor(cfg: FHGSConfig):
    """The feature extractor named by ``features.extractor`` (a robot stream has no labels: SAM)."""
    fc = cfg.features
    from fhgs_ros.features.base import make_extractor
    if fc.extractor == "label":
        if fc.num_labels <= 0:
            raise ConfigError("features.extractor: 'label' needs label images on the 'labels' topic and "
                              "features.num_labels > 0 (a labelled/synthetic stream, e.g. a bag written by "
                              "fhgs-bag convert); for a camera stream use 'sam' with features.sam_checkpoint "
                              "(see README / launch argument sam_checkpoint)")
        return make_extractor("label", num_labels=fc.num_labels, dim=fc.dim, grid_long_side=fc.grid_long_side)
    kw = dict(model=fc.sam_model, checkpoint=fc.sam_checkpoint or None, input_size=fc.sam_input_size,
              device=fc.device)
    if fc.extractor == "sam" and not fc.sam_checkpoint:
        from fhgs_ros.features.sam import missing_checkpoint_help
        raise ConfigError(f"features.sam_checkpoint: empty; the node needs a SAM checkpoint.\n"
                          f"{missing_checkpoint_help(fc.sam_model)}")
    if fc.cache_dir:
        kw["cache_dir"] = fc.cache_dir
    return make_extractor(fc.extractor, **kw)


class MappingEngine:
    """Frontend + optimizer + saver threads around one ``Mapper`` (module docstring)."""

    def __init__(self, cfg: FHGSConfig, ncfg: NodeConfig, extractor: Any, problems: Problems | None = None,
                 counters: Counters | None = None, on_keyframe: Callable[[MapState], None] | None = None,
                 on_save: Callable[[str, bool, str], None] | None = None, info: Callable[[str], None] | None = None,
                 on_frame_done: Callable[[float, str], None] | None = None):
        self.cfg = cfg
        self.ncfg = ncfg
        self.extractor = extractor
        self.model_id = str(getattr(extractor, "model_id", "")) if extractor is not None else ""
        self.dim = int(getattr(extractor, "dim", cfg.features.dim)) if extractor is not None else cfg.features.dim
        self.problems = problems or Problems()
        self.counters = counters or Counters()
        self.on_keyframe = on_keyframe
        self.on_save = on_save
        self.on_frame_done = on_frame_done   # (stamp, outcome): keyframe | not_keyframe | rejected | dropped
        self._busy = 0                       # frames taken by the frontend and not yet done
        self._in_budget: PreparedKeyframe | None = None
        self.info = info or (lambda msg: log.info(msg))
        self.gen = torch.Generator().manual_seed(cfg.mapper.seed)
        self.frames: queue.Queue[InputFrame] = queue.Queue(maxsize=ncfg.queue_size)
        self.prepared: queue.Queue[PreparedKeyframe] = queue.Queue(maxsize=max(1, ncfg.queue_size))
        self.commands: queue.Queue = queue.Queue()
        self.selector = KeyframeSelector(ncfg.kf_min_translation, ncfg.kf_min_rotation_deg, ncfg.kf_max_interval,
                                         ncfg.kf_min_interval)
        self._undistorters: dict[tuple, Undistorter] = {}
        self._mvs = self._new_mvs_buffer()
        self._seed_lock = threading.Lock()
        self._seed_xyz = torch.zeros(0, 3)
        self._seed_rgb = torch.zeros(0, 3)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._epoch = 0                        # bumped by reset/load: stale prepared keyframes are dropped
        self._save_lock = threading.Lock()
        self._save_request = threading.Event()
        self._last_save_version = -1
        self._last_save_time = time.monotonic()
        self._kf_since_save = 0
        self.iter_ms = 0.0
        self.optimizer_error: str | None = None
        self._new_mapper()
        self.state = self._make_state()

    def _new_mvs_buffer(self):
        """Stereo keyframe buffer for keyframes without depth (node.init_geometry mvs; fhgs_ros.core.mvs)."""
        from fhgs_ros.core.mvs import KeyframeBuffer, MVSConfig
        return KeyframeBuffer(MVSConfig(long_side=self.cfg.seed.mvs_long_side, num_sources=self.cfg.seed.mvs_sources))

    # ------------------------------------------------------------------ mapper lifecycle (optimizer thread)
    def _mapper_config(self):
        mc = dataclasses.replace(self.cfg.mapper)
        if not self.ncfg.opacity_reset:
            mc.opacity_reset_every = 10 ** 12  # never (and no big-surfel pruning tied to it)
        return mc

    def _new_mapper(self) -> None:
        self.mapper = Mapper(self._mapper_config(), self.dim, extent=1.0)
        self.cameras: list[Camera] = []
        self.kf_start_iter = 0
        self.version = 0 if not hasattr(self, "version") else self.version + 1
        self.keyframes_total = 0
        self.pca = None
        self.centroids = None
        self.last_stamp = 0.0
        self.last_received = 0.0

    def _make_state(self) -> MapState:
        with self.mapper.lock:
            s = light_snapshot(self.mapper.surfels)
            it = self.mapper.iteration
        return MapState(s, list(self.cameras), self.version, it, self.model_id, self.dim, self.pca, self.centroids,
                        self.last_stamp, self.last_received, self.keyframes_total)

    def _publish_state(self) -> MapState:
        self.version += 1
        self.state = self._make_state()
        return self.state

    # ------------------------------------------------------------------ public API (any thread)
    def start(self) -> None:
        self._stop.clear()
        for name, fn in (("fhgs-frontend", self._frontend_loop), ("fhgs-optimizer", self._optimizer_loop),
                         ("fhgs-saver", self._saver_loop)):
            t = threading.Thread(target=fn, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 5.0, final_save: bool = True) -> None:
        """Stop the threads; with ``node.map_path`` set, save a map that changed since the last save
        (a clean shutdown, e.g. Ctrl-C at the end of a bag, loses nothing)."""
        started = bool(self._threads)
        self._stop.set()
        self._save_request.set()
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()
        st = self.state
        if (final_save and started and self.ncfg.map_path and st.version != self._last_save_version
                and (len(st.surfels) or st.cameras)):
            ok, msg = self._write(self.ncfg.map_path, st)
            if ok:
                self._last_save_version = st.version
            self.info(f"final save on shutdown: {msg}")

    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads) if self._threads else False

    def submit(self, frame: InputFrame) -> bool:
        """Queue a frame for the frontend; a full queue drops its oldest frame (counted)."""
        try:
            self.frames.put_nowait(frame)
            return True
        except queue.Full:
            try:
                old = self.frames.get_nowait()
                self.problems.report(InputError("queue_drop", f"frame queue full ({self.ncfg.queue_size}): the "
                                                              f"mapper is behind; dropped the frame of "
                                                              f"{old.stamp:.3f}"))
                self._done(old.stamp, "dropped")
            except queue.Empty:
                pass
            try:
                self.frames.put_nowait(frame)
                return True
            except queue.Full:
                return False

    def add_seed_points(self, xyz: np.ndarray, rgb: np.ndarray | None) -> int:
        """Seed points in the map frame; each becomes a surfel when a keyframe first sees it."""
        x = torch.as_tensor(np.asarray(xyz, dtype=np.float32)).reshape(-1, 3)
        c = torch.full_like(x, 0.5) if rgb is None else torch.as_tensor(np.asarray(rgb, dtype=np.float32)).reshape(-1, 3)
        cap = max(1, self.cfg.seed.max_points)
        with self._seed_lock:
            self._seed_xyz = torch.cat([self._seed_xyz, x])[-cap:]
            self._seed_rgb = torch.cat([self._seed_rgb, c])[-cap:]
            return int(self._seed_xyz.shape[0])

    def pending_seed_points(self) -> int:
        with self._seed_lock:
            return int(self._seed_xyz.shape[0])

    def reset(self, timeout: float = 10.0) -> tuple[bool, str]:
        return self._command("reset", None, timeout)

    def load(self, path: str, timeout: float = 30.0) -> tuple[bool, str]:
        """Validate and load a map file; on any problem the current map is left untouched."""
        from fhgs_ros.core.storage import MapFileError, load_map

        try:
            surfels, meta, extra = load_map(path)
        except MapFileError as exc:
            return False, str(exc)
        except (OSError, ValueError) as exc:  # defensive: anything else unreadable
            return False, f"map file '{path}': {exc}"
        if surfels.feature_dim != self.dim:
            return False, (f"map file '{path}': its features are {surfels.feature_dim}-d but the node's extractor "
                           f"({self.model_id or 'none'}) produces {self.dim}-d features; map not loaded")
        return self._command("load", (path, surfels, meta, extra), timeout)

    def request_state(self, timeout: float = 5.0) -> MapState:
        """A fresh snapshot from the optimizer (or the latest one if it does not answer in time)."""
        ok, _ = self._command("snapshot", None, timeout)
        return self.state

    def save(self, path: str, state: MapState | None = None) -> tuple[bool, str, MapState]:
        """Write ``state`` (default: a fresh snapshot) to ``path`` atomically."""
        st = state or self.request_state()
        return (*self._write(path, st), st)

    # ------------------------------------------------------------------ commands
    def _command(self, name: str, arg: Any, timeout: float) -> tuple[bool, str]:
        done = threading.Event()
        box: dict = {}
        self.commands.put((name, arg, done, box))
        if not self._threads:  # engine not started: run it here
            self._run_commands()
        if not done.wait(timeout):
            return False, f"{name}: the optimizer did not answer within {timeout:.0f} s"
        return box.get("ok", False), box.get("msg", "")

    def _run_commands(self) -> None:
        while True:
            try:
                name, arg, done, box = self.commands.get_nowait()
            except queue.Empty:
                return
            try:
                if name == "reset":
                    self._epoch += 1
                    self._new_mapper()
                    self._mvs = self._new_mvs_buffer()
                    self.selector.reset()
                    with self._seed_lock:
                        self._seed_xyz, self._seed_rgb = torch.zeros(0, 3), torch.zeros(0, 3)
                    self._drain_prepared()
                    self._publish_state()
                    box.update(ok=True, msg="map reset: 0 surfels, 0 keyframes")
                elif name == "load":
                    path, surfels, meta, extra = arg
                    self._epoch += 1
                    self._mvs = self._new_mvs_buffer()
                    self._install_map(surfels, meta, extra)
                    self._drain_prepared()
                    st = self._publish_state()
                    self._last_save_version = st.version
                    box.update(ok=True, msg=f"loaded '{path}': {len(st.surfels)} surfels, {len(st.cameras)} keyframe "
                                            f"poses")
                elif name == "snapshot":
                    self._publish_state()
                    box.update(ok=True, msg="")
                else:  # pragma: no cover
                    box.update(ok=False, msg=f"unknown command {name}")
            except Exception as exc:  # noqa: BLE001 - answer the caller, keep the optimizer alive
                log.exception("command %s failed", name)
                box.update(ok=False, msg=f"{name} failed: {exc}")
            finally:
                done.set()

    def _drain_prepared(self) -> None:
        """Drop queued frames and prepared keyframes (reset / load: they belong to the old map)."""
        while True:
            try:
                fr = self.frames.get_nowait()
            except queue.Empty:
                break
            self._done(fr.stamp, "dropped")
        if self._in_budget is not None:
            self._done(self._in_budget.keyframe.stamp, "dropped")
            self._in_budget = None
        while True:
            try:
                p = self.prepared.get_nowait()
            except queue.Empty:
                return
            self._done(p.keyframe.stamp, "dropped")

    def _install_map(self, surfels: SurfelMap, meta: dict, extra: dict) -> None:
        self._new_mapper()
        m = self.mapper
        node_meta = meta.get("node") or {}
        m.replace_map(surfels, int(node_meta.get("iteration", 0)))
        self.cameras = list(meta.get("keyframes") or [])
        self.keyframes_total = int(node_meta.get("keyframes_total", len(self.cameras)))
        self.last_stamp = float(node_meta.get("stamp", 0.0))
        self.kf_start_iter = m.iteration
        if self.cameras:
            self._update_extent()
        try:
            from fhgs_ros.features.pca import FeaturePCA
            self.pca = FeaturePCA.from_state(extra) if FeaturePCA.has_state(extra) else None
        except (ImportError, KeyError, ValueError):
            self.pca = None
        c = extra.get("cluster_centroids")
        self.centroids = c.float() if c is not None and c.ndim == 2 and c.shape[1] == self.dim else None
        if self.pca is None:
            self._fit_visuals()
        self.selector.reset()

    # ------------------------------------------------------------------ frontend
    def _frontend_loop(self) -> None:
        while not self._stop.is_set():
            try:
                fr = self.frames.get(timeout=0.1)
            except queue.Empty:
                continue
            epoch = self._epoch
            self._busy += 1
            prep = self._prepare_checked(fr)
            if prep is None:
                self._busy -= 1
                continue
            queued = False
            while not self._stop.is_set():
                if epoch != self._epoch:
                    break  # reset/load happened meanwhile: drop it
                try:
                    self.prepared.put(prep, timeout=0.1)
                    queued = True
                    break
                except queue.Full:
                    continue
            self._busy -= 1
            if not queued:
                self._done(fr.stamp, "dropped")

    def _prepare_checked(self, fr: InputFrame) -> PreparedKeyframe | None:
        """``prepare`` with errors reported (never raises); frames that do not become keyframes are done."""
        try:
            prep = self.prepare(fr)
        except InputError as exc:
            self.problems.report(exc)
            self._done(fr.stamp, "rejected")
            return None
        except Exception as exc:  # noqa: BLE001 - a bad frame must not stop mapping
            log.exception("frontend: frame %.3f failed", fr.stamp)
            self.problems.report(InputError("frame_error", f"frame {fr.stamp:.3f}: {type(exc).__name__}: {exc}"))
            self._done(fr.stamp, "rejected")
            return None
        if prep is None:
            self._done(fr.stamp, "not_keyframe")
        return prep

    def _done(self, stamp: float, outcome: str) -> None:
        if self.on_frame_done is not None:
            try:
                self.on_frame_done(stamp, outcome)
            except Exception:  # noqa: BLE001
                log.exception("on_frame_done callback failed")

    @property
    def idle(self) -> bool:
        """No frame queued or being prepared, no keyframe waiting, and (budget mode) its budget spent."""
        return (self.frames.empty() and self.prepared.empty() and self._busy == 0 and self._in_budget is None)

    def process_sync(self, fr: InputFrame) -> bool:
        """Synchronous frame path for batch mapping (engine threads not started): prepare, integrate and
        run exactly ``steps_per_keyframe`` iterations, as the node does in ``step_mode: budget``.
        Returns True when the frame became a keyframe."""
        prep = self._prepare_checked(fr)
        if prep is None:
            return False
        self._integrate(prep)
        self._publish_state()
        m = self.mapper
        while m.iteration - self.kf_start_iter < self.ncfg.steps_per_keyframe and len(m.surfels):
            self._timed_step()
        self._publish_state()
        self._done(prep.keyframe.stamp, "keyframe")
        return True

    def _timed_step(self) -> None:
        m = self.mapper
        t0 = time.perf_counter()
        m.step()
        dt = (time.perf_counter() - t0) * 1000
        self.iter_ms = dt if self.iter_ms == 0 else 0.9 * self.iter_ms + 0.1 * dt
        self.counters.inc("iterations")
        if m.densify_log and m.densify_log[-1].get("iteration") == m.iteration:
            self.counters.inc("densifications")

    def _undistorter(self, intr: Intrinsics) -> Undistorter:
        u = self._undistorters.get(intr.key())
        if u is None:
            if len(self._undistorters) > 8:
                self._undistorters.clear()
            u = self._undistorters[intr.key()] = Undistorter(intr)
        return u

    def prepare(self, fr: InputFrame) -> PreparedKeyframe | None:
        """Keyframe selection, undistortion, downscaling, features and new surfels for one frame."""
        self.counters.inc("frames_processed")
        is_kf, why = self.selector.check(fr.stamp, fr.c2w)
        if not is_kf:
            self.counters.inc("frames_not_keyframes")
            return None
        rgb, intr, depth, labels = fr.rgb, fr.intr, fr.depth, fr.labels
        if labels is not None and labels.shape != rgb.shape[:2]:
            if abs(labels.shape[1] / labels.shape[0] - intr.width / intr.height) > 0.01:
                raise InputError("labels_size_mismatch", f"label image {labels.shape[1]}x{labels.shape[0]} does not "
                                                         f"have the aspect ratio of the image {intr.width}x{intr.height}")
            labels = resize_depth(labels, intr.width, intr.height)
        if (rgb.shape[1], rgb.shape[0]) != (intr.width, intr.height):
            raise InputError("size_mismatch", f"image {rgb.shape[1]}x{rgb.shape[0]} does not match its camera_info "
                                              f"{intr.width}x{intr.height}")
        if depth is not None and depth.shape != rgb.shape[:2]:
            dh, dw = depth.shape
            if abs(dw / dh - intr.width / intr.height) > 0.01:
                self.problems.report(InputError("depth_size_mismatch",
                                                f"depth {dw}x{dh} does not have the aspect ratio of the image "
                                                f"{intr.width}x{intr.height}; frame mapped without depth"))
                depth = None
            else:
                depth = resize_depth(depth, intr.width, intr.height)
        if intr.has_distortion:
            und = self._undistorter(intr)
            rgb = und.undistort_rgb(rgb)
            if depth is not None:
                depth = und.undistort_depth(depth)
            if labels is not None:
                labels = und.undistort_labels(labels)
            intr = dataclasses.replace(intr, d=())
        w, h = fit_size(intr.width, intr.height, self.ncfg.max_image_long_side)
        if (w, h) != (intr.width, intr.height):
            rgb = resize_rgb(rgb, w, h)
            if depth is not None:
                depth = resize_depth(depth, w, h)
            if labels is not None:
                labels = resize_depth(labels, w, h)
            intr = intr.scaled(w, h)
        if depth is not None:
            depth = np.where((depth >= self.ncfg.depth_min) & (depth <= self.ncfg.depth_max), depth, 0.0)
            depth = depth.astype(np.float32)
        near = max(1e-3, min(0.2, self.ncfg.depth_min)) if self.ncfg.depth_min > 0 else 0.01
        try:
            cam = Camera(w, h, intr.fx, intr.fy, intr.cx, intr.cy, torch.as_tensor(invert(fr.c2w), dtype=torch.float32),
                         near=near, far=max(100.0, 2 * self.ncfg.depth_max), name=f"{fr.stamp:.6f}")
        except CameraError as exc:
            raise InputError("bad_pose", f"frame {fr.stamp:.3f}: {exc}") from None
        if self.extractor is None:
            raise InputError("no_extractor", "no feature extractor configured")
        if getattr(self.extractor, "input_kind", "image") == "labels":
            if labels is None:
                raise InputError("missing_labels", f"frame {fr.stamp:.3f}: the 'label' feature extractor needs a "
                                                   f"label image (topic 'labels')")
            grid = self.extractor.extract(torch.from_numpy(labels.astype(np.int64)))
        else:
            grid = self.extractor.extract(rgb)
        if grid.dim != self.dim:
            raise InputError("feature_dim", f"extractor returned {grid.dim}-d features, the map has {self.dim}")
        target = grid.to_target()
        image = torch.from_numpy(np.array(rgb, dtype=np.uint8, order="C")).permute(2, 0, 1).float().div_(255.0)
        depth_t = torch.from_numpy(depth) if depth is not None else None
        new = self._new_surfels(image, depth_t, cam, target)
        kf = Keyframe(cam, image, target, depth_t, None, fr.stamp)
        self.selector.commit(fr.stamp, fr.c2w)
        self.counters.inc("keyframes_prepared")
        return PreparedKeyframe(kf, new, fr.c2w, fr.received, why)

    def _new_surfels(self, image: torch.Tensor, depth: torch.Tensor | None, cam: Camera, target) -> SurfelMap | None:
        sc = self.cfg.seed
        st = self.state
        cap = self.ncfg.max_new_surfels_per_keyframe
        if cap <= 0:
            return None
        covered = None
        rdepth = None
        if len(st.surfels):
            with torch.no_grad():
                r = render(st.surfels, cam, backend=self.cfg.mapper.backend)
            covered = r.alpha > 0.5
            rdepth = r.depth_median
        xyzs, rgbs, feats = [], [], []
        # 1. pending seed points (PointCloud2) that this keyframe sees
        with self._seed_lock:
            sx, srgb = self._seed_xyz, self._seed_rgb
        if sx.shape[0]:
            xy, z = project(sx, cam)
            ok = (z > cam.near) & (xy[:, 0] >= -0.5) & (xy[:, 0] < cam.width - 0.5) & (xy[:, 1] >= -0.5) \
                & (xy[:, 1] < cam.height - 0.5)
            if depth is not None and ok.any():
                px = xy[:, 0].round().long().clamp(0, cam.width - 1)
                py = xy[:, 1].round().long().clamp(0, cam.height - 1)
                dz = depth[py, px]
                ok &= (dz <= 0) | ((dz - z).abs() <= 0.1 * z.abs())
            if ok.any():
                idx = torch.nonzero(ok).squeeze(1)
                xyzs.append(sx[idx])
                rgbs.append(srgb[idx])
                feats.append(sample_grid(target, xy[idx]))
                with self._seed_lock:
                    keep = torch.ones(self._seed_xyz.shape[0], dtype=torch.bool)
                    keep[idx[idx < keep.numel()]] = False
                    self._seed_xyz, self._seed_rgb = self._seed_xyz[keep], self._seed_rgb[keep]
        # 2. depth: back-project pixels the map does not explain yet
        stride = max(1, sc.depth_stride)
        if depth is not None:
            xyz, rgb, xy = points_from_depth(image, depth, cam, stride=stride, max_depth=self.ncfg.depth_max)
            if covered is not None and xyz.shape[0]:
                px, py = xy[:, 0].long(), xy[:, 1].long()
                z = depth[py, px]
                explained = covered[py, px] & ((rdepth[py, px] - z).abs() <= 0.1 * z)
                xyz, rgb, xy = xyz[~explained], rgb[~explained], xy[~explained]
            if xyz.shape[0]:
                xyzs.append(xyz)
                rgbs.append(rgb)
                feats.append(sample_grid(target, xy))
        elif not xyzs and self.ncfg.init_geometry == "mvs":
            # 3. no depth, no seed points: stereo depth against earlier keyframes (none yet: the map waits)
            from fhgs_ros.core.mvs import online_seed_points
            for sp in online_seed_points(self._mvs, image, cam, target, max(1, stride // 2), covered, rdepth):
                xyzs.append(sp.xyz)
                rgbs.append(sp.rgb)
                feats.append(sample_grid(sp.token, sp.xy))
        elif not xyzs:
            # 3'. init_geometry nominal: nominal depth along the rays of uncovered pixels
            ys, xs = torch.meshgrid(torch.arange(0, cam.height, stride), torch.arange(0, cam.width, stride),
                                    indexing="ij")
            xs, ys = xs.reshape(-1), ys.reshape(-1)
            if covered is not None:
                m = ~covered[ys, xs]
                xs, ys = xs[m], ys[m]
            if xs.numel():
                d = self.ncfg.mono_init_depth + (torch.rand(xs.numel(), generator=self.gen) * 2 - 1) \
                    * self.ncfg.mono_init_jitter
                d = d.clamp_min(cam.near * 1.5)
                pc = torch.stack([(xs.float() - cam.cx) / cam.fx * d, (ys.float() - cam.cy) / cam.fy * d, d], -1)
                c2w = cam.cam_to_world
                xyzs.append(pc @ c2w[:3, :3].T + c2w[:3, 3])
                rgbs.append(image[:, ys, xs].T)
                feats.append(sample_grid(target, torch.stack([xs, ys], -1).float()))
        if not xyzs:
            return None
        xyz, rgb, f = torch.cat(xyzs), torch.cat(rgbs), torch.cat(feats)
        if xyz.shape[0] > cap:
            sel = torch.randperm(xyz.shape[0], generator=self.gen)[:cap]
            xyz, rgb, f = xyz[sel], rgb[sel], f[sel]
        if xyz.shape[0] < 2:
            return None
        return surfels_from_points(xyz, rgb, f, sc.opacity, sc.scale_multiplier, generator=self.gen)

    # ------------------------------------------------------------------ optimizer
    def _update_extent(self) -> None:
        c = torch.stack([cam.center for cam in self.cameras[-200:]])
        r = float((c - c.mean(0)).norm(dim=1).max()) if len(c) > 1 else 0.0
        self.mapper.set_extent(max(r * 1.1, 1.0))

    def _apply_schedule(self) -> None:
        """Per-keyframe schedule (FHGS_SPEC.md 8.9) inside the newest keyframe's step budget."""
        mc = self.mapper.cfg
        b = self.ncfg.steps_per_keyframe
        s0 = self.kf_start_iter
        mc.dist_from_iter = s0 + int(0.3 * b)
        mc.normal_from_iter = s0 + int(0.7 * b)
        if self.ncfg.densify:
            mc.densify_from_iter = s0
            mc.densify_until_iter = s0 + int(0.7 * b)
        else:
            mc.densify_from_iter, mc.densify_until_iter = 0, 0

    def _integrate(self, p: PreparedKeyframe) -> None:
        m = self.mapper
        with m.lock:
            m.add_keyframe(p.keyframe)
            if p.surfels is not None and len(p.surfels):
                m.add_surfels(p.surfels)
            while len(m.keyframes) > self.ncfg.max_keyframes:
                m.keyframes.pop(0)
        self.cameras.append(p.keyframe.camera)
        self.keyframes_total += 1
        self.last_stamp = p.keyframe.stamp
        self.last_received = p.received
        self.kf_start_iter = m.iteration
        self._update_extent()
        self._apply_schedule()
        if self.pca is None:
            self._fit_visuals()
        self.counters.inc("keyframes")

    def _fit_visuals(self) -> None:
        """Fit the map's fixed feature PCA and cluster centres once (kept for the map's lifetime)."""
        s = self.mapper.surfels
        if len(s) < 16:
            return
        try:
            from fhgs_ros.features.pca import FeaturePCA
            self.pca = FeaturePCA.fit(s.features_raw.float())
        except (ImportError, ValueError) as exc:
            log.warning("feature PCA not fitted: %s", exc)
            self.pca = None
        self.centroids = kmeans_centroids(s.features_unit, self.ncfg.cloud_clusters, seed=self.cfg.mapper.seed)

    def _optimizer_loop(self) -> None:
        if self.ncfg.torch_threads > 0:
            torch.set_num_threads(self.ncfg.torch_threads)
        last_pub = time.monotonic()
        changed = False
        carry: PreparedKeyframe | None = None
        try:
            while not self._stop.is_set():
                self._run_commands()
                if self.ncfg.step_mode == "budget":
                    self._budget_tick()
                    continue
                got = [carry] if carry is not None else []
                carry = None
                while True:
                    try:
                        got.append(self.prepared.get_nowait())
                    except queue.Empty:
                        break
                for p in got:
                    self._integrate(p)
                if got:
                    st = self._publish_state()
                    last_pub = time.monotonic()
                    changed = False
                    self._kf_since_save += len(got)
                    n = self.ncfg.autosave_every_keyframes
                    if n > 0 and self._kf_since_save >= n:
                        self._save_request.set()
                    if self.on_keyframe is not None:
                        try:
                            self.on_keyframe(st)
                        except Exception:  # noqa: BLE001
                            log.exception("on_keyframe callback failed")
                for p in got:
                    self._done(p.keyframe.stamp, "keyframe")
                m = self.mapper
                if m.keyframes and len(m.surfels):
                    self._timed_step()
                    changed = True
                else:
                    try:
                        carry = self.prepared.get(timeout=max(self.ncfg.idle_sleep, 0.001))
                    except queue.Empty:
                        pass
                if changed and time.monotonic() - last_pub >= 0.5:
                    self._publish_state()
                    last_pub = time.monotonic()
                    changed = False
        except Exception as exc:  # noqa: BLE001
            self.optimizer_error = f"{type(exc).__name__}: {exc}"
            log.exception("optimizer thread died")

    def _budget_tick(self) -> None:
        """step_mode budget: one keyframe at a time, exactly steps_per_keyframe iterations, then done."""
        p = self._in_budget
        if p is None:
            try:
                p = self.prepared.get(timeout=max(self.ncfg.idle_sleep, 0.001))
            except queue.Empty:
                return
            self._integrate(p)
            st = self._publish_state()
            self._in_budget = p
            self._kf_since_save += 1
            if self.on_keyframe is not None:
                try:
                    self.on_keyframe(st)
                except Exception:  # noqa: BLE001
                    log.exception("on_keyframe callback failed")
        m = self.mapper
        if m.iteration - self.kf_start_iter < self.ncfg.steps_per_keyframe and len(m.surfels):
            self._timed_step()
            return
        self._publish_state()
        n = self.ncfg.autosave_every_keyframes
        if n > 0 and self._kf_since_save >= n:
            self._save_request.set()
        self._in_budget = None
        self._done(p.keyframe.stamp, "keyframe")

    # ------------------------------------------------------------------ saving
    def map_meta(self, st: MapState) -> tuple[dict, dict]:
        meta = {"feature_extractor": st.model_id, "feature_model": st.model_id, "keyframes": st.cameras,
                "node": {"iteration": st.iteration, "keyframes_total": st.keyframes_total, "stamp": st.stamp,
                         "map_frame": self.ncfg.map_frame, "saved_unix_time": time.time()}}
        extra: dict[str, torch.Tensor] = {}
        if st.pca is not None:
            extra.update(st.pca.state_dict())
        if st.centroids is not None:
            extra["cluster_centroids"] = st.centroids.float()
        return meta, extra

    def _write(self, path: str, st: MapState) -> tuple[bool, str]:
        from fhgs_ros.core.storage import save_map

        if not path:
            return False, "no path given and the node has no map_path"
        p = Path(path).expanduser()
        with self._save_lock:
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
                meta, extra = self.map_meta(st)
                save_map(p, st.surfels, meta, extra)
            except (OSError, ValueError, TypeError) as exc:
                return False, f"cannot save '{p}': {exc}"
        self.counters.inc("saves")
        return True, f"saved {len(st.surfels)} surfels and {len(st.cameras)} keyframe poses to '{p}'"

    def _saver_loop(self) -> None:
        period = self.ncfg.autosave_period
        while not self._stop.is_set():
            self._save_request.wait(timeout=0.2)
            if self._stop.is_set():
                return
            due = self._save_request.is_set()
            if not due and period > 0 and time.monotonic() - self._last_save_time >= period:
                due = self.state.version != self._last_save_version
            if not due or not self.ncfg.map_path:
                self._save_request.clear()
                continue
            self._save_request.clear()
            st = self.state
            if st.version == self._last_save_version or (len(st.surfels) == 0 and not st.cameras):
                self._last_save_time = time.monotonic()
                continue
            self._kf_since_save = 0
            ok, msg = self._write(self.ncfg.map_path, st)
            self._last_save_time = time.monotonic()
            if ok:
                self._last_save_version = st.version
                self.counters.inc("autosaves")
            if self.on_save is not None:
                self.on_save(self.ncfg.map_path, ok, msg)

    # ------------------------------------------------------------------ readers
    def render(self, camera: Camera, features: bool = False, state: MapState | None = None):
        st = state or self.state
        with torch.no_grad():
            return render(st.surfels, camera, background=torch.tensor(self.cfg.mapper.background),
                          render_features=features, backend=self.cfg.mapper.backend)

    def stats(self) -> dict[str, float]:
        st = self.state
        cur, peak = memory_mb()
        return {"keyframes": st.keyframes_total, "keyframes_in_window": len(self.mapper.keyframes),
                "surfels": len(st.surfels), "iteration": st.iteration, "iteration_ms": round(self.iter_ms, 2),
                "frame_queue": self.frames.qsize(), "keyframe_queue": self.prepared.qsize(),
                "pending_seed_points": self.pending_seed_points(), "rss_mb": round(cur, 1),
                "peak_rss_mb": round(peak, 1), "map_version": st.version}


def cleanup_stale_temp_files(path: str) -> list[str]:
    """Remove temporary files an interrupted atomic save of ``path`` left behind (``.<name>.*.tmp``)."""
    p = Path(path).expanduser()
    out = []
    if not p.parent.is_dir():
        return out
    for q in p.parent.glob(f".{p.name}.*.tmp"):
        try:
            q.unlink()
            out.append(str(q))
        except OSError:
            pass
    return out


__all__ = ["MappingEngine", "InputFrame", "MapState", "Problems", "Counters", "memory_mb", "light_snapshot",
           "cleanup_stale_temp_files", "kmeans_centroids"]
