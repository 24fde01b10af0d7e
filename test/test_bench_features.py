"""`fhgs-bench features` end to end at a small size: every row has its timing, memory and the node's
keyframe latency (the ROS-free engine with the node's threads); the table and JSON are written."""

from __future__ import annotations

import json

from fhgs_ros.bench.features import run


def test_bench_features_rows_with_node_latency(tmp_path, capsys):
    out = tmp_path / "features.json"
    assert run(["--models", "tiny", "--sizes", "256", "--image", "160x120", "--keyframes", "1",
                "--latency-keyframes", "2", "--threads", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    (row,) = res["results"]
    assert row["model"] == "tiny" and row["grid"] == [256, 12, 16] and row["seconds_per_keyframe"] > 0
    assert row["peak_rss_mb"] >= row["rss_after_build_mb"] > 0
    node = row["node"]
    assert node["outcomes"] == ["keyframe"] * 3 and node["optimizer_error"] is None and node["surfels"] > 0
    assert len(node["latency_s"]) == 2 and len(node["encoder_in_node_s"]) == 2
    # the keyframe's latency contains its own feature extraction
    assert all(lat >= enc for lat, enc in zip(node["latency_s"], node["encoder_in_node_s"]))
    assert "node kf latency" in capsys.readouterr().out and "node kf latency" in res["table"]
