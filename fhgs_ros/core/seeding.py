"""New surfels from 3-D points, depth images or a new keyframe, with frozen features (docs/METHOD.md §1).

The projection index ("spatial hash table" of the paper) maps each 3-D point to the views that
see it and the pixel in each; COLMAP/SfM tracks are such an index, and
``build_projection_index`` computes one from cameras (and depth maps for a visibility test).
Each point's feature is sampled bilinearly from the GT feature grid of ONE observing view chosen
uniformly at random (seeded generator), and never changes afterwards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from fhgs_ros.core.camera import Camera
from fhgs_ros.core.raster_types import FeatureTarget
from fhgs_ros.core.reference import sample_grid  # noqa: F401  (re-exported: seeding samples features with it)
from fhgs_ros.core.geometry import matrix_to_quat_wxyz, random_quats_wxyz
from fhgs_ros.core.render import render
from fhgs_ros.core.surfels import SurfelMap

log = logging.getLogger(__name__)


def knn_scales(xyz: torch.Tensor, k: int = 3) -> torch.Tensor:
    """(P,) sqrt of the mean squared distance to the k nearest neighbours (2DGS init scale)."""
    if xyz.shape[0] < 2:
        return torch.full((xyz.shape[0],), 0.01)
    pts = xyz.detach().cpu().double().numpy()
    kk = min(k + 1, pts.shape[0])
    d, _ = cKDTree(pts).query(pts, k=kk)
    d = torch.from_numpy(d[:, 1:]).float()
    return torch.sqrt((d * d).mean(1)).clamp_min(1e-7)


def project(xyz: torch.Tensor, camera: Camera) -> tuple[torch.Tensor, torch.Tensor]:
    """World points (P, 3) -> (pixel xy (P, 2) OpenCV convention, camera z (P,))."""
    w2c = camera.world_to_cam.to(xyz.device, xyz.dtype)
    pc = xyz @ w2c[:3, :3].T + w2c[:3, 3]
    z = pc[:, 2]
    zs = torch.where(z.abs() < 1e-9, torch.full_like(z, 1e-9), z)
    x = camera.fx * pc[:, 0] / zs + camera.cx
    y = camera.fy * pc[:, 1] / zs + camera.cy
    return torch.stack([x, y], -1), z


def build_projection_index(xyz: torch.Tensor, cameras: list[Camera], depths: list[torch.Tensor | None] | None = None,
                           depth_tolerance: float = 0.05) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every point, the views that see it: flat arrays (obs_point, obs_frame, obs_xy).

    A point is observed by a view when it projects inside the image in front of the camera
    (z > near) and, if that view has a depth map, its depth agrees with the depth at its pixel
    within ``depth_tolerance`` (relative).
    """
    pts, frames, xys = [], [], []
    for fi, cam in enumerate(cameras):
        xy, z = project(xyz, cam)
        ok = (z > cam.near) & (xy[:, 0] >= -0.5) & (xy[:, 0] < cam.width - 0.5) & (xy[:, 1] >= -0.5) \
            & (xy[:, 1] < cam.height - 0.5)
        d = depths[fi] if depths is not None else None
        if d is not None:
            px = xy[:, 0].round().long().clamp(0, cam.width - 1)
            py = xy[:, 1].round().long().clamp(0, cam.height - 1)
            dz = d[py, px]
            ok &= (dz > 0) & ((dz - z).abs() <= depth_tolerance * z.abs())
        idx = torch.nonzero(ok).squeeze(1)
        pts.append(idx)
        frames.append(torch.full_like(idx, fi))
        xys.append(xy[idx])
    return torch.cat(pts), torch.cat(frames), torch.cat(xys).float()


def sample_point_features(num_points: int, obs_point: torch.Tensor, obs_frame: torch.Tensor, obs_xy: torch.Tensor,
                          targets: list[FeatureTarget | None], generator: torch.Generator | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """One random observing view per point -> (features (P, D) raw, has_feature (P,) bool).

    Observations in views without a feature target are ignored; points left without any
    observation get has_feature False (callers drop them).
    """
    usable = torch.tensor([targets[int(f)] is not None for f in obs_frame.tolist()], dtype=torch.bool) \
        if obs_frame.numel() else torch.zeros(0, dtype=torch.bool)
    obs_point, obs_frame, obs_xy = obs_point[usable], obs_frame[usable], obs_xy[usable]
    dim = next(t.grid.shape[0] for t in targets if t is not None)
    feats = torch.zeros(num_points, dim)
    has = torch.zeros(num_points, dtype=torch.bool)
    if obs_point.numel() == 0:
        return feats, has
    # Uniform choice among each point's observations: random key per observation, keep the max.
    key = torch.rand(obs_point.shape[0], generator=generator)
    order = torch.argsort(key)
    chosen = torch.full((num_points,), -1, dtype=torch.long)
    chosen[obs_point[order]] = order  # last write wins -> a uniformly random observation
    has = chosen >= 0
    sel = chosen[has]
    for fi in torch.unique(obs_frame[sel]).tolist():
        m = obs_frame[sel] == fi
        rows = torch.nonzero(has).squeeze(1)[m]
        feats[rows] = sample_grid(targets[fi], obs_xy[sel[m]])
    return feats, has


def surfels_from_points(xyz: torch.Tensor, rgb: torch.Tensor, features: torch.Tensor, opacity: float = 0.1,
                        scale_multiplier: float = 1.0, normals: torch.Tensor | None = None,
                        generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> SurfelMap:
    """2DGS point init: isotropic scale from 3-NN distances, random rotation (or aligned to
    ``normals`` when given), opacity 0.1, SH DC from the point colour, frozen features."""
    scales = (knn_scales(xyz) * scale_multiplier)[:, None].expand(-1, 2).clone()
    quats = random_quats_wxyz(xyz.shape[0], generator) if normals is None else quats_from_normals(normals, generator)
    return SurfelMap.create(xyz.float(), rgb.float().clamp(0, 1), features.float(), scales, quats, opacity,
                            device=device)


def quats_from_normals(normals: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Quaternions whose third axis t_w is ``normals`` (N, 3), with a random in-plane angle."""
    n = F.normalize(normals.float(), dim=-1)
    helper = torch.where((n[:, 2:3].abs() < 0.9), torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[1.0, 0.0, 0.0]]))
    tu = F.normalize(torch.linalg.cross(helper, n, dim=-1), dim=-1)
    tv = torch.linalg.cross(n, tu, dim=-1)
    ang = torch.rand(n.shape[0], 1, generator=generator) * 2 * torch.pi
    tu, tv = tu * torch.cos(ang) + tv * torch.sin(ang), -tu * torch.sin(ang) + tv * torch.cos(ang)
    rot = torch.stack([tu, tv, n], -1)
    return matrix_to_quat_wxyz(rot).float()


def points_from_depth(image: torch.Tensor, depth: torch.Tensor, camera: Camera, stride: int = 4,
                      max_depth: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Back-project every ``stride``-th pixel with valid depth: (xyz (P, 3) world, rgb (P, 3), pixel xy (P, 2))."""
    h, w = depth.shape
    ys, xs = torch.meshgrid(torch.arange(0, h, stride), torch.arange(0, w, stride), indexing="ij")
    xs, ys = xs.reshape(-1), ys.reshape(-1)
    z = depth[ys, xs]
    ok = torch.isfinite(z) & (z > camera.near)
    if max_depth is not None:
        ok &= z < max_depth
    xs, ys, z = xs[ok], ys[ok], z[ok]
    pc = torch.stack([(xs.float() - camera.cx) / camera.fx * z, (ys.float() - camera.cy) / camera.fy * z, z], -1)
    c2w = camera.cam_to_world
    xyz = pc @ c2w[:3, :3].T + c2w[:3, 3]
    rgb = image[:, ys, xs].T
    return xyz, rgb, torch.stack([xs, ys], -1).float()


@dataclass
class KeyframeSeedParams:
    """How a new online keyframe seeds surfels (node parameters; docs/METHOD.md §9.3)."""

    max_new: int = 4000             # cap of new surfels per keyframe
    depth_stride: int = 4           # [px] pixel stride of depth / nominal-depth seeding
    depth_max: float = 20.0         # [m] depth beyond is ignored
    init_geometry: str = "nominal"  # no depth, no seed points: mvs (stereo, core/mvs.py) | nominal
    mono_depth: float = 2.0         # [m] init_geometry nominal: nominal depth along the rays ...
    mono_jitter: float = 0.5        # [m] ... +- this (uniform)
    opacity: float = 0.1
    scale_multiplier: float = 1.0
    backend: str = "auto"           # rasterizer backend of the coverage render


def coverage(surfels: SurfelMap, cam: Camera, backend: str = "auto", long_side: int | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The map rendered in ``cam``: (covered = alpha > 0.5, median depth in camera z), both (H, W) at the
    camera's size. With ``long_side``, rendered with at most that many pixels on the long side and
    enlarged (centre-aligned nearest) to the camera's size."""
    f = 1.0 if long_side is None else min(1.0, long_side / max(cam.width, cam.height))
    c = cam.scaled(f) if f < 1.0 else cam
    with torch.no_grad():
        r = render(surfels, c, backend=backend)
    covered, depth = r.alpha > 0.5, r.depth_median
    if c is not cam and (c.width, c.height) != (cam.width, cam.height):
        size = (cam.height, cam.width)
        covered = F.interpolate(covered[None, None].float(), size=size, mode="nearest-exact")[0, 0] > 0.5
        depth = F.interpolate(depth[None, None].float(), size=size, mode="nearest-exact")[0, 0]
    return covered, depth


def seed_keyframe(image: torch.Tensor, depth: torch.Tensor | None, cam: Camera, target: FeatureTarget,
                  surfels: SurfelMap, seed_xyz: torch.Tensor, seed_rgb: torch.Tensor, p: KeyframeSeedParams,
                  gen: torch.Generator, stereo=None) -> tuple[SurfelMap | None, torch.Tensor]:
    """New surfels for the pixels of a keyframe that the current map does not explain yet.

    Sources, in order: pending seed points (world frame, (P, 3)) that the keyframe sees (and its
    depth does not contradict); the keyframe's depth (metres, 0 = unknown) back-projected where
    the map's render is not opaque or disagrees by more than 10 %; without either, stereo depth
    against earlier keyframes (``p.init_geometry == "mvs"``, ``stereo`` a
    :class:`fhgs_ros.core.mvs.KeyframeBuffer`: no reliable estimate yet -> no surfels, the map
    waits) or a nominal depth along the rays of uncovered pixels. Each surfel's frozen feature is
    sampled from the feature target of the keyframe it comes from. Returns (surfels or None,
    indices of the seed points used).
    """
    used = torch.zeros(0, dtype=torch.long)
    if p.max_new <= 0:
        return None, used
    stereo_path = depth is None and p.init_geometry == "mvs" and stereo is not None
    # stereo depth has the buffer's working resolution (160 px): the map's coverage is tested at twice that
    # (two renders per keyframe of a 100k-surfel map at 640 x 480 cost 0.23 s, at 320 x 240 0.12 s; at
    # 160 x 120 the median depth of small surfels degrades: 12 % instead of 3 % of pixels > 10 % off)
    cover_long_side = _stereo_cover_long_side(stereo) if stereo_path else None
    covered = None
    rdepth = None
    if len(surfels):
        covered, rdepth = coverage(surfels, cam, p.backend, cover_long_side)
    xyzs, rgbs, feats = [], [], []
    # 1. pending seed points that this keyframe sees
    if seed_xyz.shape[0]:
        xy, z = project(seed_xyz, cam)
        ok = (z > cam.near) & (xy[:, 0] >= -0.5) & (xy[:, 0] < cam.width - 0.5) & (xy[:, 1] >= -0.5) \
            & (xy[:, 1] < cam.height - 0.5)
        if depth is not None and ok.any():
            px = xy[:, 0].round().long().clamp(0, cam.width - 1)
            py = xy[:, 1].round().long().clamp(0, cam.height - 1)
            dz = depth[py, px]
            ok &= (dz <= 0) | ((dz - z).abs() <= 0.1 * z.abs())
        if ok.any():
            used = torch.nonzero(ok).squeeze(1)
            xyzs.append(seed_xyz[used])
            rgbs.append(seed_rgb[used])
            feats.append(sample_grid(target, xy[used]))
    # 2. depth: back-project pixels the map does not explain yet
    stride = max(1, p.depth_stride)
    if depth is not None:
        xyz, rgb, xy = points_from_depth(image, depth, cam, stride=stride, max_depth=p.depth_max)
        if covered is not None and xyz.shape[0]:
            px, py = xy[:, 0].long(), xy[:, 1].long()
            z = depth[py, px]
            explained = covered[py, px] & ((rdepth[py, px] - z).abs() <= 0.1 * z)
            xyz, rgb, xy = xyz[~explained], rgb[~explained], xy[~explained]
        if xyz.shape[0]:
            xyzs.append(xyz)
            rgbs.append(rgb)
            feats.append(sample_grid(target, xy))
    elif not xyzs and stereo_path:
        # 3. no depth, no seed points: stereo depth against earlier keyframes (none yet: the map waits)
        from fhgs_ros.core.mvs import online_seed_points

        _gather_stereo(online_seed_points(stereo, image, cam, target, _stereo_stride(p), covered, rdepth,
                                          explain=_explainer(surfels, p, stereo)), xyzs, rgbs, feats)
    elif not xyzs:
        # 3'. init_geometry nominal: nominal depth along the rays of uncovered pixels
        ys, xs = torch.meshgrid(torch.arange(0, cam.height, stride), torch.arange(0, cam.width, stride),
                                indexing="ij")
        xs, ys = xs.reshape(-1), ys.reshape(-1)
        if covered is not None:
            m = ~covered[ys, xs]
            xs, ys = xs[m], ys[m]
        if xs.numel():
            d = p.mono_depth + (torch.rand(xs.numel(), generator=gen) * 2 - 1) * p.mono_jitter
            d = d.clamp_min(cam.near * 1.5)
            pc = torch.stack([(xs.float() - cam.cx) / cam.fx * d, (ys.float() - cam.cy) / cam.fy * d, d], -1)
            c2w = cam.cam_to_world
            xyzs.append(pc @ c2w[:3, :3].T + c2w[:3, 3])
            rgbs.append(image[:, ys, xs].T)
            feats.append(sample_grid(target, torch.stack([xs, ys], -1).float()))
    return _new_surfels(xyzs, rgbs, feats, p, gen), used


def flush_stereo_seeds(surfels: SurfelMap, stereo, p: KeyframeSeedParams, gen: torch.Generator) -> SurfelMap | None:
    """End of stream (``stereo`` a :class:`fhgs_ros.core.mvs.KeyframeBuffer`): new surfels for the keyframes
    whose stereo depth still waits for later keyframes (``MVSConfig.defer``), from sources on one side only,
    seeded by the rule of :func:`seed_keyframe`; None when nothing is waiting or nothing new is reliable."""
    from fhgs_ros.core.mvs import flush_seed_points

    if stereo is None or p.max_new <= 0 or not stereo.waiting():
        return None
    xyzs, rgbs, feats = [], [], []
    _gather_stereo(flush_seed_points(stereo, _stereo_stride(p), explain=_explainer(surfels, p, stereo)),
                   xyzs, rgbs, feats)
    return _new_surfels(xyzs, rgbs, feats, p, gen)


def _stereo_cover_long_side(stereo) -> int:
    """Long side [px] of the coverage render on the stereo path: twice the buffer's working resolution
    (see :func:`seed_keyframe`)."""
    return 2 * stereo.cfg.long_side


def _stereo_stride(p: KeyframeSeedParams) -> int:
    """Pixel stride of stereo seeds: half the depth stride (at least 1)."""
    return max(1, max(1, p.depth_stride) // 2)


def _explainer(surfels: SurfelMap, p: KeyframeSeedParams, stereo):
    """``explain(cam) -> (covered, median depth)``: the map rendered in the camera of a keyframe whose
    stereo depth arrives now (an empty map covers nothing)."""
    def explain(c: Camera) -> tuple[torch.Tensor, torch.Tensor]:
        if not len(surfels):
            return torch.zeros(c.height, c.width, dtype=torch.bool), torch.zeros(c.height, c.width)
        return coverage(surfels, c, p.backend, _stereo_cover_long_side(stereo))
    return explain


def _gather_stereo(points, xyzs: list, rgbs: list, feats: list) -> None:
    """Append each stereo ``SeedPoints``' positions, colours and features (its keyframe's feature grid,
    ``token``) to the lists."""
    for sp in points:
        xyzs.append(sp.xyz)
        rgbs.append(sp.rgb)
        feats.append(sample_grid(sp.token, sp.xy))


def _new_surfels(xyzs: list[torch.Tensor], rgbs: list[torch.Tensor], feats: list[torch.Tensor],
                 p: KeyframeSeedParams, gen: torch.Generator) -> SurfelMap | None:
    """Surfels of the gathered points (world frame), at most ``p.max_new`` of them (a random subset)."""
    if not xyzs:
        return None
    xyz, rgb, f = torch.cat(xyzs), torch.cat(rgbs), torch.cat(feats)
    if xyz.shape[0] > p.max_new:
        sel = torch.randperm(xyz.shape[0], generator=gen)[:p.max_new]
        xyz, rgb, f = xyz[sel], rgb[sel], f[sel]
    if xyz.shape[0] < 2:
        return None
    return surfels_from_points(xyz, rgb, f, p.opacity, p.scale_multiplier, generator=gen)
