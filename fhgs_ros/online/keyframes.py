"""The keyframe policy of the online pipeline: when a posed frame becomes a keyframe."""

from __future__ import annotations

import numpy as np

from fhgs_ros.core.geometry import rotation_angle_deg


class KeyframeSelector:
    """A frame becomes a keyframe when the camera moved ``min_translation`` metres or turned
    ``min_rotation_deg`` degrees since the last keyframe, or ``max_interval`` seconds passed
    (0 = never by time); never sooner than ``min_interval`` seconds. The first frame always is one."""

    def __init__(self, min_translation: float = 0.1, min_rotation_deg: float = 10.0, max_interval: float = 5.0,
                 min_interval: float = 0.0):
        self.configure(min_translation, min_rotation_deg, max_interval, min_interval)
        self.last: tuple[float, np.ndarray] | None = None

    def configure(self, min_translation: float, min_rotation_deg: float, max_interval: float,
                  min_interval: float) -> None:
        """Thresholds [m], [deg], [s], [s] (see the class docstring)."""
        self.min_translation = min_translation
        self.min_rotation_deg = min_rotation_deg
        self.max_interval = max_interval
        self.min_interval = min_interval

    def reset(self) -> None:
        self.last = None

    def check(self, stamp: float, c2w: np.ndarray) -> tuple[bool, str]:
        """(is keyframe, why) without committing."""
        if self.last is None:
            return True, "first frame"
        t0, m0 = self.last
        dt = stamp - t0
        if dt < 0:  # the input timeline was re-anchored (clock glitch, restarted bag): start over
            return True, "time jumped back"
        if dt < self.min_interval:
            return False, "min_interval"
        dist = float(np.linalg.norm(c2w[:3, 3] - m0[:3, 3]))
        if dist >= self.min_translation:
            return True, f"moved {dist:.3f} m"
        ang = rotation_angle_deg(m0[:3, :3], c2w[:3, :3])
        if ang >= self.min_rotation_deg:
            return True, f"turned {ang:.1f} deg"
        if self.max_interval > 0 and dt >= self.max_interval:
            return True, f"{dt:.1f} s since the last keyframe"
        return False, "too close to the last keyframe"

    def commit(self, stamp: float, c2w: np.ndarray) -> None:
        self.last = (stamp, np.array(c2w, dtype=np.float64))
