"""SurfelMap: 2DGS surfels, each carrying a frozen semantic feature.

All geometry is in the world frame (metres). Trainable fields are ``torch.nn.Parameter``s
holding *raw* values (quaternion un-normalized, log-scales, opacity logit, SH coefficients);
the activations are the properties below. Features are plain tensors, never Parameters:
they never enter an optimizer and are only ever copied (densification) or deleted (pruning).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fhgs_ros.core.geometry import quat_wxyz_to_matrix, random_quats_wxyz
from fhgs_ros.core.sh import rgb_to_sh0

SH_COEFFS = 16  # degree 3

TRAINABLE = ("means", "quats", "log_scales", "opacity_logit", "sh_dc", "sh_rest")


@dataclass
class SurfelMap:
    """The map: N surfels with trainable geometry/appearance and frozen features.

    Fields (N = number of surfels, D = feature width, a runtime value):
        means (N, 3) world centre; quats (N, 4) rotation (w, x, y, z) whose columns are
        t_u, t_v, t_w = normal; log_scales (N, 2) log of (s_u, s_v) in metres;
        opacity_logit (N, 1); sh_dc (N, 1, 3); sh_rest (N, 15, 3);
        features_unit16 (N, D) float16 frozen L2-normalized feature; features_norm (N,) float32 norm of the
        raw feature. The feature is stored once (D * 2 + 4 bytes); ``features_unit`` (float32) and
        ``features_raw`` (float16, = unit * norm) are computed from them on each access. float16 keeps
        11 significant bits: ``features_unit`` has norm 1 to within 2^-11 (5e-4) and cos(stored, input) >= 1 - 2e-7;
        raw features are within 1e-3 relative of the input.
        uid (N,) int64 unique id (children get new ids); parent_uid (N,) id of the surfel a
        clone/split child copied its feature from (its own uid for seeded surfels).
    """

    means: torch.nn.Parameter
    quats: torch.nn.Parameter
    log_scales: torch.nn.Parameter
    opacity_logit: torch.nn.Parameter
    sh_dc: torch.nn.Parameter
    sh_rest: torch.nn.Parameter
    features_unit16: torch.Tensor
    features_norm: torch.Tensor
    uid: torch.Tensor
    parent_uid: torch.Tensor
    next_uid: int = 0
    sh_degree: int = 0
    meta: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @staticmethod
    def empty(feature_dim: int, device: str | torch.device = "cpu") -> "SurfelMap":
        return SurfelMap.create(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, feature_dim),
                                scales=torch.zeros(0, 2), device=device)

    @staticmethod
    def create(means: torch.Tensor, rgb: torch.Tensor, features: torch.Tensor, scales: torch.Tensor,
               quats: torch.Tensor | None = None, opacity: float | torch.Tensor = 0.1,
               device: str | torch.device = "cpu", first_uid: int = 0) -> "SurfelMap":
        """Build a map from activated values: scales (N, 2) metres, opacity in (0, 1), rgb in [0, 1]."""
        n = means.shape[0]
        if quats is None:
            quats = random_quats_wxyz(n)
        op = torch.as_tensor(opacity, dtype=torch.float32).expand(n).clamp(1e-4, 1 - 1e-4)
        sh_dc = rgb_to_sh0(rgb.float()).reshape(n, 1, 3)
        p = lambda t: torch.nn.Parameter(t.float().contiguous().to(device))  # noqa: E731
        uid = torch.arange(first_uid, first_uid + n, dtype=torch.int64, device=device)
        m = SurfelMap(p(means), p(quats), p(torch.log(scales.clamp_min(1e-8))), p(torch.logit(op).reshape(n, 1)),
                      p(sh_dc), p(torch.zeros(n, SH_COEFFS - 1, 3)),
                      F.normalize(features.float(), dim=-1).to(device=device, dtype=torch.float16).contiguous(),
                      features.float().norm(dim=-1).to(device).contiguous(),
                      uid, uid.clone(), next_uid=first_uid + n)
        return m

    # ------------------------------------------------------------------ activations
    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.features_unit16.shape[1])

    @property
    def features_unit(self) -> torch.Tensor:
        """(N, D) float32 unit features (a fresh copy; what NDFD and the queries use)."""
        return self.features_unit16.float()

    @property
    def features_raw(self) -> torch.Tensor:
        """(N, D) float16 raw features = unit * norm (a fresh copy)."""
        return (self.features_unit16.float() * self.features_norm[:, None]).half()

    @property
    def scales(self) -> torch.Tensor:
        return torch.exp(self.log_scales)

    @property
    def opacity(self) -> torch.Tensor:
        """(N,) opacity in (0, 1)."""
        return torch.sigmoid(self.opacity_logit).squeeze(-1)

    @property
    def sh(self) -> torch.Tensor:
        return torch.cat([self.sh_dc, self.sh_rest], dim=1)

    def normals(self) -> torch.Tensor:
        """(N, 3) world-frame surfel normals t_w (not flipped towards any camera)."""
        return quat_wxyz_to_matrix(self.quats)[:, :, 2]

    def parameters(self) -> dict[str, torch.nn.Parameter]:
        return {k: getattr(self, k) for k in TRAINABLE}

    # ------------------------------------------------------------------ editing (no optimizer here)
    def _tensor_fields(self) -> dict[str, torch.Tensor]:
        d = {k: getattr(self, k).data for k in TRAINABLE}
        d.update(features_unit16=self.features_unit16, features_norm=self.features_norm, uid=self.uid,
                 parent_uid=self.parent_uid)
        return d

    def _assign(self, fields: dict[str, torch.Tensor]) -> None:
        for k, v in fields.items():
            if k in TRAINABLE:
                setattr(self, k, torch.nn.Parameter(v.contiguous()))
            else:
                setattr(self, k, v.contiguous())

    def keep(self, mask: torch.Tensor) -> None:
        """Keep only the surfels where ``mask`` (N,) is True (features go with them)."""
        self._assign({k: v[mask] for k, v in self._tensor_fields().items()})

    def append(self, other: "SurfelMap") -> None:
        """Append surfels; ``other``'s uids are re-issued from this map's counter."""
        n = len(other)
        f = other._tensor_fields()
        new_uid = torch.arange(self.next_uid, self.next_uid + n, dtype=torch.int64, device=self.means.device)
        remap_parent = f["parent_uid"] == f["uid"]
        f["parent_uid"] = torch.where(remap_parent, new_uid, f["parent_uid"])
        f["uid"] = new_uid
        self.next_uid += n
        mine = self._tensor_fields()
        self._assign({k: torch.cat([mine[k], f[k].to(mine[k].device, mine[k].dtype)]) for k in mine})

    def clone_rows(self, idx: torch.Tensor, overrides: dict[str, torch.Tensor] | None = None) -> "SurfelMap":
        """New surfels copying rows ``idx`` (features copied bit-for-bit), with field overrides.

        The children keep a new uid and record the parent's uid in ``parent_uid``.
        """
        f = {k: v[idx].clone() for k, v in self._tensor_fields().items()}
        f["parent_uid"] = self.uid[idx].clone()
        if overrides:
            f.update(overrides)
        child = SurfelMap.__new__(SurfelMap)
        child.meta, child.sh_degree, child.next_uid = {}, self.sh_degree, 0
        child._assign(f)
        child.uid = torch.full((len(idx),), -1, dtype=torch.int64, device=self.means.device)
        return child

    def snapshot(self, share_frozen: bool = False) -> "SurfelMap":
        """Detached copy for readers in other threads.

        share_frozen: share (not copy) the frozen features and ids. Safe because they are never
        modified in place: densification and pruning always build new tensors.
        """
        s = SurfelMap.__new__(SurfelMap)
        s.meta, s.sh_degree, s.next_uid = dict(self.meta), self.sh_degree, self.next_uid
        s._assign({k: (v if share_frozen and k not in TRAINABLE else v.detach().clone())
                   for k, v in self._tensor_fields().items()})
        for k in TRAINABLE:
            getattr(s, k).requires_grad_(False)
        return s
