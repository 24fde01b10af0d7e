"""The one camera model: pinhole intrinsics with lens distortion, and the posed pinhole camera.

Axes: OpenCV (x right, y down, z forward). Pixel convention (OpenCV): the centre of pixel
(col, row) sits at the continuous image coordinate (col, row); ``cx, cy`` are in that
convention. All loaders (NeRF/OpenGL, COLMAP, OpenSfM, ROS camera_info, calibration files)
convert to these classes once, when loading.

- :class:`Intrinsics`: a sensor's pinhole K plus distortion (OpenCV / ROS ``camera_info``
  models ``plumb_bob``, ``rational_polynomial`` (coefficients k1 k2 p1 p2 k3 [k4 k5 k6]) and
  ``equidistant`` (fisheye k1..k4)). Distortion math is OpenCV's own
  (``cv2.projectPoints``, ``cv2.fisheye``, ``cv2.initUndistortRectifyMap``, ``cv2.remap``).
- :class:`Undistorter`: resamples images of a distorted sensor into the pinhole camera with the
  same K and size (pixels whose source lies outside the input are invalid: 0 / unknown).
- :class:`Camera`: an undistorted pinhole (the same intrinsics fields) plus a world->camera
  pose; the rasterizer's camera.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

DISTORTION_MODELS = ("plumb_bob", "rational_polynomial", "equidistant")


def _scaled_pinhole(fx: float, fy: float, cx: float, cy: float, sx: float, sy: float) -> tuple[float, ...]:
    """Intrinsics of an image resized by (sx, sy), pixel centres kept aligned (OpenCV convention)."""
    return fx * sx, fy * sy, (cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics [px] plus lens distortion of one sensor (OpenCV pixel convention).

    ``d`` holds the OpenCV coefficients of ``model``: plumb_bob / rational_polynomial
    (k1, k2, p1, p2, k3, k4, k5, k6; missing ones are 0), equidistant (k1, k2, k3, k4).
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    model: str = "plumb_bob"
    d: tuple[float, ...] = ()

    @staticmethod
    def brown(width: int, height: int, fx: float, fy: float, cx: float, cy: float, k1: float = 0.0,
              k2: float = 0.0, p1: float = 0.0, p2: float = 0.0, k3: float = 0.0, k4: float = 0.0, k5: float = 0.0,
              k6: float = 0.0) -> "Intrinsics":
        """Radial-tangential (Brown-Conrady: COLMAP OPENCV/FULL_OPENCV, OpenSfM brown, NeRF k1..p2)."""
        rational = any(v != 0.0 for v in (k4, k5, k6))
        d = (k1, k2, p1, p2, k3, k4, k5, k6) if rational else (k1, k2, p1, p2, k3)
        return Intrinsics(int(width), int(height), float(fx), float(fy), float(cx), float(cy),
                          "rational_polynomial" if rational else "plumb_bob",
                          tuple(float(v) for v in d) if any(v != 0.0 for v in d) else ())

    @property
    def has_distortion(self) -> bool:
        return any(abs(v) > 0 for v in self.d)

    @property
    def K(self) -> np.ndarray:
        """(3, 3) float64 intrinsic matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def coefficients(self) -> np.ndarray:
        """The distortion vector in OpenCV's layout for ``model`` (4 for fisheye, 8 otherwise)."""
        n = 4 if self.model == "equidistant" else 8
        return np.array((list(self.d) + [0.0] * n)[:n], dtype=np.float64)

    def distortion_dict(self) -> dict:
        """Model and named coefficients (for dataset metadata)."""
        names = ("k1", "k2", "k3", "k4") if self.model == "equidistant" else ("k1", "k2", "p1", "p2", "k3", "k4",
                                                                               "k5", "k6")
        return {"model": self.model, **dict(zip(names, self.coefficients().tolist()))}

    def scaled(self, w: int, h: int) -> "Intrinsics":
        """Intrinsics of the image resized to w x h (pixel centres kept aligned, like Camera.scaled)."""
        fx, fy, cx, cy = _scaled_pinhole(self.fx, self.fy, self.cx, self.cy, w / self.width, h / self.height)
        return Intrinsics(w, h, fx, fy, cx, cy, self.model, self.d)

    def key(self) -> tuple:
        return (self.width, self.height, self.fx, self.fy, self.cx, self.cy, self.model, tuple(self.d))

    def distort_normalized(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Apply the lens model to normalized pinhole coordinates (x, y) = ((u-cx)/fx, (v-cy)/fy)."""
        return distort_normalized(x, y, self.model, self.d)

    def undistort_pixels(self, uv: np.ndarray, dst: "Intrinsics | None" = None) -> np.ndarray:
        """Distorted pixel coordinates (N, 2) of this sensor -> pixels of the pinhole ``dst`` (default:
        the same K without distortion)."""
        pts = np.asarray(uv, dtype=np.float64).reshape(-1, 1, 2)
        p = (dst or self).K
        if not self.has_distortion:
            out = (pts[:, 0] - [self.cx, self.cy]) / [self.fx, self.fy]
            return out * [p[0, 0], p[1, 1]] + [p[0, 2], p[1, 2]]
        if self.model == "equidistant":
            out = cv2.fisheye.undistortPoints(pts, self.K, self.coefficients(), P=p)
        else:
            crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-12)
            if hasattr(cv2, "undistortPointsIter"):  # OpenCV 4.x
                out = cv2.undistortPointsIter(pts, self.K, self.coefficients(), None, p, crit)
            else:  # OpenCV 5.x: undistortPoints takes the criteria
                out = cv2.undistortPoints(pts, self.K, self.coefficients(), R=None, P=p, criteria=crit)
        return out.reshape(-1, 2)


def distort_normalized(x: np.ndarray, y: np.ndarray, model: str, d) -> tuple[np.ndarray, np.ndarray]:
    """Apply a distortion model to normalized pinhole coordinates (OpenCV's projection functions)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    shape = np.broadcast(x, y).shape
    pts = np.stack(np.broadcast_arrays(x, y), -1).reshape(-1, 1, 2)
    if pts.shape[0] == 0:
        return np.zeros(shape), np.zeros(shape)
    if model == "equidistant":
        coef = np.array((list(d) + [0.0] * 4)[:4], dtype=np.float64)
        out = cv2.fisheye.distortPoints(pts, np.eye(3), coef)
    else:
        coef = np.array((list(d) + [0.0] * 8)[:8], dtype=np.float64)
        obj = np.concatenate([pts, np.ones(pts.shape[:2] + (1,))], -1)
        out, _ = cv2.projectPoints(obj, np.zeros(3), np.zeros(3), np.eye(3), coef)
    out = out.reshape(shape + (2,))
    return out[..., 0], out[..., 1]


class Undistorter:
    """Remaps images of one distorted sensor to the undistorted pinhole camera with the same K and size.

    The remap tables come from ``cv2.initUndistortRectifyMap`` (``cv2.fisheye`` for equidistant)
    once per sensor; colour is sampled bilinearly, depth and labels by nearest neighbour
    (``cv2.remap``). Output pixels whose source falls outside the input are invalid: 0 (black,
    unknown depth) or ``unknown`` for labels, and False in :attr:`valid`.
    """

    def __init__(self, intr: Intrinsics):
        self.intr = intr
        size = (intr.width, intr.height)
        if intr.model == "equidistant":
            mx, my = cv2.fisheye.initUndistortRectifyMap(intr.K, intr.coefficients(), np.eye(3), intr.K, size,
                                                         cv2.CV_32FC1)
        else:
            mx, my = cv2.initUndistortRectifyMap(intr.K, intr.coefficients(), np.eye(3), intr.K, size, cv2.CV_32FC1)
        self.map_x, self.map_y = mx, my
        w, h = size
        self.valid = (mx >= -0.5) & (mx <= w - 0.5) & (my >= -0.5) & (my <= h - 0.5)

    def _remap(self, img: np.ndarray, nearest: bool, fill: float = 0) -> np.ndarray:
        interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
        out = cv2.remap(np.ascontiguousarray(img), self.map_x, self.map_y, interp, borderMode=cv2.BORDER_CONSTANT,
                        borderValue=fill)
        out[~self.valid] = fill
        return out

    def undistort_rgb(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> undistorted (H, W, 3) uint8."""
        return self._remap(rgb, nearest=False)

    def undistort_depth(self, depth: np.ndarray) -> np.ndarray:
        """(H, W) metres -> undistorted float32 (0 = unknown), nearest lookup."""
        return self._remap(depth.astype(np.float32), nearest=True)

    def undistort_labels(self, labels: np.ndarray, unknown: int = 65535) -> np.ndarray:
        """Nearest lookup of a label image (integer ids); pixels outside the input get ``unknown``."""
        if labels.dtype.itemsize <= 2 and labels.dtype.kind in "ui" and unknown <= np.iinfo(labels.dtype).max:
            return self._remap(labels, nearest=True, fill=unknown)
        out = self._remap(labels.astype(np.float64), nearest=True, fill=unknown)  # exact for ids < 2^53
        return out.astype(labels.dtype)

    def undistort_tensor(self, img: torch.Tensor, nearest: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(C, H, W) float tensor -> (undistorted tensor, (H, W) bool valid mask)."""
        arr = img.detach().double().permute(1, 2, 0).numpy() if img.dim() == 3 else img.detach().double().numpy()
        out = self._remap(arr.astype(np.float32) if not nearest else arr, nearest)
        t = torch.from_numpy(np.ascontiguousarray(out))
        if img.dim() == 3:
            t = t.reshape(img.shape[1], img.shape[2], -1).permute(2, 0, 1)
        return t.to(img.dtype), torch.from_numpy(self.valid.copy())


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

    @property
    def intrinsics(self) -> Intrinsics:
        """This camera's pinhole (no distortion) as :class:`Intrinsics`."""
        return Intrinsics(int(self.width), int(self.height), float(self.fx), float(self.fy), float(self.cx),
                          float(self.cy))

    @staticmethod
    def from_intrinsics(intr: Intrinsics, world_to_cam, near: float = 0.2, far: float = 100.0,
                        name: str = "") -> "Camera":
        """Posed camera of an undistorted sensor (raises CameraError when ``intr`` still has distortion)."""
        if intr.has_distortion:
            raise CameraError(f"camera '{name}': undistort the image first (model {intr.model})")
        return Camera(intr.width, intr.height, intr.fx, intr.fy, intr.cx, intr.cy, world_to_cam, near, far, name)

    def scaled(self, factor: float) -> "Camera":
        """Camera for an image resized by ``factor`` (e.g. 0.5 halves both sides)."""
        w = max(1, int(round(self.width * factor)))
        h = max(1, int(round(self.height * factor)))
        fx, fy, cx, cy = _scaled_pinhole(self.fx, self.fy, self.cx, self.cy, w / self.width, h / self.height)
        return Camera(w, h, fx, fy, cx, cy, self.world_to_cam.clone(), self.near, self.far, self.name)

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
