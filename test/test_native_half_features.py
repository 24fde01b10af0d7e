"""float16 unit features straight into the native CPU kernels (the map stores them as float16).

The subsampled-NDFD kernels read the float16 rows directly (converted per row, exactly), every
other path gets a float32 copy in the bindings; either way the result must be bit-for-bit the
one of the float32 copy of the same features (forward outputs and every gradient).
"""

from __future__ import annotations

import pytest
import torch

from fhgs_ros.core import native
from fhgs_ros.core import reference as R
from test_native_equivalence import PARAMS, needs_native, random_scene

OUTS = ("rgb", "alpha", "depth", "depth_median", "normal", "distortion", "ndfd_ext", "ndfd_int")


def render_and_grads(s, feats, mask, seed):
    ps = [s[k].clone().requires_grad_(True) for k in PARAMS]
    r = native.rasterize_native(*ps, s["camera"], s["background"], feats, s["target"], s["ndfd"], None, mask)
    g = torch.Generator().manual_seed(seed)
    loss = sum((getattr(r, k).double() * torch.randn(getattr(r, k).shape, generator=g, dtype=torch.float64)).sum()
               for k in OUTS)
    loss.backward()
    return r, [p.grad for p in ps]


@needs_native
@pytest.mark.skipif(not native._accepts_half(), reason="extension predates float16 features")
@pytest.mark.parametrize("dim", [37, 256])
@pytest.mark.parametrize("subsampled", [True, False])
def test_half_features_equal_their_float32_copy(dim, subsampled):
    seed = 1234 + dim
    g = torch.Generator().manual_seed(seed)
    s = random_scene(48, 40, 180, dim, g)
    f16 = s["features_unit"].half()
    mask = (torch.rand(40, 48, generator=g) < 0.2) if subsampled else None
    r16, g16 = render_and_grads(s, f16, mask, seed)
    r32, g32 = render_and_grads(s, f16.float(), mask, seed)
    assert float(r32.ndfd_int.detach().abs().sum()) > 0 and int(r32.n_contrib.sum()) > 0
    for k in OUTS:
        assert torch.equal(getattr(r16, k), getattr(r32, k)), k
    for k, a, b in zip(PARAMS, g16, g32):
        assert torch.equal(a, b), f"grad {k}"
    # the reference takes the float16 features as well (converted to its dtype)
    args = [s[k] for k in PARAMS] + [s["camera"], s["background"]]
    ref16 = R.rasterize_reference(*args, f16, s["target"], s["ndfd"], None, mask)
    ref32 = R.rasterize_reference(*args, f16.float(), s["target"], s["ndfd"], None, mask)
    assert torch.equal(ref16.ndfd_int, ref32.ndfd_int) and torch.equal(ref16.ndfd_ext, ref32.ndfd_ext)
