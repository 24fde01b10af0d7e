"""Pinhole camera in OpenCV axes (x right, y down, z forward).

Pixel convention (OpenCV): the centre of pixel (col, row) sits at the continuous
image coordinate (col, row); ``cx, cy`` are in that convention. All loaders convert
their conventions (NeRF/OpenGL, COLMAP, ROS) to this class once, when loading.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import math

import torch


class CameraError(ValueError):
    """A camera with invalid intrinsics or pose."""


@dataclass
class Camera:
    """Pinhole camera.

    Attributes:
        width, height: image size in pixels.
        fx, fy, cx, cy: intrinsics in pixels (OpenCV convention).
        world_to_cam: (4, 4) float tensor, world frame -> camera frame (OpenCV axes).
        near, far: clipping distances in metres (camera z).
        name: free-form identifier (file name, stamp), used in error messages.
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    world_to_cam: torch.Tensor
    near: float = 0.2
    far: float = 100.0
    name: str = ""
    _c2w: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.world_to_cam = torch.as_tensor(self.world_to_cam, dtype=torch.float32).reshape(4, 4)
        self.validate()

    def validate(self) -> None:
        """Raise CameraError naming the field when anything is NaN or degenerate."""
        who = f"camera '{self.name}'" if self.name else "camera"
        if int(self.width) < 1 or int(self.height) < 1:
            raise CameraError(f"{who}: image size must be positive, got {self.width}x{self.height}")
        for fname in ("fx", "fy", "cx", "cy"):
            v = float(getattr(self, fname))
            if not math.isfinite(v):
                raise CameraError(f"{who}: intrinsic '{fname}' is not finite ({v})")
        if self.fx <= 0 or self.fy <= 0:
            raise CameraError(f"{who}: focal lengths must be > 0, got fx={self.fx}, fy={self.fy}")
        m = self.world_to_cam
        if not torch.isfinite(m).all():
            raise CameraError(f"{who}: pose (world_to_cam) contains NaN or Inf")
        r = m[:3, :3].double()
        if (r @ r.T - torch.eye(3, dtype=torch.float64)).abs().max() > 1e-3 or abs(torch.det(r) - 1) > 1e-3:
            raise CameraError(f"{who}: pose rotation is not a proper rotation matrix")
        if not 0 < self.near < self.far:
            raise CameraError(f"{who}: need 0 < near < far, got near={self.near}, far={self.far}")

    @property
    def K(self) -> torch.Tensor:
        """(3, 3) intrinsic matrix."""
        return torch.tensor([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def cam_to_world(self) -> torch.Tensor:
        """(4, 4) camera -> world transform (OpenCV camera axes)."""
        if self._c2w is None:
            self._c2w = torch.linalg.inv(self.world_to_cam.double()).float()
        return self._c2w

    @property
    def center(self) -> torch.Tensor:
        """(3,) camera centre in world coordinates."""
        return self.cam_to_world[:3, 3]

    def projection(self) -> torch.Tensor:
        """(3, 4) world -> homogeneous pixel matrix P = K [R | t]."""
        return self.K @ self.world_to_cam[:3, :]

    def scaled(self, factor: float) -> "Camera":
        """Camera for an image resized by ``factor`` (e.g. 0.5 halves both sides)."""
        w = max(1, int(round(self.width * factor)))
        h = max(1, int(round(self.height * factor)))
        sx, sy = w / self.width, h / self.height
        return Camera(w, h, self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5,
                      self.world_to_cam.clone(), self.near, self.far, self.name)

    def to_dict(self) -> dict:
        return {"width": int(self.width), "height": int(self.height), "fx": float(self.fx), "fy": float(self.fy),
                "cx": float(self.cx), "cy": float(self.cy), "near": float(self.near), "far": float(self.far),
                "world_to_cam": self.world_to_cam.tolist(), "name": self.name}

    @staticmethod
    def from_dict(d: dict) -> "Camera":
        return Camera(int(d["width"]), int(d["height"]), float(d["fx"]), float(d["fy"]), float(d["cx"]),
                      float(d["cy"]), torch.tensor(d["world_to_cam"], dtype=torch.float32),
                      float(d.get("near", 0.2)), float(d.get("far", 100.0)), str(d.get("name", "")))


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """World->camera (4, 4) for a camera at ``eye`` looking at ``target`` (OpenCV axes, world z up)."""
    eye = torch.as_tensor(eye, dtype=torch.float64)
    target = torch.as_tensor(target, dtype=torch.float64)
    up = torch.as_tensor(up, dtype=torch.float64)
    z = target - eye
    z = z / z.norm()
    x = torch.linalg.cross(z, up)
    if x.norm() < 1e-9:  # looking along up: pick any perpendicular
        x = torch.linalg.cross(z, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    r = torch.stack([x, y, z])  # rows: camera axes in world
    m = torch.eye(4, dtype=torch.float64)
    m[:3, :3] = r
    m[:3, 3] = -r @ eye
    return m.float()
