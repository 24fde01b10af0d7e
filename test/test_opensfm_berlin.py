"""The real OpenSfM 'berlin' example (3 iPhone photos): cameras, points, tracks, projections."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fhgs_ros.datasets import detect_format, load_dataset, load_opensfm

BERLIN = Path(__file__).parents[1] / ".." / "shared" / "data" / "opensfm_berlin"

pytestmark = pytest.mark.skipif(not (BERLIN / "reconstruction_example.json").is_file(),
                                reason=f"OpenSfM berlin example not found at {BERLIN}")


@pytest.fixture(scope="module")
def ds():
    return load_dataset(BERLIN, downscale=4)


def _project(cam, xyz):
    p = xyz.double() @ cam.world_to_cam[:3, :3].double().T + cam.world_to_cam[:3, 3].double()
    z = p[:, 2]
    xy = torch.stack([cam.fx * p[:, 0] / z + cam.cx, cam.fy * p[:, 1] / z + cam.cy], 1)
    return xy, z


def test_cameras(ds):
    assert detect_format(BERLIN) == "opensfm"
    assert [Path(f.path).name for f in ds.frames] == ["01.jpg", "02.jpg", "03.jpg"]
    for f in ds.frames:
        c = f.camera
        assert (c.width, c.height) == (816, 612)
        assert c.fx == pytest.approx(0.8696658484855359 * 3264 / 4, rel=1e-6)
        assert c.cx == pytest.approx(816 / 2 - 0.5) and c.cy == pytest.approx(612 / 2 - 0.5)
        assert f.image.shape == (3, 612, 816) and 0.1 < float(f.image.mean()) < 0.9
        assert f.mask is not None and f.mask.float().mean() > 0.95  # undistortion border only
    full = load_opensfm(BERLIN, load_images=False)
    assert full.frames[0].camera.width == 3264
    assert full.frames[0].camera.fx == pytest.approx(0.8696658484855359 * 3264, rel=1e-6)
    assert full.meta["distortion"]  # k1, k2 were undistorted
    # Shots are about 10-30 m apart along the street (GPS-scaled world)
    c = torch.stack([f.camera.center for f in ds.frames])
    assert 1.0 < float((c[0] - c[2]).norm()) < 100.0


def test_points_project_inside_images_in_front(ds):
    pc = ds.points
    assert abs(len(pc) - 1430) <= 10
    seen = torch.zeros(len(pc), dtype=torch.bool)
    for f in ds.frames:
        xy, z = _project(f.camera, pc.xyz)
        inside = (z > 0) & (xy[:, 0] >= -0.5) & (xy[:, 0] < f.camera.width - 0.5) \
            & (xy[:, 1] >= -0.5) & (xy[:, 1] < f.camera.height - 0.5)
        assert inside.float().mean() > 0.5
        seen |= inside
    assert seen.float().mean() > 0.95


def test_tracks_reproject(ds):
    pc = ds.points
    assert pc.obs_point is not None and len(pc.obs_point) > 2000
    assert int(pc.obs_frame.max()) == 2
    for fi, f in enumerate(ds.frames):
        m = pc.obs_frame == fi
        xy, z = _project(f.camera, pc.xyz[pc.obs_point[m]])
        assert (z > 0).all()
        e = (xy - pc.obs_xy[m].double()).norm(dim=1)
        # quarter resolution: sub-pixel median, so distortion and pixel conventions are right
        assert float(e.median()) < 0.6, f"frame {fi}: median reprojection error {float(e.median()):.2f} px"
        assert float(e.quantile(0.9)) < 2.0
    # tracks sampled from the images agree with the point colours (roughly: JPEG, blur)
    f = ds.frames[0]
    m = pc.obs_frame == 0
    xy = pc.obs_xy[m].round().long()
    xy[:, 0].clamp_(0, f.camera.width - 1)
    xy[:, 1].clamp_(0, f.camera.height - 1)
    pix = f.image[:, xy[:, 1], xy[:, 0]].T
    assert float((pix - pc.rgb[pc.obs_point[m]]).abs().mean()) < 0.15
    assert not math.isnan(float(pix.mean()))
