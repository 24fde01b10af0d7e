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
    assert step.run(["--quick", "--f3dgs", "--dim", "32", "--out", str(out)]) == 0
    recs = json.loads(out.read_text())
    assert isinstance(recs, list) and len(recs) == 1
    r = recs[0]
    assert all(k in r for k in KEYS)
    assert r["dim"] == 32 and r["surfels"] > 0
    assert r["fhgs_step_ms"] > 0 and r["twodgs_step_ms"] > 0 and r["rgb_kernel_ms"] > 0
    assert r["ratio"] == pytest.approx(r["fhgs_step_ms"] / r["twodgs_step_ms"])
    assert r["bytes_per_surfel_file"] < r["bytes_per_surfel_file_v1"]
    assert r["f3dgs_step_ms"] > 0
    mb = r["memory_breakdown"]
    assert r["bytes_per_surfel_memory"] == pytest.approx(sum(mb.values()))
    assert mb["features_unit16"] == 2 * 32 and mb["features_norm"] == 4  # the feature is held once
    assert mb["adam_moments"] == 2 * 4 * (3 + 4 + 2 + 1 + 3 + 45)  # both moments of every trainable float
    assert r["feature_fp32_copy_ms"] >= 0 and r["sh_colors_ms"] > 0 and r["adam_ms"] > 0
