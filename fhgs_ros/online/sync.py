"""Approximate time synchronization of the node's inputs (ROS-free; message_filters is not needed).

The colour image is the pivot. Each image waits (bounded queue) until it has
- a camera_info whose stamp is within ``slop`` seconds of the image stamp (nearest one),
- a depth image within ``slop`` (only when depth is expected: ``use_depth`` and depth has been
  seen recently; otherwise the frame goes on without depth),
- a label image within ``slop`` (only with ``need_labels``: the ``label`` feature extractor),
- a pose at the image stamp (a callback: pose/odometry buffer with interpolation, or TF),
or until it has waited ``timeout`` seconds (wall clock), when it is dropped with the reason
naming what was missing. A match is final once a message at or after the image stamp has been
seen on that stream (a later message cannot be nearer), or the image has waited ``slop``.
Images whose stamp is older than the previous accepted image are rejected ("time went
backwards"). Everything here is counted by the caller through the returned drop reasons.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from fhgs_ros.online.imageproc import InputError
from fhgs_ros.core.geometry import interpolate_pose
from fhgs_ros.online.guard import Rejected


class StampedBuffer:
    """Bounded buffer of (stamp, item) kept sorted by stamp."""

    def __init__(self, maxlen: int = 32):
        self.maxlen = maxlen
        self.stamps: list[float] = []
        self.items: list[Any] = []

    def __len__(self) -> int:
        return len(self.stamps)

    def add(self, stamp: float, item: Any) -> None:
        i = bisect.bisect_right(self.stamps, stamp)
        self.stamps.insert(i, stamp)
        self.items.insert(i, item)
        while len(self.stamps) > self.maxlen:
            self.stamps.pop(0)
            self.items.pop(0)

    def clear(self) -> None:
        self.stamps.clear()
        self.items.clear()

    @property
    def newest(self) -> float | None:
        return self.stamps[-1] if self.stamps else None

    def nearest(self, stamp: float, slop: float) -> tuple[float, Any] | None:
        """(stamp, item) nearest to ``stamp`` with |dt| <= slop, or None."""
        if not self.stamps:
            return None
        i = bisect.bisect_left(self.stamps, stamp)
        best = None
        for j in (i - 1, i):
            if 0 <= j < len(self.stamps):
                dt = abs(self.stamps[j] - stamp)
                if dt <= slop and (best is None or dt < best[0]):
                    best = (dt, j)
        if best is None:
            return None
        j = best[1]
        return self.stamps[j], self.items[j]


class PoseBuffer:
    """Stamped poses (4x4, frame -> map) with interpolation at any stamp inside the buffer.

    ``lookup(t)`` returns (pose or None, reason, final): bracketing poses within ``max_gap``
    seconds are interpolated (linear + slerp); a pose within ``slop`` of t is used as is when t
    lies outside the buffered span. ``final`` is False when a later pose may still make it
    answerable (t is newer than the newest pose).
    """

    def __init__(self, maxlen: int = 400, slop: float = 0.02, max_gap: float = 0.5):
        self.buf = StampedBuffer(maxlen)
        self.slop = slop
        self.max_gap = max_gap
        self.lock = threading.Lock()

    def add(self, stamp: float, pose: np.ndarray) -> None:
        with self.lock:
            self.buf.add(stamp, pose)

    def clear(self) -> None:
        with self.lock:
            self.buf.clear()

    def drop_newer(self, t: float) -> None:
        """Forget the poses stamped after ``t`` (the input timeline was re-anchored at t)."""
        with self.lock:
            i = bisect.bisect_right(self.buf.stamps, t)
            del self.buf.stamps[i:], self.buf.items[i:]

    def lookup(self, t: float) -> tuple[np.ndarray | None, str, bool]:
        with self.lock:
            st, it = self.buf.stamps, self.buf.items
            if not st:
                return None, "no pose received yet", False
            i = bisect.bisect_left(st, t)
            if i < len(st) and st[i] == t:
                return it[i], "", True
            if 0 < i < len(st):
                t0, t1 = st[i - 1], st[i]
                if t1 - t0 <= self.max_gap:
                    return interpolate_pose(it[i - 1], t0, it[i], t1, t), "", True
            near = self.buf.nearest(t, self.slop)
            if near is not None and (i == 0 or i == len(st)):
                if i == len(st) and t - near[0] > 0:
                    # A later pose could bracket t: wait for it unless we are past slop already.
                    return near[1], "", False
                return near[1], "", True
            if i == len(st):
                return None, f"no pose at or after t={t:.3f} (newest pose {st[-1]:.3f})", False
            if i == 0:
                return None, f"pose buffer starts at {st[0]:.3f}, after the image stamp {t:.3f}", True
            return None, f"gap of {st[i] - st[i - 1]:.3f} s in the poses around t={t:.3f} (max_gap {self.max_gap})", True


@dataclass
class PendingImage:
    stamp: float
    arrival: float
    data: Any                   # decoded image or a callable decoding it
    frame_id: str
    info: tuple[float, Any] | None = None
    depth: tuple[float, Any] | None = None
    labels: tuple[float, Any] | None = None
    pose: np.ndarray | None = None
    pose_wait_reason: str = ""


@dataclass
class SyncedFrame:
    stamp: float
    frame_id: str
    image: Any
    info: Any
    depth: Any | None
    pose: np.ndarray
    waited: float = 0.0
    extra: dict = field(default_factory=dict)
    labels: Any | None = None


class FrameAssembler:
    """Approximate-time matching of images with camera_info, depth and a pose (module docstring).

    Thread-safe: ``add_*`` from subscription callbacks, ``poll`` from a timer or after each add.
    ``poll(now, pose_lookup)`` returns (frames, drops) where drops is a list of InputError.
    pose_lookup(stamp, frame_id) -> (pose 4x4 or None, reason, final).
    """

    def __init__(self, slop: float = 0.02, timeout: float = 1.0, queue_size: int = 8, use_depth: bool = True,
                 depth_recent: float = 5.0, backwards_tolerance: float = 0.0,
                 depth_hint: Callable[[], bool] | None = None, need_labels: bool = False,
                 max_stamp_jump: float = 600.0, recover_frames: int = 3):
        self.slop = slop
        self.need_labels = need_labels
        self.timeout = timeout
        self.use_depth = use_depth
        self.depth_recent = depth_recent
        self.depth_hint = depth_hint  # e.g. "a depth publisher exists": wait for depth before the first one arrives
        self.backwards_tolerance = backwards_tolerance
        self.pending: deque[PendingImage] = deque()
        self.queue_size = queue_size
        self.infos = StampedBuffer(64)
        self.depths = StampedBuffer(max(8, queue_size * 2))
        self.labels = StampedBuffer(max(8, queue_size * 2))
        self.last_depth_arrival = -1e18
        self.last_stamp: float | None = None
        self.lock = threading.Lock()
        from fhgs_ros.online.motion import Timeline
        self.timeline = Timeline(max_stamp_jump, recover_frames)  # stamp plausibility + glitch recovery
        self.on_reanchor: Callable[[float], None] | None = None   # told the stamp of a re-anchored timeline

    def reset(self) -> None:
        with self.lock:
            self.pending.clear()
            self.infos.clear()
            self.depths.clear()
            self.labels.clear()
            self.last_stamp = None
            self.timeline.reset()

    def add_info(self, stamp: float, info: Any) -> None:
        with self.lock:
            self.infos.add(stamp, info)

    def add_depth(self, stamp: float, depth: Any, now: float) -> None:
        with self.lock:
            self.depths.add(stamp, depth)
            self.last_depth_arrival = now

    def add_labels(self, stamp: float, labels: Any) -> None:
        with self.lock:
            self.labels.add(stamp, labels)

    def add_image(self, stamp: float, data: Any, frame_id: str, now: float) -> list[InputError]:
        """Queue an image; returns drops (time going backwards, queue overflow)."""
        drops: list[InputError] = []
        with self.lock:
            newest = self.last_stamp
            if self.pending:
                newest = max(newest if newest is not None else -1e18, self.pending[-1].stamp)
            if newest is not None and newest - self.backwards_tolerance <= stamp < newest:
                newest = stamp - 1e-9  # within the tolerance
            try:
                reanchor = self.timeline.check(stamp, newest)
            except Rejected as exc:  # time_backwards / time_jump / duplicate_stamp / bad_stamp
                return [InputError(exc.kind, exc.reason)]
            if reanchor:  # a consistent new timeline: forget the old one (and the images waiting on it)
                for old in self.pending:
                    drops.append(InputError("time_glitch", f"image {old.stamp:.3f} dropped: the stamps re-anchored at "
                                                           f"{stamp:.3f}"))
                self.pending.clear()
                self.last_stamp = None
                for buf in (self.infos, self.depths, self.labels):
                    buf.clear()
                if self.on_reanchor is not None:
                    self.on_reanchor(stamp)
            self.pending.append(PendingImage(stamp, now, data, frame_id))
            while len(self.pending) > self.queue_size:
                old = self.pending.popleft()
                drops.append(InputError("queue_drop", f"sync queue full ({self.queue_size} images waiting); dropped "
                                                      f"the image of {old.stamp:.3f}"))
        return drops

    def depth_expected(self, now: float) -> bool:
        if not self.use_depth:
            return False
        if now - self.last_depth_arrival <= self.depth_recent:
            return True
        return bool(self.depth_hint is not None and self.depth_hint())

    def poll(self, now: float, pose_lookup: Callable[[float, str], tuple[np.ndarray | None, str, bool]]
             ) -> tuple[list[SyncedFrame], list[InputError]]:
        frames: list[SyncedFrame] = []
        drops: list[InputError] = []
        with self.lock:
            keep: deque[PendingImage] = deque()
            want_depth = self.depth_expected(now)
            blocked = False  # frames leave in stamp order: a waiting image holds the later ones back
            for p in self.pending:
                if blocked:
                    keep.append(p)
                    continue
                waited = now - p.arrival
                late = waited >= self.slop
                if p.info is None:
                    m = self.infos.nearest(p.stamp, self.slop)
                    if m is not None and (late or (self.infos.newest or -1e18) >= p.stamp):
                        p.info = m
                if want_depth and p.depth is None:
                    m = self.depths.nearest(p.stamp, self.slop)
                    if m is not None and (late or (self.depths.newest or -1e18) >= p.stamp):
                        p.depth = m
                if self.need_labels and p.labels is None:
                    m = self.labels.nearest(p.stamp, self.slop)
                    if m is not None and (late or (self.labels.newest or -1e18) >= p.stamp):
                        p.labels = m
                if p.pose is None:
                    pose, reason, final = pose_lookup(p.stamp, p.frame_id)
                    if pose is not None and (final or late):
                        p.pose = pose
                    elif pose is None:
                        p.pose_wait_reason = reason
                        if final:
                            drops.append(InputError("no_pose", f"image {p.stamp:.3f}: no pose ({reason}); dropped"))
                            continue
                ready = p.info is not None and p.pose is not None and (p.depth is not None or not want_depth) \
                    and (p.labels is not None or not self.need_labels)
                extra = {}
                if not ready and waited >= self.timeout:
                    if p.info is None:
                        why = ("no camera_info received on the camera_info topic" if len(self.infos) == 0
                               else f"no camera_info within slop {self.slop:.3f} s of the image stamp")
                        drops.append(InputError("missing_camera_info", f"image {p.stamp:.3f}: {why}; dropped after "
                                                                       f"{self.timeout:.1f} s"))
                        continue
                    if p.pose is None:
                        drops.append(InputError("no_pose", f"image {p.stamp:.3f}: no pose after {self.timeout:.1f} s "
                                                           f"({p.pose_wait_reason}); dropped"))
                        continue
                    if self.need_labels and p.labels is None:
                        why = ("no label image received on the labels topic" if len(self.labels) == 0
                               else f"no label image within slop {self.slop:.3f} s of the image stamp")
                        drops.append(InputError("missing_labels", f"image {p.stamp:.3f}: {why} (the 'label' feature "
                                                                  f"extractor needs one per image); dropped after "
                                                                  f"{self.timeout:.1f} s"))
                        continue
                    ready, extra = True, {"depth_missing": True}  # map it without depth
                if not ready:
                    keep.append(p)
                    blocked = True
                    continue
                if self.last_stamp is not None and p.stamp <= self.last_stamp:
                    drops.append(InputError("time_backwards", f"image stamp {p.stamp:.3f} is not newer than the "
                                                              f"last synced frame ({self.last_stamp:.3f}); dropped"))
                    continue
                self.last_stamp = p.stamp
                frames.append(SyncedFrame(p.stamp, p.frame_id, p.data, p.info[1],
                                          p.depth[1] if p.depth is not None else None, p.pose, waited, extra,
                                          p.labels[1] if p.labels is not None else None))
            self.pending = keep
        return frames, drops
