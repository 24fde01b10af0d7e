"""Telemetry of the online pipeline: rejected-input accounting, counters and rates, memory."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from fhgs_ros.online.imageproc import InputError

log = logging.getLogger(__name__)


class Problems:
    """Counts rejected inputs by kind and logs each kind once, with its reason."""

    def __init__(self, logger: Callable[[str], None] | None = None):
        self.counts: dict[str, int] = {}
        self.last: dict[str, str] = {}
        self.logger = logger or (lambda msg: log.warning(msg))
        self.lock = threading.Lock()
        self.total = 0

    def report(self, err: InputError | str, reason: str | None = None) -> None:
        kind, why = (err.kind, err.reason) if isinstance(err, InputError) else (str(err), reason or "")
        with self.lock:
            n = self.counts.get(kind, 0) + 1
            self.counts[kind] = n
            self.last[kind] = why
            self.total += 1
        if n == 1:
            self.logger(f"[{kind}] {why} (logged once; further '{kind}' problems are counted in /diagnostics)")

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counts)


def drop_lines(counts: dict[str, int], reasons: dict[str, str], indent: str = "  ") -> list[str]:
    """One line per rejection / drop kind, most frequent first: ``<kind>: <count>  (<last reason>)``."""
    return [f"{indent}{k}: {n}  ({reasons.get(k, '')})" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]) if n]


class Counters:
    """Thread-safe named counters and event-rate estimators."""

    def __init__(self):
        self.values: dict[str, float] = {}
        self.times: dict[str, list[float]] = {}
        self.lock = threading.Lock()

    def inc(self, name: str, n: float = 1) -> None:
        with self.lock:
            self.values[name] = self.values.get(name, 0) + n

    def set(self, name: str, v: float) -> None:
        with self.lock:
            self.values[name] = v

    def tick(self, name: str, now: float | None = None, window: float = 5.0) -> None:
        now = time.monotonic() if now is None else now
        with self.lock:
            ts = self.times.setdefault(name, [])
            ts.append(now)
            while ts and ts[0] < now - window:
                ts.pop(0)
            self.values[name + "_count"] = self.values.get(name + "_count", 0) + 1

    def rate(self, name: str, now: float | None = None, window: float = 5.0) -> float:
        now = time.monotonic() if now is None else now
        with self.lock:
            ts = [t for t in self.times.get(name, []) if t >= now - window]
        if len(ts) < 2:
            return 0.0
        return (len(ts) - 1) / max(ts[-1] - ts[0], 1e-6)

    def snapshot(self) -> dict[str, float]:
        with self.lock:
            return dict(self.values)


def memory_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MB (Linux /proc)."""
    cur = peak = 0.0
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    cur = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) / 1024
    except OSError:
        pass
    return cur, peak
