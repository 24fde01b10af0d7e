"""fhgs-replay: replay a ROS 2 bag into the mapping node, or map it in-process.

    fhgs-replay BAG [--rate R | --fast] [--remap FROM:=TO ...] [--start S] [--duration D] [--topics T ...]
    fhgs-replay BAG --offline [--params-file config/fhgs.yaml] [-p key:=value ...] [--out map.safetensors]

Over DDS (default) the bag's messages are published as stored (serialized CDR, no re-encoding)
together with ``/clock`` at the bag's log time, so a node started with ``use_sim_time:=true``
runs on bag time. ``--rate R`` plays at R x real time. ``--fast`` plays as fast as the mapper
accepts frames: before each colour image it waits until the node has finished with the previous
one (``mapper_status``, fhgs_interfaces/MapperStatus), so nothing is dropped and, with
``node.step_mode: budget``, the map equals the one of ``--offline`` on the same bag.

``--offline`` feeds the bag straight into the same input pipeline and mapper in this process
(:mod:`fhgs_ros.ros.bag_mapping`), deterministically, and saves the map.

Exit codes: 0 done; 1 the node mapped nothing, or (--fast) images were lost; 2 unusable bag, topics or
parameters; 3 no mapping node reachable.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("fhgs_ros.replay")

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


def message_class(msgtype: str):
    """rclpy message class of 'pkg/msg/Name' (None when the package is not installed here)."""
    try:
        pkg, kind, name = msgtype.split("/")
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ValueError, ImportError, AttributeError):
        return None


def pick_image_topic(topics: dict[str, Any], wanted: str | None) -> str:
    """The colour image stream used for flow control: ``wanted`` or the one Image topic that is
    not depth or labels."""
    from fhgs_ros.bag.reader import BagError

    if wanted:
        if wanted not in topics:
            raise BagError(f"--image-topic '{wanted}' is not in the bag (topics after remap: {', '.join(topics)})")
        return wanted
    cands = [t for t, i in topics.items() if i.msgtype in IMAGE_TYPES
             and not any(w in t.lower() for w in ("depth", "label", "mask", "seg"))]
    if len(cands) == 1:
        return cands[0]
    if "/image" in cands:
        return "/image"
    raise BagError("cannot tell which topic is the colour image stream " +
                   (f"(candidates: {', '.join(cands)})" if cands else "(the bag has no image topic)") +
                   "; name it with --image-topic")


@dataclass
class ReplaySummary:
    bag: str
    mode: str
    messages: int = 0
    images: int = 0
    seconds: float = 0.0
    bag_seconds: float = 0.0
    keyframes: int = 0
    images_done: int = 0
    images_lost: int = 0
    surfels: int = 0
    iterations: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def messages_per_s(self) -> float:
        return self.messages / max(self.seconds, 1e-9)

    @property
    def keyframes_per_s(self) -> float:
        return self.keyframes / max(self.seconds, 1e-9)

    def lines(self) -> list[str]:
        out = [f"replayed {self.messages} messages ({self.images} images, {self.bag_seconds:.2f} s of bag) in "
               f"{self.seconds:.1f} s: {self.messages_per_s:.1f} msg/s; node: {self.keyframes} keyframes "
               f"({self.keyframes_per_s:.2f} kf/s), {self.surfels} surfels, {self.iterations} iterations"]
        if self.images_lost:
            out.append(f"{self.images_lost} images never reached the node (lost in transport or node too slow)")
        if any(self.drops.values()):
            from fhgs_ros.online.telemetry import drop_lines
            out += ["node rejected inputs / skipped frames:"] + drop_lines(self.drops, self.reasons)
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(messages_per_s=self.messages_per_s, keyframes_per_s=self.keyframes_per_s)
        return d


class StatusWatch:
    """Latest fhgs_interfaces/MapperStatus of the node, with waiting."""

    def __init__(self):
        self.msg = None
        self.cond = threading.Condition()

    def on(self, msg) -> None:
        with self.cond:
            self.msg = msg
            self.cond.notify_all()

    def wait(self, pred, timeout: float) -> bool:
        end = time.monotonic() + timeout
        with self.cond:
            while not (self.msg is not None and pred(self.msg)):
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.5))
            return True


class _DdsReplay:
    """One replay over DDS: publishers, the wait for the node, playback, the node's final status.

    Baselines (``base_*``) are the node's counters before playback, so a node that already mapped
    something reports only this replay's images and keyframes."""

    def __init__(self, node, reader, args, topics: list[str], image_topic: str | None):
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock

        self.node, self.reader, self.args, self.image_topic = node, reader, args, image_topic
        self.summary = ReplaySummary(str(reader.path), "fast" if args.fast else f"rate {args.rate:g}")
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
        latched = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.pubs = {t: node.create_publisher(message_class(reader.topics[t].msgtype), t,
                                              latched if t == "/tf_static" else reliable) for t in topics}
        self._clock_cls = Clock
        self.clock_pub = None if args.no_clock else node.create_publisher(
            Clock, "/clock", QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                                        history=HistoryPolicy.KEEP_LAST))
        self.watch = StatusWatch()
        try:
            from fhgs_interfaces.msg import MapperStatus
            node.create_subscription(MapperStatus, args.status_topic, self.watch.on,
                                     QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE,
                                                history=HistoryPolicy.KEEP_LAST))
        except ImportError:
            if args.fast:
                raise RuntimeError("--fast needs fhgs_interfaces (MapperStatus); build the interfaces (make setup)")
        self.base_done = self.base_recv = self.base_kf = 0
        self._t0 = time.monotonic()  # playback start (set again by play)

    def _node_ready(self) -> bool:
        it = self.image_topic
        return (it is None or self.pubs[it].get_subscription_count() > 0) and \
            (not self.args.fast or self.watch.msg is not None)

    def wait_for_node(self) -> bool:
        """Until the node subscribes to the image topic (and, with --fast, reports its status)."""
        args, it = self.args, self.image_topic
        end = time.monotonic() + args.wait
        while not self._node_ready() and time.monotonic() < end:
            time.sleep(0.05)
        if not self._node_ready():
            what = []
            if it is not None and self.pubs[it].get_subscription_count() == 0:
                what.append(f"nothing subscribes to {it}")
            if args.fast and self.watch.msg is None:
                what.append(f"no status on {args.status_topic}")
            log.error("no mapping node after %.0f s (%s): start fhgs-node first (with -r image:=%s ... or the "
                      "matching --remap here)", args.wait, "; ".join(what), it)
            return False
        base = self.watch.msg
        if base is not None:
            self.base_done, self.base_recv, self.base_kf = base.images_done, base.images_received, base.keyframes
        self._warn_best_effort()
        return True

    def _warn_best_effort(self) -> None:
        from rclpy.qos import ReliabilityPolicy

        if self.image_topic is None:
            return
        try:
            infos = self.node.get_subscriptions_info_by_topic(self.image_topic)
            if infos and all(i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for i in infos):
                log.warning("the node subscribes to %s best-effort: large images can be lost on the way; "
                            "run it with -p node.sensor_qos:=reliable for lossless replay", self.image_topic)
        except Exception:  # noqa: BLE001 - graph introspection is advisory only
            pass

    def wait_done(self, sent: int, timeout: float, settle: float) -> str:
        """Until the node has finished ``sent`` images: 'ok'; 'lost' when it sits idle for ``settle``
        seconds without having received them all; 'timeout'."""
        end = time.monotonic() + timeout
        idle_since = None
        while time.monotonic() < end:
            st = self.watch.msg
            if st is not None and st.images_done >= self.base_done + sent:
                return "ok"
            now = time.monotonic()
            if st is not None and st.idle and st.images_received < self.base_recv + sent:
                idle_since = idle_since or now
                if now - idle_since >= settle:
                    return "lost"
            else:
                idle_since = None
            self.watch.wait(lambda m, st=st: m is not st, 0.5)
        return "timeout"

    def publish_clock(self, t_ns: int) -> None:
        from fhgs_ros.ros.conversions import sec_to_stamp

        if self.clock_pub is not None:
            c = self._clock_cls()
            c.clock = sec_to_stamp(t_ns * 1e-9)
            self.clock_pub.publish(c)

    def _pace(self, t0: float, bag_t0: int, log_time_ns: int) -> None:
        """--rate: sleep until the message is due, keeping /clock moving between sparse messages."""
        args = self.args
        due = t0 + (log_time_ns - bag_t0) * 1e-9 / args.rate
        while True:
            now = time.monotonic()
            if now >= due:
                return
            if self.clock_pub is not None:
                self.publish_clock(bag_t0 + int((now - t0) * args.rate * 1e9))
            time.sleep(min(due - now, 1.0 / max(args.clock_hz, 1.0)))

    def play(self) -> int:
        """Publish every message; returns how many images were lost under --fast flow control."""
        args, s = self.args, self.summary
        t0 = time.monotonic()
        bag_t0 = last_t = None
        lost = 0
        for m in self.reader.messages(list(self.pubs), start=args.start, duration=args.duration):
            if bag_t0 is None:
                bag_t0 = m.log_time_ns
            if args.fast:
                if m.topic == self.image_topic and s.images:
                    got = self.wait_done(s.images, args.frame_timeout, settle=10.0)
                    if got != "ok":
                        lost += 1
                        log.warning("image %d: %s; going on", s.images,
                                    "never reached the node" if got == "lost" else
                                    f"the node has not finished it within {args.frame_timeout:.0f} s")
            else:
                self._pace(t0, bag_t0, m.log_time_ns)
            self.publish_clock(m.log_time_ns)
            self.pubs[m.topic].publish(m.raw if isinstance(m.raw, bytes) else bytes(m.raw))
            s.messages += 1
            last_t = m.log_time_ns
            if m.topic == self.image_topic:
                s.images += 1
        s.bag_seconds = 0.0 if bag_t0 is None else (last_t - bag_t0) * 1e-9
        self._t0 = t0
        return lost

    def finish(self, lost: int) -> int:
        """Wait for the node to finish the last frames, fill the summary; returns the exit code."""
        args, s = self.args, self.summary
        if self.watch.msg is not None:
            got = self.wait_done(s.images, args.frame_timeout, settle=10.0 if args.fast else 2.0)
            if got == "timeout":
                log.warning("the node did not finish all images within %.0f s", args.frame_timeout)
        s.seconds = time.monotonic() - self._t0
        st = self.watch.msg
        if st is not None:
            s.images_done = int(st.images_done - self.base_done)
            s.keyframes = int(st.keyframes - self.base_kf)
            s.surfels = int(st.surfels)
            s.iterations = int(st.iterations)
            s.drops = dict(zip(st.drop_kinds, [int(c) for c in st.drop_counts]))
            s.reasons = dict(zip(st.drop_kinds, st.drop_reasons))
            s.images_lost = max(0, s.images - s.images_done)
        else:
            s.images_lost = lost
        time.sleep(0.2)  # let the last reliable messages drain
        if st is not None and s.keyframes == 0 and s.images:
            return 1
        if s.images_lost and args.fast:  # --fast promises no drops; --rate reports them only
            return 1
        return 0


def replay_dds(reader, args, topics: list[str], image_topic: str | None) -> tuple[int, ReplaySummary]:
    """Publish the bag's messages (see module docstring); returns (exit code, summary)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    rclpy.init(args=["fhgs-replay"])  # not sys.argv: our --remap must not reach rcl
    node = rclpy.create_node("fhgs_replay", start_parameter_services=False)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    spin = threading.Thread(target=ex.spin, daemon=True)
    spin.start()
    try:
        rep = _DdsReplay(node, reader, args, topics, image_topic)
        if not rep.wait_for_node():
            return 3, rep.summary
        lost = rep.play()
        return rep.finish(lost), rep.summary
    finally:
        ex.shutdown(timeout_sec=2)
        spin.join(5)  # a still-running executor thread at interpreter exit aborts the process
        node.destroy_node()
        rclpy.try_shutdown()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fhgs-replay", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("bag", help="ROS 2 bag folder (sqlite3 or mcap) or file; ROS 1 .bag with --offline")
    speed = p.add_mutually_exclusive_group()
    speed.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1 = real time)")
    speed.add_argument("--fast", action="store_true", help="as fast as the mapper accepts frames (flow control)")
    p.add_argument("--remap", nargs="+", action="extend", default=[], metavar="FROM:=TO",
                   help="rename bag topics, e.g. /camera/image_raw:=/image")
    p.add_argument("--start", type=float, default=0.0, help="[s] skip this much of the bag's beginning")
    p.add_argument("--duration", type=float, default=None, help="[s] play only this long")
    p.add_argument("--topics", nargs="+", default=None,
                   help="play (--offline: read) only these topics (names after --remap)")
    p.add_argument("--skip-unknown", action="store_true",
                   help="leave out topics whose message type is unknown here instead of failing")
    p.add_argument("--image-topic", help="colour image topic for --fast flow control (default: detected)")
    p.add_argument("--status-topic", default="/mapper_status", help="the node's MapperStatus topic")
    p.add_argument("--wait", type=float, default=60.0, help="[s] wait this long for the node to appear")
    p.add_argument("--frame-timeout", type=float, default=300.0, help="[s] --fast: longest wait for one frame")
    p.add_argument("--clock-hz", type=float, default=50.0, help="/clock rate between messages (--rate)")
    p.add_argument("--no-clock", action="store_true", help="do not publish /clock")
    p.add_argument("--summary-json", type=Path, help="write the summary (counts, rates) to this JSON file")
    off = p.add_argument_group("in-process batch mapping")
    off.add_argument("--offline", action="store_true", help="map the bag in this process (no DDS) and save the map")
    off.add_argument("--params-file", help="node parameter file (default: the package's config/fhgs.yaml)")
    off.add_argument("-p", "--param", action="append", default=[], metavar="KEY:=VALUE", help="parameter override")
    off.add_argument("--out", type=Path, help="map file to write (default: <bag>_map.safetensors)")
    off.add_argument("--namespace", default="/", help="namespace of the node inputs (topics <ns>/image, ...)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from fhgs_ros.bag.reader import BagError, BagReader, parse_remaps
    from fhgs_ros.config import ConfigError, default_config_path

    if args.rate <= 0:
        print("fhgs-replay: error: --rate must be positive", file=sys.stderr)
        return 2
    try:
        remap = parse_remaps(args.remap)
        if args.offline:
            from fhgs_ros.online.bag_mapping import load_params, map_bag
            flat = load_params(args.params_file or default_config_path(), args.param)
            out = args.out or Path(str(Path(args.bag).resolve()).rstrip("/") + "_map.safetensors")
            report, _ = map_bag(args.bag, flat, out, remap=remap, start=args.start, duration=args.duration,
                                namespace=args.namespace, only=args.topics)
            for line in report.lines():
                print(line, flush=True)
            if args.summary_json:
                from fhgs_ros.core.fileio import atomic_write_json
                atomic_write_json(args.summary_json, dict(asdict(report), images_skipped=report.images_skipped))
            if report.keyframes == 0:
                print(f"fhgs-replay: error: no keyframe was mapped from {args.bag} (see the skipped images above)",
                      file=sys.stderr)
                return 1
            print(f"map written to {report.map_path}")
            return 0
        with BagReader(args.bag, remap=remap) as reader:
            if reader.storage == "ros1":
                raise BagError(f"{args.bag} is a ROS 1 bag: its messages are not CDR and cannot be published to ROS 2 "
                               f"as they are; map it with --offline, or convert it with rosbags-convert")
            topics = list(args.topics) if args.topics else list(reader.topics)
            reader.require({t: None for t in topics})
            unknown = {t: ty for t, ty in reader.unknown_types().items() if t in topics}
            missing = {t: reader.topics[t].msgtype for t in topics if message_class(reader.topics[t].msgtype) is None}
            bad = {**unknown, **missing}
            if bad and not args.skip_unknown:
                raise BagError("unknown message types (not installed in this ROS environment): " +
                               ", ".join(f"{t} ({ty})" for t, ty in bad.items()) +
                               "; leave them out with --topics or --skip-unknown")
            for t in bad:
                log.warning("skipping %s: unknown message type %s", t, bad[t])
            topics = [t for t in topics if t not in bad]
            if not topics:
                raise BagError(f"{args.bag}: nothing to play")
            try:
                image_topic = pick_image_topic({t: reader.topics[t] for t in topics}, args.image_topic)
            except BagError:
                if args.fast or args.image_topic:
                    raise
                image_topic = None  # --rate: no flow control, nothing to wait for
            code, summary = replay_dds(reader, args, topics, image_topic)
        for line in summary.lines():
            print(line, flush=True)
        if args.summary_json:
            from fhgs_ros.core.fileio import atomic_write_json
            atomic_write_json(args.summary_json, summary.to_dict())
        return code
    except (BagError, ConfigError) as exc:
        print(f"fhgs-replay: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except RuntimeError as exc:
        print(f"fhgs-replay: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
