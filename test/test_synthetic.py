"""Synthetic labelled scene: determinism, geometry / labels against the GT mesh, tracks."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from fhgs_ros.datasets.synthetic import (LABEL_NAMES, SyntheticScene, generate_scene, main, orbit_cameras,
                                         synthetic_dataset)

W, H, N = 64, 48, 8


@pytest.fixture(scope="module")
def ds():
    return synthetic_dataset(W, H, N, seed=0, num_points=1500, num_gt_points=4000)


def _ray_mesh(origin: np.ndarray, dirs: np.ndarray, verts: np.ndarray, faces: np.ndarray):
    """Moller-Trumbore, nearest hit per ray: (t (R,), face index (R,))."""
    v0, v1, v2 = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    e1, e2 = v1 - v0, v2 - v0
    s = origin - v0  # (F, 3)
    best_t = np.full(len(dirs), np.inf)
    best_f = np.full(len(dirs), -1)
    for i0 in range(0, len(dirs), 64):
        d = dirs[i0:i0 + 64][:, None, :]  # (R, 1, 3)
        p = np.cross(d, e2[None])  # (R, F, 3)
        det = (p * e1[None]).sum(-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / det
            u = (s[None] * p).sum(-1) * inv
            q = np.cross(s, e1)[None]
            v = (d * q).sum(-1) * inv
            t = (e2[None] * q).sum(-1) * inv
        ok = (np.abs(det) > 1e-12) & (u >= -1e-9) & (v >= -1e-9) & (u + v <= 1 + 1e-9) & (t > 1e-6)
        t = np.where(ok, t, np.inf)
        best_f[i0:i0 + 64] = t.argmin(1)
        best_t[i0:i0 + 64] = t.min(1)
    return best_t, best_f


def test_every_pixel_hits_and_labels_cover_scene(ds):
    assert len(ds.frames) == N and ds.label_names == LABEL_NAMES
    present = set()
    for f in ds.frames:
        assert f.image.shape == (3, H, W) and f.image.dtype == torch.float32
        assert float(f.image.min()) >= 0 and float(f.image.max()) <= 1
        assert (f.depth > 0).all(), "every pixel must hit a surface (cameras inside the room)"
        assert int(f.labels.min()) >= 0 and int(f.labels.max()) < len(LABEL_NAMES)
        assert torch.allclose(f.normal.norm(dim=0), torch.ones(H, W), atol=1e-5)
        present |= set(f.labels.unique().tolist())
    for name in ("floor", "wall", "table", "box", "floor_box", "wall_panel", "sphere", "ball", "cylinder"):
        assert LABEL_NAMES.index(name) in present, name


def test_depth_and_labels_match_gt_mesh(ds):
    verts, faces = ds.gt_mesh[0].double().numpy(), ds.gt_mesh[1].numpy()
    face_lab = ds.gt_mesh_labels.numpy()
    rng = np.random.default_rng(0)
    for fi in (0, 3, 6):
        f = ds.frames[fi]
        cam = f.camera
        idx = rng.choice(W * H, 300, replace=False)
        ys, xs = idx // W, idx % W
        z = f.depth.double().numpy()[ys, xs]
        # back-project the depth map with the camera geometry
        pc = np.stack([(xs - cam.cx) / cam.fx * z, (ys - cam.cy) / cam.fy * z, z], 1)
        c2w = cam.cam_to_world.double().numpy()
        pts = pc @ c2w[:3, :3].T + c2w[:3, 3]
        eye = c2w[:3, 3]
        rays = pts - eye
        dist = np.linalg.norm(rays, axis=1)
        t, fidx = _ray_mesh(eye, rays / dist[:, None], verts, faces)
        assert np.isfinite(t).all()
        err = np.abs(t - dist)
        assert np.quantile(err, 0.99) < 5e-3, f"frame {fi}: depth off the GT mesh by {err.max():.4f} m"
        agree = face_lab[fidx] == f.labels.numpy()[ys, xs]
        assert agree.mean() >= 0.99, f"frame {fi}: label agreement {agree.mean():.3f}"


def test_normals_match_mesh_faces(ds):
    f = ds.frames[1]
    n = f.normal.numpy()
    cam = f.camera
    c2w = cam.cam_to_world.double().numpy()
    to_cam = c2w[:3, 3][:, None, None] - np.zeros((3, H, W))
    # normals face the camera
    ys, xs = np.mgrid[0:H, 0:W]
    z = f.depth.numpy()
    pc = np.stack([(xs - cam.cx) / cam.fx * z, (ys - cam.cy) / cam.fy * z, z], 0)
    pts = np.einsum("ij,jhw->ihw", c2w[:3, :3], pc) + c2w[:3, 3][:, None, None]
    assert ((n * (to_cam - pts)).sum(0) > 0).mean() > 0.999


def test_tracks_reproject_and_pass_depth_test(ds):
    pc = ds.points
    assert len(pc) > 300
    assert pc.obs_point.shape == pc.obs_frame.shape and pc.obs_xy.shape == (len(pc.obs_point), 2)
    counts = torch.bincount(pc.obs_point, minlength=len(pc))
    assert int(counts.min()) >= 2
    for fi, f in enumerate(ds.frames):
        m = pc.obs_frame == fi
        if not m.any():
            continue
        cam = f.camera
        X = pc.xyz[pc.obs_point[m]].double()
        p = X @ cam.world_to_cam[:3, :3].double().T + cam.world_to_cam[:3, 3].double()
        xy = torch.stack([cam.fx * p[:, 0] / p[:, 2] + cam.cx, cam.fy * p[:, 1] / p[:, 2] + cam.cy], 1)
        assert (xy - pc.obs_xy[m].double()).abs().max() < 1e-3
        col = xy[:, 0].round().long().clamp(0, W - 1)
        row = xy[:, 1].round().long().clamp(0, H - 1)
        d = f.depth[row, col].double()
        assert ((d - p[:, 2]).abs() < 0.02 * p[:, 2] + 0.011).all()
        # track labels match the label image at the observation (nearly everywhere: silhouettes differ)
        lab = f.labels[row, col]
        assert (lab == pc.labels[pc.obs_point[m]]).float().mean() > 0.9


def test_colours_view_independent_along_tracks(ds):
    """The pixel colour at every observation of a point matches the point colour (AA blur aside)."""
    pc = ds.points
    diffs = []
    for fi, f in enumerate(ds.frames):
        m = pc.obs_frame == fi
        xy = pc.obs_xy[m]
        col = xy[:, 0].round().long().clamp(0, W - 1)
        row = xy[:, 1].round().long().clamp(0, H - 1)
        diffs.append((f.image[:, row, col].T - pc.rgb[pc.obs_point[m]]).abs().mean(1))
    d = torch.cat(diffs)
    assert float(d.median()) < 0.05


def test_hard_cases_texture_matches_neighbour_surface():
    scene = SyntheticScene(0)
    by_name = {p.name: p for p in scene.prims}
    rng = np.random.default_rng(1)
    # floor_box top face vs the floor at the same (x, y)
    box = by_name["floor_box"]
    q = rng.uniform(-1, 1, (200, 3)) * box.half
    q[:, 2] = box.half[2]
    p = q @ box._r.T + box.center
    a_box = scene.albedo(box, p)
    a_floor = scene.albedo(by_name["floor"], p * [1, 1, 0])
    assert np.abs(a_box - a_floor).mean() < 0.05
    assert box.label != by_name["floor"].label
    # wall panel front vs the wall behind it
    panel = by_name["wall_panel"]
    q = rng.uniform(-1, 1, (200, 3)) * panel.half
    q[:, 0] = -panel.half[0]
    p = q + panel.center
    wall_p = p.copy()
    wall_p[:, 0] = 3.5
    assert np.abs(scene.albedo(panel, p) - scene.albedo(by_name["wall_xpos"], wall_p)).mean() < 0.05
    assert panel.label != by_name["wall_xpos"].label


def test_gt_points_and_mesh(ds):
    g = ds.gt_points
    assert g.xyz.shape == (4000, 3) and g.labels.shape == (4000,) and g.normals.shape == (4000, 3)
    assert float(g.rgb.min()) >= 0 and float(g.rgb.max()) <= 1
    verts, faces = ds.gt_mesh
    assert faces.min() >= 0 and faces.max() < len(verts)
    assert ds.gt_mesh_labels.shape == (len(faces),)
    # area-uniform: the floor's share of samples ~ its share of the exposed area (> 25 %)
    frac_floor = float((g.labels == LABEL_NAMES.index("floor")).float().mean())
    assert 0.2 < frac_floor < 0.4


def test_generate_scene_deterministic(tmp_path):
    kw = dict(width=40, height=30, num_frames=4, num_points=300, num_gt_points=500)
    a = generate_scene(tmp_path / "a", seed=3, **kw)
    b = generate_scene(tmp_path / "b", seed=3, **kw)
    c = generate_scene(tmp_path / "c", seed=4, **kw)

    def digest(root):
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    da, db, dc = digest(a), digest(b), digest(c)
    for name in ("transforms.json", "scene.json", "gt_mesh.ply", "gt_points.ply", "points3d.ply", "tracks.npz",
                 "images/0000.png", "depth/0003.png", "labels/0002.png"):
        assert name in da, name
    assert da == db
    assert da["images/0000.png"] != dc["images/0000.png"]  # textures depend on the seed
    assert da["labels/0000.png"] == dc["labels/0000.png"]  # the layout does not


def test_orbit_cameras_inside_room():
    cams = orbit_cameras(32, 24, 10)
    assert len(cams) == 10
    for c in cams:
        e = c.center
        assert e[:2].abs().max() < 3.0 and 0.5 < float(e[2]) < 2.0
    assert len({round(float(c.center[2]), 3) for c in cams}) == 2


def test_cli(tmp_path, capsys):
    out = tmp_path / "scene"
    assert main([str(out), "--width", "32", "--height", "24", "--frames", "3", "--points", "200"]) == 0
    assert (out / "transforms.json").is_file() and (out / "images" / "0002.png").is_file()
    assert main([str(out), "--width", "2"]) == 2
