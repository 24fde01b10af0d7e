"""Fault containment for everything a DDS peer can trigger (ROS-free; docs/SECURITY in README).

- :class:`Guard` wraps subscription callbacks, timers and services: an unexpected exception
  becomes a logged (once per kind), counted rejection (``rejected_<kind>`` in /diagnostics) and,
  for services, an answer ``success=false`` with a reason; the executor never sees it.
- :class:`Supervisor` runs worker loops (frontend, optimizer, saver, render): a loop that raises
  is restarted after a short back-off, and one that fails ``max_restarts`` times within
  ``window`` seconds is given up and reported as ERROR (:meth:`Supervisor.health`).
- float32 helpers: the numbers of a request are checked in the precision they are used in
  (``1e39`` is a finite double but ``inf`` as float32); :func:`bounded_wait` caps waits.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

log = logging.getLogger(__name__)

F32_MAX = float(np.finfo(np.float32).max)
MAX_WAIT_S = 3600.0  # no wait / period / timeout of the node is longer than this


class Rejected(ValueError):
    """A refused request or input; ``kind`` names its /diagnostics counter (same shape as InputError)."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def finite_f32(values: Iterable[float] | float, what: str, kind: str = "bad_service_argument",
               limit: float = F32_MAX) -> np.ndarray:
    """``values`` as a float32 array; raises :class:`Rejected` if any is NaN/Inf in float32 or |v| > limit."""
    try:
        a64 = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError, OverflowError):
        raise Rejected(kind, f"{what}: not a list of numbers") from None
    with np.errstate(over="ignore", invalid="ignore"):
        a = a64.astype(np.float32)
    if not np.isfinite(a).all():
        raise Rejected(kind, f"{what}: contains NaN/Inf or a value beyond float32 range")
    if limit < F32_MAX and (np.abs(a64) > limit).any():
        raise Rejected(kind, f"{what}: a value exceeds the bound {limit:g}")
    return a


def bounded_wait(event: threading.Event, seconds: float) -> bool:
    """``event.wait`` with the timeout clamped to [0, MAX_WAIT_S] (``Event.wait(1e10)`` overflows)."""
    s = float(seconds)
    if not s == s:  # NaN
        s = 1.0
    return event.wait(min(max(s, 0.0), MAX_WAIT_S))


def _short(exc: BaseException, limit: int = 200) -> str:
    return f"{type(exc).__name__}: {str(exc)[:limit]}"


class Guard:
    """Wraps callbacks / timers / services so that no exception escapes to the executor.

    report(kind, reason): the rejection counter (``Problems.report``); count(name): a plain counter.
    shutting_down(): True once the middleware is going away (e.g. a callback publishing after SIGINT
    invalidated the ROS context): such exceptions are logged at debug level, not counted as faults.
    """

    def __init__(self, report: Callable[[str, str], None], count: Callable[[str], None] | None = None,
                 log_error: Callable[[str], None] | None = None,
                 shutting_down: Callable[[], bool] | None = None):
        self.report = report
        self.count = count or (lambda name: None)
        self.log_error = log_error or log.error
        self.shutting_down = shutting_down or (lambda: False)
        self._logged: set[str] = set()

    def _failed(self, kind: str, name: str, exc: BaseException) -> str:
        reason = f"{name}: internal error ({_short(exc)}); the input was refused and the node goes on"
        if kind not in self._logged:  # the traceback once per kind, for the operator
            self._logged.add(kind)
            self.log_error(f"[{kind}] {reason}\n{''.join(traceback.format_exception(exc))[-2000:]}")
        self.report(kind, reason)
        return reason

    def callback(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Subscription callback or timer: exceptions -> ``rejected_exception_<name>``."""
        def wrapped(*args: Any) -> None:
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - the point of this wrapper
                if self.shutting_down():
                    log.debug("%s during shutdown: %s", name, _short(exc))
                    return
                self._failed(f"exception_{name}", name, exc)
        wrapped.__name__ = f"guarded_{name}"
        return wrapped

    def service(self, name: str, fn: Callable[[Any, Any], Any],
                gate: Callable[[], Any] | None = None) -> Callable[[Any, Any], Any]:
        """Service handler: exceptions (and a refused ``gate``) -> a fresh response with success=false.

        An exception with ``kind`` and ``reason`` (:class:`Rejected`, ``InputError``) is an expected
        refusal (counted under its kind); any other is an internal error (``exception_<name>``).

        gate(): a context manager admitting the request (e.g. :class:`fhgs_ros.online.limits.RequestGate`)
        that raises :class:`Rejected` when it cannot.
        """
        def wrapped(req: Any, res: Any) -> Any:
            try:
                if gate is None:
                    return fn(req, res)
                with gate():
                    return fn(req, res)
            except Exception as exc:  # noqa: BLE001 - the point of this wrapper
                if not (isinstance(getattr(exc, "kind", None), str) and isinstance(getattr(exc, "reason", None), str)):
                    return self._internal(name, res, exc)
                self.count("service_errors")
                self.report(exc.kind, exc.reason)
                out = type(res)()
                out.success, out.message = False, exc.reason
                return out
        wrapped.__name__ = f"guarded_{name}"
        return wrapped

    def _internal(self, name: str, res: Any, exc: BaseException) -> Any:
        self.count("service_errors")
        out = type(res)()
        out.success = False
        out.message = self._failed(f"exception_{name}", name, exc)
        return out


@dataclass
class WorkerHealth:
    """Health of one supervised worker loop (/diagnostics ``thread_<name>``)."""

    name: str
    state: str = "starting"        # running | restarting | stopped | failed
    restarts: int = 0
    last_error: str = ""
    failures: list[float] = field(default_factory=list)  # monotonic times of recent failures


class Supervisor:
    """Runs worker loops in daemon threads and restarts a loop that raises (module docstring)."""

    def __init__(self, stop: threading.Event, report: Callable[[str, str], None] | None = None,
                 max_restarts: int = 5, window: float = 60.0, backoff: float = 0.5):
        self.stop = stop
        self.report = report or (lambda kind, reason: None)
        self.max_restarts = max_restarts
        self.window = window
        self.backoff = backoff
        self.workers: dict[str, WorkerHealth] = {}
        self.threads: dict[str, threading.Thread] = {}
        self.lock = threading.Lock()

    def spawn(self, name: str, loop: Callable[[], None]) -> threading.Thread:
        h = WorkerHealth(name)
        with self.lock:
            self.workers[name] = h
        t = threading.Thread(target=self._run, args=(h, loop), name=name, daemon=True)
        self.threads[name] = t
        t.start()
        return t

    def _run(self, h: WorkerHealth, loop: Callable[[], None]) -> None:
        while not self.stop.is_set():
            h.state = "running"
            try:
                loop()
                if self.stop.is_set():
                    break
                raise RuntimeError("the loop returned while the node is running")
            except Exception as exc:  # noqa: BLE001 - restart the worker
                now = time.monotonic()
                with self.lock:
                    h.failures = [t for t in h.failures if t >= now - self.window] + [now]
                    h.last_error = _short(exc)
                    give_up = len(h.failures) > self.max_restarts
                    h.state = "failed" if give_up else "restarting"
                    if not give_up:
                        h.restarts += 1
                log.error("worker thread %s failed (%s)%s\n%s", h.name, h.last_error,
                          "; giving up" if give_up else "; restarting", traceback.format_exc()[-2000:])
                self.report(f"thread_{h.name}", f"worker thread {h.name} failed ({h.last_error})"
                            + ("; it is stopped" if give_up else "; restarted"))
                if give_up:
                    return
                self.stop.wait(self.backoff)
        h.state = "stopped"

    def health(self) -> dict[str, WorkerHealth]:
        """name -> health; a thread that is not alive while the node runs counts as failed."""
        with self.lock:
            out = {k: WorkerHealth(v.name, v.state, v.restarts, v.last_error) for k, v in self.workers.items()}
        for k, t in self.threads.items():
            if not t.is_alive() and out[k].state not in ("stopped", "failed") and not self.stop.is_set():
                out[k].state = "failed"
        return out

    def all_ok(self) -> bool:
        return all(h.state in ("running", "restarting", "starting") for h in self.health().values())

    def join(self, timeout: float) -> None:
        for t in list(self.threads.values()):
            t.join(timeout)


__all__ = ["Guard", "Supervisor", "WorkerHealth", "Rejected", "finite_f32", "bounded_wait", "F32_MAX",
           "MAX_WAIT_S"]
