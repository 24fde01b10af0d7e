"""Label-embedding features: vectors, SAM-convention grids, classification."""

from __future__ import annotations

import pytest
import torch

from fhgs_ros.features.label import (classify_features, grid_shape, label_feature_grid, label_feature_image,
                                     label_vectors)


def test_label_vectors_unit_and_deterministic():
    v = label_vectors(11, 32, seed=0)
    assert v.shape == (11, 32) and v.dtype == torch.float32
    assert torch.allclose(v.norm(dim=1), torch.ones(11), atol=1e-6)
    assert torch.equal(v, label_vectors(11, 32, seed=0))
    assert not torch.equal(v, label_vectors(11, 32, seed=1))
    with pytest.raises(ValueError):
        label_vectors(0, 8)


@pytest.mark.parametrize("w,h,want", [(128, 96, (48, 64)), (96, 128, (64, 48)), (640, 480, (48, 64)),
                                      (100, 60, (38, 64)), (64, 64, (64, 64)), (1000, 10, (1, 64))])
def test_grid_shape_sam_convention(w, h, want):
    assert grid_shape(w, h) == want


def test_exact_area_average():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (96, 128), generator=g)
    v = label_vectors(5, 8)
    grid = label_feature_grid(labels, v)
    assert grid.shape == (8, 48, 64)
    # manual: each cell is the mean embedding over its 2x2 pixel block (pitch = 128 / 64 = 2)
    emb = v[labels]  # (H, W, D)
    manual = emb.reshape(48, 2, 64, 2, 8).mean(dim=(1, 3)).permute(2, 0, 1)
    assert torch.allclose(grid, manual, atol=1e-6)


def test_uniform_blocks_give_label_vectors_and_boundaries_mix():
    v = label_vectors(3, 16)
    labels = torch.zeros(96, 128, dtype=torch.long)
    labels[:, 64:] = 1  # boundary on a cell edge
    labels[:, 65:] = 2  # column 64 is label 1: cell 32 covers pixels 64, 65 -> half 1, half 2
    grid = label_feature_grid(labels, v)
    assert torch.allclose(grid[:, 5, 0], v[0], atol=1e-6)
    assert torch.allclose(grid[:, 5, 40], v[2], atol=1e-6)
    assert torch.allclose(grid[:, 5, 32], 0.5 * (v[1] + v[2]), atol=1e-6)


def test_adaptive_path_and_out_of_range_ids():
    v = label_vectors(4, 8)
    labels = torch.full((60, 100), 3, dtype=torch.long)
    grid = label_feature_grid(labels, v)
    assert grid.shape == (8, 38, 64)
    assert torch.allclose(grid, v[3][:, None, None].expand_as(grid), atol=1e-6)
    labels[:, :50] = 255  # unknown -> zero vector
    grid = label_feature_grid(labels, v)
    assert torch.allclose(grid[:, :, 0], torch.zeros(8, 38))


def test_grid_matches_feature_target_convention():
    from fhgs_ros.core.raster_types import FeatureTarget

    w, h = 128, 96
    grid = label_feature_grid(torch.zeros(h, w, dtype=torch.long), label_vectors(2, 4))
    t = FeatureTarget.for_image(grid, w, h)
    assert t.scale == pytest.approx(64 / max(w, h)) and t.scale == pytest.approx(grid.shape[2] / w)
    assert grid.shape[1] / h == pytest.approx(t.scale)


def test_classify_features_round_trip():
    g = torch.Generator().manual_seed(1)
    v = label_vectors(7, 32)
    labels = torch.randint(0, 7, (24, 32), generator=g)
    feat = label_feature_image(labels, v)
    assert feat.shape == (32, 24, 32)
    assert torch.equal(classify_features(feat, v), labels)
    noisy = feat * 3.0 + 0.05 * torch.randn(feat.shape, generator=g)
    assert (classify_features(noisy, v) == labels).float().mean() > 0.99
    feat[:, 0, 0] = 0
    out = classify_features(feat, v, min_similarity=0.5)
    assert out[0, 0] == -1 and torch.equal(out[1:], labels[1:])
    with pytest.raises(ValueError):
        classify_features(torch.zeros(5, 2, 2), v)


def test_synthetic_labels_to_grid_and_back():
    """Labels of the synthetic scene survive the 64-grid: nearest-cell classification is mostly right."""
    from fhgs_ros.datasets.synthetic import synthetic_dataset

    ds = synthetic_dataset(128, 96, 2, num_points=50, num_gt_points=10)
    v = label_vectors(len(ds.label_names), 32)
    lab = ds.frames[0].labels
    grid = label_feature_grid(lab, v)
    up = torch.nn.functional.interpolate(grid[None], size=(96, 128), mode="bilinear", align_corners=False)[0]
    acc = (classify_features(up, v) == lab).float().mean()
    assert acc > 0.95
