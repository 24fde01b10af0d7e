"""Read ROS 2 (sqlite3 ``.db3`` / ``.mcap``) and ROS 1 (``.bag``) bags without ROS installed.

Built on :class:`rosbags.highlevel.AnyReader`. Message types are resolved from the definitions
stored in the bag first; any type the bag does not define is taken from a default typestore
(ROS 2 Kilted, falling back to Jazzy / the library's latest), so rosbag2 bags without stored
definitions (e.g. sqlite3 bags recorded on Humble) still deserialize standard messages. Types that
neither provides are reported by :meth:`BagReader.unknown_types`.

Every failure a user can cause (missing path, a folder that is not a bag, an empty, truncated or
corrupt file, a missing topic, a wrong or unknown message type) raises :class:`BagError` with a
message that names the bag, topic and type involved.

Times: ``log_time_ns`` is the bag's receive (log) time in integer nanoseconds since the Unix epoch;
``start`` / ``duration`` arguments are float seconds relative to the first message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from rosbags.interfaces import Connection
    from rosbags.typesys.store import Typestore

log = logging.getLogger(__name__)

_ROS2_SUFFIXES = (".db3", ".mcap")


class BagError(Exception):
    """A bag that cannot be used; the message is user-facing (CLIs print it and exit 2)."""


@dataclass
class TopicInfo:
    """One topic of a bag: ``name`` after remapping, ``original`` as stored in the bag."""

    name: str
    msgtype: str
    count: int
    original: str


@dataclass
class BagMessage:
    """One serialized message. ``topic`` is the remapped name, ``original_topic`` the stored one;
    ``log_time_ns`` the bag's log (receive) time in ns since the epoch; ``raw`` the serialized
    payload (CDR for ROS 2 bags, ROS 1 serialization for ``.bag`` files)."""

    topic: str
    msgtype: str
    log_time_ns: int
    raw: bytes
    original_topic: str


def default_typestore(name: str | None = None) -> "Typestore":
    """The typestore used for types a bag does not define: ``name`` (a ``rosbags.typesys.Stores``
    member name such as ``"ROS2_KILTED"``), else ROS2_KILTED, else ROS2_JAZZY, else LATEST."""
    from rosbags.typesys import Stores, get_typestore

    names = [name] if name else []
    names += ["ROS2_KILTED", "ROS2_JAZZY", "LATEST"]
    for n in names:
        member = getattr(Stores, n.upper(), None)
        if member is None:
            if n == name:
                raise BagError(f"unknown typestore '{name}' (choose one of {', '.join(s.name for s in Stores)})")
            continue
        try:
            return get_typestore(member)
        except (ImportError, ModuleNotFoundError):  # pragma: no cover - store missing in this rosbags version
            continue
    raise BagError("rosbags provides none of the typestores ROS2_KILTED, ROS2_JAZZY, LATEST")  # pragma: no cover


def _norm_topic(name: str) -> str:
    name = name.strip()
    return name if name.startswith("/") else "/" + name


def parse_remaps(items: Sequence[str]) -> dict[str, str]:
    """``["/from:=/to", ...]`` -> ``{"/from": "/to"}``. A missing leading ``/`` is added.

    Raises BagError for an item without ``:=``, with an empty or blank side, whitespace inside a
    name, or the same source topic remapped twice to different names.
    """
    out: dict[str, str] = {}
    for item in items:
        if not isinstance(item, str) or item.count(":=") != 1:
            raise BagError(f"bad topic remap '{item}': expected FROM:=TO, e.g. /camera/image_raw:=/image")
        src, dst = (s.strip() for s in item.split(":="))
        if not src or not dst or src == "/" or dst == "/":
            raise BagError(f"bad topic remap '{item}': both sides of ':=' must name a topic")
        if any(c.isspace() for c in src + dst):
            raise BagError(f"bad topic remap '{item}': topic names cannot contain whitespace")
        src, dst = _norm_topic(src), _norm_topic(dst)
        if src in out and out[src] != dst:
            raise BagError(f"bad topic remap '{item}': '{src}' is already remapped to '{out[src]}'")
        out[src] = dst
    return out


def _resolve(path: Path) -> tuple[Path, str]:
    """(path to hand to rosbags, storage) for a user path; BagError when it is not a bag."""
    if not path.exists():
        raise BagError(f"bag path does not exist: {path}")
    if path.is_dir():
        meta = path / "metadata.yaml"
        if meta.is_file():
            storage = "sqlite3"
            try:
                from ruamel.yaml import YAML

                info = YAML(typ="safe").load(meta.read_text())["rosbag2_bagfile_information"]
                storage = str(info.get("storage_identifier") or "sqlite3")
            except Exception as exc:  # noqa: BLE001 - any parse problem is a bad bag
                raise BagError(f"{meta}: unreadable rosbag2 metadata ({type(exc).__name__}: {exc})") from None
            return path, storage
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _ROS2_SUFFIXES)
        if len(files) == 1:
            log.warning("%s has no metadata.yaml; reading the storage file %s directly", path, files[0].name)
            return files[0], "sqlite3" if files[0].suffix == ".db3" else "mcap"
        if len(files) > 1:
            raise BagError(f"{path} has no metadata.yaml and {len(files)} storage files "
                           f"({', '.join(p.name for p in files)}); pass one file, or restore metadata.yaml "
                           f"(ros2 bag reindex)")
        raise BagError(f"{path} is not a ROS bag: no metadata.yaml and no .db3/.mcap file in the folder")
    if path.suffix == ".db3":
        return path, "sqlite3"
    if path.suffix == ".mcap":
        return path, "mcap"
    if path.suffix == ".bag":
        return path, "ros1"
    if path.name == "metadata.yaml":
        return _resolve(path.parent)
    raise BagError(f"{path} is not a ROS bag: expected a rosbag2 folder (with metadata.yaml), "
                   f"a .db3 or .mcap file, or a ROS 1 .bag file")


def _type_deps(fielddefs: dict, typename: str) -> list[str]:
    """``typename`` and every message type it references (transitively) that ``fielddefs`` holds."""
    seen: list[str] = []
    stack = [typename]

    def walk(node: Any) -> None:
        if isinstance(node, str):
            if node in fielddefs and node not in seen and node not in stack:
                stack.append(node)
        elif isinstance(node, (tuple, list)):
            for x in node:
                walk(x)

    while stack:
        t = stack.pop()
        if t in seen or t not in fielddefs:
            continue
        seen.append(t)
        walk(fielddefs[t][1])
    return seen


class BagReader:
    """A ROS 2 or ROS 1 bag opened for reading (context manager; also :meth:`close`).

    ``path``: a rosbag2 folder (with ``metadata.yaml``), a bare ``.db3`` / ``.mcap`` file, a folder
    holding exactly one of those, or a ROS 1 ``.bag`` file. ``remap``: ``{bag topic: new name}``;
    every other attribute and argument uses the new names.

    Attributes: ``path``, ``storage`` (``'sqlite3'``, ``'mcap'`` or ``'ros1'``), ``topics``
    (remapped name -> :class:`TopicInfo`), ``start_ns`` / ``end_ns`` (log times of the first and
    last message, ns since the epoch), ``message_count``, ``duration_s`` (``end - start`` in s).
    """

    def __init__(self, path: str | Path, remap: dict[str, str] | None = None):
        from rosbags.highlevel import AnyReader

        self.path = Path(path)
        self._reader = None
        target, self.storage = _resolve(self.path)
        self._is_ros1 = self.storage == "ros1"
        self._default = default_typestore()
        try:
            reader = AnyReader([target], default_typestore=self._default)
            reader.open()
        except Exception as exc:  # noqa: BLE001 - rosbags / apsw / struct errors of a bad file
            raise BagError(f"cannot open bag {self.path}: it is truncated, corrupt or not a "
                           f"{self._kind()} bag ({type(exc).__name__}: {exc})") from None
        self._reader = reader
        try:
            self._setup(remap or {})
        except BaseException:
            self.close()
            raise

    def _kind(self) -> str:
        return {"ros1": "ROS 1", "sqlite3": "rosbag2 sqlite3", "mcap": "rosbag2 MCAP"}.get(self.storage, "ROS")

    def _setup(self, remap: dict[str, str]) -> None:
        r = self._reader
        try:
            count = int(r.message_count)
            start, end = int(r.start_time), int(r.end_time)
            rtopics = r.topics
        except Exception as exc:  # noqa: BLE001
            raise BagError(f"cannot open bag {self.path}: it is truncated or corrupt "
                           f"({type(exc).__name__}: {exc})") from None
        if count <= 0 or not rtopics:
            raise BagError(f"bag {self.path} has no messages"
                           + ("" if rtopics else " (and no topics)"))
        self.message_count = count
        self.start_ns = start
        self.end_ns = max(start, end - 1)  # rosbags' end_time is one past the last message

        remap = {_norm_topic(k): _norm_topic(v) for k, v in remap.items()}
        for src in remap:
            if src not in rtopics:
                log.warning("remap %s:=%s: the bag %s has no topic %s", src, remap[src], self.path, src)
        self.topics: dict[str, TopicInfo] = {}
        self._conns: dict[str, list[Connection]] = {}
        for orig, info in rtopics.items():
            name = remap.get(orig, orig)
            if name in self.topics:
                raise BagError(f"topic remap makes two topics of bag {self.path} both '{name}' "
                               f"('{self.topics[name].original}' and '{orig}')")
            msgtype = info.msgtype or "|".join(sorted({c.msgtype for c in info.connections}))
            self.topics[name] = TopicInfo(name, msgtype, int(info.msgcount), orig)
            self._conns[name] = list(info.connections)
        self._build_typestore()

    def _build_typestore(self) -> None:
        """Bag definitions first, then the default typestore for types the bag does not define."""
        from rosbags.typesys import TypesysError

        ts = self._reader.typestore
        base = self._default.fielddefs
        self._unknown: dict[str, str] = {}
        for name, info in self.topics.items():
            for msgtype in {c.msgtype for c in self._conns[name]}:
                if msgtype not in ts.fielddefs and msgtype in base:
                    missing = {t: base[t] for t in _type_deps(base, msgtype) if t not in ts.fielddefs}
                    try:
                        ts.register(missing)
                    except (TypesysError, KeyError, ValueError) as exc:
                        log.warning("cannot add type %s from the default typestore: %s", msgtype, exc)
                try:
                    ts.get_msgdef(msgtype)
                except Exception:  # noqa: BLE001 - missing (nested) definition
                    self._unknown[name] = msgtype
        self._typestore = ts

    # ------------------------------------------------------------------ properties / lifetime

    @property
    def duration_s(self) -> float:
        """Seconds between the first and the last message."""
        return (self.end_ns - self.start_ns) * 1e-9

    def close(self) -> None:
        """Close the underlying files (idempotent)."""
        r, self._reader = self._reader, None
        if r is not None:
            try:
                r.close()
            except Exception:  # noqa: BLE001 - closing a half-open reader
                pass

    def __enter__(self) -> "BagReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"BagReader({str(self.path)!r}, storage={self.storage!r}, messages={getattr(self, 'message_count', '?')})"

    # ------------------------------------------------------------------ queries

    def _listing(self) -> str:
        return ", ".join(f"{t.name} ({t.msgtype}, {t.count} msgs)" for t in self.topics.values())

    def _missing(self, topic: str) -> BagError:
        return BagError(f"topic '{topic}' is not in the bag {self.path}; it has: {self._listing()}")

    def require(self, topics: dict[str, str | tuple[str, ...] | None]) -> None:
        """Check that each topic exists (remapped name) and, when a type or a tuple of accepted
        types is given, has that type; BagError naming the topic, found and expected type."""
        for topic, want in topics.items():
            info = self.topics.get(topic)
            if info is None:
                raise self._missing(topic)
            if want is None:
                continue
            accepted = (want,) if isinstance(want, str) else tuple(want)
            if info.msgtype not in accepted:
                exp = accepted[0] if len(accepted) == 1 else "one of " + ", ".join(accepted)
                orig = f" (bag topic '{info.original}')" if info.original != topic else ""
                raise BagError(f"topic '{topic}'{orig} in the bag {self.path} has type {info.msgtype}, "
                               f"expected {exp}")

    def unknown_types(self) -> dict[str, str]:
        """Topic (remapped) -> message type for topics whose type cannot be deserialized
        (neither defined in the bag nor in the default typestore)."""
        return dict(self._unknown)

    def messages(self, topics: Iterable[str] | None = None, start: float = 0.0,
                 duration: float | None = None) -> Iterator[BagMessage]:
        """Messages in log-time order (messages with equal log times keep their write order).

        ``topics``: remapped names (None = all); ``start``: seconds after the first message;
        ``duration``: window length in seconds (None = to the end). A storage error in the middle
        of the file raises BagError("... truncated or corrupt after N messages ...").
        """
        if self._reader is None:
            raise BagError(f"bag {self.path} is closed")
        if isinstance(topics, str):
            topics = [topics]
        names = list(self.topics) if topics is None else list(dict.fromkeys(topics))
        for t in names:
            if t not in self.topics:
                raise self._missing(t)
        if start < 0 or (duration is not None and duration < 0):
            raise BagError(f"bad time window for bag {self.path}: start={start} s, duration={duration} s "
                           f"(both must be >= 0)")
        lo = self.start_ns + int(round(start * 1e9))
        hi = None if duration is None else lo + int(round(duration * 1e9))
        conns = [c for t in names for c in self._conns[t]]
        by_orig = {self.topics[t].original: t for t in names}
        full = start == 0 and duration is None
        expected = sum(self.topics[t].count for t in names) if full else None
        if not conns:
            return iter(())
        return self._iterate(conns, by_orig, lo, hi, expected)

    def _iterate(self, conns: list, by_orig: dict[str, str], lo: int, hi: int | None,
                 expected: int | None) -> Iterator[BagMessage]:
        n, last = 0, self.start_ns
        it = None
        try:
            it = self._reader.messages(connections=conns, start=lo, stop=hi)
            while True:
                try:
                    conn, t, raw = next(it)
                except StopIteration:
                    break
                except Exception as exc:  # noqa: BLE001 - apsw / mcap / struct / zstd errors
                    if self._reader is None:
                        raise BagError(f"bag {self.path} was closed while its messages were being read") from None
                    raise self._corrupt(n, last, f"{type(exc).__name__}: {exc}") from None
                n, last = n + 1, int(t)
                yield BagMessage(by_orig[conn.topic], conn.msgtype, int(t),
                                 raw if isinstance(raw, bytes) else bytes(raw), conn.topic)
        finally:
            if it is not None and hasattr(it, "close"):
                try:
                    it.close()
                except Exception:  # noqa: BLE001
                    pass
        if expected is not None and n < expected:
            raise self._corrupt(n, last, f"its index lists {expected} messages on these topics but only {n} "
                                         f"could be read")

    def _corrupt(self, n: int, last_ns: int, cause: str) -> BagError:
        return BagError(f"bag {self.path} is truncated or corrupt after {n} messages "
                        f"(t={(last_ns - self.start_ns) * 1e-9:.3f} s after the start): {cause}")

    def deserialize(self, m: BagMessage) -> Any:
        """The rosbags message object of ``m`` (fields as in ROS: ``header.stamp.sec``,
        ``.nanosec``, ``data`` as a numpy uint8 array, ...). BagError for an unknown type or
        an undecodable payload."""
        if self._unknown.get(m.topic) == m.msgtype or m.msgtype not in self._typestore.fielddefs:
            raise BagError(f"cannot deserialize topic '{m.topic}' of bag {self.path}: message type "
                           f"{m.msgtype} is unknown (the bag stores no definition for it and the default "
                           f"typestore does not have it)")
        try:
            if self._is_ros1:
                return self._typestore.deserialize_ros1(m.raw, m.msgtype)
            return self._typestore.deserialize_cdr(m.raw, m.msgtype)
        except Exception as exc:  # noqa: BLE001 - SerdeError, struct.error, ...
            raise BagError(f"cannot deserialize a {m.msgtype} message on topic '{m.topic}' of bag {self.path} "
                           f"(t={(m.log_time_ns - self.start_ns) * 1e-9:.3f} s): {type(exc).__name__}: {exc}") from None
