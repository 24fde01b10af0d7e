"""Synthetic labelled room scene with exact ground truth, rendered by its own analytic ray caster.

The scene is a closed room (floor, four walls, ceiling: inward-facing planes) holding a table,
boxes, two spheres, a cylinder and a cabinet; 11 labels. Every surface has a procedural albedo
(checker, stripes, value noise) evaluated at the 3-D surface point, times Lambert shading from a
fixed point light, so colours are exactly view-independent. Two objects are deliberately hard for
appearance-only methods: ``floor_box`` carries the floor's checker (same world-space pattern) and
``wall_panel`` the wall's texture, each on the surface it touches but with its own label.

The ray caster (numpy; ray-plane, ray-box slab, ray-sphere, ray-cylinder; nearest hit) is
independent of the package's rasterizer. ``render`` returns RGB (2x2 supersampled by default),
and centre-sample depth (camera z), world normals and integer labels.

Ground truth: the exact triangle mesh (boxes and planes exact, spheres icosphere level 4,
cylinder 96 segments; faces hidden by contact, such as box bottoms, removed; per-face labels),
area-uniform samples of the exposed surface with colour, normal and label, and a sparse
"SfM-like" point set whose observation tracks are depth-tested.

World frame: metres, z up, floor at z = 0; cameras in OpenCV axes (``fhgs_ros.core.camera``).
On disk (``generate_scene``): NeRF-style ``transforms.json`` (OpenGL camera axes, NeRF pixel
convention cx = cx_opencv + 0.5), ``images/NNNN.png``, ``depth/NNNN.png`` (uint16 mm),
``labels/NNNN.png`` (uint8 ids), ``scene.json``, ``gt_mesh.ply``, ``gt_points.ply``,
``points3d.ply`` + ``tracks.npz``. CLI: ``python -m fhgs_ros.datasets.synthetic OUT``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fhgs_ros.core.camera import Camera, look_at
from fhgs_ros.datasets.base import Dataset, Frame, PointCloud

LABEL_NAMES = ["floor", "wall", "ceiling", "table", "box", "floor_box", "wall_panel", "sphere", "ball",
               "cylinder", "cabinet"]
LABEL_COLORS = [[128, 64, 128], [70, 70, 70], [190, 153, 153], [153, 102, 51], [220, 20, 60], [250, 170, 30],
                [102, 102, 156], [0, 0, 230], [107, 142, 35], [160, 32, 240], [0, 130, 130]]
L = {n: i for i, n in enumerate(LABEL_NAMES)}

ROOM_HALF = 3.5      # room spans x, y in [-3.5, 3.5]
ROOM_HEIGHT = 2.7    # z in [0, 2.7]
LIGHT_POS = np.array([0.5, -0.4, 2.45])
AMBIENT = 0.35
_EPS = 1e-7
_INF = np.inf


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot product of (N, 3) arrays (faster than (a * b).sum(1))."""
    return np.einsum("ij,ij->i", a, b)


# =========================================================================== procedural textures

class ValueNoise:
    """Smooth 3-D value noise in [0, 1] (hashed lattice, smoothstep-trilinear), fixed by a seed."""

    def __init__(self, seed: int):
        self.table = np.random.default_rng(seed).random(1 << 14)

    def _h(self, i: np.ndarray, j: np.ndarray, k: np.ndarray) -> np.ndarray:
        h = (i * 73856093) ^ (j * 19349663) ^ (k * 83492791)
        return self.table[h & ((1 << 14) - 1)]

    def __call__(self, p: np.ndarray, scale: float) -> np.ndarray:
        q = p / scale
        i0 = np.floor(q).astype(np.int64)
        f = q - i0
        s = f * f * (3 - 2 * f)
        x, y, z = i0[:, 0], i0[:, 1], i0[:, 2]
        sx, sy, sz = s[:, 0], s[:, 1], s[:, 2]
        out = 0.0
        for dx in (0, 1):
            wx = sx if dx else 1 - sx
            for dy in (0, 1):
                wy = sy if dy else 1 - sy
                for dz in (0, 1):
                    wz = sz if dz else 1 - sz
                    out = out + wx * wy * wz * self._h(x + dx, y + dy, z + dz)
        return out

    def fbm(self, p: np.ndarray, scale: float, octaves: int = 3) -> np.ndarray:
        tot, amp, norm = 0.0, 1.0, 0.0
        for o in range(octaves):
            tot = tot + amp * self(p + 17.3 * o, scale / (2 ** o))
            norm += amp
            amp *= 0.5
        return tot / norm


def _mix(c1, c2, t: np.ndarray) -> np.ndarray:
    c1, c2 = np.asarray(c1, dtype=np.float64), np.asarray(c2, dtype=np.float64)
    t = np.clip(t, 0, 1)[:, None]
    return c1 * (1 - t) + c2 * t


def _checker(a: np.ndarray, b: np.ndarray, size: float) -> np.ndarray:
    return ((np.floor(a / size) + np.floor(b / size)) % 2).astype(np.float64)


# =========================================================================== primitives

@dataclass
class Primitive:
    """Base class: a labelled analytic surface with a named texture."""

    name: str
    label: int
    texture: str
    tint: float = 1.0

    def intersect(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(t (N,), world normal (N, 3)) of the first hit with t > 0; t = inf for a miss."""
        raise NotImplementedError

    def local(self, p: np.ndarray) -> np.ndarray:
        return p

    def bound(self) -> tuple[np.ndarray, float] | None:
        """Bounding sphere (centre, radius) used to cull rays, or None."""
        return None

    def faces(self) -> list[tuple[float, callable]]:
        """[(area, sampler(n, rng) -> (points, normals))] of the surface parts."""
        raise NotImplementedError

    def mesh(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def inside(self, p: np.ndarray) -> np.ndarray:
        """True where p lies strictly inside the solid (False for planes)."""
        return np.zeros(len(p), dtype=bool)

    def to_dict(self) -> dict:
        d = {"kind": type(self).__name__.lower(), "name": self.name, "label": self.label,
             "texture": self.texture, "tint": self.tint}
        for k, v in self.__dict__.items():
            if k not in d and not k.startswith("_"):
                d[k] = v.tolist() if isinstance(v, np.ndarray) else v
        return d


@dataclass
class Plane(Primitive):
    """One-sided rectangle (room face); rays hit it only from the side its normal points to."""

    center: np.ndarray = field(default_factory=lambda: np.zeros(3))
    u: np.ndarray = field(default_factory=lambda: np.array([1.0, 0, 0]))  # unit, half-extent hu
    v: np.ndarray = field(default_factory=lambda: np.array([0, 1.0, 0]))
    hu: float = 1.0
    hv: float = 1.0

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.u, self.v)

    def intersect(self, o, d):
        n = self.normal
        dn = d @ n
        with np.errstate(divide="ignore", invalid="ignore"):
            t = ((self.center - o) @ n) / dn
        t = np.where((dn < -1e-12) & (t > _EPS), t, _INF)
        return t, np.broadcast_to(n, d.shape)

    def faces(self):
        def sample(k, rng):
            a, b = rng.uniform(-1, 1, k), rng.uniform(-1, 1, k)
            p = self.center + a[:, None] * self.hu * self.u + b[:, None] * self.hv * self.v
            return p, np.broadcast_to(self.normal, p.shape).copy()
        return [(4 * self.hu * self.hv, sample)]

    def mesh(self):
        c, u, v = self.center, self.u * self.hu, self.v * self.hv
        verts = np.array([c - u - v, c + u - v, c + u + v, c - u + v])
        return verts, np.array([[0, 1, 2], [0, 2, 3]])


def _rz(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


@dataclass
class Box(Primitive):
    """Box with half extents ``half``, rotated by ``yaw`` (radians) about the world z axis."""

    center: np.ndarray = field(default_factory=lambda: np.zeros(3))
    half: np.ndarray = field(default_factory=lambda: np.ones(3))
    yaw: float = 0.0

    def __post_init__(self):
        self.center = np.asarray(self.center, dtype=np.float64)
        self.half = np.asarray(self.half, dtype=np.float64)
        self._r = _rz(self.yaw)

    def local(self, p):
        return (p - self.center) @ self._r

    def bound(self):
        return self.center, float(np.linalg.norm(self.half))

    def intersect(self, o, d):
        ol = (o - self.center) @ self._r
        dl = d @ self._r
        h = self.half
        lo, hi = [], []
        with np.errstate(divide="ignore", invalid="ignore"):
            for a in range(3):
                inv = 1.0 / dl[:, a]  # +-inf for rays parallel to the slab: the fmin/fmax below handle it
                t1 = (-h[a] - ol[:, a]) * inv
                t2 = (h[a] - ol[:, a]) * inv
                lo.append(np.fmin(t1, t2))
                hi.append(np.fmax(t1, t2))
        tmin = np.fmax(np.fmax(lo[0], lo[1]), lo[2])
        tmax = np.fmin(np.fmin(hi[0], hi[1]), hi[2])
        axis = np.where(lo[0] >= np.fmax(lo[1], lo[2]), 0, np.where(lo[1] >= lo[2], 1, 2))
        hit = (tmax >= tmin) & (tmin > _EPS)
        t = np.where(hit, tmin, _INF)
        nl = np.zeros_like(dl)
        rows = np.arange(len(d))
        nl[rows, axis] = -np.sign(dl[rows, axis])
        return t, nl @ self._r.T

    def _face_list(self):
        """[(axis, sign, area)] for the 6 faces."""
        h = self.half
        out = []
        for ax in range(3):
            a1, a2 = [i for i in range(3) if i != ax]
            for sg in (-1.0, 1.0):
                out.append((ax, sg, 4 * h[a1] * h[a2]))
        return out

    def faces(self):
        res = []
        for ax, sg, area in self._face_list():
            def sample(k, rng, ax=ax, sg=sg):
                q = rng.uniform(-1, 1, (k, 3)) * self.half
                q[:, ax] = sg * self.half[ax]
                nl = np.zeros((k, 3))
                nl[:, ax] = sg
                return q @ self._r.T + self.center, nl @ self._r.T
            res.append((area, sample))
        return res

    def mesh(self):
        verts, faces = [], []
        for ax, sg, _ in self._face_list():
            a1, a2 = [i for i in range(3) if i != ax]
            # order the in-face axes so that (e1 x e2) points along sg * axis
            e1, e2 = np.zeros(3), np.zeros(3)
            e1[a1], e2[a2] = 1.0, 1.0
            if np.dot(np.cross(e1, e2), np.eye(3)[ax]) * sg < 0:
                e1, e2 = e2, e1
            c = np.eye(3)[ax] * sg * self.half
            h1, h2 = e1 * self.half, e2 * self.half
            base = len(verts)
            for q in (c - h1 - h2, c + h1 - h2, c + h1 + h2, c - h1 + h2):
                verts.append(q @ self._r.T + self.center)
            faces += [[base, base + 1, base + 2], [base, base + 2, base + 3]]
        return np.array(verts), np.array(faces)

    def inside(self, p):
        return (np.abs(self.local(p)) < self.half).all(1)


def _icosphere(level: int) -> tuple[np.ndarray, np.ndarray]:
    t = (1 + 5 ** 0.5) / 2
    v = [[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t], [0, 1, -t],
         [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]]
    f = [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2],
         [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5], [2, 4, 11],
         [6, 2, 10], [8, 6, 7], [9, 8, 1]]
    verts = [np.array(x, dtype=np.float64) / np.linalg.norm(x) for x in v]
    faces = f
    for _ in range(level):
        cache: dict = {}

        def mid(a, b):
            key = (min(a, b), max(a, b))
            if key not in cache:
                m = verts[a] + verts[b]
                verts.append(m / np.linalg.norm(m))
                cache[key] = len(verts) - 1
            return cache[key]

        nf = []
        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            nf += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
        faces = nf
    return np.array(verts), np.array(faces)


@dataclass
class Sphere(Primitive):
    center: np.ndarray = field(default_factory=lambda: np.zeros(3))
    radius: float = 1.0

    def __post_init__(self):
        self.center = np.asarray(self.center, dtype=np.float64)

    def local(self, p):
        return p - self.center

    def bound(self):
        return self.center, self.radius * 1.0001

    def intersect(self, o, d):
        oc = o - self.center
        b = _dot(oc, d)
        c = _dot(oc, oc) - self.radius ** 2
        a = _dot(d, d)
        disc = b * b - a * c
        sq = np.sqrt(np.maximum(disc, 0))
        t0 = (-b - sq) / a
        t1 = (-b + sq) / a
        t = np.where(t0 > _EPS, t0, np.where(t1 > _EPS, t1, _INF))
        t = np.where(disc >= 0, t, _INF)
        p = o + d * np.where(np.isfinite(t), t, 0)[:, None]
        n = (p - self.center) / self.radius
        return t, n

    def faces(self):
        def sample(k, rng):
            n = rng.normal(size=(k, 3))
            n /= np.linalg.norm(n, axis=1, keepdims=True)
            return self.center + self.radius * n, n
        return [(4 * math.pi * self.radius ** 2, sample)]

    def mesh(self):
        v, f = _icosphere(4)
        return self.center + self.radius * v, f

    def inside(self, p):
        return np.linalg.norm(p - self.center, axis=1) < self.radius


@dataclass
class Cylinder(Primitive):
    """Vertical capped cylinder: axis along world z from ``base`` up by ``height``."""

    base: np.ndarray = field(default_factory=lambda: np.zeros(3))
    radius: float = 1.0
    height: float = 1.0
    segments: int = 96

    def __post_init__(self):
        self.base = np.asarray(self.base, dtype=np.float64)

    def local(self, p):
        return p - self.base

    def bound(self):
        return self.base + [0, 0, self.height / 2], math.hypot(self.radius, self.height / 2) * 1.0001

    def intersect(self, o, d):
        ol = o - self.base
        r, h = self.radius, self.height
        a = d[:, 0] ** 2 + d[:, 1] ** 2
        b = 2 * (ol[:, 0] * d[:, 0] + ol[:, 1] * d[:, 1])
        c = ol[:, 0] ** 2 + ol[:, 1] ** 2 - r * r
        disc = b * b - 4 * a * c
        with np.errstate(divide="ignore", invalid="ignore"):
            ts = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
        zs = ol[:, 2] + ts * d[:, 2]
        side_ok = (disc >= 0) & (a > 1e-15) & (ts > _EPS) & (zs >= 0) & (zs <= h)
        t_side = np.where(side_ok, ts, _INF)
        best, nrm = t_side, np.zeros_like(d)
        p = ol + d * np.where(np.isfinite(t_side), t_side, 0)[:, None]
        nrm[:, 0], nrm[:, 1] = p[:, 0] / r, p[:, 1] / r
        for zc, nz in ((h, 1.0), (0.0, -1.0)):
            with np.errstate(divide="ignore", invalid="ignore"):
                tc = (zc - ol[:, 2]) / d[:, 2]
            pc = ol + d * np.where(np.isfinite(tc), tc, 0)[:, None]
            ok = (np.abs(d[:, 2]) > 1e-15) & (tc > _EPS) & (pc[:, 0] ** 2 + pc[:, 1] ** 2 <= r * r) & (d[:, 2] * nz < 0)
            tc = np.where(ok, tc, _INF)
            m = tc < best
            best = np.where(m, tc, best)
            nrm[m] = [0.0, 0.0, nz]
        return best, nrm

    def faces(self):
        r, h = self.radius, self.height

        def side(k, rng):
            ang = rng.uniform(0, 2 * math.pi, k)
            z = rng.uniform(0, h, k)
            n = np.stack([np.cos(ang), np.sin(ang), np.zeros(k)], 1)
            return self.base + n * r + np.stack([np.zeros(k), np.zeros(k), z], 1), n

        def cap(k, rng, top):
            ang = rng.uniform(0, 2 * math.pi, k)
            rr = r * np.sqrt(rng.uniform(0, 1, k))
            p = np.stack([rr * np.cos(ang), rr * np.sin(ang), np.full(k, h if top else 0.0)], 1)
            n = np.zeros((k, 3))
            n[:, 2] = 1.0 if top else -1.0
            return self.base + p, n

        return [(2 * math.pi * r * h, side), (math.pi * r * r, lambda k, g: cap(k, g, True)),
                (math.pi * r * r, lambda k, g: cap(k, g, False))]

    def mesh(self):
        n, r, h = self.segments, self.radius, self.height
        ang = np.arange(n) * 2 * math.pi / n
        ring = np.stack([r * np.cos(ang), r * np.sin(ang), np.zeros(n)], 1)
        verts = np.concatenate([ring, ring + [0, 0, h], [[0, 0, 0], [0, 0, h]]]) + self.base
        faces = []
        bc, tc = 2 * n, 2 * n + 1
        for i in range(n):
            j = (i + 1) % n
            faces += [[i, j, n + j], [i, n + j, n + i], [tc, n + i, n + j], [bc, j, i]]
        return verts, np.array(faces)

    def inside(self, p):
        q = p - self.base
        return (q[:, 0] ** 2 + q[:, 1] ** 2 < self.radius ** 2) & (q[:, 2] > 0) & (q[:, 2] < self.height)


# =========================================================================== scene

class SyntheticScene:
    """The labelled room: primitives, textures, shading, ray casting and ground truth."""

    def __init__(self, seed: int = 0):
        self.seed = int(seed)
        self.noise = ValueNoise(seed)
        self.prims: list[Primitive] = self._build()
        self.label_names = list(LABEL_NAMES)
        self.label_colors = [list(c) for c in LABEL_COLORS]

    # ----------------------------------------------------------------- layout
    @staticmethod
    def _build() -> list[Primitive]:
        a, h = ROOM_HALF, ROOM_HEIGHT
        ex, ey, ez = np.eye(3)
        prims: list[Primitive] = [
            Plane("floor", L["floor"], "floor", center=np.array([0, 0, 0.0]), u=ex, v=ey, hu=a, hv=a),
            Plane("ceiling", L["ceiling"], "ceiling", center=np.array([0, 0, h]), u=ey, v=ex, hu=a, hv=a),
            Plane("wall_xneg", L["wall"], "wall", center=np.array([-a, 0, h / 2]), u=ey, v=ez, hu=a, hv=h / 2),
            Plane("wall_xpos", L["wall"], "wall", center=np.array([a, 0, h / 2]), u=ez, v=ey, hu=h / 2, hv=a),
            Plane("wall_yneg", L["wall"], "wall", center=np.array([0, -a, h / 2]), u=ez, v=ex, hu=h / 2, hv=a),
            Plane("wall_ypos", L["wall"], "wall", center=np.array([0, a, h / 2]), u=ex, v=ez, hu=a, hv=h / 2),
        ]
        # Table: top + 4 legs, one label.
        tc, th, top_z = np.array([0.35, 0.45]), np.array([0.6, 0.42]), 0.75
        prims.append(Box("table_top", L["table"], "wood", center=np.array([tc[0], tc[1], top_z - 0.03]),
                         half=np.array([th[0], th[1], 0.03])))
        for i, (sx, sy) in enumerate(((-1, -1), (1, -1), (1, 1), (-1, 1))):
            prims.append(Box(f"table_leg{i}", L["table"], "wood",
                             center=np.array([tc[0] + sx * (th[0] - 0.07), tc[1] + sy * (th[1] - 0.07), (top_z - 0.06) / 2]),
                             half=np.array([0.035, 0.035, (top_z - 0.06) / 2])))
        prims += [
            Sphere("sphere", L["sphere"], "blue_noise", center=np.array([0.5, 0.5, top_z + 0.24]), radius=0.24),
            Box("box", L["box"], "red_stripes", center=np.array([-0.95, 0.8, 0.32]), half=np.array([0.36, 0.3, 0.32]),
                yaw=math.radians(25)),
            # Same checker as the floor (world x, y), on the floor, different label.
            Box("floor_box", L["floor_box"], "floor", tint=0.97, center=np.array([0.8, -0.95, 0.22]),
                half=np.array([0.45, 0.42, 0.22]), yaw=math.radians(-15)),
            Sphere("ball", L["ball"], "ball_stripes", center=np.array([-0.8, -0.9, 0.34]), radius=0.34),
            Cylinder("cylinder", L["cylinder"], "cyl_checker", base=np.array([-1.5, 0.0, 0.0]), radius=0.24, height=1.05),
            # Thin panel with the wall's texture, mounted on the +x wall.
            Box("wall_panel", L["wall_panel"], "wall", tint=0.97, center=np.array([a - 0.02, -0.3, 1.25]),
                half=np.array([0.02, 0.95, 0.65])),
            Box("cabinet", L["cabinet"], "cabinet", center=np.array([-0.7, a - 0.28, 0.55]),
                half=np.array([0.7, 0.28, 0.55])),
        ]
        return prims

    # ----------------------------------------------------------------- appearance
    def albedo(self, prim: Primitive, p: np.ndarray) -> np.ndarray:
        """(N, 3) albedo of ``prim`` at world points ``p``."""
        nz = self.noise
        tex = prim.texture
        if tex == "floor":
            c = _mix([0.80, 0.74, 0.63], [0.40, 0.35, 0.30], _checker(p[:, 0], p[:, 1], 0.5))
            c = c * (0.9 + 0.2 * nz(p, 0.12))[:, None]
        elif tex == "wall":
            t = nz.fbm(p, 0.6)
            c = _mix([0.88, 0.80, 0.66], [0.58, 0.66, 0.78], (t - 0.25) * 2.0)
            band = (np.abs(p[:, 2] - 1.0) < 0.05).astype(np.float64)
            c = c * (1 - 0.35 * band)[:, None]
        elif tex == "ceiling":
            c = np.tile([0.92, 0.91, 0.88], (len(p), 1)) * (0.93 + 0.1 * nz(p, 0.3))[:, None]
        elif tex == "wood":
            q = prim.local(p)
            rings = 0.5 + 0.5 * np.sin(2 * math.pi * (q[:, 1] * 9 + 2.5 * nz(p, 0.25)))
            c = _mix([0.58, 0.38, 0.20], [0.36, 0.22, 0.11], rings)
        elif tex == "red_stripes":
            q = prim.local(p)
            s = ((np.floor((q[:, 0] + q[:, 2]) / 0.12)) % 2).astype(np.float64)
            c = _mix([0.85, 0.14, 0.12], [0.95, 0.90, 0.85], s)
        elif tex == "blue_noise":
            c = _mix([0.08, 0.22, 0.70], [0.40, 0.80, 0.97], (nz.fbm(p, 0.15) - 0.2) * 1.6)
        elif tex == "ball_stripes":
            q = prim.local(p)
            s = ((np.floor(q[:, 2] / 0.11)) % 2).astype(np.float64)
            c = _mix([0.18, 0.62, 0.22], [0.96, 0.86, 0.18], s)
        elif tex == "cyl_checker":
            q = prim.local(p)
            arc = np.arctan2(q[:, 1], q[:, 0]) * prim.radius
            c = _mix([0.55, 0.22, 0.66], [0.92, 0.90, 0.94], _checker(arc, q[:, 2], 0.15))
        elif tex == "cabinet":
            q = prim.local(p)
            door = ((np.floor((q[:, 0] + 0.7) / 0.35)) % 2).astype(np.float64)
            c = _mix([0.20, 0.30, 0.33], [0.34, 0.44, 0.47], 0.6 * door + 0.4 * nz(p, 0.1))
        else:  # pragma: no cover - layout error
            raise ValueError(f"unknown texture {tex!r}")
        return np.clip(c * prim.tint, 0, 1)

    @staticmethod
    def shade(p: np.ndarray, n: np.ndarray) -> np.ndarray:
        """(N,) Lambert shading from the fixed point light plus ambient (view-independent)."""
        to_l = LIGHT_POS - p
        d2 = _dot(to_l, to_l)
        ndl = np.maximum(_dot(n, to_l) / np.sqrt(np.maximum(d2, 1e-12)), 0)
        return AMBIENT + (1 - AMBIENT) * ndl * np.minimum(1.0, 9.0 / (d2 + 3.0))

    def color(self, prim_idx: np.ndarray, p: np.ndarray, n: np.ndarray) -> np.ndarray:
        """(N, 3) shaded colour at points ``p`` (normals ``n``) on primitives ``prim_idx``."""
        out = np.zeros((len(p), 3))
        for k in np.unique(prim_idx):
            if k < 0:
                continue
            m = prim_idx == k
            out[m] = self.albedo(self.prims[k], p[m])
        return np.clip(out * self.shade(p, n)[:, None], 0, 1)

    def labels_of(self, prim_idx: np.ndarray) -> np.ndarray:
        lab = np.array([pr.label for pr in self.prims] + [255], dtype=np.int64)
        return lab[prim_idx]

    # ----------------------------------------------------------------- geometry
    def cast(self, o: np.ndarray, d: np.ndarray, chunk: int = 1 << 17):
        """Nearest hit of rays (origins (N, 3) or (3,), unit directions (N, 3)).

        Returns t (N,) (inf on a miss), world normals (N, 3) facing the ray, primitive index (N,) (-1 miss).
        """
        d = np.asarray(d, dtype=np.float64)
        o = np.asarray(o, dtype=np.float64)
        single = o.ndim == 1  # one origin for all rays (camera rays): cheaper culling
        o = np.broadcast_to(o, d.shape)
        n_rays = len(d)
        t_best = np.full(n_rays, _INF)
        n_best = np.zeros((n_rays, 3))
        idx = np.full(n_rays, -1, dtype=np.int64)
        for s in range(0, n_rays, chunk):
            sl = slice(s, min(n_rays, s + chunk))
            oo, dd = (o[sl] if single else np.ascontiguousarray(o[sl])), d[sl]
            tb, nb, ib = t_best[sl], n_best[sl], idx[sl]
            for k, prim in enumerate(self.prims):
                bnd = prim.bound()
                if bnd is None:
                    t, n = prim.intersect(oo, dd)
                    m = t < tb
                    tb[m] = t[m]
                    nb[m] = n[m]
                    ib[m] = k
                    continue
                # Cull with the bounding sphere: keep rays that pass within it ahead of the origin,
                # nearer than the current best hit.
                if single:
                    oc = bnd[0] - oo[0]
                    tb_c = dd @ oc
                    d2 = oc @ oc - tb_c * tb_c
                else:
                    oc = bnd[0] - oo
                    tb_c = _dot(oc, dd)
                    d2 = _dot(oc, oc) - tb_c * tb_c
                cand = np.nonzero((d2 <= bnd[1] ** 2) & (tb_c + bnd[1] > 0)
                                  & (tb_c - bnd[1] < tb))[0]
                if len(cand) == 0:
                    continue
                t, n = prim.intersect(oo[cand], dd[cand])
                m = t < tb[cand]
                sel = cand[m]
                tb[sel] = t[m]
                nb[sel] = n[m]
                ib[sel] = k
        return t_best, n_best, idx

    def free(self, q: np.ndarray) -> np.ndarray:
        """True where q is inside the room and outside every solid."""
        a = ROOM_HALF
        ok = (np.abs(q[:, 0]) < a) & (np.abs(q[:, 1]) < a) & (q[:, 2] > 0) & (q[:, 2] < ROOM_HEIGHT)
        for pr in self.prims:
            ok &= ~pr.inside(q)
        return ok

    def exposed(self, p: np.ndarray, n: np.ndarray, eps: float = 2e-3) -> np.ndarray:
        """True where the surface point p (outward normal n) borders free space (not a contact face)."""
        return self.free(p + eps * n)

    def mesh(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact GT mesh (vertices (V, 3), faces (F, 3), face labels (F,)); faces hidden by contact removed."""
        vs, fs, ls = [], [], []
        base = 0
        for pr in self.prims:
            v, f = pr.mesh()
            tri = v[f]
            nrm = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
            nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
            hidden = np.ones(len(f), dtype=bool)
            for q in (tri.mean(1), tri[:, 0] * 0.9 + tri.mean(1) * 0.1, tri[:, 1] * 0.9 + tri.mean(1) * 0.1,
                      tri[:, 2] * 0.9 + tri.mean(1) * 0.1):
                hidden &= ~self.exposed(q, nrm)
            keep = ~hidden
            used = np.unique(f[keep])
            remap = np.full(len(v), -1, dtype=np.int64)
            remap[used] = np.arange(len(used)) + base
            vs.append(v[used])
            fs.append(remap[f[keep]])
            ls.append(np.full(int(keep.sum()), pr.label, dtype=np.int64))
            base += len(used)
        return np.concatenate(vs), np.concatenate(fs), np.concatenate(ls)

    def sample_surface(self, num: int, rng: np.random.Generator):
        """Area-uniform samples of the exposed surface: xyz, normals, primitive index (each (num, ...))."""
        parts = [(area, sampler, k) for k, pr in enumerate(self.prims) for area, sampler in pr.faces()]
        areas = np.array([a for a, _, _ in parts])
        xs, ns, ks = [], [], []
        got = 0
        while got < num:
            want = int((num - got) * 1.3) + 16
            counts = rng.multinomial(want, areas / areas.sum())
            for (area, sampler, k), c in zip(parts, counts):
                if c == 0:
                    continue
                p, n = sampler(int(c), rng)
                ok = self.exposed(p, n)
                xs.append(p[ok])
                ns.append(n[ok])
                ks.append(np.full(int(ok.sum()), k, dtype=np.int64))
                got += int(ok.sum())
        x, n, k = np.concatenate(xs), np.concatenate(ns), np.concatenate(ks)
        sel = rng.permutation(len(x))[:num]
        return x[sel], n[sel], k[sel]

    # ----------------------------------------------------------------- rendering
    def render(self, cam: Camera, supersample: int = 2) -> dict[str, np.ndarray]:
        """Render one view: rgb (H, W, 3) float [0,1] (``supersample``^2 samples per pixel, box filter),
        depth (H, W) camera z in metres, normal (H, W, 3) world, labels (H, W) int64, all from the
        pixel-centre ray except rgb."""
        w, h = int(cam.width), int(cam.height)
        w2c = cam.world_to_cam.double().numpy()
        r, t = w2c[:3, :3], w2c[:3, 3]
        eye = -r.T @ t

        def rays(ox: float, oy: float):
            ys, xs = np.meshgrid(np.arange(h, dtype=np.float64) + oy, np.arange(w, dtype=np.float64) + ox, indexing="ij")
            dc = np.stack([(xs - cam.cx) / cam.fx, (ys - cam.cy) / cam.fy, np.ones_like(xs)], -1).reshape(-1, 3)
            dc /= np.linalg.norm(dc, axis=1, keepdims=True)
            return dc, dc @ r  # camera-frame and world-frame unit directions

        dc, dw = rays(0.0, 0.0)
        tc, nc, kc = self.cast(eye, dw)
        hit = np.isfinite(tc)
        depth = np.where(hit, tc * dc[:, 2], 0.0)
        pts = eye + dw * np.where(hit, tc, 0)[:, None]
        labels = self.labels_of(kc)
        normals = np.where(hit[:, None], nc, 0.0)
        if supersample <= 1:
            rgb = self.color(kc, pts, nc)
        else:
            s = int(supersample)
            offs = (np.arange(s) + 0.5) / s - 0.5
            acc = np.zeros((w * h, 3))
            for oy in offs:
                for ox in offs:
                    _, dws = rays(ox, oy)
                    ts, ns, ks = self.cast(eye, dws)
                    ps = eye + dws * np.where(np.isfinite(ts), ts, 0)[:, None]
                    acc += self.color(ks, ps, ns)
            rgb = acc / (s * s)
        return {"rgb": rgb.reshape(h, w, 3).astype(np.float32), "depth": depth.reshape(h, w).astype(np.float32),
                "normal": normals.reshape(h, w, 3).astype(np.float32), "labels": labels.reshape(h, w)}

    def to_dict(self) -> dict:
        return {"room_half": ROOM_HALF, "room_height": ROOM_HEIGHT, "light_position": LIGHT_POS.tolist(),
                "ambient": AMBIENT, "objects": [p.to_dict() for p in self.prims]}


# =========================================================================== cameras

def orbit_cameras(width: int = 128, height: int = 96, num_frames: int = 40, radius: float = 2.3,
                  heights: tuple[float, ...] = (1.05, 1.6), target=(0.0, 0.0, 0.55), fov_x_deg: float = 75.0,
                  turns: float = 1.0) -> list[Camera]:
    """Default path: ``num_frames`` views on rings (one per height, frames split evenly, each ring a
    full turn, rings offset by half a step) around the room centre, all looking at ``target``."""
    fx = 0.5 * width / math.tan(math.radians(fov_x_deg) / 2)
    cams = []
    rings = len(heights)
    per = [num_frames // rings + (1 if r < num_frames % rings else 0) for r in range(rings)]
    i = 0
    for ri, (hgt, n) in enumerate(zip(heights, per)):
        for j in range(n):
            ang = 2 * math.pi * turns * (j + 0.5 * ri) / max(n, 1) + math.radians(10)
            eye = (radius * math.cos(ang), radius * math.sin(ang), hgt)
            cams.append(Camera(width, height, fx, fx, (width - 1) / 2, (height - 1) / 2, look_at(eye, target),
                               name=f"{i:04d}"))
            i += 1
    return cams


# =========================================================================== dataset assembly

def project(cam: Camera, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coords (N, 2) (OpenCV) and camera z (N,) of world points."""
    w2c = cam.world_to_cam.double().numpy()
    pc = xyz @ w2c[:3, :3].T + w2c[:3, 3]
    z = pc[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        x = cam.fx * pc[:, 0] / z + cam.cx
        y = cam.fy * pc[:, 1] / z + cam.cy
    return np.stack([x, y], 1), z


def sparse_points(scene: SyntheticScene, cams: list[Camera], depths: list[np.ndarray], num_points: int,
                  rng: np.random.Generator, min_track: int = 2, noise_px: float = 0.0, depth_tol: float = 0.02):
    """SfM-like points on visible surfaces with tracks.

    A point is observed in a view when it projects inside the image in front of the camera, the
    analytic ray from the camera centre reaches it unoccluded, and its camera z agrees with the
    rendered depth at the nearest pixel within ``depth_tol`` (relative) + 1 cm. Points observed in
    fewer than ``min_track`` views are dropped. Returns a PointCloud (labels, normals, tracks).
    """
    xyz, nrm, k = scene.sample_surface(num_points, rng)
    obs_p, obs_f, obs_xy = [], [], []
    for fi, (cam, dep) in enumerate(zip(cams, depths)):
        w2c = cam.world_to_cam.double().numpy()
        eye = -w2c[:3, :3].T @ w2c[:3, 3]
        xy, z = project(cam, xyz)
        w, h = cam.width, cam.height
        ok = (z > cam.near) & (xy[:, 0] >= -0.5) & (xy[:, 0] < w - 0.5) & (xy[:, 1] >= -0.5) & (xy[:, 1] < h - 0.5)
        ok &= ((eye - xyz) * nrm).sum(1) > 0  # front-facing
        idx = np.nonzero(ok)[0]
        if len(idx) == 0:
            continue
        v = xyz[idx] - eye
        dist = np.linalg.norm(v, axis=1)
        t, _, _ = scene.cast(eye, v / dist[:, None])
        vis = t >= dist * (1 - 1e-6) - 1e-6
        col = np.clip(np.round(xy[idx, 0]).astype(int), 0, w - 1)
        row = np.clip(np.round(xy[idx, 1]).astype(int), 0, h - 1)
        dd = dep[row, col]
        vis &= np.abs(dd - z[idx]) < depth_tol * z[idx] + 0.01
        idx = idx[vis]
        obs_p.append(idx)
        obs_f.append(np.full(len(idx), fi, dtype=np.int64))
        obs_xy.append(xy[idx])
    op, of, oxy = np.concatenate(obs_p), np.concatenate(obs_f), np.concatenate(obs_xy)
    counts = np.bincount(op, minlength=len(xyz))
    keep = counts >= min_track
    remap = np.full(len(xyz), -1, dtype=np.int64)
    remap[keep] = np.arange(int(keep.sum()))
    m = keep[op]
    op, of, oxy = remap[op[m]], of[m], oxy[m]
    if noise_px > 0:
        oxy = oxy + rng.normal(scale=noise_px, size=oxy.shape)
    order = np.lexsort((of, op))
    xyz, nrm, k = xyz[keep], nrm[keep], k[keep]
    rgb = scene.color(k, xyz, nrm)
    return PointCloud(torch.from_numpy(xyz.astype(np.float32)), torch.from_numpy(rgb.astype(np.float32)),
                      obs_point=torch.from_numpy(op[order]), obs_frame=torch.from_numpy(of[order]),
                      obs_xy=torch.from_numpy(oxy[order].astype(np.float32)),
                      labels=torch.from_numpy(scene.labels_of(k)),
                      normals=torch.from_numpy(nrm.astype(np.float32)))


def synthetic_dataset(width: int = 128, height: int = 96, num_frames: int = 40, seed: int = 0,
                      cameras: list[Camera] | None = None, supersample: int = 2, num_points: int = 4000,
                      num_gt_points: int = 30000, min_track: int = 2, track_noise_px: float = 0.0,
                      root: Path | str = "") -> Dataset:
    """The synthetic scene rendered in memory (exact float images, no files).

    ``cameras`` replaces the default orbit (``orbit_cameras``); they must lie inside the room.
    """
    scene = SyntheticScene(seed)
    cams = cameras if cameras is not None else orbit_cameras(width, height, num_frames)
    frames = []
    depths = []
    for i, cam in enumerate(cams):
        out = scene.render(cam, supersample=supersample)
        depths.append(out["depth"].astype(np.float64))
        frames.append(Frame(cam, torch.from_numpy(np.ascontiguousarray(out["rgb"].transpose(2, 0, 1))),
                            path=f"images/{i:04d}.png", depth=torch.from_numpy(out["depth"]),
                            labels=torch.from_numpy(out["labels"]),
                            normal=torch.from_numpy(np.ascontiguousarray(out["normal"].transpose(2, 0, 1)))))
    rng = np.random.default_rng(seed)
    points = sparse_points(scene, cams, depths, num_points, rng, min_track=min_track, noise_px=track_noise_px)
    gx, gn, gk = scene.sample_surface(num_gt_points, rng)
    gt_points = PointCloud(torch.from_numpy(gx.astype(np.float32)),
                           torch.from_numpy(scene.color(gk, gx, gn).astype(np.float32)),
                           labels=torch.from_numpy(scene.labels_of(gk)), normals=torch.from_numpy(gn.astype(np.float32)))
    v, f, fl = scene.mesh()
    params = {"width": width, "height": height, "num_frames": len(cams), "seed": seed, "supersample": supersample,
              "num_points": num_points, "num_gt_points": num_gt_points, "min_track": min_track,
              "track_noise_px": track_noise_px, "default_orbit": cameras is None}
    ds = Dataset(frames, Path(root), points=points,
                 gt_mesh=(torch.from_numpy(v.astype(np.float32)), torch.from_numpy(f.astype(np.int64))),
                 label_names=list(scene.label_names), gt_mesh_labels=torch.from_numpy(fl),
                 gt_points=gt_points, label_colors=[list(c) for c in scene.label_colors])
    ds.meta["scene"] = {"format": "fhgs_synthetic", "version": 1, "label_names": list(scene.label_names),
                        "label_colors": scene.label_colors, "generator": params, "scene": scene.to_dict(),
                        "world": "metres, z up, floor at z=0", "depth_unit_scale_factor": 0.001,
                        "hard_cases": ["floor_box: floor texture on the floor", "wall_panel: wall texture on a wall"]}
    return ds


def generate_scene(out_dir: str | Path, width: int = 128, height: int = 96, num_frames: int = 40, seed: int = 0,
                   cameras: list[Camera] | None = None, supersample: int = 2, num_points: int = 4000,
                   num_gt_points: int = 30000, min_track: int = 2, track_noise_px: float = 0.0) -> Path:
    """Render the synthetic scene and write it as a dataset folder; returns the folder.

    Layout: transforms.json, images/NNNN.png, depth/NNNN.png (uint16 mm), labels/NNNN.png (uint8),
    scene.json, gt_mesh.ply, gt_points.ply, points3d.ply, tracks.npz. Deterministic given ``seed``.
    """
    from fhgs_ros.datasets.nerf import write_nerf

    out = Path(out_dir)
    ds = synthetic_dataset(width, height, num_frames, seed, cameras=cameras, supersample=supersample,
                           num_points=num_points, num_gt_points=num_gt_points, min_track=min_track,
                           track_noise_px=track_noise_px, root=out)
    write_nerf(ds, out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fhgs_ros.datasets.synthetic",
                                description="Write the synthetic labelled room scene as a dataset folder.")
    p.add_argument("out", type=Path)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--supersample", type=int, default=2)
    p.add_argument("--points", type=int, default=4000, help="candidate sparse points before the track filter")
    p.add_argument("--track-noise-px", type=float, default=0.0)
    a = p.parse_args(argv)
    if a.width < 8 or a.height < 8 or a.frames < 1:
        print("error: need width, height >= 8 and frames >= 1", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    out = generate_scene(a.out, a.width, a.height, a.frames, a.seed, supersample=a.supersample, num_points=a.points,
                         track_noise_px=a.track_noise_px)
    print(f"wrote {out} ({a.frames} frames {a.width}x{a.height}) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
