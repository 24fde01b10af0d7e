"""On-disk feature cache, so re-mapping a dataset does not re-run the image encoder.

Key: sha256 over (image digest, model id, input size), where the image digest is the sha256
of the exact input array the extractor receives (dtype, shape and bytes; RGB images are first
normalized to (H, W, 3) uint8, so the same picture as uint8 or as float in [0, 1] hits the same
entry). ``model_id`` already names the weights (checkpoint fingerprint) and input size.

Layout: ``<root>/<model id, sanitized>/<key[:2]>/<key>.safetensors`` with one tensor ``grid``
(D, gh, gw) in the cache dtype (float16 by default, docs/METHOD.md §8.13: a 256x64x48 SAM grid is
1.5 MB) and string metadata (format version, model id, scale, image size). Files are written to
a temporary name in the same folder, fsynced and ``os.replace``d into place, so readers never
see a partial file; nothing is ever pickled. An entry that fails to load or whose metadata
disagrees (truncated, corrupt, another model) is counted, deleted and recomputed.

``CachedExtractor`` returns the grid as stored (cast back to float32) on misses too, so the
result of a call never depends on whether it hit the cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fhgs_ros.features.base import FeatureGrid, FeatureExtractor, image_to_uint8_hwc

log = logging.getLogger(__name__)

CACHE_FORMAT = "1"


def image_digest(image: Any, kind: str = "rgb") -> str:
    """sha256 of an extractor input: RGB images normalized to uint8 HWC; label images as int64."""
    if kind == "rgb":
        arr = image_to_uint8_hwc(image)
    else:
        arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
            arr = arr.astype(np.int64)
        arr = np.ascontiguousarray(arr)
    h = hashlib.sha256()
    h.update(f"{kind}|{arr.dtype.str}|{arr.shape}|".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def cache_key(image_sha: str, model_id: str, input_size: Any = None) -> str:
    return hashlib.sha256(f"{image_sha}\0{model_id}\0{input_size}".encode()).hexdigest()


class FeatureCache:
    """Directory of cached feature grids (see module docstring). Counters: hits, misses, corrupt."""

    def __init__(self, root: str | os.PathLike, dtype: str | torch.dtype = "float16"):
        self.root = Path(root)
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        if self.dtype not in (torch.float16, torch.float32, torch.bfloat16):
            raise ValueError(f"cache dtype must be float16, bfloat16 or float32, got {dtype}")
        self.hits = self.misses = self.corrupt = 0

    def path(self, key: str, model_id: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9._@-]+", "_", model_id)[:120] or "model"
        return self.root / safe / key[:2] / f"{key}.safetensors"

    def load(self, key: str, model_id: str) -> FeatureGrid | None:
        """The cached grid, or None (missing, or corrupt: then the file is removed)."""
        from safetensors import safe_open

        p = self.path(key, model_id)
        if not p.is_file():
            self.misses += 1
            return None
        try:
            with safe_open(str(p), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                grid = f.get_tensor("grid")
            if meta.get("format") != CACHE_FORMAT or meta.get("model_id") != model_id or meta.get("key") != key:
                raise ValueError(f"metadata mismatch {meta}")
            h, w = int(meta["image_h"]), int(meta["image_w"])
            scale = float(meta["scale"])
            if grid.ndim != 3 or not torch.isfinite(grid).all():
                raise ValueError(f"bad grid of shape {tuple(grid.shape)}")
        except Exception as exc:  # noqa: BLE001 - any unreadable entry is recomputed
            log.warning("feature cache: corrupt entry %s (%s); recomputing", p, exc)
            self.corrupt += 1
            self.misses += 1
            try:
                p.unlink()
            except OSError:
                pass
            return None
        self.hits += 1
        return FeatureGrid(grid.float().contiguous(), scale, (h, w), model_id)

    def store(self, key: str, fg: FeatureGrid, model_id: str | None = None) -> FeatureGrid:
        """Write atomically; returns the grid as it will be read back (cache dtype, as float32)."""
        from safetensors.torch import save_file

        model_id = model_id or fg.model_id
        p = self.path(key, model_id)
        p.parent.mkdir(parents=True, exist_ok=True)
        grid = fg.grid.detach().to("cpu", self.dtype).contiguous()
        meta = {"format": CACHE_FORMAT, "model_id": model_id, "key": key, "scale": repr(float(fg.scale)),
                "image_h": str(int(fg.image_size[0])), "image_w": str(int(fg.image_size[1]))}
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=p.parent)
        os.close(fd)
        try:
            save_file({"grid": grid}, tmp, metadata=meta)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, p)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return FeatureGrid(grid.float(), float(fg.scale), tuple(fg.image_size), model_id)

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "corrupt": self.corrupt}


class CachedExtractor:
    """Wraps any extractor with a :class:`FeatureCache`; same protocol, same ``model_id``/``dim``.

    ``extract_batch`` looks every image up first and sends only the misses, as one batch, to the
    wrapped extractor.
    """

    def __init__(self, extractor: FeatureExtractor, cache_dir: str | os.PathLike, dtype: str = "float16"):
        self.inner = extractor
        self.cache = FeatureCache(cache_dir, dtype)
        self.model_id = extractor.model_id
        self.dim = extractor.dim
        self.input_kind = getattr(extractor, "input_kind", "rgb")
        self.input_size = getattr(extractor, "input_size", None)

    def __getattr__(self, name: str):  # e.g. prompt_model() of a wrapped SamExtractor
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def key(self, image: Any) -> str:
        return cache_key(image_digest(image, self.input_kind), self.model_id, self.input_size)

    def extract(self, image: Any) -> FeatureGrid:
        return self.extract_batch([image])[0]

    def extract_batch(self, images: Sequence[Any]) -> list[FeatureGrid]:
        keys = [self.key(im) for im in images]
        out: list[FeatureGrid | None] = [self.cache.load(k, self.model_id) for k in keys]
        todo = [i for i, g in enumerate(out) if g is None]
        if todo:
            fresh = self.inner.extract_batch([images[i] for i in todo])
            for i, fg in zip(todo, fresh):
                out[i] = self.cache.store(keys[i], fg, self.model_id)
        return out  # type: ignore[return-value]
