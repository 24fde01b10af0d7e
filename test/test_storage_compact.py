"""Compact (version 2, default) map files: features once as float16 unit vectors + norm, sh_rest float16."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fhgs_ros.core.storage import COMPACT_VERSION, load_map, save_map
from fhgs_ros.core.surfels import SurfelMap


def make_map(n=300, d=256, seed=0) -> SurfelMap:
    g = torch.Generator().manual_seed(seed)
    m = SurfelMap.create(torch.randn(n, 3, generator=g), torch.rand(n, 3, generator=g),
                         3.0 * torch.randn(n, d, generator=g), scales=0.05 + 0.1 * torch.rand(n, 2, generator=g))
    m.sh_rest.data.normal_(0.0, 0.1, generator=g)
    m.sh_degree = 3
    return m


def test_compact_round_trip_within_documented_error(tmp_path):
    g = torch.Generator().manual_seed(3)
    raw = 3.0 * torch.randn(300, 256, generator=g)
    m = SurfelMap.create(torch.randn(300, 3, generator=g), torch.rand(300, 3, generator=g), raw,
                         scales=0.05 + 0.1 * torch.rand(300, 2, generator=g))
    m.sh_rest.data.normal_(0.0, 0.1, generator=g)
    m.sh_degree = 3
    p = tmp_path / "c.fhgs"
    save_map(p, m, {"feature_extractor": "x"})
    back, meta, _ = load_map(p)
    assert meta["version"] == COMPACT_VERSION and len(back) == len(m)
    assert back.features_unit.dtype == torch.float32 and back.features_raw.dtype == torch.float16
    # the features round-trip bit-for-bit; against the input they keep the documented float16 error
    assert torch.equal(back.features_unit16, m.features_unit16) and torch.equal(back.features_norm, m.features_norm)
    cos = (back.features_unit * F.normalize(raw, dim=-1)).sum(-1) / back.features_unit.norm(dim=-1)
    assert float((1 - cos).max()) <= 2e-7
    assert torch.allclose(back.features_unit.norm(dim=-1), torch.ones(len(m)), atol=2 ** -11)
    rel = (back.features_raw.float() - raw).norm(dim=-1) / raw.norm(dim=-1)
    assert float(rel.max()) <= 1e-3
    for k in ("means", "quats", "log_scales", "opacity_logit", "sh_dc", "uid", "parent_uid"):
        assert torch.equal(getattr(back, k).detach(), getattr(m, k).detach()), k
    assert torch.allclose(back.sh_rest.detach(), m.sh_rest.detach(), rtol=2 ** -10, atol=1e-7)
    assert back.next_uid == m.next_uid and back.sh_degree == 3


def test_compact_file_is_under_750_bytes_per_surfel_at_d256(tmp_path):
    m = make_map(n=2000)
    save_map(tmp_path / "c.fhgs", m)
    save_map(tmp_path / "v1.fhgs", m, compact=False)
    per = (tmp_path / "c.fhgs").stat().st_size / len(m)
    assert per <= 750, per
    assert (tmp_path / "v1.fhgs").stat().st_size / len(m) > 1700  # the version-1 layout


def test_version1_files_still_load(tmp_path):
    m = make_map(n=50, d=16)
    save_map(tmp_path / "v1.fhgs", m, compact=False)
    back, meta, _ = load_map(tmp_path / "v1.fhgs")
    assert meta["version"] == 1
    assert torch.equal(back.features_unit, m.features_unit) and torch.equal(back.sh_rest, m.sh_rest)
    assert torch.allclose(back.features_raw.float(), m.features_raw.float(), rtol=1e-3, atol=1e-4)
