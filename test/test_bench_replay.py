"""``fhgs-bench replay --quick``: fhgs-node + ``fhgs-replay --fast`` and ``--offline`` on the synthetic bag.

Runs the benchmark in-process (it starts the node and fhgs-replay as subprocesses on a private
ROS_DOMAIN_ID) with ``--out`` in a temporary folder, and checks the table and the JSON.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("fhgs_interfaces.msg")

from fhgs_ros.bench import replay as bench  # noqa: E402


def test_bench_replay_quick(tmp_path, capsys):
    out = tmp_path / "res" / "replay.json"
    rc = bench.run(["--quick", "--no-transport", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    res = json.loads(out.read_text())
    rows = {r["mode"]: r for r in res["rows"]}
    assert set(rows) == {"fast", "offline"}
    s = res["settings"]
    assert (s["width"], s["height"], s["frames"], s["steps_per_keyframe"]) == (64, 48, 8, 10)
    for r in rows.values():
        assert r["rc"] == 0
        assert r["images"] == s["frames"]
        assert r["messages"] == res["bag"]["messages"]
        assert r["messages_per_s"] > 0 and r["keyframes_per_s"] > 0
        assert r["surfels"] > 0
    fast, off = rows["fast"], rows["offline"]
    # on a miss, the node's drop counters and reasons say which frame was skipped and why
    why = {k: fast["summary"].get(k) for k in ("drops", "reasons", "images_done")}
    assert fast["keyframes"] == fast["images"] and fast["images_lost"] == 0, why
    assert fast["iterations"] == s["frames"] * s["steps_per_keyframe"]
    # budget mode over DDS maps the same keyframes with the same iterations as the in-process run
    assert off["keyframes"] == fast["keyframes"] and off["iterations"] == fast["iterations"]
    # the printed table and the markdown file carry both rows
    for text in (printed, out.with_suffix(".md").read_text()):
        assert "messages/s" in text and "keyframes/s" in text
        assert "fast" in text and "offline" in text
    assert res["table"] in printed
