"""TSDF fusion + marching cubes on analytic depth, mesh from surfels, PLY/OBJ I/O."""

import math

import numpy as np
import pytest
import torch

from fhgs_ros.core.camera import Camera, look_at
from fhgs_ros.core.ply import PlyError
from fhgs_ros.core.mesh import (Mesh, default_tsdf_params, estimate_scene_sphere, drop_small_components,
                                mesh_from_surfels, read_mesh_ply, tsdf_fusion, write_mesh_obj, save_mesh_ply)
from fhgs_ros.core.metrics import chamfer_distance, sample_mesh_points

R_SPHERE = 0.5
W, H = 80, 60


def ray_dirs(cam: Camera) -> tuple[torch.Tensor, torch.Tensor]:
    """(origin (3,), world directions (H, W, 3)) with camera-z component 1 (so t = camera depth)."""
    v, u = torch.meshgrid(torch.arange(cam.height, dtype=torch.float64), torch.arange(cam.width, dtype=torch.float64),
                          indexing="ij")
    dc = torch.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, torch.ones_like(u)], -1)
    c2w = cam.cam_to_world.double()
    return c2w[:3, 3], dc @ c2w[:3, :3].T


def sphere_depth(cam: Camera, radius: float = R_SPHERE) -> torch.Tensor:
    """Exact camera-z depth of the sphere |x| = radius (0 where the ray misses)."""
    o, d = ray_dirs(cam)
    a = (d * d).sum(-1)
    b = 2 * (d * o).sum(-1)
    c = float(o @ o) - radius ** 2
    disc = b * b - 4 * a * c
    t = (-b - torch.sqrt(disc.clamp_min(0))) / (2 * a)
    return torch.where((disc > 0) & (t > 0), t, torch.zeros_like(t)).float()


def sphere_cameras(n: int = 12, dist: float = 2.0) -> list[Camera]:
    cams = []
    golden = math.pi * (3 - math.sqrt(5))
    for i in range(n):
        z = 1 - 2 * (i + 0.5) / n
        r = math.sqrt(1 - z * z)
        eye = (dist * r * math.cos(golden * i), dist * r * math.sin(golden * i), dist * z)
        cams.append(Camera(W, H, 70.0, 70.0, (W - 1) / 2, (H - 1) / 2, look_at(eye, (0, 0, 0)), name=f"c{i}"))
    return cams


def fib_sphere(n: int, radius: float) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    r = torch.sqrt(1 - z * z)
    phi = math.pi * (3 - math.sqrt(5)) * i
    return (radius * torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)).float()


def test_tsdf_sphere_reconstruction():
    cams = sphere_cameras()
    depths = [sphere_depth(c) for c in cams]
    colors = [torch.full((3, H, W), 0.25) for _ in cams]
    voxel = 0.02
    mesh = tsdf_fusion(depths, colors, cams, voxel_size=voxel, sdf_trunc=4 * voxel, depth_trunc=3.0,
                       drop_small=True)
    assert mesh.num_faces > 1000
    assert mesh.info["voxel_size"] == pytest.approx(voxel) and not mesh.info["capped"]
    radial = (mesh.vertices.double().norm(dim=1) - R_SPHERE).abs()
    assert radial.mean() < 0.25 * voxel and radial.max() < 2 * voxel
    pts = sample_mesh_points(mesh.vertices, mesh.faces, 20000, seed=0)
    cd = chamfer_distance(pts, fib_sphere(20000, R_SPHERE))
    assert cd["chamfer"] < 2 * voxel and cd["completeness"] < 2 * voxel
    assert mesh.area() == pytest.approx(4 * math.pi * R_SPHERE ** 2, rel=0.05)
    # Face normals point to free space (outwards), towards the cameras.
    v = mesh.vertices[mesh.faces].mean(1)
    assert ((mesh.face_normals() * v).sum(-1) > 0).float().mean() > 0.99
    assert torch.allclose(mesh.colors, torch.full_like(mesh.colors, 0.25), atol=1e-5)


def plane_depth(cam: Camera) -> torch.Tensor:
    """Exact depth of the plane z = 0 restricted to the square |x|, |y| <= 0.6."""
    o, d = ray_dirs(cam)
    t = -o[2] / d[..., 2]
    hit = o + t[..., None] * d
    ok = (t > 0) & (hit[..., 0].abs() <= 0.6) & (hit[..., 1].abs() <= 0.6)
    return torch.where(ok, t, torch.zeros_like(t)).float()


def test_tsdf_plane_given_bounds_and_no_colour():
    cams = [Camera(W, H, 60.0, 60.0, (W - 1) / 2, (H - 1) / 2, look_at(eye, (0, 0, 0), up=(0, 1, 0)))
            for eye in [(0.0, 0.0, 1.5), (0.4, 0.1, 1.4), (-0.3, 0.3, 1.6), (0.1, -0.4, 1.5)]]
    voxel = 0.02
    mesh = tsdf_fusion([plane_depth(c) for c in cams], None, cams, voxel, 5 * voxel, 3.0,
                       bounds=((-0.8, -0.8, -0.3), (0.8, 0.8, 0.3)))
    assert mesh.colors is None and mesh.num_faces > 500
    assert mesh.vertices[:, 2].abs().max() < 0.5 * voxel
    gt = torch.stack(torch.meshgrid(torch.linspace(-0.55, 0.55, 60), torch.linspace(-0.55, 0.55, 60),
                                    indexing="ij"), -1).reshape(-1, 2)
    gt = torch.cat([gt, torch.zeros(len(gt), 1)], 1)
    cd = chamfer_distance(sample_mesh_points(mesh.vertices, mesh.faces, 10000, 0), gt)
    assert cd["chamfer"] < 2 * voxel
    # Normals face the cameras (+z).
    assert (mesh.face_normals()[:, 2] > 0.9).float().mean() > 0.99


def test_tsdf_depth_trunc_and_grid_cap():
    cams = sphere_cameras(6)
    depths = [sphere_depth(c) for c in cams]
    empty = tsdf_fusion(depths, None, cams, 0.02, 0.08, depth_trunc=1.0)  # sphere is ~1.5 m away
    assert empty.num_faces == 0 and empty.num_vertices == 0
    capped = tsdf_fusion(depths, None, cams, 0.005, 0.02, depth_trunc=3.0, max_voxels=40 ** 3)
    assert capped.info["capped"] and math.prod(capped.info["grid"]) <= 40 ** 3
    assert capped.info["sdf_trunc"] / capped.info["voxel_size"] == pytest.approx(4.0)
    assert capped.num_faces > 100
    with pytest.raises(ValueError):
        tsdf_fusion(depths[:2], None, cams, 0.02, 0.08, 3.0)


def test_defaults_follow_2dgs_recipe():
    cams = sphere_cameras(8, dist=2.0)
    centre, radius = estimate_scene_sphere(cams)
    assert centre.norm() < 1e-4 and radius == pytest.approx(2.0, rel=1e-5)
    p = default_tsdf_params(cams)
    assert p["depth_trunc"] == pytest.approx(4.0, rel=1e-5)
    assert p["voxel_size"] == pytest.approx(4.0 / 1024, rel=1e-5)
    assert p["sdf_trunc"] == pytest.approx(5 * p["voxel_size"])


def _strip(n: int, x0: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A connected strip of n triangles starting at x = x0 (vertices, faces)."""
    k = (n + 2) // 2
    v = torch.tensor([[x0 + i, float(j), 0.0] for i in range(k + 1) for j in (0, 1)])
    f = []
    for i in range(k):
        a, b, c, d = 2 * i, 2 * i + 1, 2 * i + 2, 2 * i + 3
        f += [[a, c, b], [b, c, d]]
    return v[:n + 2], torch.tensor(f[:n])       # the first n faces use vertices 0 .. n + 1


def test_drop_small_components():
    """2DGS's post-processing: components below 50 faces go, every larger one stays (a room's second wall)."""
    parts = [_strip(300, 0.0), _strip(120, 1000.0), _strip(49, 2000.0), _strip(3, 3000.0)]
    vs, fs, off = [], [], 0
    for v, f in parts:
        vs.append(v)
        fs.append(f + off)
        off += len(v)
    v, f = torch.cat(vs), torch.cat(fs)
    m = drop_small_components(Mesh(v, f, torch.rand(len(v), 3)))
    assert m.num_faces == 420 and m.info["components"] == 4 and m.info["components_kept"] == 2
    assert m.colors.shape == (m.num_vertices, 3) and float(m.vertices[:, 0].max()) < 2000
    m = drop_small_components(Mesh(v, f, None), max_components=1)     # only the largest
    assert m.num_faces == 300
    small = drop_small_components(Mesh(*_strip(10, 0.0), None))       # nothing reaches 50: the largest stays
    assert small.num_faces == 10


def test_mesh_from_surfels_plane():
    from fhgs_ros.core.surfels import SurfelMap

    g = torch.linspace(-1.0, 1.0, 21)
    xy = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    n = len(xy)
    m = SurfelMap.create(torch.cat([xy, torch.zeros(n, 1)], 1), torch.full((n, 3), 0.6), torch.randn(n, 4),
                         scales=torch.full((n, 2), 0.12), quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
                         opacity=0.95)
    cams = [Camera(40, 30, 30.0, 30.0, 19.5, 14.5, look_at(eye, (0, 0, 0), up=(0, 1, 0)))
            for eye in [(0.0, 0.0, 1.5), (0.3, 0.1, 1.5), (-0.2, 0.25, 1.4)]]
    voxel = 0.03
    mesh = mesh_from_surfels(m, cams, voxel_size=voxel, sdf_trunc=4 * voxel, depth_trunc=3.0, backend="reference",
                             max_voxels=80 ** 3)
    assert mesh.num_faces > 200 and mesh.info["depth_mode"] == "median"
    assert mesh.vertices[:, 2].abs().max() < voxel
    inner = (mesh.vertices[:, :2].abs() < 0.7).all(1)  # away from the semi-transparent rim of the surfel patch
    assert inner.sum() > 100 and (mesh.colors[inner] - 0.6).abs().max() < 0.05


def test_ply_round_trip(tmp_path):
    v = torch.randn(50, 3)
    f = torch.randint(0, 50, (80, 3))
    c = torch.rand(50, 3)
    mesh = Mesh(v, f, c)
    p = tmp_path / "m.ply"
    save_mesh_ply(mesh, p)
    back = read_mesh_ply(p)
    assert torch.equal(back.vertices, v) and torch.equal(back.faces, f)
    assert (back.colors - c).abs().max() <= 0.5 / 255 + 1e-6
    save_mesh_ply(Mesh(v, f), p)  # overwrite, uncoloured
    back = read_mesh_ply(p)
    assert back.colors is None and torch.equal(back.faces, f)
    assert not [x for x in tmp_path.iterdir() if x.name.endswith(".tmp")]
    # OBJ
    o = tmp_path / "m.obj"
    write_mesh_obj(mesh, o)
    lines = o.read_text().splitlines()
    assert sum(ln.startswith("v ") for ln in lines) == 50 and sum(ln.startswith("f ") for ln in lines) == 80
    first_f = next(ln for ln in lines if ln.startswith("f ")).split()[1:]
    assert [int(x) - 1 for x in first_f] == f[0].tolist()


def test_read_ascii_and_big_endian_ply(tmp_path):
    text = """ply
format ascii 1.0
comment a quad and a triangle
element vertex 5
property float x
property float y
property float z
property uchar red
property uchar green
property uchar blue
element face 2
property list uchar int vertex_indices
end_header
0 0 0 255 0 0
1 0 0 0 255 0
1 1 0 0 0 255
0 1 0 255 255 255
2 2 2 0 0 0
4 0 1 2 3
3 1 4 2
"""
    p = tmp_path / "a.ply"
    p.write_text(text)
    m = read_mesh_ply(p)
    assert m.num_vertices == 5 and m.faces.tolist() == [[0, 1, 2], [0, 2, 3], [1, 4, 2]]
    assert m.colors[0].tolist() == [1.0, 0.0, 0.0]

    # big-endian point cloud with an extra property and no faces
    verts = np.array([(1.0, 2.0, 3.0, 7.0), (4.0, 5.0, 6.0, 8.0)], dtype=[("x", ">f4"), ("y", ">f4"), ("z", ">f4"),
                                                                         ("q", ">f8")])
    head = ("ply\nformat binary_big_endian 1.0\nelement vertex 2\nproperty float x\nproperty float y\n"
            "property float z\nproperty double q\nend_header\n").encode()
    b = tmp_path / "b.ply"
    b.write_bytes(head + verts.tobytes())
    m = read_mesh_ply(b)
    assert m.vertices.tolist() == [[1, 2, 3], [4, 5, 6]] and m.num_faces == 0
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"not a ply")
    with pytest.raises(PlyError):
        read_mesh_ply(bad)
    trunc = tmp_path / "t.ply"
    trunc.write_bytes(head + verts.tobytes()[:-4])
    with pytest.raises(PlyError, match="truncated"):
        read_mesh_ply(trunc)
