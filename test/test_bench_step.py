"""``fhgs-bench step --quick``: the smoke-test size runs end to end and writes the documented record."""

from __future__ import annotations

import json

import pytest

from fhgs_ros.core import native

KEYS = ("width", "height", "surfels", "dim", "fhgs_step_ms", "twodgs_step_ms", "ratio", "rgb_kernel_ms",
        "bytes_per_surfel_memory", "bytes_per_surfel_file")


@pytest.mark.skipif(not native.native_available(), reason="native extension not built")
def test_step_bench_quick(tmp_path):
    from fhgs_ros.bench import step

    out = tmp_path / "step.json"
    assert step.run(["--quick", "--f3dgs", "--f3dgs-speedup-dims", "16", "--dim", "32", "--out", str(out)]) == 0
    recs = json.loads(out.read_text())
    assert isinstance(recs, list) and len(recs) == 1
    r = recs[0]
    assert all(k in r for k in KEYS)
    assert r["dim"] == 32 and r["surfels"] > 0
    assert r["fhgs_step_ms"] > 0 and r["twodgs_step_ms"] > 0 and r["rgb_kernel_ms"] > 0
    assert r["ratio"] == pytest.approx(r["fhgs_step_ms"] / r["twodgs_step_ms"])
    assert r["bytes_per_surfel_file"] < r["bytes_per_surfel_file_v1"]
    assert r["f3dgs_step_ms"] > 0 and r["f3dgs_over_fhgs"] == pytest.approx(r["f3dgs_step_ms"] / r["fhgs_step_ms"])
    assert [v["dim_render"] for v in r["f3dgs_speedup"]] == [16] and r["f3dgs_speedup"][0]["step_ms"] > 0
    mb = r["memory_breakdown"]
    assert r["bytes_per_surfel_memory"] == pytest.approx(sum(mb.values()))
    assert mb["features_unit16"] == 2 * 32 and mb["features_norm"] == 4  # the feature is held once
    assert mb["adam_moments"] == 2 * 4 * (3 + 4 + 2 + 1 + 3 + 45)  # both moments of every trainable float
    assert r["feature_fp32_copy_ms"] >= 0 and r["sh_colors_ms"] > 0 and r["adam_ms"] > 0


@pytest.mark.skipif(not native.native_available(), reason="native extension not built")
def test_f3dgs_step_trains_features_and_geometry():
    """The Feature-3DGS-style step updates the per-surfel features, the geometry and (speed-up
    variant) the decoder (Adam moves nothing without a gradient); the gradients themselves are
    checked in test_native_feature_grad.py."""
    from fhgs_ros.bench import step
    from fhgs_ros.bench.raster import bench_scene

    scene = bench_scene(64, 48, 400, 16)
    image = step.gt_image(scene)
    for dim_render in (16, 8):
        st: dict = {}
        step.f3dgs_step(scene, image, st, dim_render)
        f0, m0 = st["feats"].detach().clone(), st["map"].means.detach().clone()
        d0 = st["decoder"].weight.detach().clone() if st["decoder"] is not None else None
        step.f3dgs_step(scene, image, st, dim_render)
        assert st["feats"].shape[1] == dim_render
        assert (st["feats"].detach() != f0).any() and (st["map"].means.detach() != m0).any()
        assert (st["decoder"] is None) == (dim_render == 16)
        if d0 is not None:
            assert (st["decoder"].weight.detach() != d0).any()
