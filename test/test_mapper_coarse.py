"""Large-image mode: the reduced-resolution keyframe and the schedule that returns to full resolution."""

import torch
import torch.nn.functional as F

from fhgs_ros.core.camera import Camera, look_at
from fhgs_ros.core.mapper import Keyframe, Mapper, MapperConfig, coarse_keyframe
from fhgs_ros.core.raster_types import FeatureTarget
from fhgs_ros.core.reference import sample_grid
from fhgs_ros.core.schedule import KeyframeBudgetSchedule
from fhgs_ros.core.surfels import SurfelMap


def _kf(w=64, h=48, d=8):
    g = torch.Generator().manual_seed(0)
    cam = Camera(w, h, 60.0, 60.0, w / 2 - 0.5, h / 2 - 0.5, look_at((0.0, -2.0, 0.5), (0, 0, 0)))
    grid = torch.randn(d, 6, 8, generator=g)
    return Keyframe(cam, torch.rand(3, h, w, generator=g), FeatureTarget.for_image(grid, w, h),
                    depth=torch.rand(h, w, generator=g) + 1, mask=torch.rand(h, w, generator=g) > 0.3)


def test_coarse_keyframe_halves_everything_consistently():
    kf = _kf()
    c = coarse_keyframe(kf, 0.5)
    assert (c.camera.width, c.camera.height) == (32, 24) and c.image.shape == (3, 24, 32)
    assert torch.allclose(c.image, F.avg_pool2d(kf.image[None], 2)[0], atol=1e-6)
    assert c.depth.shape == c.mask.shape == (24, 32) and c.mask.dtype == torch.bool
    assert abs(c.camera.fx - 30.0) < 1e-9
    # a coarse pixel samples the GT grid where the centre of its 2x2 block of fine pixels does
    fine = sample_grid(kf.target, torch.tensor([[2.5, 4.5]]))   # between fine pixels (2, 4) and (3, 5)
    coarse = sample_grid(c.target, torch.tensor([[1.0, 2.0]]))
    assert torch.allclose(fine, coarse, atol=1e-5)


def test_mapper_uses_the_coarse_keyframe_then_full_resolution(monkeypatch):
    kf = _kf()
    g = torch.Generator().manual_seed(1)
    n = 300
    surf = SurfelMap.create(torch.randn(n, 3, generator=g) * 0.3, torch.rand(n, 3, generator=g),
                            torch.randn(n, 8, generator=g), scales=torch.full((n, 2), 0.05))
    cfg = MapperConfig(coarse_factor=0.5, coarse_min_pixels=0, coarse_until_iter=2, backend="reference")
    m = Mapper(cfg, 8)
    m.add_surfels(surf)
    m.add_keyframe(kf)
    sizes = []
    import fhgs_ros.core.mapper as mapper_mod
    real = mapper_mod.render

    def spy(surfels, camera, **kw):
        sizes.append((camera.width, camera.height))
        return real(surfels, camera, **kw)

    monkeypatch.setattr(mapper_mod, "render", spy)  # records the rendered size, renders for real
    for _ in range(3):
        terms = m.step()
        assert all(torch.isfinite(torch.tensor(v)) for v in terms.values())
    monkeypatch.undo()
    assert sizes == [(32, 24), (32, 24), (64, 48)]
    # keyframes below coarse_min_pixels always train at full resolution
    cfg.coarse_min_pixels, cfg.coarse_until_iter = 64 * 48 + 1, 10 ** 6
    assert m.step() and m.last_losses


def test_budget_schedule_full_resolution_in_the_last_30_percent():
    s = KeyframeBudgetSchedule(MapperConfig(), budget=100)
    s.new_keyframe(1000)
    assert s.coarse_on(1070) and not s.coarse_on(1071)


def test_budget_schedule_densifies_every_densify_every_window_iterations():
    """Rounds after every 100 (densify_every) iterations inside the per-keyframe windows (70 % of the budget),
    counted across keyframes, so budgets whose window is shorter than 100 densify too; never outside a window."""
    for budget in (35, 50, 100, 200):
        s = KeyframeBudgetSchedule(MapperConfig(), budget=budget)
        it, in_window, rounds = 0, 0, []
        for _ in range(12):
            s.new_keyframe(it)
            start = it
            for _ in range(budget):
                it += 1
                if s.collect_stats(it):
                    in_window += 1
                if s.densify_now(it):
                    assert s.collect_stats(it) and it > start
                    rounds.append(in_window)
        wl = int(0.7 * budget)
        assert in_window == 12 * wl
        assert rounds == list(range(100, 12 * wl + 1, 100)), (budget, rounds)
