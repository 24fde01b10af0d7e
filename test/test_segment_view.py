"""Promptable segmentation of a rendered view: rendered feature grid -> SAM prompt encoder +
mask decoder (tiny SAM-architecture model) -> 2-D mask + surfels inside."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fhgs_ros.core.query import QueryError, precision_recall, surfels_in_mask
from fhgs_ros.features.sam import (SamExtractor, SamPromptModel, load_sam_prompt_model, sam_valid_grid,
                                   save_random_checkpoint)
from fhgs_ros.features.segment import feature_image_to_grid, render_feature_grid, segment_view
from test_query import two_planes


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return save_random_checkpoint(tmp_path_factory.mktemp("sam") / "tiny.pth", "vit_tiny", input_size=256, seed=0)


@pytest.fixture(scope="module")
def tiny(tiny_ckpt):
    return SamExtractor(str(tiny_ckpt), model="vit_tiny", device="cpu")


@pytest.fixture(scope="module")
def scene():
    return two_planes(dim=256)


def test_feature_image_to_grid_is_area_average_with_sam_padding():
    d, h, w = 5, 48, 64
    img = torch.randn(d, h, w)
    grid = feature_image_to_grid(img, (h, w), input_size=256)  # 16 cells on the long side, 4 px each
    assert tuple(grid.shape) == (d, 16, 16) and sam_valid_grid(h, w, 256) == (12, 16)
    assert torch.allclose(grid[:, :12], F.avg_pool2d(img[None], 4)[0], atol=1e-5)
    assert torch.all(grid[:, 12:] == 0)  # SAM's square padding
    # rendered at half resolution: same cells
    half = F.avg_pool2d(img[None], 2)[0]
    assert torch.allclose(feature_image_to_grid(half, (h, w), 256), grid, atol=1e-5)
    # a size that does not fill whole cells: the last row of cells is partly padding
    g2 = feature_image_to_grid(torch.ones(d, 45, 64), (45, 64), 256)
    assert sam_valid_grid(45, 64, 256) == (12, 16)
    assert torch.allclose(g2[:, :11], torch.ones(1))
    assert torch.allclose(g2[:, 11], torch.full((1,), 0.25))  # image row 44 of rows 44..47


def test_render_feature_grid_matches_renderer(scene):
    surfels, _, cam = scene
    from fhgs_ros.core.render import render

    r = render(surfels, cam, render_features=True, backend="reference")
    ref = feature_image_to_grid(r.features, (cam.height, cam.width), 256)
    for backend in ("pairs", "reference", "auto"):  # auto = native kernel when built
        g = render_feature_grid(surfels, cam, input_size=256, render_long_side=None, backend=backend)
        assert torch.allclose(g, ref, atol=1e-4), backend
    coarse = render_feature_grid(surfels, cam, input_size=256, render_long_side=32, backend="pairs")
    assert tuple(coarse.shape) == (256, 16, 16) and torch.all(coarse[:, 12:] == 0)
    assert F.cosine_similarity(coarse[:, 5, 3], ref[:, 5, 3], dim=0) > 0.95


def _predictor_reference(tiny, grid, hw, points=None, labels=None, box=None):
    """SAM's own SamPredictor on the same (rendered) embedding."""
    from segment_anything import SamPredictor

    pred = SamPredictor(tiny.sam)
    pred.reset_image()
    pred.original_size = hw
    pred.input_size = pred.transform.get_preprocess_shape(hw[0], hw[1], 256)
    pred.features = grid[None]
    pred.is_image_set = True
    masks, scores, _ = pred.predict(point_coords=points, point_labels=labels, box=box, multimask_output=True)
    return masks[int(np.argmax(scores))], float(scores.max())


def test_segment_view_points_and_box_match_sam_predictor(tiny, scene):
    surfels, labels, cam = scene
    pts = np.array([[14.0, 24.0], [50.0, 20.0]])
    lab = np.array([1, 0])
    res = segment_view(tiny.prompt_model(), surfels, cam, points=pts, labels=lab)
    assert res.mask.dtype == torch.bool and tuple(res.mask.shape) == (48, 64)
    assert tuple(res.logits.shape) == (48, 64) and np.isfinite(res.score)
    assert tuple(res.feature_grid.shape) == (256, 16, 16) and res.valid_grid == (12, 16)
    assert torch.all(res.feature_grid[:, 12:] == 0)
    ref_mask, ref_score = _predictor_reference(tiny, res.feature_grid, (48, 64), pts, lab)
    assert (res.mask.numpy() == ref_mask).mean() > 0.999 and res.score == pytest.approx(ref_score, abs=1e-4)
    # the surfels returned are exactly those whose dominant pixel lies in the mask
    assert torch.equal(res.indices, surfels_in_mask(surfels, cam, res.mask))
    # deterministic
    again = segment_view(tiny, surfels, cam, points=pts, labels=lab)  # SamExtractor accepted too
    assert torch.equal(again.mask, res.mask) and torch.equal(again.indices, res.indices)
    # box prompt
    box = np.array([2.0, 4.0, 30.0, 44.0])
    rb = segment_view(tiny.sam, surfels, cam, box=box)  # a segment_anything Sam accepted too
    ref_b, _ = _predictor_reference(tiny, rb.feature_grid, (48, 64), box=box)
    assert (rb.mask.numpy() == ref_b).mean() > 0.999


def test_segment_view_surfels_follow_the_mask(tiny, scene, monkeypatch):
    """With a decoder whose mask is 'left half of the image', the surfels returned are the left
    plane's (the wiring from SAM's low-res logits to image pixels to surfels is right)."""
    surfels, labels, cam = scene
    parts = tiny.prompt_model()

    class LeftHalf(torch.nn.Module):
        def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                    multimask_output):
            g = image_embeddings.shape[-1] * 4  # SAM's low-res mask is 4x the grid
            m = torch.full((1, 3 if multimask_output else 1, g, g), -10.0)
            m[..., : g // 2] = 10.0  # left half of the padded square = left half of the image
            return m, torch.tensor([[0.9, 0.5, 0.1]])[:, : m.shape[1]]

    fake = SamPromptModel(parts.prompt_encoder, LeftHalf(), parts.input_size)
    fake.mask_decoder.register_parameter("p", torch.nn.Parameter(torch.zeros(1)))
    res = segment_view(fake, surfels, cam, points=[[10, 10]])
    assert res.mask[:, :31].all() and not res.mask[:, 33:].any()
    pr = precision_recall(res.indices, labels, 0)
    assert pr["precision"] == 1.0 and pr["recall"] > 0.95
    assert res.score == pytest.approx(0.9)


def test_segment_view_errors(tiny, tiny_ckpt, scene):
    surfels, _, cam = scene
    with pytest.raises(QueryError, match="point prompts"):
        segment_view(tiny, surfels, cam)
    small = two_planes(dim=32)[0]
    with pytest.raises(QueryError, match="256-d"):
        segment_view(tiny, small, cam, points=[[1, 1]])
    with pytest.raises(QueryError, match="labels"):
        segment_view(tiny, surfels, cam, points=[[1, 1], [2, 2]], labels=[1])
    with pytest.raises(QueryError, match="SamPromptModel"):
        segment_view(object(), surfels, cam, points=[[1, 1]])
    parts = load_sam_prompt_model(str(tiny_ckpt), "vit_tiny")
    assert parts.grid_size == 16 and parts.input_size == 256
