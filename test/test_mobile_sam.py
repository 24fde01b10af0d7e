"""MobileSAM (``sam_model: vit_t``, TinyViT-5M encoder) through the real SAM loading path, with
random checkpoints saved in the official ``mobile_sam.pt`` key layout (the official weights cannot
be downloaded here); ``segment_view`` on MobileSAM features; encoder identity in cache and map files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fhgs_ros.core.query import surfels_in_mask
from fhgs_ros.features.segment import segment_view
from fhgs_ros.features.registry import make_extractor
from fhgs_ros.features.cache import CachedExtractor
from fhgs_ros.features.sam import CheckpointError, SamExtractor, missing_checkpoint_help, save_random_checkpoint
from test_query import two_planes

MOBILE_SAM_URL = "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt"

# Spot checks of the official layout (mobile_sam/modeling/tiny_vit_sam.py + segment_anything's
# prompt encoder / mask decoder, as in MobileSAM's build_sam_vit_t): key -> shape.
OFFICIAL_KEYS = {
    "image_encoder.patch_embed.seq.0.c.weight": (32, 3, 3, 3),
    "image_encoder.patch_embed.seq.0.bn.num_batches_tracked": (),
    "image_encoder.patch_embed.seq.2.bn.running_var": (64,),
    "image_encoder.layers.0.blocks.1.conv2.c.weight": (256, 1, 3, 3),
    "image_encoder.layers.0.blocks.1.conv3.bn.weight": (64,),
    "image_encoder.layers.0.downsample.conv2.c.weight": (128, 1, 3, 3),
    "image_encoder.layers.1.blocks.0.attn.attention_biases": (4, 49),
    "image_encoder.layers.1.blocks.0.attn.qkv.weight": (384, 128),
    "image_encoder.layers.2.blocks.5.attn.attention_biases": (5, 196),
    "image_encoder.layers.2.blocks.5.local_conv.c.weight": (160, 1, 3, 3),
    "image_encoder.layers.2.downsample.conv2.c.weight": (320, 1, 3, 3),
    "image_encoder.layers.3.blocks.1.attn.attention_biases": (10, 49),
    "image_encoder.layers.3.blocks.1.mlp.norm.weight": (320,),
    "image_encoder.layers.3.blocks.1.mlp.fc2.weight": (320, 1280),
    "image_encoder.norm_head.weight": (320,),
    "image_encoder.head.weight": (1000, 320),
    "image_encoder.neck.0.weight": (256, 320, 1, 1),
    "image_encoder.neck.3.bias": (256,),
    "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (2, 128),
    "mask_decoder.iou_prediction_head.layers.2.weight": (4, 256),
}


def _img(h, w, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_random_checkpoint(tmp_path_factory.mktemp("msam") / "mobile_sam.pt", "vit_t", input_size=256, seed=0)


@pytest.fixture(scope="module")
def msam(ckpt):
    return SamExtractor(str(ckpt), model="vit_t", input_size=256, device="cpu")


def test_checkpoint_has_the_official_key_layout(ckpt):
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    enc = [k for k in state if k.startswith("image_encoder.")]
    assert len(enc) == 302 and len(state) == 439
    assert {k.split(".")[0] for k in state} == {"image_encoder", "prompt_encoder", "mask_decoder"}
    for k, shape in OFFICIAL_KEYS.items():
        assert tuple(state[k].shape) == shape, k
    # no input-size dependent tensor in TinyViT: the same file serves any input size
    assert not any("pos_embed" in k or "rel_pos" in k for k in enc)


def test_loads_key_for_key_and_embeds_like_sam(msam, ckpt, tmp_path):
    assert msam.dim == 256 and msam.input_size == 256 and msam.model_id.startswith("sam_vit_t@256:")
    assert type(msam.sam.image_encoder).__name__ == "TinyViT"
    g = msam.extract(_img(480, 640))
    assert g.shape == (256, 12, 16) and g.scale == pytest.approx(16 / 640) and torch.isfinite(g.grid).all()
    # the loaded weights are the file's (strict, key for key)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    live = msam.sam.state_dict()
    assert all(torch.equal(live[k], state[k]) for k in state)
    # safetensors export of the same state dict: same features
    st = save_random_checkpoint(tmp_path / "mobile_sam.safetensors", "vit_t", input_size=256, seed=0,
                                fmt="safetensors")
    g2 = SamExtractor(str(st), model="vit_t", input_size=256, device="cpu").extract(_img(480, 640))
    assert torch.allclose(g.grid, g2.grid, atol=1e-5)
    # the official input size from the same file: 64-cell grid, cropped to the image (48 x 64)
    full = make_extractor("sam", checkpoint=str(ckpt), model="vit_t", device="cpu")
    assert full.input_size == 1024 and full.extract(_img(480, 640)).shape == (256, 48, 64)


def test_checkpoint_errors_name_the_download(ckpt, tmp_path):
    help_ = missing_checkpoint_help("vit_t")
    assert MOBILE_SAM_URL in help_ and "checkpoints/mobile_sam.pt" in help_ and "--sam-model vit_t" in help_
    with pytest.raises(CheckpointError) as ei:
        make_extractor("sam", model="vit_t")
    assert MOBILE_SAM_URL in str(ei.value)
    with pytest.raises(CheckpointError, match="(?s)does not exist.*" + MOBILE_SAM_URL.replace(".", r"\.")):
        make_extractor("sam", model="vit_t", checkpoint=str(tmp_path / "mobile_sam.pt"))
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 3])
    with pytest.raises(CheckpointError, match="(?s)about 39 MB.*truncated.*mobile_sam.pt"):
        make_extractor("sam", model="vit_t", checkpoint=str(trunc))
    # wrong family both ways, and a SAM 2 (hiera) checkpoint
    sam1 = save_random_checkpoint(tmp_path / "tiny.pth", "vit_tiny", input_size=256)
    with pytest.raises(CheckpointError, match="(?s)does not match the expected model type .vit_t..*vit_tiny"):
        make_extractor("sam", model="vit_t", checkpoint=str(sam1))
    with pytest.raises(CheckpointError, match="(?s)MobileSAM checkpoint.*--sam-model vit_t"):
        make_extractor("sam", model="vit_b", checkpoint=str(ckpt))
    sam2 = tmp_path / "sam2_hiera_tiny.pt"
    torch.save({"model": {"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(96, 3, 7, 7),
                          "image_encoder.neck.convs.0.conv.weight": torch.zeros(256, 768, 1, 1)}}, sam2)
    with pytest.raises(CheckpointError, match="SAM 2 checkpoint"):
        make_extractor("sam", model="vit_t", checkpoint=str(sam2))


def _predictor_reference(ext, grid, hw, points=None, labels=None, box=None):
    """segment_anything's own SamPredictor on the same (rendered) embedding."""
    from segment_anything import SamPredictor

    pred = SamPredictor(ext.sam)
    pred.reset_image()
    pred.original_size = hw
    pred.input_size = pred.transform.get_preprocess_shape(hw[0], hw[1], ext.input_size)
    pred.features = grid[None]
    pred.is_image_set = True
    masks, scores, _ = pred.predict(point_coords=points, point_labels=labels, box=box, multimask_output=True)
    return masks[int(np.argmax(scores))], float(scores.max())


def test_segment_view_on_mobile_sam_features(msam):
    surfels, labels, cam = two_planes(dim=256)
    pts, lab = np.array([[14.0, 24.0], [50.0, 20.0]]), np.array([1, 0])
    res = segment_view(msam.prompt_model(), surfels, cam, points=pts, labels=lab)
    assert res.mask.dtype == torch.bool and tuple(res.mask.shape) == (48, 64) and np.isfinite(res.score)
    assert tuple(res.feature_grid.shape) == (256, 16, 16) and res.valid_grid == (12, 16)
    ref_mask, ref_score = _predictor_reference(msam, res.feature_grid, (48, 64), pts, lab)
    assert (res.mask.numpy() == ref_mask).mean() > 0.999 and res.score == pytest.approx(ref_score, abs=1e-4)
    assert torch.equal(res.indices, surfels_in_mask(surfels, cam, res.mask))
    box = np.array([2.0, 4.0, 30.0, 44.0])
    rb = segment_view(msam, surfels, cam, box=box)
    ref_b, _ = _predictor_reference(msam, rb.feature_grid, (48, 64), box=box)
    assert (rb.mask.numpy() == ref_b).mean() > 0.999
    with pytest.raises(Exception, match="256-d"):
        segment_view(msam, two_planes(dim=32)[0], cam, points=[[1, 1]])


def test_cache_and_map_keep_encoders_apart(msam, ckpt, tmp_path):
    from fhgs_ros.core.storage import save_map
    from fhgs_ros.config import FHGSConfig
    from fhgs_ros.online.engine import MappingEngine
    from fhgs_ros.config import NodeConfig

    sam1 = save_random_checkpoint(tmp_path / "tiny.pth", "vit_tiny", input_size=256)
    a = CachedExtractor(msam, tmp_path / "cache")
    b = make_extractor("sam", checkpoint=str(sam1), model="vit_tiny", device="cpu", cache_dir=str(tmp_path / "cache"))
    img = _img(48, 64)
    assert a.key(img) != b.key(img)  # the extractor id is part of the cache key
    ga, gb = a.extract(img), b.extract(img)
    assert ga.model_id != gb.model_id and a.extract(img).model_id == msam.model_id
    assert a.cache.stats()["hits"] == 1 and b.cache.stats()["hits"] == 0
    assert {p.name.split("@")[0] for p in (tmp_path / "cache").iterdir()} == {"sam_vit_t", "sam_vit_tiny"}
    # a map made with SAM (vit_tiny) is refused by a MobileSAM engine, accepted by a SAM one
    surfels, _, cam = two_planes(dim=256)
    path = tmp_path / "sam_map.safetensors"
    save_map(path, surfels, {"feature_extractor": b.model_id, "keyframes": [cam]})
    ok, msg = MappingEngine(FHGSConfig(), NodeConfig(), msam).load(str(path))
    assert not ok and "never mixes two feature encoders" in msg and b.model_id in msg
    ok, msg = MappingEngine(FHGSConfig(), NodeConfig(), b).load(str(path))
    assert ok, msg
