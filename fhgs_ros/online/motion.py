"""Plausibility of input poses and stamps (ROS-free): one bad frame must not damage the map.

- :class:`MotionGate`: a frame whose camera moved farther than ``max_jump + max_speed * dt`` or
  turned more than ``max_turn + max_angular_speed * dt`` since the last accepted frame (dt capped
  at ``max_dt``) is rejected (``implausible_motion``); ``recover_frames`` consecutive rejected
  frames that are plausible among themselves re-anchor the gate (the pose source relocalized).
- :class:`Timeline`: image stamps must increase; a stamp older than the newest accepted one
  (``time_backwards``) or more than ``max_forward`` seconds newer (``time_jump``) is refused, and
  ``recover_frames`` consecutive refused stamps that increase plausibly among themselves re-anchor
  the timeline (a clock glitch or a restarted bag recovers by itself). ROS time jumps reset it.
- :func:`robust_extent`: the scene extent that scales the position learning rate, from the
  keyframe centres around their median, outliers beyond 3 median distances ignored (one far
  camera does not inflate it).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import numpy as np

from fhgs_ros.online.guard import Rejected

MAX_ABS_COORD = 1.0e6  # [m]


@dataclass
class MotionLimits:
    """node.motion_* parameters."""

    max_speed: float = 50.0            # [m/s]
    max_jump: float = 2.0              # [m] allowed on top of max_speed * dt
    max_angular_speed_deg: float = 1440.0  # [deg/s]
    max_turn_deg: float = 45.0         # [deg] allowed on top of max_angular_speed_deg * dt
    max_dt: float = 2.0                # [s] longer gaps are priced as this
    recover_frames: int = 3            # consistent rejected frames that re-anchor (0 = never)

    @staticmethod
    def from_node(nc) -> "MotionLimits":
        return MotionLimits(nc.motion_max_speed, nc.motion_max_jump, nc.motion_max_angular_speed_deg,
                            nc.motion_max_turn_deg, nc.motion_max_dt, nc.motion_recover_frames)


def rotation_deg(r_a: np.ndarray, r_b: np.ndarray) -> float:
    """Angle of the relative rotation in degrees (180 when the matrices are not finite)."""
    from fhgs_ros.core.geometry import rotation_angle_deg

    return rotation_angle_deg(r_a, r_b) if np.isfinite(r_a).all() and np.isfinite(r_b).all() else 180.0


def check_pose_range(pose: np.ndarray, what: str = "pose") -> None:
    """Refuse a 4x4 pose that is not float32-finite or lies beyond MAX_ABS_COORD."""
    p = np.asarray(pose, dtype=np.float64)
    if p.shape != (4, 4) or not np.isfinite(p).all():
        raise Rejected("pose_nan", f"{what}: not a finite 4x4 pose")
    if np.abs(p[:3, 3]).max() > MAX_ABS_COORD:
        raise Rejected("pose_out_of_range", f"{what}: position {np.round(p[:3, 3], 1).tolist()} is beyond "
                                            f"{MAX_ABS_COORD:g} m")


class MotionGate:
    """Speed / rotation gate between consecutive accepted camera poses (module docstring). Thread-safe."""

    def __init__(self, limits: MotionLimits):
        self.limits = limits
        self.last: tuple[float, np.ndarray] | None = None
        self.candidates: list[tuple[float, np.ndarray]] = []
        self.lock = threading.Lock()
        self.reanchors = 0

    def reset(self) -> None:
        with self.lock:
            self.last = None
            self.candidates = []

    def _plausible(self, a: tuple[float, np.ndarray], b: tuple[float, np.ndarray]) -> tuple[bool, float, float]:
        lim = self.limits
        dt = min(max(b[0] - a[0], 0.0), lim.max_dt)
        dist = float(np.linalg.norm(b[1][:3, 3] - a[1][:3, 3]))
        ang = rotation_deg(a[1][:3, :3], b[1][:3, :3])
        ok = dist <= lim.max_jump + lim.max_speed * dt and ang <= lim.max_turn_deg + lim.max_angular_speed_deg * dt
        return ok, dist, ang

    def check(self, stamp: float, c2w: np.ndarray) -> str:
        """"" (accepted), "reanchored" (accepted as a new anchor); raises Rejected (implausible_motion)."""
        check_pose_range(c2w, f"frame {stamp:.3f}")
        cur = (float(stamp), np.array(c2w, dtype=np.float64))
        with self.lock:
            if self.last is None:
                self.last = cur
                return ""
            ok, dist, ang = self._plausible(self.last, cur)
            if ok:
                self.last, self.candidates = cur, []
                return ""
            if self.candidates and self._plausible(self.candidates[-1], cur)[0]:
                self.candidates.append(cur)
            else:
                self.candidates = [cur]
            n = self.limits.recover_frames
            if n > 0 and len(self.candidates) >= n:
                self.last, self.candidates = cur, []
                self.reanchors += 1
                return "reanchored"
        raise Rejected("implausible_motion", f"frame {stamp:.3f}: the camera moved {dist:.3g} m / turned {ang:.0f} deg "
                                             f"since the last accepted frame (limits node.motion_max_speed="
                                             f"{self.limits.max_speed:g} m/s, motion_max_jump={self.limits.max_jump:g}"
                                             f" m, motion_max_angular_speed_deg={self.limits.max_angular_speed_deg:g},"
                                             f" motion_max_turn_deg={self.limits.max_turn_deg:g}); frame dropped")


@dataclass
class Timeline:
    """Image stamp plausibility with glitch recovery (module docstring). Not locked: the caller holds one."""

    max_forward: float = 600.0     # [s] a stamp further ahead of the newest one is a jump
    recover_frames: int = 3
    candidates: list[float] = field(default_factory=list)
    reanchors: int = 0

    def reset(self) -> None:
        self.candidates = []

    def check(self, stamp: float, newest: float | None) -> bool:
        """True: accept and re-anchor (forget ``newest``); False: accept; raises Rejected otherwise."""
        if not math.isfinite(stamp) or stamp < 0:
            raise Rejected("bad_stamp", f"image stamp {stamp} is not a valid time")
        if newest is None:
            self.candidates = []
            return False
        if stamp == newest:
            raise Rejected("duplicate_stamp", f"image stamp {stamp:.3f} repeats the previous one; dropped")
        if newest < stamp <= newest + self.max_forward:
            self.candidates = []
            return False
        c = self.candidates
        if c and c[-1] < stamp <= c[-1] + self.max_forward:
            c.append(stamp)
        else:
            self.candidates = c = [stamp]
        if self.recover_frames > 0 and len(c) >= self.recover_frames:
            self.candidates = []
            self.reanchors += 1
            return True
        if stamp < newest:
            raise Rejected("time_backwards", f"image stamp {stamp:.3f} is older than the previous image "
                                             f"({newest:.3f}): time went backwards; image dropped")
        raise Rejected("time_jump", f"image stamp {stamp:.3f} is {stamp - newest:.0f} s after the previous image "
                                    f"({newest:.3f}), more than {self.max_forward:g} s; image dropped")


def robust_extent(centers: np.ndarray, floor: float = 1.0) -> float:
    """Scene radius from keyframe centres (N, 3): 1.1 x the largest distance to the median centre among
    the centres within 3 median distances of it (far outliers ignored; ``floor`` at least)."""
    c = np.asarray(centers, dtype=np.float64).reshape(-1, 3)
    c = c[np.isfinite(c).all(1)]
    if len(c) < 2:
        return floor
    d = np.linalg.norm(c - np.median(c, axis=0), axis=1)
    inl = d[d <= 3.0 * float(np.median(d)) + 1e-9]
    return float(max(floor, min(1.1 * float(inl.max(initial=0.0)), MAX_ABS_COORD)))


__all__ = ["MotionGate", "MotionLimits", "Timeline", "robust_extent", "check_pose_range", "MAX_ABS_COORD"]
