"""Request cost bounds: every service request is priced in bytes before anything is allocated.

The price of a view request is ``pixels x bytes_per_pixel`` with ``bytes_per_pixel`` from the
buffers the node actually holds at once (float32 render outputs, the numpy images and the
serialized response: :data:`BASE_BYTES_PER_PIXEL`; per feature channel the float32 render, the
float16/32 message array and its serialized copy: :data:`FEATURE_BYTES_PER_CHANNEL`). A request
whose price exceeds ``node.request_memory_mb`` is refused with the numbers in the reason;
``node.max_concurrent_requests`` heavy requests run at once (others are refused "busy"), so the
memory the service layer can add is bounded by ``max_concurrent_requests x request_memory_mb``.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Iterator

from fhgs_ros.online.guard import Rejected

BASE_BYTES_PER_PIXEL = 192        # render buffers (rgb, depth, normal, alpha, distortion ...) + images + messages
FEATURE_BYTES_PER_CHANNEL = 12    # float32 render + message array + serialized copy
SEGMENT_BYTES_PER_PIXEL = 512     # segment_view: dominant-surfel membership at full resolution, masks, logits
QUERY_RESULT_BYTES = 48           # per returned surfel: index, score, cloud point (x y z rgb pca opacity cluster score)


@dataclass(frozen=True)
class RequestLimits:
    """Bounds of one request (from node.* parameters)."""

    memory_bytes: int = 1024 * 2 ** 20   # node.request_memory_mb
    max_pixels: int = 4_194_304          # node.max_request_pixels
    max_prompts: int = 64                # node.max_prompts (segment_view points)
    max_results: int = 100_000           # node.query_max_results

    @staticmethod
    def from_node(ncfg) -> "RequestLimits":
        return RequestLimits(int(ncfg.request_memory_mb * 2 ** 20), int(ncfg.max_request_pixels),
                             int(ncfg.max_prompts), int(ncfg.query_max_results))


def view_bytes(width: int, height: int, feature_channels: int = 0, per_pixel: int = BASE_BYTES_PER_PIXEL) -> int:
    """Estimated peak bytes of rendering (and answering) a width x height view."""
    return int(width) * int(height) * (per_pixel + FEATURE_BYTES_PER_CHANNEL * max(0, int(feature_channels)))


def check_view(width: int, height: int, limits: RequestLimits, feature_channels: int = 0,
               per_pixel: int = BASE_BYTES_PER_PIXEL, what: str = "view") -> int:
    """Refuse a view larger than ``max_pixels`` or costlier than the memory budget; returns its cost."""
    w, h = int(width), int(height)
    if w <= 0 or h <= 0:
        raise Rejected("bad_service_argument", f"{what}: size {w}x{h} is not positive")
    if w * h > limits.max_pixels:
        raise Rejected("request_too_large", f"{what}: {w}x{h} exceeds node.max_request_pixels="
                                            f"{limits.max_pixels}")
    cost = view_bytes(w, h, feature_channels, per_pixel)
    if cost > limits.memory_bytes:
        raise Rejected("request_too_large",
                       f"{what}: {w}x{h}" + (f" with {feature_channels} feature channels" if feature_channels else "")
                       + f" needs about {cost / 2 ** 20:.0f} MB, over node.request_memory_mb="
                       f"{limits.memory_bytes / 2 ** 20:.0f}")
    return cost


def check_results(n: int, limits: RequestLimits, what: str = "query") -> None:
    if int(n) * QUERY_RESULT_BYTES > limits.memory_bytes:
        raise Rejected("request_too_large", f"{what}: {n} results exceed node.request_memory_mb")


class RequestGate:
    """At most ``n`` heavy requests at once; a further one is refused at once (no queueing, no freeze)."""

    def __init__(self, n: int):
        self.n = max(1, int(n))
        self._sem = threading.BoundedSemaphore(self.n)
        self.refused = 0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        if not self._sem.acquire(blocking=False):
            self.refused += 1
            raise Rejected("busy", f"{self.n} requests are already running (node.max_concurrent_requests); "
                                   f"try again")
        try:
            yield
        finally:
            self._sem.release()


__all__ = ["RequestLimits", "RequestGate", "check_view", "check_results", "view_bytes", "BASE_BYTES_PER_PIXEL",
           "FEATURE_BYTES_PER_CHANNEL", "SEGMENT_BYTES_PER_PIXEL"]
