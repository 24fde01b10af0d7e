"""Fixed feature PCA colouring and the paper's channel-pick view."""

from __future__ import annotations

import pytest
import torch

from fhgs_ros.features.pca import PAPER_CHANNELS, FeaturePCA, channel_pick, channel_range


def _data(n=3000, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(d, 3, generator=g))  # 3 dominant directions
    z = torch.randn(n, 3, generator=g) * torch.tensor([5.0, 3.0, 2.0])
    x = z @ u.T + 0.05 * torch.randn(n, d, generator=g) + 1.5
    return x, u


def test_fit_recovers_dominant_subspace_and_is_deterministic():
    x, u = _data()
    pca = FeaturePCA.fit(x)  # class-level fit returns a new fitted instance
    assert pca.fitted and pca.dim == 32 and tuple(pca.basis.shape) == (32, 3)
    assert torch.allclose(pca.basis.T @ pca.basis, torch.eye(3), atol=1e-5)
    overlap = (pca.basis.T @ u).abs()
    assert torch.allclose(overlap.max(1).values, torch.ones(3), atol=1e-3)  # each component = one direction
    assert torch.allclose(pca.mean, x.mean(0), atol=1e-4)
    # same basis (incl. signs) from shuffled rows and from an instance-level fit
    other = FeaturePCA()
    assert other.fit(x[torch.randperm(len(x))]) is other
    assert torch.allclose(other.basis, pca.basis, atol=1e-4) and torch.allclose(other.lo, pca.lo, atol=1e-3)
    # sign convention: the largest-magnitude loading of every component is positive
    assert (pca.basis[pca.basis.abs().argmax(0), torch.arange(3)] > 0).all()


def test_colours_are_stable_and_in_range():
    x, _ = _data()
    pca = FeaturePCA.fit(x)
    img = x[:600].T.reshape(32, 20, 30)
    rgb = pca.to_rgb(img)
    assert tuple(rgb.shape) == (3, 20, 30) and rgb.min() >= 0 and rgb.max() <= 1
    assert torch.allclose(rgb.reshape(3, -1).T, pca.to_rgb_points(x[:600]))
    # a pixel's colour depends on its feature only (not on the rest of the frame)
    assert torch.equal(pca.to_rgb(img[:, :1, :1])[:, 0, 0], rgb[:, 0, 0])
    # most fit data fall inside the colour range (1st/99th percentile)
    p = pca.to_rgb_points(x)
    assert ((p > 0) & (p < 1)).float().mean() > 0.9
    with pytest.raises(ValueError, match="width"):
        pca.to_rgb_points(torch.zeros(4, 16))
    with pytest.raises(RuntimeError, match="not fitted"):
        FeaturePCA().to_rgb_points(x)


def test_alpha_unpremultiply_and_background():
    x, _ = _data(200)
    pca = FeaturePCA.fit(x)
    f = x[:6].T.reshape(32, 2, 3)
    alpha = torch.tensor([[1.0, 0.5, 0.25], [0.0, 1.0, 1.0]])
    rgb = pca.to_rgb(f * alpha, alpha=alpha, background=0.0)
    ref = pca.to_rgb(f)
    assert torch.allclose(rgb[:, 0, :], ref[:, 0, :], atol=1e-5)
    assert torch.equal(rgb[:, 1, 0], torch.zeros(3))


def test_state_roundtrip_through_map_file(tmp_path):
    from fhgs_ros.core.storage import load_map, save_map
    from fhgs_ros.core.surfels import SurfelMap

    x, _ = _data(500)
    pca = FeaturePCA.fit(x)
    st = pca.state_dict()
    assert set(st) == {"pca_mean", "pca_basis", "pca_lo", "pca_hi", "pca_normalize"}
    surfels = SurfelMap.create(torch.rand(500, 3), torch.rand(500, 3), x, scales=torch.full((500, 2), 0.01))
    save_map(tmp_path / "m.safetensors", surfels, {"feature_extractor": "test"}, extra_tensors=st)
    loaded, _, extra = load_map(tmp_path / "m.safetensors")
    back = FeaturePCA.from_state(extra)
    # colours after a restart are bit-identical to the colours before
    assert torch.equal(back.to_rgb_points(loaded.features_raw), pca.to_rgb_points(surfels.features_raw))
    norm = FeaturePCA(normalize=True).fit(x)
    assert FeaturePCA.from_state(norm.state_dict()).normalize is True
    with pytest.raises(ValueError, match="inconsistent"):
        FeaturePCA.from_state({**st, "pca_basis": torch.zeros(5, 3)})


def test_fit_ignores_empty_rows_and_validates():
    x, _ = _data(400)
    with_zeros = torch.cat([x, torch.zeros(400, 32)])
    assert torch.allclose(FeaturePCA.fit(with_zeros).basis, FeaturePCA.fit(x).basis, atol=1e-4)
    with pytest.raises(ValueError, match="D>=3"):
        FeaturePCA.fit(torch.zeros(10, 2))


def test_channel_pick_uses_paper_channels():
    assert PAPER_CHANNELS == (15, 28, 31)
    d, h, w = 256, 4, 5
    img = torch.zeros(d, h, w)
    img[15] = torch.linspace(0, 1, w)[None].expand(h, w)  # red ramp
    img[28] = 2.0
    img[31] = torch.linspace(0, 1, h)[:, None].expand(h, w)  # blue ramp
    img[0] = 100.0  # other channels are ignored
    rgb = channel_pick(img)
    assert tuple(rgb.shape) == (3, h, w) and rgb.min() >= 0 and rgb.max() <= 1
    assert (rgb[0, :, 1:] >= rgb[0, :, :-1]).all() and rgb[0, 0, -1] > rgb[0, 0, 0]
    assert (rgb[2, 1:] >= rgb[2, :-1]).all()
    # fixed range -> stable colours across frames
    feats = img.reshape(d, -1).T
    lo, hi = channel_range(feats)
    a = channel_pick(img, lo=lo, hi=hi)
    b = channel_pick(img[:, :2, :2], lo=lo, hi=hi)
    assert torch.equal(a[:, :2, :2], b)
    with pytest.raises(ValueError, match="D >= 32"):
        channel_pick(torch.zeros(16, 2, 2))
