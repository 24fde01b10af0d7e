"""Training schedules the Mapper consults each iteration (which losses are on, when density
control and opacity resets run), in the way gsplat's ``Strategy`` owns densification.

- :class:`OfflineSchedule`: the global iteration numbers of ``MapperConfig`` (docs/METHOD.md §5.6);
- :class:`KeyframeBudgetSchedule`: the online per-keyframe budget of docs/METHOD.md §8.9: each
  new keyframe opens a budget of ``steps_per_keyframe`` iterations; the depth-distortion loss
  starts after 30 % of it, the normal loss after 70 %, densification runs in its first 70 % (a round
  after every ``densify_every`` iterations spent inside these windows, counted across keyframes).

Iterations are the Mapper's 1-based ``iteration`` counter after increment.
"""

from __future__ import annotations

from dataclasses import dataclass

NEVER = 10 ** 12


@dataclass
class OfflineSchedule:
    """Global schedule from the MapperConfig fields (``cfg`` is a ``MapperConfig``)."""

    cfg: object

    def dist_on(self, it: int) -> bool:
        return it > self.cfg.dist_from_iter

    def normal_on(self, it: int) -> bool:
        return it > self.cfg.normal_from_iter

    def collect_stats(self, it: int) -> bool:
        """Accumulate the densification gradient statistics at this iteration."""
        return it <= self.cfg.densify_until_iter

    def densify_now(self, it: int) -> bool:
        c = self.cfg
        return self.collect_stats(it) and it > c.densify_from_iter and it % c.densify_every == 0

    def prune_big(self, it: int) -> bool:
        """Screen/world-size pruning is tied to the first opacity reset (as in 3DGS/2DGS)."""
        return it > self._reset_every()

    def reset_opacity_now(self, it: int) -> bool:
        every = self._reset_every()
        return self.collect_stats(it) and every > 0 and it % every == 0

    def _reset_every(self) -> int:
        return self.cfg.opacity_reset_every

    def coarse_on(self, it: int) -> bool:
        """Large-image mode may render at reduced resolution (MapperConfig.coarse_*): not after coarse_until_iter."""
        return it <= self.cfg.coarse_until_iter


@dataclass
class KeyframeBudgetSchedule(OfflineSchedule):
    """Per-keyframe budget schedule of the online mapper (docs/METHOD.md §8.9).

    Until the first :meth:`new_keyframe` the offline rules apply. ``densify=False`` turns
    density control off; ``opacity_reset=False`` (the online default) never resets opacities
    and therefore never prunes by size.
    """

    budget: int = 200
    densify: bool = True
    opacity_reset: bool = False
    start: int | None = None
    window_done: int = 0     # iterations inside the densification windows of the earlier keyframes

    def new_keyframe(self, iteration: int) -> None:
        """A keyframe was integrated when the mapper's counter stood at ``iteration``."""
        if self.start is not None and self.densify:
            self.window_done += max(0, min(iteration, self._frac(0.7)) - self.start)
        self.start = iteration

    def _frac(self, f: float) -> int:
        return self.start + int(f * self.budget)

    def dist_on(self, it: int) -> bool:
        return super().dist_on(it) if self.start is None else it > self._frac(0.3)

    def normal_on(self, it: int) -> bool:
        return super().normal_on(it) if self.start is None else it > self._frac(0.7)

    def collect_stats(self, it: int) -> bool:
        if self.start is None:
            return super().collect_stats(it)
        return self.densify and it <= self._frac(0.7)

    def densify_now(self, it: int) -> bool:
        """A round after every ``densify_every`` iterations spent inside densification windows, counted
        across keyframes (statistics accumulate over them): budgets whose window is shorter than
        ``densify_every`` (50 or 100 steps: windows of 35 or 70) densify every few keyframes. (Rounds on
        global multiples of ``densify_every`` never fell inside such windows: the map never densified.)"""
        if self.start is None:
            return super().densify_now(it)
        if not self.collect_stats(it) or it <= self.start:
            return False
        return (self.window_done + it - self.start) % self.cfg.densify_every == 0

    def _reset_every(self) -> int:
        return self.cfg.opacity_reset_every if self.opacity_reset else NEVER

    def coarse_on(self, it: int) -> bool:
        """Reduced resolution in the first 70 % of each keyframe's budget, full resolution in the last 30 %."""
        return super().coarse_on(it) if self.start is None else it <= self._frac(0.7)
