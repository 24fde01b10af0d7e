"""SAM feature extractor through the real loading path, with tiny checkpoints built from
segment_anything's own modules (no official weights are downloadable here)."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fhgs_ros.core.raster_types import FeatureTarget
from fhgs_ros.core.reference import sample_feature_target
from fhgs_ros.features import tv_compat
from fhgs_ros.features.base import FeatureError, FeatureExtractor, FeatureGrid, image_to_uint8_hwc
from fhgs_ros.features.registry import available_extractors, make_extractor, make_extractor_from_config
from fhgs_ros.features.sam import (SAM_ARCHS, CheckpointError, SamExtractor, find_default_checkpoint,
                                   missing_checkpoint_help, save_random_checkpoint)

OFFICIAL_URLS = {
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
}


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return save_random_checkpoint(tmp_path_factory.mktemp("sam") / "tiny.pth", "vit_tiny", input_size=256, seed=0)


@pytest.fixture(scope="module")
def tiny(tiny_ckpt):
    return make_extractor("sam", checkpoint=str(tiny_ckpt), model="vit_tiny", device="cpu")


def _img(h, w, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


# ----------------------------------------------------------------------------- torchvision shim
def test_shim_resize_and_pil_match_pil():
    from PIL import Image

    arr = _img(37, 53)
    pil = tv_compat.to_pil_image(arr)
    assert pil.size == (53, 37)
    got = np.asarray(tv_compat.resize(pil, (20, 30)))
    ref = np.asarray(Image.fromarray(arr).resize((30, 20), Image.BILINEAR))
    assert got.shape == (20, 30, 3) and np.array_equal(got, ref)
    # tensor paths: CHW float in [0, 1] -> PIL, and tensor resize (antialiased bilinear)
    t = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    assert np.array_equal(np.asarray(tv_compat.to_pil_image(t)), arr)
    assert tuple(tv_compat.resize(t, (10, 12)).shape) == (3, 10, 12)
    assert tv_compat.resize(pil, 10).size == (14, 10)  # int: shorter side


def test_shim_boxes_and_batched_nms():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    idxs = torch.tensor([0, 0, 0, 1])
    assert torch.equal(tv_compat.box_area(boxes), torch.tensor([100.0, 100.0, 100.0, 100.0]))
    keep = tv_compat.batched_nms(boxes, scores, idxs, 0.5)
    assert keep.tolist() == [3, 0, 2]  # box 1 overlaps box 0 (IoU 0.68) in the same category
    assert tv_compat.batched_nms(boxes, scores, idxs, 0.9).tolist() == [3, 0, 1, 2]
    assert tv_compat.batched_nms(boxes[:0], scores[:0], idxs[:0], 0.5).numel() == 0


def test_segment_anything_imports_through_shim():
    sa = tv_compat.import_segment_anything()
    assert hasattr(sa, "sam_model_registry")
    amg = importlib.import_module("segment_anything.automatic_mask_generator")
    from segment_anything.utils.transforms import ResizeLongestSide

    if tv_compat.is_shim_active():
        assert amg.batched_nms is tv_compat.batched_nms
    out = ResizeLongestSide(64).apply_image(_img(30, 40))
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8


def test_shim_replaces_a_broken_torchvision(tmp_path, monkeypatch):
    """A torchvision that raises on import (as PyPI's does beside this torch) is replaced by the shim."""
    pkg = tmp_path / "torchvision"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    saved = {k: v for k, v in sys.modules.items() if k == "torchvision" or k.startswith("torchvision.")}
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        for k in saved:
            del sys.modules[k]
        assert tv_compat.torchvision_usable() is False
        assert "torchvision" not in sys.modules  # the half-imported module was cleaned up
        assert tv_compat.install() is True and tv_compat.is_shim_active()
        from torchvision.ops.boxes import batched_nms  # noqa: F401  (shim)
    finally:
        for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[k]
        sys.modules.update(saved)


# ----------------------------------------------------------------------------- registry / loading
def test_registry_names_and_errors(tiny_ckpt):
    assert {"sam", "label"} <= set(available_extractors())
    with pytest.raises(FeatureError, match="unknown feature extractor 'nope'.*sam"):
        make_extractor("nope")
    with pytest.raises(FeatureError, match="unknown config key.*'checkpont'"):
        make_extractor("sam", checkpont=str(tiny_ckpt))


def test_extractor_shapes_scale_and_protocol(tiny):
    assert isinstance(tiny, FeatureExtractor) and isinstance(tiny, SamExtractor)
    assert tiny.dim == 256 and tiny.input_size == 256 and tiny.model_id.startswith("sam_vit_tiny@256:")
    # landscape 4:3 -> 16 x 12 cells at input 256 (64 x 48 at 1024); portrait and odd sizes
    for (h, w), (gh, gw) in {(480, 640): (12, 16), (400, 300): (16, 12), (100, 250): (7, 16),
                             (64, 64): (16, 16)}.items():
        g = tiny.extract(_img(h, w))
        assert isinstance(g, FeatureGrid)
        assert tuple(g.grid.shape) == (256, gh, gw), (h, w)
        assert g.grid.dtype == torch.float32 and g.grid.device.type == "cpu"
        assert g.image_size == (h, w) and g.scale == pytest.approx(16 / max(h, w))
        assert torch.isfinite(g.grid).all()
    t = g.to_target()
    assert isinstance(t, FeatureTarget) and t.grid is g.grid and t.scale == g.scale


def test_padding_crop_matches_sams_own_pipeline(tiny):
    """The grid is the encoder output on SAM's preprocessed (resized, normalized, padded) input,
    with the padding-only rows cropped."""
    from segment_anything.utils.transforms import ResizeLongestSide

    img = _img(480, 640, seed=3)
    sam = tiny.sam
    resized = ResizeLongestSide(256).apply_image(img)
    assert resized.shape == (192, 256, 3)
    x = sam.preprocess(torch.as_tensor(resized).permute(2, 0, 1).float()[None])
    assert tuple(x.shape) == (1, 3, 256, 256) and torch.all(x[0, :, 192:] == 0)  # padded rows
    with torch.no_grad():
        emb = sam.image_encoder(x)[0]
    g = tiny.extract(img).grid
    assert torch.allclose(g, emb[:, :12, :16], atol=1e-5)
    assert not torch.allclose(emb[:, 12:, :], emb[:, 11:12, :].expand(-1, 4, -1))  # cropped rows differ


def test_determinism_batching_and_input_formats(tiny):
    a, b = _img(120, 160, 1), _img(90, 200, 2)
    g1 = tiny.extract(a).grid
    assert torch.equal(g1, tiny.extract(a).grid)
    batch = tiny.extract_batch([a, b, a])
    assert torch.allclose(batch[0].grid, g1, atol=1e-5) and torch.allclose(batch[2].grid, g1, atol=1e-5)
    assert tuple(batch[1].grid.shape) == (256, 8, 16)
    # float HWC in [0, 1] and (3, H, W) tensors give the same input (SAM quantizes to uint8)
    f = torch.from_numpy(a).float() / 255
    assert torch.equal(tiny.extract(f.numpy()).grid, g1)
    assert torch.equal(tiny.extract(f.permute(2, 0, 1)).grid, g1)
    with pytest.raises(FeatureError, match="image"):
        tiny.extract(np.zeros((4, 5, 6, 7)))
    assert image_to_uint8_hwc(np.full((2, 2), 7, np.uint8)).shape == (2, 2, 3)


def test_feature_grid_sampling_matches_rasterizer_convention(tiny):
    g = tiny.extract(_img(30, 40, 5))
    h, w = g.image_size
    ref = sample_feature_target(g.to_target(), w, h)  # (H*W, D) unit, what NDFD uses
    mine = F.normalize(g.upsample().reshape(g.dim, -1).T, dim=-1)
    assert torch.allclose(mine, ref, atol=1e-5)
    assert torch.allclose(g.grid_to_pixel(g.pixel_to_grid(torch.tensor([[3.0, 7.0]]))), torch.tensor([[3.0, 7.0]]))


def test_lower_input_size_resamples_position_tables(tiny_ckpt):
    ext = make_extractor("sam", checkpoint=str(tiny_ckpt), model="vit_tiny", device="cpu", input_size=128)
    assert ext.input_size == 128 and ext.model_id.startswith("sam_vit_tiny@128:")
    assert tuple(ext.sam.image_encoder.pos_embed.shape) == (1, 8, 8, 192)
    g = ext.extract(_img(480, 640))
    assert tuple(g.grid.shape) == (256, 6, 8) and g.scale == pytest.approx(8 / 640)
    # bigger than trained works too (interpolated up)
    big = make_extractor("sam", checkpoint=str(tiny_ckpt), model="vit_tiny", device="cpu", input_size=320)
    assert tuple(big.extract(_img(50, 100)).grid.shape) == (256, 10, 20)
    with pytest.raises(FeatureError, match="multiple of 16"):
        make_extractor("sam", checkpoint=str(tiny_ckpt), model="vit_tiny", device="cpu", input_size=200)


def test_safetensors_checkpoint_loads_identically(tiny, tmp_path):
    st = save_random_checkpoint(tmp_path / "tiny.safetensors", "vit_tiny", 256, seed=0, fmt="safetensors")
    ext = make_extractor("sam", checkpoint=str(st), model="vit_tiny", device="cpu")
    img = _img(64, 80, 4)
    assert torch.equal(ext.extract(img).grid, tiny.extract(img).grid)


def test_config_block_builds_cached_extractor(tiny_ckpt, tmp_path):
    from fhgs_ros.features.cache import CachedExtractor

    cfg = {"extractor": "sam", "dim": 64, "grid_long_side": 64, "sam_model": "vit_tiny",
           "sam_checkpoint": str(tiny_ckpt), "sam_input_size": 256, "device": "cpu",
           "cache_dir": str(tmp_path / "cache")}
    ext = make_extractor_from_config(cfg)
    assert isinstance(ext, CachedExtractor) and ext.model_id.startswith("sam_vit_tiny@256")
    assert tuple(ext.extract(_img(48, 64)).grid.shape) == (256, 12, 16)
    assert ext.prompt_model().grid_size == 16  # attribute pass-through to the wrapped extractor


# ----------------------------------------------------------------------------- checkpoint errors
def test_missing_checkpoint_says_what_to_download(tmp_path):
    for model, url in OFFICIAL_URLS.items():
        msg = missing_checkpoint_help(model)
        assert url in msg and f"checkpoints/{url.rsplit('/', 1)[1]}" in msg and f"--sam-model {model}" in msg
        assert SAM_ARCHS[model].url == url
    with pytest.raises(CheckpointError) as ei:
        make_extractor("sam", model="vit_b")  # no checkpoint at all
    assert OFFICIAL_URLS["vit_b"] in str(ei.value) and ei.value.model_type == "vit_b"
    missing = tmp_path / "nowhere" / "sam_vit_b_01ec64.pth"
    with pytest.raises(CheckpointError) as ei:
        make_extractor("sam", checkpoint=str(missing), model="vit_b")
    msg = str(ei.value)
    assert str(missing) in msg and "'vit_b'" in msg and "does not exist" in msg and OFFICIAL_URLS["vit_b"] in msg
    assert ei.value.path == str(missing)
    assert find_default_checkpoint("vit_b", [tmp_path]) is None
    (tmp_path / "sam_vit_b_01ec64.pth").write_bytes(b"x")
    assert find_default_checkpoint("vit_b", [tmp_path]) == tmp_path / "sam_vit_b_01ec64.pth"


def test_truncated_and_garbage_checkpoints(tiny_ckpt, tmp_path):
    data = tiny_ckpt.read_bytes()
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as ei:
        make_extractor("sam", checkpoint=str(trunc), model="vit_tiny", device="cpu")
    msg = str(ei.value)
    assert str(trunc) in msg and "'vit_tiny'" in msg and "truncated" in msg and str(len(data) // 2) in msg
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"junk\.pth.*'vit_h'"):
        make_extractor("sam", checkpoint=str(junk), model="vit_h")
    lst = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], lst)
    with pytest.raises(CheckpointError, match="not a state dict of tensors"):
        make_extractor("sam", checkpoint=str(lst), model="vit_tiny")


class _Evil:
    def __reduce__(self):
        return (open, ("/tmp/fhgs_evil_was_unpickled", "w"))


def test_pickled_objects_are_never_executed(tmp_path):
    import os

    marker = "/tmp/fhgs_evil_was_unpickled"
    if os.path.exists(marker):
        os.remove(marker)
    p = tmp_path / "evil.pth"
    torch.save({"image_encoder.pos_embed": _Evil()}, p)
    with pytest.raises(CheckpointError, match=r"evil\.pth.*'vit_b'"):
        make_extractor("sam", checkpoint=str(p), model="vit_b")
    assert not os.path.exists(marker)


def test_mismatched_architecture_names_file_and_types(tiny_ckpt, tmp_path):
    with pytest.raises(CheckpointError) as ei:
        make_extractor("sam", checkpoint=str(tiny_ckpt), model="vit_b", device="cpu")
    msg = str(ei.value)
    assert str(tiny_ckpt) in msg and "'vit_b'" in msg and "wrong shape" in msg
    assert "looks like a 'vit_tiny'" in msg
    # a state dict missing tensors
    sd = torch.load(tiny_ckpt, weights_only=True)
    del sd["mask_decoder.iou_token.weight"]
    partial = tmp_path / "partial.pth"
    torch.save(sd, partial)
    with pytest.raises(CheckpointError, match=r"partial\.pth.*'vit_tiny'.*1 missing key.*iou_token"):
        make_extractor("sam", checkpoint=str(partial), model="vit_tiny")


def test_random_weights_only_when_allowed():
    ext = SamExtractor(None, model="vit_tiny", input_size=64, device="cpu", allow_random=True, seed=1)
    assert ext.model_id == "sam_vit_tiny@64:random1"
    assert tuple(ext.extract(_img(32, 32)).grid.shape) == (256, 4, 4)
    with pytest.raises(FeatureError, match="device"):
        SamExtractor(None, model="vit_tiny", device="tpu", allow_random=True)
    with pytest.raises(FeatureError, match="unknown SAM model type"):
        SamExtractor(None, model="vit_x", allow_random=True)


# ----------------------------------------------------------------------------- label extractor
def test_label_extractor_same_contract(tmp_path):
    from fhgs_ros.features.base import extract_frames, extractor_input
    from fhgs_ros.features.cache import CachedExtractor
    from fhgs_ros.features.label import label_feature_grid, label_vectors

    ext = make_extractor("label", num_labels=5, dim=16, grid_long_side=16)
    assert isinstance(ext, FeatureExtractor) and ext.input_kind == "labels" and ext.dim == 16
    lab = torch.zeros(48, 64, dtype=torch.long)
    lab[:, 32:] = 3
    lab[0, 0] = 255  # unknown -> zero embedding, as label.py does
    g = ext.extract(lab)
    assert tuple(g.grid.shape) == (16, 12, 16) and g.scale == pytest.approx(16 / 64) and g.image_size == (48, 64)
    assert torch.equal(g.grid, label_feature_grid(lab, label_vectors(5, 16, seed=0), grid_long_side=16))
    v = label_vectors(5, 16, seed=0)
    assert torch.allclose(g.grid[:, 5, 12], v[3], atol=1e-6) and torch.allclose(g.grid[:, 5, 3], v[0], atol=1e-6)
    assert torch.equal(ext.extract(lab.numpy().astype(np.uint8)).grid, g.grid)
    assert torch.equal(ext.extract_batch([lab, lab])[1].grid, g.grid)
    with pytest.raises(FeatureError, match="label image"):
        ext.extract(np.zeros((48, 64, 3), np.uint8))  # an RGB image by mistake
    with pytest.raises(FeatureError, match="num_labels"):
        make_extractor("label", dim=8)

    class Frame:  # dataset Frame stand-in: extractor_input picks .labels
        image = torch.rand(3, 48, 64)
        labels = lab
        path = "f0"

    assert extractor_input(ext, Frame) is lab
    assert torch.equal(extract_frames(ext, [Frame, Frame])[0].grid, g.grid)
    # project YAML block: sam_* keys and 'device' are ignored for the label extractor
    cfg = {"extractor": "label", "dim": 16, "grid_long_side": 16, "sam_model": "vit_b", "sam_checkpoint": "",
           "sam_input_size": 1024, "device": "auto", "cache_dir": str(tmp_path), "num_labels": 5}
    cached = make_extractor_from_config(cfg)
    assert isinstance(cached, CachedExtractor) and cached.input_kind == "labels"
    assert torch.allclose(cached.extract(lab).grid, g.grid, atol=1e-3)
    assert torch.equal(cached.extract(lab).grid, cached.extract(lab).grid) and cached.cache.hits == 2
