"""The online mapping engine behind the ROS node (ROS-free: runs in tests and batch jobs too).

Threads (docs/ARCHITECTURE.md §3):
- callers (the node's subscription callbacks) only ``submit()`` decoded, validated frames to a
  bounded queue (a full queue drops its oldest frame; drops are counted);
- the **frontend** thread runs :class:`~fhgs_ros.online.frontend.KeyframeFrontend`: keyframe
  selection, undistortion, downscaling, features and the new surfels of each keyframe, each
  with the frozen feature sampled from that keyframe's feature grid (docs/METHOD.md §8.11);
- the **optimizer** thread owns the ``Mapper``: it integrates prepared keyframes, keeps calling
  ``step()`` between keyframes with the per-keyframe schedule of docs/METHOD.md §8.9 (a
  :class:`~fhgs_ros.core.schedule.KeyframeBudgetSchedule` the mapper consults), executes
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
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fhgs_ros.config import FHGSConfig, NodeConfig
from fhgs_ros.core.camera import Camera
from fhgs_ros.core.mapper import Mapper
from fhgs_ros.core.render import render
from fhgs_ros.core.schedule import KeyframeBudgetSchedule
from fhgs_ros.core.surfels import SurfelMap
from fhgs_ros.features.pca import FeaturePCA, kmeans_centroids
from fhgs_ros.online.frames import InputFrame, MapState, PreparedKeyframe, light_snapshot
from fhgs_ros.online.frontend import KeyframeFrontend
from fhgs_ros.online.imageproc import InputError
from fhgs_ros.online.telemetry import Counters, Problems, memory_mb

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- problems / counters
# ----------------------------------------------------------------------------- engine
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
        # (stamp, outcome) listeners: keyframe | not_keyframe | rejected | dropped
        self._frame_done_listeners: list[Callable[[float, str], None]] = [on_frame_done] if on_frame_done else []
        self._busy = 0                       # frames taken by the frontend and not yet done
        self._in_budget: PreparedKeyframe | None = None
        self.info = info or (lambda msg: log.info(msg))
        self.frontend = KeyframeFrontend(cfg, ncfg, extractor, self.dim, self.problems, self.counters)
        self.frames: queue.Queue[InputFrame] = queue.Queue(maxsize=ncfg.queue_size)
        self.prepared: queue.Queue[PreparedKeyframe] = queue.Queue(maxsize=max(1, ncfg.queue_size))
        self.commands: queue.Queue = queue.Queue()
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

    # ------------------------------------------------------------------ mapper lifecycle (optimizer thread)
    def _build_mapper(self) -> tuple[KeyframeBudgetSchedule, Mapper]:
        mc = dataclasses.replace(self.cfg.mapper)
        schedule = KeyframeBudgetSchedule(mc, budget=self.ncfg.steps_per_keyframe, densify=self.ncfg.densify,
                                          opacity_reset=self.ncfg.opacity_reset)
        return schedule, Mapper(mc, self.dim, extent=1.0, schedule=schedule)

    def _new_mapper(self) -> None:
        self.schedule, self.mapper = self._build_mapper()
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
    def start(self, supervisor=None) -> None:
        """Start the worker threads; with a ``fhgs_ros.online.guard.Supervisor`` a loop that raises is
        restarted (and reported), instead of dying silently."""
        self._stop.clear()
        self.supervisor = supervisor
        for name, fn in (("fhgs-frontend", self._frontend_loop), ("fhgs-optimizer", self._optimizer_loop),
                         ("fhgs-saver", self._saver_loop)):
            if supervisor is not None:
                self._threads.append(supervisor.spawn(name, fn))
                continue
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

    def add_frame_done_listener(self, cb: Callable[[float, str], None]) -> None:
        """Call ``cb(stamp, outcome)`` when a submitted frame is finished (flow control, accounting)."""
        self._frame_done_listeners.append(cb)

    def apply_live(self, ncfg: NodeConfig) -> None:
        """Take the live-changeable node parameters of an already validated ``ncfg``."""
        self.ncfg = ncfg
        self.frontend.apply_live(ncfg)

    def alive(self) -> bool:
        if getattr(self, "supervisor", None) is not None and self._threads:
            return self.supervisor.all_ok()
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
        return self.frontend.seed_points.add(xyz, rgb)

    def pending_seed_points(self) -> int:
        return len(self.frontend.seed_points)

    def reset(self, timeout: float = 10.0) -> tuple[bool, str]:
        return self._command("reset", None, timeout)

    def load(self, path: str, timeout: float = 30.0) -> tuple[bool, str]:
        """Validate and load a map file; on any problem the current map is left untouched."""
        from fhgs_ros.core.storage import MapFileError, load_map

        try:
            surfels, meta, extra = load_map(path, max_bytes=int(getattr(self.ncfg, "max_map_file_mb", 2048) * 2 ** 20))
        except MapFileError as exc:
            return False, str(exc)
        except (OSError, ValueError) as exc:  # defensive: anything else unreadable
            return False, f"map file '{path}': {exc}"
        from fhgs_ros.features.selection import check_map_encoder
        why = check_map_encoder(str(meta.get("feature_extractor") or meta.get("feature_model") or ""), self.model_id,
                                f"map file '{path}'")
        if why:
            return False, why + "; map not loaded"
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
                    self.frontend.reset()
                    self._drain_prepared()
                    self._publish_state()
                    box.update(ok=True, msg="map reset: 0 surfels, 0 keyframes")
                elif name == "load":
                    path, surfels, meta, extra = arg
                    self._epoch += 1
                    self.frontend.reset_stereo()
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
        """Build the loaded map completely aside, then swap it in (a failure leaves the live map untouched)."""
        import math

        from fhgs_ros.online.motion import robust_extent

        schedule, m = self._build_mapper()
        node_meta = meta.get("node") or {}
        m.replace_map(surfels, int(node_meta.get("iteration", 0)))
        cameras = list(meta.get("keyframes") or [])
        if not all(isinstance(c, Camera) for c in cameras):
            raise ValueError("the map's keyframes are not cameras")
        keyframes_total = int(node_meta.get("keyframes_total", len(cameras)))
        last_stamp = float(node_meta.get("stamp", 0.0))
        if not math.isfinite(last_stamp):
            raise ValueError("the map's stamp is not finite")
        if cameras:
            m.set_extent(robust_extent(torch.stack([c.center for c in cameras[-200:]]).numpy()))
        try:
            pca = FeaturePCA.from_state(extra) if FeaturePCA.has_state(extra) else None
        except (KeyError, ValueError):
            pca = None
        c = extra.get("cluster_centroids")
        centroids = c.float() if c is not None and c.ndim == 2 and c.shape[1] == self.dim else None
        if pca is None:
            pca, centroids = self._visuals(m.surfels, centroids)
        # everything built and checked: swap (nothing below can fail on file content)
        self._new_mapper()
        self.schedule, self.mapper = schedule, m
        self.cameras, self.keyframes_total, self.last_stamp = cameras, keyframes_total, last_stamp
        self.kf_start_iter = m.iteration
        self.pca, self.centroids = pca, centroids
        self.frontend.selector.reset()

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

    def prepare(self, fr: InputFrame) -> PreparedKeyframe | None:
        """The frontend's keyframe for ``fr`` against the current map (None: not a keyframe)."""
        return self.frontend.prepare(fr, self.state.surfels)

    def _done(self, stamp: float, outcome: str) -> None:
        for cb in self._frame_done_listeners:
            try:
                cb(stamp, outcome)
            except Exception:  # noqa: BLE001
                log.exception("frame-done listener failed")

    @property
    def idle(self) -> bool:
        """No frame queued or being prepared, no keyframe waiting, and (budget mode) its budget spent."""
        return (self.frames.empty() and self.prepared.empty() and self._busy == 0 and self._in_budget is None)

    def process_sync(self, fr: InputFrame) -> bool:
        """Synchronous frame path for batch mapping (engine threads not started): prepare, integrate and
        run exactly ``steps_per_keyframe`` iterations, as the node does in ``step_mode: budget``.
        Returns True when the frame became a keyframe."""
        t0 = time.perf_counter()
        prep = self._prepare_checked(fr)
        # sequential path: the optimizer is idle for the whole preparation (feature extraction included)
        self.counters.inc("optimizer_wait_for_features_s", time.perf_counter() - t0)
        if prep is None:
            return False
        self._integrate(prep)
        self._publish_state()
        self._spend_budget_sync()
        self._publish_state()
        self._done(prep.keyframe.stamp, "keyframe")
        return True

    def finish_stream(self) -> int:
        """End of a batch stream (``fhgs-replay --offline``; engine threads not started): seed the keyframes whose
        stereo depth still waits for later ones (``seed.mvs_defer``, sources on one side only) and give those
        surfels one keyframe budget (``steps_per_keyframe``) of iterations. Returns the number of new surfels."""
        new = self.frontend.flush_stereo(self.state.surfels)
        if new is None or not len(new):
            return 0
        m = self.mapper
        with m.lock:
            m.add_surfels(new)
        self._start_budget()
        self.counters.inc("stereo_flushed_surfels", len(new))
        self._spend_budget_sync()
        self._publish_state()
        return len(new)

    def _start_budget(self) -> None:
        """A new keyframe budget starts at the mapper's current iteration (``node.step_mode: budget``)."""
        self.kf_start_iter = self.mapper.iteration
        self.schedule.new_keyframe(self.mapper.iteration)

    def _spend_budget_sync(self) -> None:
        """Run the rest of the current keyframe budget (``steps_per_keyframe`` iterations) on this thread."""
        m = self.mapper
        while m.iteration - self.kf_start_iter < self.ncfg.steps_per_keyframe and len(m.surfels):
            self._timed_step()

    def _timed_step(self) -> None:
        m = self.mapper
        t0 = time.perf_counter()
        m.step()
        dt = (time.perf_counter() - t0) * 1000
        self.iter_ms = dt if self.iter_ms == 0 else 0.9 * self.iter_ms + 0.1 * dt
        self.counters.inc("iterations")
        if m.densify_log and m.densify_log[-1].get("iteration") == m.iteration:
            self.counters.inc("densifications")

    # ------------------------------------------------------------------ optimizer
    def _update_extent(self) -> None:
        """Scene extent (scales the position learning rate) robust to outlier keyframes (online/motion.py)."""
        from fhgs_ros.online.motion import robust_extent

        c = torch.stack([cam.center for cam in self.cameras[-200:]])
        self.mapper.set_extent(robust_extent(c.double().numpy()))

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
        self._start_budget()
        self._update_extent()
        if self.pca is None:
            self._fit_visuals()
        self.counters.inc("keyframes")

    def _fit_visuals(self) -> None:
        """Fit the map's fixed feature PCA and cluster centres once (kept for the map's lifetime)."""
        if len(self.mapper.surfels) >= 16:
            self.pca, self.centroids = self._visuals(self.mapper.surfels, self.centroids)

    def _visuals(self, s: SurfelMap, centroids=None):
        """(feature PCA or None, cluster centres) of a map (unchanged ``centroids`` when it is too small)."""
        if len(s) < 16:
            return None, centroids
        pca = None
        try:
            pca = FeaturePCA.fit(s.features_raw.float())
        except ValueError as exc:
            log.warning("feature PCA not fitted: %s", exc)
        return pca, kmeans_centroids(s.features_unit, self.ncfg.cloud_clusters, seed=self.cfg.mapper.seed)

    def _optimizer_loop(self) -> None:
        if self.ncfg.torch_threads > 0:
            torch.set_num_threads(self.ncfg.torch_threads)
        last_pub = time.monotonic()
        changed = False
        carry: PreparedKeyframe | None = None
        if getattr(self, "supervisor", None) is not None:
            self.optimizer_error = None  # (re)started by the supervisor
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
                    carry = self._wait_prepared()
                if changed and time.monotonic() - last_pub >= 0.5:
                    self._publish_state()
                    last_pub = time.monotonic()
                    changed = False
        except Exception as exc:  # noqa: BLE001
            self.optimizer_error = f"{type(exc).__name__}: {exc}"
            if getattr(self, "supervisor", None) is not None:
                raise  # the supervisor restarts the loop and reports it
            log.exception("optimizer thread died")

    def _wait_prepared(self) -> PreparedKeyframe | None:
        """Next prepared keyframe (waits up to ``idle_sleep``). Time spent waiting while the frontend has
        a frame queued or in preparation (features being extracted) is counted as
        ``optimizer_wait_for_features_s``: optimizer idle time caused by the encoder."""
        busy = self._busy > 0 or not self.frames.empty()
        t0 = time.perf_counter()
        try:
            return self.prepared.get(timeout=max(self.ncfg.idle_sleep, 0.001))
        except queue.Empty:
            return None
        finally:
            if busy:
                self.counters.inc("optimizer_wait_for_features_s", time.perf_counter() - t0)

    def _budget_tick(self) -> None:
        """step_mode budget: one keyframe at a time, exactly steps_per_keyframe iterations, then done."""
        p = self._in_budget
        if p is None:
            p = self._wait_prepared()
            if p is None:
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


__all__ = ["MappingEngine", "cleanup_stale_temp_files"]
