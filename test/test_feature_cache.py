"""On-disk feature cache: keys, hits, atomic writes, corrupt entries, no pickle."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from fhgs_ros.features.base import FeatureGrid
from fhgs_ros.features.registry import make_extractor
from fhgs_ros.features.cache import CachedExtractor, FeatureCache, cache_key, image_digest
from fhgs_ros.features.sam import save_random_checkpoint


class CountingExtractor:
    """Deterministic fake: grid derived from the image bytes; counts images it computes."""

    input_kind = "rgb"

    def __init__(self, model_id="fake-v1", dim=8, input_size=None):
        self.model_id, self.dim, self.input_size = model_id, dim, input_size
        self.calls: list[int] = []

    def extract(self, image):
        return self.extract_batch([image])[0]

    def extract_batch(self, images):
        self.calls.append(len(images))
        out = []
        for im in images:
            a = np.asarray(im)
            seed = int(hashlib.sha256(a.tobytes()).hexdigest()[:8], 16)
            g = torch.randn(self.dim, 3, 4, generator=torch.Generator().manual_seed(seed))
            out.append(FeatureGrid(g, 4 / max(a.shape[:2]), tuple(a.shape[:2]), self.model_id))
        return out


def _img(seed, h=24, w=32):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def test_hits_misses_and_identical_results(tmp_path):
    inner = CountingExtractor()
    ext = CachedExtractor(inner, tmp_path)
    a = _img(0)
    g1 = ext.extract(a)
    assert inner.calls == [1] and ext.cache.stats() == {"hits": 0, "misses": 1, "corrupt": 0}
    g2 = ext.extract(a)
    assert inner.calls == [1] and ext.cache.hits == 1
    assert torch.equal(g1.grid, g2.grid) and g1.scale == g2.scale and g1.image_size == g2.image_size
    assert g1.grid.dtype == torch.float32 and g1.model_id == "fake-v1"
    # float16 storage: the miss already returns the float16-rounded grid
    assert torch.equal(g1.grid, inner.extract(a).grid.half().float())
    # a fresh wrapper (another process, a restart) hits the same files
    inner2 = CountingExtractor()
    assert torch.equal(CachedExtractor(inner2, tmp_path).extract(a).grid, g1.grid) and inner2.calls == []


def test_batch_sends_only_misses(tmp_path):
    inner = CountingExtractor()
    ext = CachedExtractor(inner, tmp_path)
    a, b, c = _img(1), _img(2), _img(3)
    ext.extract(b)
    res = ext.extract_batch([a, b, c])
    assert inner.calls == [1, 2]
    assert [r.image_size for r in res] == [(24, 32)] * 3
    assert torch.equal(res[1].grid, ext.extract(b).grid)


def test_key_depends_on_content_model_and_input_size():
    a = _img(4)
    d = image_digest(a)
    assert d == image_digest(a.astype(np.float32) / 255)  # same picture as float in [0, 1]
    assert d == image_digest(torch.from_numpy(a).permute(2, 0, 1))  # CHW tensor
    b = a.copy()
    b[0, 0, 0] ^= 1
    assert image_digest(b) != d
    assert len({cache_key(d, "m1", 1024), cache_key(d, "m2", 1024), cache_key(d, "m1", 512)}) == 3
    lab = np.zeros((4, 5), np.int32)
    assert image_digest(lab, "labels") == image_digest(lab.astype(np.int64), "labels")
    assert image_digest(lab, "labels") != image_digest(lab.T.copy(), "labels")


def test_models_do_not_share_entries(tmp_path):
    a = _img(5)
    i1, i2 = CountingExtractor("m1"), CountingExtractor("m2", input_size=512)
    CachedExtractor(i1, tmp_path).extract(a)
    CachedExtractor(i2, tmp_path).extract(a)
    assert i1.calls == [1] and i2.calls == [1]
    assert len(list(tmp_path.rglob("*.safetensors"))) == 2


@pytest.mark.parametrize("damage", ["garbage", "truncate", "empty", "wrong_model"])
def test_corrupt_entries_are_recomputed(tmp_path, damage):
    inner = CountingExtractor()
    ext = CachedExtractor(inner, tmp_path)
    a = _img(6)
    g = ext.extract(a)
    (f,) = list(tmp_path.rglob("*.safetensors"))
    data = f.read_bytes()
    if damage == "garbage":
        f.write_bytes(b"\x00garbage" * 10)
    elif damage == "truncate":
        f.write_bytes(data[: len(data) - 50])
    elif damage == "empty":
        f.write_bytes(b"")
    else:  # a valid file whose metadata names another model
        from safetensors.torch import save_file
        save_file({"grid": torch.zeros(8, 3, 4, dtype=torch.float16)}, str(f),
                  metadata={"format": "1", "model_id": "other", "key": f.stem, "scale": "0.1", "image_h": "24",
                            "image_w": "32"})
    g2 = ext.extract(a)
    assert inner.calls == [1, 1] and ext.cache.corrupt == 1
    assert torch.equal(g.grid, g2.grid)
    assert ext.extract(a) is not None and inner.calls == [1, 1]  # rewritten entry is good again


def test_files_are_safetensors_and_writes_atomic(tmp_path, monkeypatch):
    from safetensors import safe_open

    ext = CachedExtractor(CountingExtractor(), tmp_path)
    ext.extract(_img(7))
    (f,) = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert f.suffix == ".safetensors" and not f.name.startswith(".tmp")
    with safe_open(str(f), framework="pt") as sf:
        assert list(sf.keys()) == ["grid"] and sf.get_tensor("grid").dtype == torch.float16
        assert sf.metadata()["model_id"] == "fake-v1"
    assert f.read_bytes()[:2] != b"\x80\x04"  # not a pickle stream

    import safetensors.torch as st

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(st, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        ext.extract(_img(8))
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files == [f]  # no partial entry, no temporary left behind


def test_cache_dtype_float32_is_exact(tmp_path):
    inner = CountingExtractor()
    ext = CachedExtractor(inner, tmp_path, dtype="float32")
    a = _img(9)
    assert torch.equal(ext.extract(a).grid, inner.extract(a).grid)
    with pytest.raises(ValueError, match="dtype"):
        FeatureCache(tmp_path, "int8")


def test_sam_extractor_through_cache(tmp_path, monkeypatch):
    ckpt = save_random_checkpoint(tmp_path / "tiny.pth", "vit_tiny", input_size=128, seed=0)
    ext = make_extractor("sam", checkpoint=str(ckpt), model="vit_tiny", device="cpu", cache_dir=str(tmp_path / "c"))
    assert isinstance(ext, CachedExtractor) and ext.input_size == 128
    img = _img(10, 60, 80)
    g1 = ext.extract(img)
    calls = []
    orig = ext.inner.encode
    monkeypatch.setattr(ext.inner, "encode", lambda b: calls.append(b.shape[0]) or orig(b))
    g2 = ext.extract(img)
    assert calls == [] and ext.cache.hits == 1 and torch.equal(g1.grid, g2.grid)
    assert tuple(g2.grid.shape) == (256, 6, 8) and g2.scale == pytest.approx(8 / 80)
    ext.extract(_img(11, 60, 80))
    assert calls == [1]
