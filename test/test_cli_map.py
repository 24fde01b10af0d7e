"""fhgs-map end to end on a tiny generated scene (label and tiny-SAM features), its outputs, the
2DGS baseline switch, and clear errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fhgs_ros.datasets.synthetic import generate_scene

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fhgs_ros.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory) -> Path:
    return generate_scene(tmp_path_factory.mktemp("scene") / "scene", width=40, height=30, num_frames=9, seed=3,
                          num_points=1500, supersample=1)


@pytest.mark.timeout(300)
def test_fhgs_map_writes_metrics_renders_map_and_mesh(tiny_scene, tmp_path):
    out = tmp_path / "fhgs"
    r = _run(["--data", str(tiny_scene), "--out", str(out), "--iterations", "30", "--set", "features.dim=8",
              "--set", "mapper.densify_from_iter=10", "--set", "mapper.densify_every=10"], ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    for k in ("psnr", "fe", "fe_plain", "fl1", "num_surfels", "seconds", "iterations", "chamfer", "label_miou"):
        assert k in m, k
    assert m["iterations"] == 30 and m["ndfd"] is True and m["num_surfels"] > 100
    assert 5 < m["psnr"] < 60 and 0 <= m["fe"] <= m["fe_plain"] + 1e-9
    assert (out / "map.safetensors").stat().st_size > 1000 and (out / "mesh.ply").exists()
    for kind in ("rgb", "gt", "depth", "normal", "features"):
        assert (out / "renders" / f"0000_{kind}.png").exists(), kind
    # the baseline: same settings, NDFD off
    out2 = tmp_path / "2dgs"
    r2 = _run(["--data", str(tiny_scene), "--out", str(out2), "--iterations", "30", "--set", "features.dim=8",
               "--no-ndfd"], ROOT)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert json.loads((out2 / "metrics.json").read_text())["ndfd"] is False


@pytest.mark.timeout(300)
def test_fhgs_map_with_tiny_sam_checkpoint(tiny_scene, tmp_path):
    from fhgs_ros.features.sam import save_random_checkpoint
    ckpt = save_random_checkpoint(tmp_path / "sam_tiny.pth", "vit_tiny")
    out = tmp_path / "sam"
    r = _run(["--data", str(tiny_scene), "--out", str(out), "--iterations", "5", "--features", "sam",
              "--sam-checkpoint", str(ckpt), "--sam-model", "vit_tiny", "--sam-input-size", "256",
              "--set", f"features.cache_dir={tmp_path / 'cache'}"], ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["feature_dim"] == 256 and "vit_tiny" in m["feature_model"]
    assert any((tmp_path / "cache").rglob("*.safetensors"))  # embeddings cached for re-runs


def test_fhgs_map_without_checkpoint_says_what_to_download(tiny_scene, tmp_path):
    r = _run(["--data", str(tiny_scene), "--out", str(tmp_path / "o"), "--features", "sam"], tmp_path)
    assert r.returncode == 2
    assert "sam_vit_b_01ec64.pth" in r.stderr and "https://dl.fbaipublicfiles.com/segment_anything/" in r.stderr


def test_fhgs_map_bad_inputs_give_clear_errors(tiny_scene, tmp_path):
    r = _run(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")], ROOT)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "transforms.json").write_text(json.dumps({"fl_x": 10.0, "fl_y": 10.0, "w": 8, "h": 6,
                                                      "frames": [{"file_path": "images/0000.png",
                                                                  "transform_matrix": [[float("nan")] * 4] * 4}]}))
    r = _run(["--data", str(bad), "--out", str(tmp_path / "o")], ROOT)
    assert r.returncode == 2 and "transforms.json" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = _run(["--data", str(tiny_scene), "--out", str(tmp_path / "o"), "--set", "mapper.lambda_ext=-1"], ROOT)
    assert r.returncode == 2 and "mapper.lambda_ext" in r.stderr and "Traceback" not in r.stderr
    r = _run(["--data", str(tiny_scene), "--out", str(tmp_path / "o"), "--set", "mapper.no_such_key=1"], ROOT)
    assert r.returncode == 2 and "unknown parameter" in r.stderr
