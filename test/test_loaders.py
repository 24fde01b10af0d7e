"""Dataset loaders: round trips through the writers, format variants, and error messages."""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fhgs_ros.datasets import (DatasetError, detect_format, load_colmap, load_dataset, load_nerf, load_opensfm,
                               write_colmap_text, write_nerf)
from fhgs_ros.datasets.colmap import MODELS
from fhgs_ros.core.camera import Intrinsics
from fhgs_ros.core.geometry import matrix_to_quat_wxyz, quat_wxyz_to_matrix
from fhgs_ros.core.ply import read_ply, write_mesh_ply, write_point_ply
from fhgs_ros.datasets.synthetic import synthetic_dataset

W, H, N = 48, 36, 6


@pytest.fixture(scope="module")
def src():
    return synthetic_dataset(W, H, N, seed=1, num_points=600, num_gt_points=1000)


@pytest.fixture(scope="module")
def nerf_dir(src, tmp_path_factory):
    return write_nerf(src, tmp_path_factory.mktemp("nerf"))


@pytest.fixture(scope="module")
def colmap_dir(src, tmp_path_factory):
    return write_colmap_text(src, tmp_path_factory.mktemp("colmap"))


def _same_cameras(a, b, tol=1e-5):
    assert len(a.frames) == len(b.frames)
    for fa, fb in zip(a.frames, b.frames):
        ca, cb = fa.camera, fb.camera
        assert (ca.width, ca.height) == (cb.width, cb.height)
        for k in ("fx", "fy", "cx", "cy"):
            assert abs(getattr(ca, k) - getattr(cb, k)) < tol, k
        assert (ca.world_to_cam - cb.world_to_cam).abs().max() < tol


def _same_points(a, b, tol=1e-5):
    pa, pb = a.points, b.points
    assert len(pa) == len(pb)
    assert (pa.xyz - pb.xyz).abs().max() < tol
    assert (pa.rgb - pb.rgb).abs().max() <= 0.5 / 255 + 1e-6
    assert torch.equal(pa.obs_point, pb.obs_point) and torch.equal(pa.obs_frame, pb.obs_frame)
    assert (pa.obs_xy - pb.obs_xy).abs().max() < tol


def _same_images(a, b):
    for fa, fb in zip(a.frames, b.frames):
        assert (fa.image - fb.image).abs().max() <= 0.5 / 255 + 1e-6
        assert torch.equal(fa.labels, fb.labels)
        assert (fa.depth - fb.depth).abs().max() <= 0.0005 + 1e-6  # 16-bit millimetres


# --------------------------------------------------------------------------- round trips

def test_nerf_round_trip(src, nerf_dir):
    ds = load_nerf(nerf_dir)
    _same_cameras(src, ds)
    _same_points(src, ds)
    _same_images(src, ds)
    assert ds.label_names == src.label_names
    assert torch.equal(ds.gt_mesh[1], src.gt_mesh[1]) and (ds.gt_mesh[0] - src.gt_mesh[0]).abs().max() < 1e-6
    assert torch.equal(ds.gt_mesh_labels, src.gt_mesh_labels)
    assert torch.equal(ds.gt_points.labels, src.gt_points.labels)
    assert ds.meta["scene"]["generator"]["seed"] == 1
    # OpenGL c2w in the file: camera looks along -z of its transform
    meta = json.loads((nerf_dir / "transforms.json").read_text())
    c2w = np.array(meta["frames"][0]["transform_matrix"])
    fwd_cv = src.frames[0].camera.cam_to_world[:3, 2].double().numpy()
    assert np.allclose(-c2w[:3, 2], fwd_cv, atol=1e-6)
    assert meta["cx"] == pytest.approx(W / 2)  # NeRF pixel convention: cx_opencv + 0.5


def test_colmap_round_trip(src, colmap_dir):
    assert (colmap_dir / "sparse" / "0" / "images.txt").is_file()
    ds = load_colmap(colmap_dir)
    _same_cameras(src, ds)
    _same_points(src, ds)
    _same_images(src, ds)
    assert ds.label_names == src.label_names and ds.gt_mesh is not None
    cams = (colmap_dir / "sparse" / "0" / "cameras.txt").read_text().split("\n")
    row = [ln for ln in cams if ln and not ln.startswith("#")][0].split()
    assert row[1] == "PINHOLE" and float(row[6]) == pytest.approx(W / 2)  # COLMAP convention: cx + 0.5


def test_colmap_through_nerf_and_back(colmap_dir, tmp_path):
    a = load_dataset(colmap_dir)
    b = load_dataset(write_nerf(a, tmp_path / "n"))
    _same_cameras(a, b)
    _same_points(a, b)


def test_load_dataset_autodetect(nerf_dir, colmap_dir):
    assert detect_format(nerf_dir) == "nerf"
    assert detect_format(colmap_dir) == "colmap"
    assert detect_format(colmap_dir / "sparse" / "0") == "colmap"
    assert detect_format(nerf_dir / "transforms.json") == "nerf"
    assert len(load_dataset(colmap_dir / "sparse" / "0").frames) == N
    assert len(load_dataset(nerf_dir / "transforms.json").frames) == N


@pytest.mark.parametrize("factor", [2, 0.5])
def test_downscale_scales_cameras_images_and_tracks(nerf_dir, factor):
    ds = load_dataset(nerf_dir, downscale=factor)
    f = ds.frames[0]
    assert f.image.shape == (3, H // 2, W // 2) and f.labels.shape == (H // 2, W // 2)
    assert f.depth.shape == (H // 2, W // 2)
    pc = ds.points
    for fi, fr in enumerate(ds.frames):
        m = pc.obs_frame == fi
        P = fr.camera.projection().double()
        X = torch.cat([pc.xyz[pc.obs_point[m]].double(), torch.ones(int(m.sum()), 1, dtype=torch.float64)], 1)
        p = X @ P.T
        assert (p[:, :2] / p[:, 2:] - pc.obs_xy[m].double()).abs().max() < 1e-3


def _write_colmap_bin(model_txt: Path, out: Path) -> None:
    """Convert our text model into COLMAP's binary format (test helper, independent of the reader)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [ln.split() for ln in (model_txt / "cameras.txt").read_text().splitlines() if ln and ln[0] != "#"]
    b = struct.pack("<Q", len(rows))
    for r in rows:
        b += struct.pack("<iiQQ", int(r[0]), MODELS[r[1]][0], int(r[2]), int(r[3]))
        b += struct.pack("<" + "d" * (len(r) - 4), *map(float, r[4:]))
    (out / "cameras.bin").write_bytes(b)
    lines = [ln for ln in (model_txt / "images.txt").read_text().split("\n") if not ln.startswith("#")]
    imgs = []
    for i in range(0, len(lines) - 1, 2):
        if lines[i].strip():
            imgs.append((lines[i].split(), lines[i + 1].split()))
    b = struct.pack("<Q", len(imgs))
    for h, p in imgs:
        b += struct.pack("<idddddddi", int(h[0]), *map(float, h[1:8]), int(h[8])) + h[9].encode() + b"\0"
        b += struct.pack("<Q", len(p) // 3)
        for j in range(0, len(p), 3):
            b += struct.pack("<ddq", float(p[j]), float(p[j + 1]), int(p[j + 2]))
    (out / "images.bin").write_bytes(b)
    rows = [ln.split() for ln in (model_txt / "points3D.txt").read_text().splitlines() if ln and ln[0] != "#"]
    b = struct.pack("<Q", len(rows))
    for r in rows:
        tr = list(map(int, r[8:]))
        b += struct.pack("<QdddBBBd", int(r[0]), *map(float, r[1:4]), *map(int, r[4:7]), float(r[7]))
        b += struct.pack("<Q", len(tr) // 2) + struct.pack("<" + "i" * len(tr), *tr)
    (out / "points3D.bin").write_bytes(b)


def test_colmap_binary_model(colmap_dir, tmp_path):
    root = tmp_path / "bin"
    shutil.copytree(colmap_dir / "images", root / "images")
    _write_colmap_bin(colmap_dir / "sparse" / "0", root / "sparse" / "0")
    a = load_colmap(colmap_dir)
    b = load_dataset(root)
    _same_cameras(a, b)
    _same_points(a, b)


# --------------------------------------------------------------------------- distortion / variants

def _smooth(x, y):
    """A smooth test pattern over normalised image coordinates."""
    return np.stack([0.5 + 0.4 * np.sin(3 * x), 0.5 + 0.4 * np.cos(4 * y), 0.5 + 0.3 * np.sin(2 * (x + y))], -1)


@pytest.mark.parametrize("model,params", [
    ("SIMPLE_RADIAL", [70.0, 40.0, 30.0, -0.12]),
    ("OPENCV", [70.0, 72.0, 40.0, 30.0, -0.1, 0.03, 0.002, -0.001]),
])
def test_colmap_distorted_models_are_undistorted(tmp_path, model, params):
    w, h = 80, 60
    if model == "SIMPLE_RADIAL":
        fx = fy = params[0]
        cx, cy = params[1] - 0.5, params[2] - 0.5
        dist = Intrinsics.brown(w, h, fx, fy, cx, cy, k1=params[3])
    else:
        fx, fy = params[0], params[1]
        cx, cy = params[2] - 0.5, params[3] - 0.5
        dist = Intrinsics.brown(w, h, fx, fy, cx, cy, k1=params[4], k2=params[5], p1=params[6], p2=params[7])
    # distorted image: each distorted pixel shows the pattern at its undistorted ray
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    uv = dist.undistort_pixels(np.stack([xs.ravel(), ys.ravel()], 1))
    xu, yu = ((uv[:, 0] - cx) / fx).reshape(h, w), ((uv[:, 1] - cy) / fy).reshape(h, w)
    img = np.round(_smooth(xu, yu) * 255).astype(np.uint8)
    (tmp_path / "images").mkdir()
    Image.fromarray(img).save(tmp_path / "images" / "a.png")
    # one 3-D point seen at its distorted pixel
    X = np.array([0.3, -0.2, 2.0])
    xd, yd = dist.distort_normalized(np.array([X[0] / X[2]]), np.array([X[1] / X[2]]))
    px, py = xd[0] * fx + cx + 0.5, yd[0] * fy + cy + 0.5  # COLMAP pixel convention
    (tmp_path / "cameras.txt").write_text(f"1 {model} {w} {h} " + " ".join(map(str, params)) + "\n")
    (tmp_path / "images.txt").write_text(f"# c\n1 1 0 0 0 0 0 0 1 a.png\n{px} {py} 7\n")
    (tmp_path / "points3D.txt").write_text(f"7 {X[0]} {X[1]} {X[2]} 255 0 0 0.1 1 0\n")
    ds = load_dataset(tmp_path)
    f = ds.frames[0]
    c = f.camera
    assert (c.fx, c.fy) == (pytest.approx(fx), pytest.approx(fy)) and c.cx == pytest.approx(cx)
    want = _smooth((xs - cx) / fx, (ys - cy) / fy)
    got = f.image.permute(1, 2, 0).numpy()
    inner = f.mask.numpy().copy()
    inner[:2], inner[-2:], inner[:, :2], inner[:, -2:] = False, False, False, False
    assert inner.mean() > 0.5
    assert np.abs(got - want)[inner].max() < 0.03
    obs = ds.points.obs_xy[0].double().numpy()
    assert np.allclose(obs, [fx * X[0] / X[2] + cx, fy * X[1] / X[2] + cy], atol=1e-4)


def test_colmap_rejects_fisheye(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "cameras.txt").write_text("1 OPENCV_FISHEYE 10 10 5 5 5 5 0.1 0 0 0\n")
    (tmp_path / "images.txt").write_text("")
    with pytest.raises(DatasetError, match=r"cameras\.txt.*OPENCV_FISHEYE.*not supported"):
        load_dataset(tmp_path)


def _blender(tmp_path: Path, rgba=True, splits=False):
    w, h = 20, 16
    angle = 0.9
    (tmp_path / "train").mkdir()
    frames = []
    for i in range(3):
        a = np.zeros((h, w, 4 if rgba else 3), np.uint8)
        a[..., 0] = 200
        if rgba:
            a[..., 3] = 255
            a[:4, :, 3] = 0  # transparent top rows
        Image.fromarray(a).save(tmp_path / "train" / f"r_{i}.png")
        ang = 2 * math.pi * i / 3
        eye = np.array([3 * math.cos(ang), 3 * math.sin(ang), 1.0])
        fwd = -eye / np.linalg.norm(eye)
        right = np.cross(fwd, [0, 0, 1.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, fwd)
        c2w = np.eye(4)
        c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -fwd, eye
        frames.append({"file_path": f"./train/r_{i}", "rotation": 0.1, "transform_matrix": c2w.tolist()})
    meta = {"camera_angle_x": angle, "frames": frames}
    if splits:
        (tmp_path / "transforms_train.json").write_text(json.dumps(meta))
        (tmp_path / "transforms_test.json").write_text(json.dumps({"camera_angle_x": angle, "frames": frames[:1]}))
    else:
        (tmp_path / "transforms.json").write_text(json.dumps(meta))
    return w, h, angle, frames


def test_blender_variant(tmp_path):
    w, h, angle, frames = _blender(tmp_path)
    ds = load_dataset(tmp_path)
    c = ds.frames[0].camera
    assert (c.width, c.height) == (w, h)
    assert c.fx == pytest.approx(0.5 * w / math.tan(0.5 * angle)) and c.fy == pytest.approx(c.fx)
    assert (c.cx, c.cy) == (pytest.approx(w / 2 - 0.5), pytest.approx(h / 2 - 0.5))
    # OpenCV camera at the eye, looking at the origin
    eye = np.array(frames[0]["transform_matrix"])[:3, 3]
    assert np.allclose(c.center.numpy(), eye, atol=1e-5)
    p = c.projection().double() @ torch.tensor([0.0, 0, 0, 1], dtype=torch.float64)
    assert p[2] > 0 and abs(p[0] / p[2] - c.cx) < 1e-3 and abs(p[1] / p[2] - c.cy) < 1e-3
    f = ds.frames[0]
    assert f.mask is not None and not f.mask[:4].any() and f.mask[4:].all()
    assert torch.allclose(f.image[:, 0, 0], torch.ones(3))  # transparent -> white background
    assert f.depth is None and f.labels is None and ds.points is None


def test_blender_splits(tmp_path):
    _blender(tmp_path, rgba=False, splits=True)
    ds = load_dataset(tmp_path)
    assert len(ds.frames) == 4
    assert ds.meta["splits"] == {"train": [0, 1, 2], "test": [3]}


def test_nerf_per_frame_intrinsics(src, tmp_path):
    """Per-frame fl_x/cx/w/h (as nerfstudio writes for mixed cameras) are honoured."""
    ds = synthetic_dataset(W, H, 2, seed=0, num_points=50, num_gt_points=10)
    out = write_nerf(ds, tmp_path)
    meta = json.loads((out / "transforms.json").read_text())
    for k in ("fl_x", "fl_y", "cx", "cy", "w", "h"):
        v = meta.pop(k)
        for fr in meta["frames"]:
            fr[k] = v
    meta["frames"][1]["fl_x"] = 50.0
    (out / "transforms.json").write_text(json.dumps(meta))
    b = load_nerf(out)
    assert b.frames[0].camera.fx == pytest.approx(ds.frames[0].camera.fx)
    assert b.frames[1].camera.fx == pytest.approx(50.0)


# --------------------------------------------------------------------------- error messages

def _edit(nerf_dir: Path, tmp_path: Path, fn) -> Path:
    dst = tmp_path / "ds"
    shutil.copytree(nerf_dir, dst)
    meta = json.loads((dst / "transforms.json").read_text())
    fn(meta, dst)
    (dst / "transforms.json").write_text(json.dumps(meta))
    return dst


def _msg(path) -> str:
    with pytest.raises(DatasetError) as ei:
        load_dataset(path)
    return str(ei.value)


def test_error_missing_path_and_unknown_folder(tmp_path):
    m = _msg(tmp_path / "nope")
    assert "nope" in m and "does not exist" in m
    (tmp_path / "empty").mkdir()
    m = _msg(tmp_path / "empty")
    assert "no dataset found" in m and "transforms.json" in m
    with pytest.raises(DatasetError, match="transforms.json: file not found"):
        load_nerf(tmp_path / "empty")


def test_error_invalid_json(nerf_dir, tmp_path):
    dst = tmp_path / "ds"
    shutil.copytree(nerf_dir, dst)
    (dst / "transforms.json").write_text("{ not json")
    m = _msg(dst)
    assert "transforms.json" in m and "invalid JSON" in m


def test_error_missing_frames(nerf_dir, tmp_path):
    m = _msg(_edit(nerf_dir, tmp_path, lambda meta, d: meta.pop("frames")))
    assert "transforms.json" in m and "frames" in m and "missing" in m


def test_error_nan_pose(nerf_dir, tmp_path):
    def f(meta, d):
        meta["frames"][3]["transform_matrix"][1][2] = float("nan")
    dst = _edit(nerf_dir, tmp_path, f)
    m = _msg(dst)
    assert "transforms.json" in m and "frames[3].transform_matrix contains NaN" in m


def test_error_missing_pose(nerf_dir, tmp_path):
    m = _msg(_edit(nerf_dir, tmp_path, lambda meta, d: meta["frames"][2].pop("transform_matrix")))
    assert "transforms.json" in m and "frames[2].transform_matrix" in m and "missing" in m


def test_error_degenerate_rotation(nerf_dir, tmp_path):
    def f(meta, d):
        meta["frames"][1]["transform_matrix"][0][0] *= 3.0
    m = _msg(_edit(nerf_dir, tmp_path, f))
    assert "transforms.json" in m and "frames[1].transform_matrix" in m and "rotation" in m


def test_error_zero_focal(nerf_dir, tmp_path):
    m = _msg(_edit(nerf_dir, tmp_path, lambda meta, d: meta.update(fl_x=0)))
    assert "transforms.json" in m and "fl_x" in m and "> 0" in m


def test_error_missing_image(nerf_dir, tmp_path):
    m = _msg(_edit(nerf_dir, tmp_path, lambda meta, d: (d / "images" / "0002.png").unlink()))
    assert "transforms.json" in m and "frames[2].file_path" in m and "0002" in m and "not found" in m


def test_error_corrupt_image(nerf_dir, tmp_path):
    m = _msg(_edit(nerf_dir, tmp_path, lambda meta, d: (d / "images" / "0001.png").write_bytes(b"garbage")))
    assert "frames[1].file_path" in m and "cannot be read" in m


def test_error_image_size_mismatch(nerf_dir, tmp_path):
    m = _msg(_edit(nerf_dir, tmp_path, lambda meta, d: meta.update(w=W * 2)))
    assert "transforms.json" in m and "frames[0]" in m and f"{W}x{H}" in m


def test_error_bad_tracks(nerf_dir, tmp_path):
    def f(meta, d):
        z = dict(np.load(d / "tracks.npz"))
        z["obs_frame"][0] = 99
        np.savez(d / "tracks.npz", **z)
    m = _msg(_edit(nerf_dir, tmp_path, f))
    assert "tracks.npz" in m and "obs_frame" in m


def _edit_colmap(colmap_dir: Path, tmp_path: Path, name: str, fn) -> Path:
    dst = tmp_path / "c"
    shutil.copytree(colmap_dir, dst)
    p = dst / "sparse" / "0" / name
    p.write_text(fn(p.read_text()))
    return dst


def test_colmap_errors(colmap_dir, tmp_path):
    lines = (colmap_dir / "sparse" / "0" / "cameras.txt").read_text().splitlines()
    row = lines[-1].split()
    row[4] = "0"
    d = _edit_colmap(colmap_dir, tmp_path / "a", "cameras.txt", lambda t: "\n".join(lines[:-1] + [" ".join(row)]))
    m = _msg(d)
    assert "cameras.txt" in m and "camera 1" in m and "focal" in m

    def nan_quat(t):
        ls = t.split("\n")
        i = next(k for k, ln in enumerate(ls) if ln and not ln.startswith("#"))
        r = ls[i].split()
        r[2] = "nan"
        ls[i] = " ".join(r)
        return "\n".join(ls)
    m = _msg(_edit_colmap(colmap_dir, tmp_path / "b", "images.txt", nan_quat))
    assert "images.txt" in m and "image 1" in m and "NaN" in m

    d = tmp_path / "c2"
    shutil.copytree(colmap_dir, d)
    (d / "images" / "0003.png").unlink()
    m = _msg(d)
    assert "images.txt" in m and "0003.png" in m and "not found" in m

    def bad_track(t):
        ls = t.split("\n")
        i = next(k for k, ln in enumerate(ls) if ln and not ln.startswith("#"))
        ls[i] = ls[i] + " 77 0"
        return "\n".join(ls)
    m = _msg(_edit_colmap(colmap_dir, tmp_path / "d", "points3D.txt", bad_track))
    assert "points3D.txt" in m and "IMAGE_ID 77" in m


def test_opensfm_errors(tmp_path):
    (tmp_path / "reconstruction.json").write_text(json.dumps([{"cameras": {"c": {"projection_type": "perspective",
                                                                                 "width": 10, "height": 8,
                                                                                 "focal": 0.9}}}]))
    m = _msg(tmp_path)
    assert "reconstruction.json" in m and "shots" in m
    (tmp_path / "reconstruction.json").write_text(json.dumps([{
        "cameras": {"c": {"projection_type": "perspective", "width": 10, "height": 8, "focal": 0.0}},
        "shots": {"a.jpg": {"camera": "c", "rotation": [0, 0, 0], "translation": [0, 0, 0]}}}]))
    m = _msg(tmp_path)
    assert "reconstruction.json" in m and "focal" in m
    (tmp_path / "reconstruction.json").write_text(json.dumps([{
        "cameras": {"c": {"projection_type": "perspective", "width": 10, "height": 8, "focal": 0.9}},
        "shots": {"a.jpg": {"camera": "c", "rotation": [0, float("nan"), 0], "translation": [0, 0, 0]}}}]))
    m = _msg(tmp_path)
    assert "shots['a.jpg'].rotation" in m and "NaN" in m
    (tmp_path / "reconstruction.json").write_text(json.dumps([{
        "cameras": {"c": {"projection_type": "perspective", "width": 10, "height": 8, "focal": 0.9}},
        "shots": {"a.jpg": {"camera": "c", "rotation": [0, 0, 0], "translation": [0, 0, 0]}}}]))
    m = _msg(tmp_path)
    assert "reconstruction.json" in m and "a.jpg" in m and "not found" in m


def test_opensfm_synthetic_round_trip(src, tmp_path):
    """Write a tiny OpenSfM reconstruction from the synthetic scene and read it back."""
    (tmp_path / "images").mkdir()
    f0 = src.frames[0]
    size = max(W, H)
    shots = {}
    for i, f in enumerate(src.frames[:3]):
        name = f"{i}.png"
        Image.fromarray((f.image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(tmp_path / "images" / name)
        r = f.camera.world_to_cam[:3, :3].double().numpy()
        ang = math.acos(max(-1.0, min(1.0, (np.trace(r) - 1) / 2)))
        axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]) / (2 * math.sin(ang))
        shots[name] = {"camera": "c", "rotation": (axis * ang).tolist(),
                       "translation": f.camera.world_to_cam[:3, 3].double().tolist()}
    pts = {str(k): {"coordinates": src.points.xyz[k].tolist(), "color": [10, 20, 30]} for k in range(20)}
    rec = [{"cameras": {"c": {"projection_type": "perspective", "width": W, "height": H,
                              "focal": f0.camera.fx / size, "k1": 0.0, "k2": 0.0}},
            "shots": shots, "points": pts}]
    (tmp_path / "reconstruction.json").write_text(json.dumps(rec))
    ds = load_opensfm(tmp_path)
    assert [f.path for f in ds.frames] == ["images/0.png", "images/1.png", "images/2.png"]
    _same_cameras(type(src)(src.frames[:3], src.root), ds, tol=1e-4)
    assert len(ds.points) == 20 and ds.points.obs_point is None


# --------------------------------------------------------------------------- small helpers

def test_quaternion_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(50):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        q = q if q[0] >= 0 else -q
        assert np.allclose(matrix_to_quat_wxyz(quat_wxyz_to_matrix(q)), q, atol=1e-9)


@pytest.mark.parametrize("binary", [True, False])
def test_ply_round_trip(tmp_path, binary):
    rng = np.random.default_rng(0)
    v = rng.normal(size=(30, 3)).astype(np.float32)
    f = rng.integers(0, 30, (12, 3))
    write_mesh_ply(tmp_path / "m.ply", v, f, face_labels=np.arange(12) % 5, binary=binary)
    m = read_ply(tmp_path / "m.ply")
    assert np.allclose(np.stack([m["vertex"][k] for k in "xyz"], 1), v, atol=1e-6)
    assert np.array_equal(m["face"]["vertex_indices"], f) and np.array_equal(m["face"]["label"], np.arange(12) % 5)
    c = rng.random((30, 3))
    write_point_ply(tmp_path / "p.ply", v, c, extra={"label": np.arange(30, dtype=np.int32)}, binary=binary)
    p = read_ply(tmp_path / "p.ply")["vertex"]
    assert np.array_equal(p["red"], np.round(c[:, 0] * 255).astype(np.uint8))
    assert np.array_equal(p["label"], np.arange(30))
