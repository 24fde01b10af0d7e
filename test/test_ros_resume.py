"""Crash safety: fhgs-node mapping from TF poses autosaves continuously; the test SIGKILLs it while an
autosave is being written, checks the map file is intact, restarts the node from it and gets the
same surfel count and the same renders as the saved file."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("fhgs_interfaces.srv")

import torch  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402

from fhgs_interfaces.srv import RenderView  # noqa: E402
from fhgs_ros.ros import conversions as conv  # noqa: E402
from fhgs_ros.ros.harness import NodeProcess, Spinner, free_domain_id, write_params  # noqa: E402
from fhgs_ros.ros.streamer import Capture, SceneStreamer, call, synthetic_frames  # noqa: E402

W, H = 64, 48


def _diag(cap):
    m = cap.wait(1, 5)
    return {kv.key: kv.value for kv in m.status[0].values} if m else {}


@pytest.mark.timeout(200)
def test_sigkill_during_autosave_then_resume(tmp_path):
    from fhgs_ros.core.render import render
    from fhgs_ros.core.storage import load_map
    from fhgs_ros.features.sam import save_random_checkpoint

    ckpt = save_random_checkpoint(tmp_path / "tiny_sam.pth", "vit_tiny", input_size=256, seed=0)
    map_path = tmp_path / "maps" / "map.safetensors"
    params = write_params(tmp_path / "params.yaml", {
        "features": {"extractor": "sam", "sam_model": "vit_tiny", "sam_checkpoint": str(ckpt), "sam_input_size": 256},
        "seed": {"depth_stride": 3},
        "node": {"map_path": str(map_path), "pose_source": "tf", "map_frame": "map", "resume": True,
                 "autosave_every_keyframes": 1, "autosave_period": 0.2, "kf_min_translation": 0.05,
                 "densify": False, "max_new_surfels_per_keyframe": 1500, "torch_threads": 1, "mesh_period": 0.0,
                 "cloud_period": 0.0, "publish_period": 0.0, "diagnostics_period": 0.5},
    })
    dom = free_domain_id()
    frames = synthetic_frames(W, H, 16, seed=1)
    sp = Spinner(dom)
    node = NodeProcess(params, tmp_path / "node1.log", dom)
    node2 = None
    try:
        st = sp.add(SceneStreamer(context=sp.context))
        diag = Capture(st, DiagnosticArray, "/diagnostics")
        node.wait_ready(90)
        assert st.wait_for_subscribers(30, ("image", "camera_info", "depth"))
        stop = threading.Event()
        stamp = [200.0]

        def stream_loop():
            i = 0
            while not stop.is_set():
                rgb, depth, cam = frames[i % len(frames)]
                stamp[0] += 0.5
                try:
                    st.publish_frame(rgb, depth, cam, stamp[0], pose_via=("tf",))
                except Exception:  # noqa: BLE001 - context closing
                    return
                i += 1
                time.sleep(0.3)

        th = threading.Thread(target=stream_loop, daemon=True)
        th.start()
        end = time.monotonic() + 60
        while time.monotonic() < end and not map_path.exists():
            time.sleep(0.05)
        assert map_path.exists(), node.text()[-3000:]
        end = time.monotonic() + 10
        d = {}
        while time.monotonic() < end and not (int(d.get("keyframes", 0)) >= 1 and int(d.get("tf_messages", 0)) > 0):
            d = _diag(diag)
            time.sleep(0.1)
        assert int(d.get("keyframes", 0)) >= 1 and int(d.get("tf_messages", 0)) > 0, d  # mapping from TF
        # SIGKILL while an autosave is being written (its temporary file exists)
        caught = False
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if any(map_path.parent.glob(".map.safetensors.*.tmp")):
                node.kill()
                caught = True
                break
            time.sleep(0.001)
        if not caught:
            node.kill()
        stop.set()
        th.join(5)
        assert not node.alive()
        # the map file is complete and valid whatever the moment of the kill
        surf, meta, extra = load_map(map_path)
        n = len(surf)
        assert n > 100 and len(meta["keyframes"]) >= 1
        leftovers = list(map_path.parent.glob(".map.safetensors.*.tmp"))
        print(f"killed during an autosave: {caught}; leftover temporary files: {len(leftovers)}")

        # restart: resumes from the saved map
        node2 = NodeProcess(params, tmp_path / "node2.log", dom)
        node2.wait_ready(90)
        log2 = node2.text()
        assert "resumed: loaded" in log2 and f"{n} surfels" in log2, log2[-2000:]
        if leftovers:
            assert "temporary file(s) of an interrupted save" in log2
            assert not any(map_path.parent.glob(".map.safetensors.*.tmp"))
        cam = frames[3][2]
        req = RenderView.Request(pose=conv.matrix_to_pose(cam.cam_to_world.double().numpy()),
                                 camera_info=conv.camera_to_camera_info(cam))
        r1 = call(st, RenderView, "render_view", req, timeout=45, fresh=True)
        assert r1 is not None and r1.success, r1 and r1.message
        assert r1.num_surfels == n
        with torch.no_grad():
            ref = render(surf, cam, background=torch.zeros(3), backend="auto")
        ref_rgb = (ref.rgb.clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        got = conv.image_msg_to_array(r1.rgb)
        assert got.shape == ref_rgb.shape
        # same renders up to float rounding (the node and this process run torch with different thread counts)
        assert np.abs(got.astype(int) - ref_rgb.astype(int)).max() <= 2
        ref_depth = torch.where(ref.alpha > 0.5, ref.depth_median, torch.zeros_like(ref.depth_median)).numpy()
        dd = np.abs(conv.image_msg_to_array(r1.depth) - ref_depth)
        assert (dd > 1e-3).mean() < 0.01 and np.median(dd) < 1e-5
        time.sleep(1.0)
        r2 = call(st, RenderView, "render_view", req, timeout=30)
        assert r2.num_surfels == n and bytes(r2.rgb.data) == bytes(r1.rgb.data)  # no stream: the map stays put
    finally:
        sp.close()
        node.kill()
        if node2 is not None:
            node2.stop()
