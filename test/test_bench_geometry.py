"""`fhgs-bench geometry --part speed` at a small size: the stereo step and the node's whole seeding step."""

from __future__ import annotations

import torch


def test_geometry_speed_bench_times_stereo_and_the_whole_seeding_step():
    from fhgs_ros.bench.geometry import bench_speed

    threads = torch.get_num_threads()
    try:
        # stereo working long side 120: the coverage renders run at 240 x 180 for the 320 x 240 keyframes
        r = bench_speed(width=320, height=240, sources=2, keyframes=2, long_side=120, threads=1, map_surfels=2000)
    finally:
        torch.set_num_threads(threads)
    assert r["seconds_per_keyframe"] > 0 and r["max_seconds"] >= r["seconds_per_keyframe"]
    assert r["map_surfels"] == 2000
    assert r["seed_seconds_per_keyframe"] > 0
    # the deferred keyframes are seeded from stereo where the map does not explain them
    assert r["new_surfels_per_keyframe"] > 20   # about 200
