"""``fhgs-bag``: convert a dataset to a ROS 2 bag, or describe a bag. No ROS installation needed.

    fhgs-bag convert SRC OUT [--storage sqlite3|mcap] [--pose tf|pose|odom] [--rate HZ]
                     [--holdout-every N] [--downscale F] [--no-depth] [--no-labels] [--overwrite]
                     [--width W --height H --frames N --seed S]      # only for SRC = synthetic
    fhgs-bag info BAG [--remap FROM:=TO ...]

SRC is a dataset folder or file (NeRF transforms.json, COLMAP, OpenSfM) or the word ``synthetic``
(the synthetic labelled room, generated into a temporary folder first). Errors print one line
``fhgs-bag: error: ...`` on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from fhgs_ros.bag.reader import BagError, BagReader, parse_remaps
from fhgs_ros.bag.writer import POSE_MODES, STORAGES, BagTopics, check_output_path, write_dataset_bag

log = logging.getLogger("fhgs_ros.bag")
PROG = "fhgs-bag"


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    common.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bar")
    p = argparse.ArgumentParser(prog=PROG, description="ROS 2 bag tools for fhgs_ros (no ROS needed).")
    sub = p.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("convert", parents=[common], help="write a dataset (or the synthetic scene) as a ROS 2 bag",
                       description="Write a dataset as a ROS 2 bag: rgb8 Image + CameraInfo per frame, the camera "
                                   "optical-frame pose in the map frame (/tf, PoseStamped or Odometry), and "
                                   "32FC1 depth (m) / 16UC1 labels when the dataset has them.")
    c.add_argument("src", help="dataset folder/file, or 'synthetic' for the generated labelled room")
    c.add_argument("out", type=Path, help="bag folder to create")
    c.add_argument("--storage", choices=STORAGES, default="sqlite3")
    c.add_argument("--pose", choices=POSE_MODES, default="tf", dest="pose_mode",
                   help="how the camera pose is published (default: tf)")
    c.add_argument("--rate", type=float, default=5.0, help="frame rate of the stamps in Hz (default 5)")
    c.add_argument("--start-time", type=float, default=1_700_000_000.0,
                   help="stamp of the first frame, seconds since the epoch")
    c.add_argument("--holdout-every", type=int, default=0,
                   help="leave out every N-th frame (the mapper's held-out test views); 0 keeps all")
    c.add_argument("--downscale", type=float, default=1.0, help="image size divisor (2 = half resolution)")
    c.add_argument("--no-depth", action="store_true", help="do not write depth images")
    c.add_argument("--no-labels", action="store_true", help="do not write label images")
    c.add_argument("--overwrite", action="store_true", help="replace OUT if it is an existing bag")
    c.add_argument("--map-frame", default="map")
    c.add_argument("--camera-frame", default="camera_optical")
    c.add_argument("--body-frame", default="base_link", help="child frame of --pose odom (== camera optical frame)")
    c.add_argument("--image-topic", default=BagTopics.image)
    c.add_argument("--width", type=int, default=128, help="synthetic only: image width")
    c.add_argument("--height", type=int, default=96, help="synthetic only: image height")
    c.add_argument("--frames", type=int, default=40, help="synthetic only: number of frames")
    c.add_argument("--seed", type=int, default=0, help="synthetic only: scene seed")

    i = sub.add_parser("info", parents=[common], help="describe a bag: storage, duration, topics",
                       description="Print a bag's storage, duration, message count and topics (name, type, count), "
                                   "with a warning per topic whose message type cannot be deserialized.")
    i.add_argument("bag", type=Path, help="rosbag2 folder, .db3/.mcap file or ROS 1 .bag")
    i.add_argument("--remap", action="append", default=[], metavar="FROM:=TO", help="rename a topic (repeatable)")
    return p


def _convert(a: argparse.Namespace) -> int:
    kw = dict(storage=a.storage, pose_mode=a.pose_mode, rate_hz=a.rate, start_time_s=a.start_time,
              map_frame=a.map_frame, camera_frame=a.camera_frame, body_frame=a.body_frame,
              topics=BagTopics(image=a.image_topic), with_depth=not a.no_depth, with_labels=not a.no_labels,
              overwrite=a.overwrite, progress=not a.quiet)
    check_output_path(a.out, a.overwrite)  # before any (slow) loading or scene generation
    if a.src == "synthetic" and not Path(a.src).exists():
        if a.width < 8 or a.height < 8 or a.frames < 1:
            raise BagError("synthetic scene needs --width, --height >= 8 and --frames >= 1")
        from fhgs_ros.datasets.synthetic import generate_scene

        with tempfile.TemporaryDirectory(prefix="fhgs_synth_") as tmp:
            log.info("generating the synthetic scene (%dx%d, %d frames, seed %d)", a.width, a.height, a.frames, a.seed)
            generate_scene(tmp, width=a.width, height=a.height, num_frames=a.frames, seed=a.seed)
            s = write_dataset_bag(tmp, a.out, holdout_every=a.holdout_every, downscale=a.downscale, **kw)
    else:
        s = write_dataset_bag(a.src, a.out, holdout_every=a.holdout_every, downscale=a.downscale, **kw)
    held = f", {len(s.skipped_frames)} held-out frames left out" if s.skipped_frames else ""
    print(f"wrote {s.path}: {s.frames} frames, {s.messages} messages, {s.duration_s:.2f} s{held}")
    for name, n in s.topics.items():
        print(f"  {name}: {n}")
    return 0


def _info(a: argparse.Namespace) -> int:
    with BagReader(a.bag, remap=parse_remaps(a.remap)) as r:
        print(f"path:     {r.path}")
        print(f"storage:  {r.storage}")
        print(f"duration: {r.duration_s:.3f} s (start {r.start_ns * 1e-9:.3f} s, end {r.end_ns * 1e-9:.3f} s since epoch)")
        print(f"messages: {r.message_count}")
        rows = [(t.name + (f" (<- {t.original})" if t.original != t.name else ""), t.msgtype, str(t.count))
                for t in r.topics.values()]
        head = ("topic", "type", "count")
        w = [max(len(x[k]) for x in rows + [head]) for k in range(3)]
        print(f"{head[0]:<{w[0]}}  {head[1]:<{w[1]}}  {head[2]:>{w[2]}}")
        for name, typ, n in rows:
            print(f"{name:<{w[0]}}  {typ:<{w[1]}}  {n:>{w[2]}}")
        for topic, typ in r.unknown_types().items():
            print(f"warning: topic {topic}: message type {typ} is unknown (no definition in the bag or the "
                  f"default typestore); its messages cannot be decoded")
    return 0


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    level = logging.DEBUG if a.verbose else logging.WARNING if a.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from fhgs_ros.core.camera import CameraError
    from fhgs_ros.datasets.base import DatasetError

    try:
        return _convert(a) if a.cmd == "convert" else _info(a)
    except (BagError, DatasetError, CameraError, FileNotFoundError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
