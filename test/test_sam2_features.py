"""SAM 2.1 (``features.extractor: sam2``, the PyPI ``sam2`` package) through the real loading path, with
random checkpoints saved in the official layout ``{"model": state_dict}`` (the official weights cannot be
downloaded here): registry/config path, preprocessing and embedding as ``SAM2ImagePredictor``, cache,
errors for missing / truncated / wrong-family checkpoints, family refusal in map files, and
``segment_view`` with SAM 2's own decoder. Input 256 (16 x 16 grid) keeps hiera_t at ~0.15 s a frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fhgs_ros.features.sam2 import sam2_available

pytestmark = pytest.mark.skipif(not sam2_available(), reason="the sam2 package (make setup) is not installed")

S = 256  # encoder input side of the tests (1024 is the trained size)


def _img(h, w, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from fhgs_ros.features.sam2 import save_random_checkpoint
    return save_random_checkpoint(tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny.pt", "hiera_t", S, seed=0)


@pytest.fixture(scope="module")
def ext(ckpt):
    from fhgs_ros.features.registry import make_extractor_from_config
    return make_extractor_from_config({"extractor": "sam2", "sam2_model": "hiera_t", "sam2_checkpoint": str(ckpt),
                                       "sam2_input_size": S, "sam_model": "vit_b", "device": "cpu"})


def test_official_layout_and_config_path(ckpt, ext):
    from fhgs_ros.config import FHGSConfig
    from fhgs_ros.features.registry import build_extractor
    from fhgs_ros.features.sam2 import Sam2Extractor

    obj = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert set(obj) == {"model"}
    st = obj["model"]
    assert st["image_encoder.trunk.patch_embed.proj.weight"].shape == (96, 3, 7, 7)
    assert len({k.split(".")[3] for k in st if k.startswith("image_encoder.trunk.blocks.")}) == 12
    assert "no_mem_embed" in st and "sam_mask_decoder.conv_s0.weight" in st
    assert isinstance(ext, Sam2Extractor) and ext.model_type == "hiera_t" and ext.input_size == S
    assert ext.model_id.startswith(f"sam2_hiera_t@{S}:") and "random" not in ext.model_id
    # the node / fhgs-map path: FHGSConfig.features with auto resolution (a SAM 2 checkpoint -> sam2)
    cfg = FHGSConfig()
    cfg.features.sam2_checkpoint, cfg.features.sam2_input_size, cfg.features.device = str(ckpt), S, "cpu"
    built = build_extractor(cfg)
    assert type(built).__name__ == "Sam2Extractor" and built.model_id == ext.model_id
    from fhgs_ros.features.selection import describe_extractor
    assert describe_extractor(built).startswith("features: SAM 2.1 image encoder (sam2_hiera_t@256")
    cfg.features.sam2_checkpoint = ""
    cfg.features.extractor = "sam2"
    from fhgs_ros.config import ConfigError
    with pytest.raises(ConfigError, match="sam2.1_hiera_tiny.pt"):
        build_extractor(cfg)


def test_embedding_is_the_predictors_image_embed(ext):
    """The extractor's embedding equals SAM2ImagePredictor.set_image's (forward_image,
    _prepare_backbone_features, + no_mem_embed), resampled to the isotropic grid."""
    from fhgs_ros.features.sam2 import square_to_isotropic

    img = _img(48, 64)
    x, hw = ext.preprocess(img)
    assert tuple(x.shape) == (3, S, S) and hw == (48, 64)
    m = ext.model
    with torch.no_grad():
        bb = m.forward_image(x[None])
        _, feats, _, _ = m._prepare_backbone_features(bb)
        emb = (feats[-1] + m.no_mem_embed).permute(1, 2, 0).view(1, 256, S // 16, S // 16)[0]
    fg = ext.extract(img)
    assert fg.shape == (256, 12, 16) and fg.scale == pytest.approx(16 / 64) and fg.model_id == ext.model_id
    assert torch.allclose(fg.grid, square_to_isotropic(emb, (48, 64)), atol=1e-4)
    # a square image needs no resampling: the grid is the predictor's embedding itself
    sq = _img(64, 64, seed=1)
    xs, _ = ext.preprocess(sq)
    with torch.no_grad():
        _, fs, _, _ = m._prepare_backbone_features(m.forward_image(xs[None]))
        emb_sq = (fs[-1] + m.no_mem_embed).permute(1, 2, 0).view(1, 256, S // 16, S // 16)[0]
    assert torch.allclose(ext.extract(sq).grid, emb_sq, atol=1e-4)
    # ImageNet normalisation after a 1:1 "resize" of a constant image
    flat = np.full((S, S, 3), 128, np.uint8)
    xf, _ = ext.preprocess(flat)
    want = (128 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(xf.mean((1, 2)), want, atol=1e-5)


def test_cache_hit_on_second_run(ckpt, tmp_path):
    from fhgs_ros.features.registry import make_extractor

    img = _img(48, 64, seed=3)
    a = make_extractor("sam2", checkpoint=str(ckpt), model="hiera_t", input_size=S, device="cpu",
                       cache_dir=str(tmp_path / "c"))
    g1 = a.extract(img)
    assert a.cache.stats() == {"hits": 0, "misses": 1, "corrupt": 0}
    b = make_extractor("sam2", checkpoint=str(ckpt), model="hiera_t", input_size=S, device="cpu",
                       cache_dir=str(tmp_path / "c"))  # a second run
    g2 = b.extract(img)
    assert b.cache.stats()["hits"] == 1 and torch.equal(g1.grid, g2.grid)
    assert [p.name.split("@")[0] for p in (tmp_path / "c").iterdir()] == ["sam2_hiera_t"]


def test_checkpoint_errors(ckpt, tmp_path):
    from fhgs_ros.features.sam import CheckpointError, save_random_checkpoint as save_sam1
    from fhgs_ros.features.sam import SamExtractor
    from fhgs_ros.features.sam2 import Sam2Extractor, save_random_checkpoint

    with pytest.raises(CheckpointError, match=r"sam2\.1_hiera_small\.pt") as e:
        Sam2Extractor(str(tmp_path / "nope.pt"), model="hiera_s", device="cpu")
    assert "dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_small.pt" in str(e.value)
    with pytest.raises(CheckpointError, match="sam2.1_hiera_tiny.pt"):
        Sam2Extractor(None, model="hiera_t", device="cpu")
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 3])
    with pytest.raises(CheckpointError, match="truncated"):
        Sam2Extractor(str(trunc), model="hiera_t", input_size=S, device="cpu")
    # hiera_t weights given as hiera_s
    with pytest.raises(CheckpointError, match="SAM 2 'hiera_t' checkpoint"):
        Sam2Extractor(str(ckpt), model="hiera_s", input_size=S, device="cpu")
    # SAM 1 and MobileSAM state dicts given to sam2: the family is named
    sam1 = save_sam1(tmp_path / "sam_b.pth", "vit_b", input_size=256)
    with pytest.raises(CheckpointError, match=r"SAM 1 \(segment_anything\) 'vit_b' checkpoint"):
        Sam2Extractor(str(sam1), model="hiera_t", input_size=S, device="cpu")
    msam = save_sam1(tmp_path / "mobile_sam.pt", "vit_t", input_size=256)
    with pytest.raises(CheckpointError, match="MobileSAM checkpoint"):
        Sam2Extractor(str(msam), model="hiera_t", input_size=S, device="cpu")
    # and a SAM 2 file given to the sam extractor
    with pytest.raises(CheckpointError, match="SAM 2 checkpoint .*features.extractor: sam2 .*hiera_t"):
        SamExtractor(str(ckpt), model="vit_b", device="cpu")
    # safetensors export of the same state dict loads too
    st = save_random_checkpoint(tmp_path / "t.safetensors", "hiera_t", S, fmt="safetensors")
    assert Sam2Extractor(str(st), model="hiera_t", input_size=S, device="cpu").dim == 256


def test_maps_never_mix_sam_and_sam2(ext, tmp_path):
    from fhgs_ros.config import FHGSConfig, NodeConfig
    from fhgs_ros.core.storage import save_map
    from fhgs_ros.features.sam import SamExtractor
    from fhgs_ros.features.selection import check_map_encoder, encoder_family
    from fhgs_ros.online.engine import MappingEngine
    from test_query import two_planes

    msam = SamExtractor(None, model="vit_t", input_size=256, device="cpu", allow_random=True)
    assert encoder_family(ext.model_id) == "sam2" and encoder_family(msam.model_id) == "sam"
    assert "SAM 2.1 (Hiera)" in check_map_encoder(msam.model_id, ext.model_id)
    surfels, _, cam = two_planes(dim=256)
    for map_ext, run_ext in ((msam, ext), (ext, msam)):
        path = tmp_path / f"{map_ext.family}.safetensors"
        save_map(path, surfels, {"feature_extractor": map_ext.model_id, "keyframes": [cam]})
        ok, msg = MappingEngine(FHGSConfig(), NodeConfig(), run_ext).load(str(path))
        assert not ok and "never mixes two feature encoders" in msg and map_ext.model_id in msg
        assert "SAM 2.1 (Hiera)" in msg and "SAM 1 / MobileSAM" in msg
        ok, msg = MappingEngine(FHGSConfig(), NodeConfig(), map_ext).load(str(path))
        assert ok, msg


def test_segment_view_on_sam2_features(ext):
    from fhgs_ros.core.query import QueryError, surfels_in_mask
    from fhgs_ros.features.sam import SamExtractor
    from fhgs_ros.features.segment import segment_view
    from test_query import two_planes

    surfels, _, cam = two_planes(dim=256)
    surfels.meta["feature_extractor"] = ext.model_id
    parts = ext.prompt_model()
    pts, lab = np.array([[14.0, 24.0], [50.0, 20.0]]), np.array([1, 0])
    res = segment_view(parts, surfels, cam, points=pts, labels=lab)
    g = S // 16
    assert res.mask.dtype == torch.bool and tuple(res.mask.shape) == (48, 64) and np.isfinite(res.score)
    assert tuple(res.feature_grid.shape) == (256, g, g) and res.valid_grid == (g, g)
    assert tuple(res.extra["low_res_logits"].shape) == (4 * g, 4 * g) and res.extra["all_iou"].numel() == 3
    assert torch.equal(res.indices, surfels_in_mask(surfels, cam, res.mask))
    # reference: SAM2ImagePredictor._predict's decoder call on the same grid; zero high-res features
    # equal the decoder with use_high_res_features off
    m = ext.model
    sx, sy = S / 64, S / 48
    c = torch.tensor(pts, dtype=torch.float32) * torch.tensor([sx, sy])
    sparse, dense = m.sam_prompt_encoder(points=(c[None], torch.tensor(lab, dtype=torch.int32)[None]), boxes=None,
                                         masks=None)
    md = m.sam_mask_decoder
    with torch.no_grad():
        md.use_high_res_features = False
        try:
            low, iou, _, _ = md(image_embeddings=res.feature_grid[None], image_pe=m.sam_prompt_encoder.get_dense_pe(),
                                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True,
                                repeat_image=False, high_res_features=None)
        finally:
            md.use_high_res_features = True
    best = int(iou[0].argmax())
    assert torch.allclose(res.extra["all_iou"], iou[0], atol=1e-5)
    ref = torch.nn.functional.interpolate(low[:, best:best + 1], (48, 64), mode="bilinear", align_corners=False)[0, 0]
    assert torch.allclose(res.logits, ref, atol=1e-4) and torch.equal(res.mask, ref > 0)
    # box prompt, the extractor itself accepted
    rb = segment_view(ext, surfels, cam, box=[2.0, 4.0, 30.0, 44.0], multimask_output=False)
    assert tuple(rb.mask.shape) == (48, 64) and rb.extra["all_iou"].numel() == 1
    # errors: no prompt, labels / points mismatch, wrong-width map, wrong-family map and decoder
    with pytest.raises(QueryError, match="prompts"):
        segment_view(parts, surfels, cam)
    with pytest.raises(QueryError, match="2 points but 1 labels"):
        segment_view(parts, surfels, cam, points=pts, labels=[1])
    with pytest.raises(QueryError, match="256-d"):
        segment_view(parts, two_planes(dim=32)[0], cam, points=[[1, 1]])
    sam1 = SamExtractor(None, model="vit_tiny", input_size=256, device="cpu", allow_random=True)
    with pytest.raises(QueryError, match=r"sam2_hiera_t.*SAM 2.1 \(Hiera\).*decoder is SAM 1 / MobileSAM"):
        segment_view(sam1.prompt_model(), surfels, cam, points=pts)
    surfels.meta["feature_extractor"] = sam1.model_id
    with pytest.raises(QueryError, match=r"SAM 1 / MobileSAM.*decoder is SAM 2.1"):
        segment_view(parts, surfels, cam, points=pts)
