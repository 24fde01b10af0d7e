"""Feature -> RGB visualisation: a fixed PCA basis per map, and the paper's channel-pick view.

``FeaturePCA`` is fitted **once** per map (e.g. on the surfels' frozen raw features when the map
is first saved) and then kept fixed: the same feature always gets the same colour, across
frames, rendered views, point-cloud exports and process restarts (its tensors are stored in
the map file via ``state_dict()`` / ``from_state()``). Determinism: the fit is a float64
eigen-decomposition of the covariance of a seeded subsample, and each component's sign is
fixed so that its largest-magnitude loading is positive. Colours: projection onto the 3
leading components, each mapped linearly from its [lo, hi] (1st/99th percentile over the fit
data) to [0, 1] and clipped.

``channel_pick`` is the FHGS paper's view (section 4): embedding channels 15, 28 and 31 as R, G,
B. Pass ``lo``/``hi`` (e.g. from :func:`channel_range` over the map's features) for stable
colours; without them each call normalizes by its own image's percentiles.
"""

from __future__ import annotations

import numpy as np
import torch

PAPER_CHANNELS = (15, 28, 31)
STATE_PREFIX = "pca_"  # map-file extra tensors: pca_mean (D,), pca_basis (D, 3), pca_lo, pca_hi, pca_normalize


class _fit_method:
    """``FeaturePCA.fit(x)`` builds a new fitted instance; ``pca.fit(x)`` fits ``pca`` in place (both return it)."""

    def __init__(self, func):
        self.func = func
        self.__doc__ = func.__doc__

    def __get__(self, obj, cls):
        if obj is None:
            return lambda *a, **k: self.func(cls(), *a, **k)
        return self.func.__get__(obj, cls)


def _subsample(x: torch.Tensor, max_samples: int, seed: int) -> torch.Tensor:
    if x.shape[0] <= max_samples:
        return x
    g = torch.Generator().manual_seed(seed)
    return x[torch.randperm(x.shape[0], generator=g)[:max_samples]]


def _percentiles(v: torch.Tensor, q: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column percentiles of (N, C) as float32 tensors (numpy: no size limit)."""
    a = v.detach().double().cpu().numpy()
    lo, hi = np.percentile(a, q[0], axis=0), np.percentile(a, q[1], axis=0)
    hi = np.where(hi - lo < 1e-12, lo + 1e-6, hi)
    return torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)


def _image_to_rows(feature_image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    if feature_image.ndim != 3:
        raise ValueError(f"expected a (D, H, W) feature image, got shape {tuple(feature_image.shape)}")
    d, h, w = feature_image.shape
    return feature_image.detach().reshape(d, h * w).T.float().cpu(), (h, w)


class FeaturePCA:
    """Fixed 3-component PCA colouring of D-dim features.

    Tensors: ``mean`` (D,), ``basis`` (D, 3) orthonormal columns, ``lo``/``hi`` (3,) per-component
    colour range; ``normalize``: L2-normalize features before projecting (fit and use alike).
    """

    def __init__(self, mean: torch.Tensor | None = None, basis: torch.Tensor | None = None,
                 lo: torch.Tensor | None = None, hi: torch.Tensor | None = None, normalize: bool = False):
        self.mean, self.basis, self.lo, self.hi = mean, basis, lo, hi
        self.normalize = bool(normalize)

    @property
    def fitted(self) -> bool:
        return self.basis is not None

    @property
    def dim(self) -> int:
        self._check()
        return int(self.basis.shape[0])

    def _check(self) -> None:
        if not self.fitted:
            raise RuntimeError("FeaturePCA is not fitted: call fit(features) once per map, or from_state()")

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().cpu()
        if self.normalize:
            x = torch.nn.functional.normalize(x, dim=-1)
        return x

    @_fit_method
    def fit(self, features: torch.Tensor, max_samples: int = 200_000, seed: int = 0,
            percentiles: tuple[float, float] = (1.0, 99.0)) -> "FeaturePCA":
        """Fit on (N, D) features (rows with zero norm, e.g. empty pixels, are ignored). Returns the fitted PCA.

        Works on the class (``FeaturePCA.fit(x)`` -> new instance) and on an instance (in place).
        """
        x = torch.as_tensor(features)
        if x.ndim != 2 or x.shape[1] < 3:
            raise ValueError(f"FeaturePCA.fit needs (N, D>=3) features, got shape {tuple(x.shape)}")
        x = self._prep(x)
        x = x[(x.norm(dim=1) > 1e-8) & torch.isfinite(x).all(1)]
        if x.shape[0] < 2:
            raise ValueError("FeaturePCA.fit needs at least 2 non-zero finite feature vectors")
        x = _subsample(x, max_samples, seed).double()
        mean = x.mean(0)
        xc = x - mean
        cov = xc.T @ xc / max(x.shape[0] - 1, 1)
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        basis = evecs[:, torch.argsort(evals, descending=True, stable=True)[:3]]
        idx = basis.abs().argmax(0)
        basis = basis * torch.sign(basis[idx, torch.arange(3)])[None]
        self.mean, self.basis = mean.float(), basis.float().contiguous()
        self.lo, self.hi = _percentiles(xc @ basis, percentiles)
        return self

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, 3) principal-component coordinates."""
        self._check()
        x = self._prep(torch.as_tensor(features))
        if x.shape[-1] != self.dim:
            raise ValueError(f"feature width {x.shape[-1]} does not match the PCA basis ({self.dim})")
        return (x - self.mean) @ self.basis

    def to_rgb_points(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) features -> (N, 3) colours in [0, 1]."""
        p = self.project(features)
        return ((p - self.lo) / (self.hi - self.lo)).clamp(0, 1)

    def to_rgb(self, feature_image: torch.Tensor, alpha: torch.Tensor | None = None,
               background: float = 0.0, min_alpha: float = 1e-3) -> torch.Tensor:
        """(D, H, W) feature image -> (3, H, W) colours in [0, 1].

        ``alpha`` (H, W): for alpha-blended renders, features are divided by alpha first (the colour
        of the surface, not of its coverage) and pixels with alpha < ``min_alpha`` get ``background``.
        """
        rows, (h, w) = _image_to_rows(feature_image)
        if alpha is not None:
            a = alpha.detach().float().cpu().reshape(h * w, 1)
            rows = rows / a.clamp_min(min_alpha)
        rgb = self.to_rgb_points(rows)
        if alpha is not None:
            rgb = torch.where(a >= min_alpha, rgb, torch.full_like(rgb, float(background)))
        return rgb.T.reshape(3, h, w).contiguous()

    def state_dict(self, prefix: str = STATE_PREFIX) -> dict[str, torch.Tensor]:
        """Plain tensors for the map file (safetensors-compatible)."""
        self._check()
        return {prefix + "mean": self.mean.contiguous(), prefix + "basis": self.basis.contiguous(),
                prefix + "lo": self.lo.contiguous(), prefix + "hi": self.hi.contiguous(),
                prefix + "normalize": torch.tensor([1 if self.normalize else 0], dtype=torch.uint8)}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], prefix: str = STATE_PREFIX) -> "FeaturePCA":
        """Inverse of ``state_dict``; also accepts keys without the prefix."""
        def get(k):
            if prefix + k in state:
                return state[prefix + k]
            if k in state:
                return state[k]
            raise KeyError(f"FeaturePCA state lacks '{prefix + k}'")

        mean, basis, lo, hi = (get(k).float().cpu() for k in ("mean", "basis", "lo", "hi"))
        if basis.ndim != 2 or basis.shape[1] != 3 or mean.shape != (basis.shape[0],) or lo.shape != (3,) \
                or hi.shape != (3,):
            raise ValueError(f"inconsistent FeaturePCA state: mean {tuple(mean.shape)}, basis {tuple(basis.shape)}")
        try:
            norm = bool(int(get("normalize").reshape(-1)[0]))
        except KeyError:
            norm = False
        return cls(mean, basis, lo, hi, normalize=norm)

    @staticmethod
    def has_state(state: dict[str, torch.Tensor], prefix: str = STATE_PREFIX) -> bool:
        return prefix + "basis" in state


def channel_range(features: torch.Tensor, channels: tuple[int, ...] = PAPER_CHANNELS,
                  percentiles: tuple[float, float] = (1.0, 99.0), max_samples: int = 200_000,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed (lo, hi) for :func:`channel_pick` from (N, D) features (e.g. the map's surfels)."""
    x = torch.as_tensor(features).detach().float().cpu()
    _check_channels(x.shape[-1], channels)
    return _percentiles(_subsample(x[:, list(channels)], max_samples, seed), percentiles)


def _check_channels(d: int, channels) -> None:
    if len(channels) != 3:
        raise ValueError(f"channel_pick needs exactly 3 channels, got {channels}")
    if max(channels) >= d or min(channels) < -d:
        raise ValueError(f"channel_pick channels {tuple(channels)} out of range for D={d} features "
                         f"(the paper's (15, 28, 31) need D >= 32, e.g. SAM's 256)")


def channel_pick(feature_image: torch.Tensor, channels: tuple[int, ...] = PAPER_CHANNELS,
                 lo: torch.Tensor | None = None, hi: torch.Tensor | None = None,
                 percentiles: tuple[float, float] = (1.0, 99.0)) -> torch.Tensor:
    """The paper's view: channels (15, 28, 31) of a (D, H, W) feature image as (3, H, W) RGB in [0, 1]."""
    rows, (h, w) = _image_to_rows(feature_image)
    _check_channels(rows.shape[1], channels)
    v = rows[:, list(channels)]
    if lo is None or hi is None:
        lo, hi = _percentiles(v, percentiles)
    lo, hi = torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)
    return ((v - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1).T.reshape(3, h, w).contiguous()


def kmeans_centroids(x: torch.Tensor, k: int, iters: int = 15, seed: int = 0, max_samples: int = 20000) -> torch.Tensor:
    """Spherical k-means on unit features (N, D) -> (k', D) unit centres (deterministic)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(x.float(), dim=-1)
    if x.shape[0] > max_samples:
        x = x[torch.randperm(x.shape[0], generator=g)[:max_samples]]
    k = max(1, min(k, x.shape[0]))
    c = x[torch.randperm(x.shape[0], generator=g)[:k]].clone()
    for _ in range(iters):
        a = (x @ c.T).argmax(1)
        for j in range(k):
            m = a == j
            if m.any():
                c[j] = torch.nn.functional.normalize(x[m].mean(0), dim=0)
    return c
