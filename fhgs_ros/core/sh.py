"""Real spherical harmonics (degree <= 3) as used by 3DGS/2DGS, evaluated in PyTorch."""

from __future__ import annotations

import torch

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
      1.445305721320277, -0.5900435899266435)


def rgb_to_sh0(rgb: torch.Tensor) -> torch.Tensor:
    """DC coefficient that renders ``rgb`` (in [0, 1])."""
    return (rgb - 0.5) / C0


def sh_basis(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """(N, (degree + 1)^2) real SH basis values (3DGS sign convention) at unit directions ``dirs`` (N, 3)."""
    x, y, z = dirs[:, 0], dirs[:, 1], dirs[:, 2]
    cols = [torch.full_like(x, C0)]
    if degree > 0:
        cols += [-C1 * y, C1 * z, -C1 * x]
        if degree > 1:
            xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
            cols += [C2[0] * xy, C2[1] * yz, C2[2] * (2.0 * zz - xx - yy), C2[3] * xz, C2[4] * (xx - yy)]
            if degree > 2:
                cols += [C3[0] * y * (3 * xx - yy), C3[1] * xy * z, C3[2] * y * (4 * zz - xx - yy),
                         C3[3] * z * (2 * zz - 3 * xx - 3 * yy), C3[4] * x * (4 * zz - xx - yy),
                         C3[5] * z * (xx - yy), C3[6] * x * (xx - 3 * yy)]
    return torch.stack(cols, dim=1)


def eval_sh(degree: int, sh: torch.Tensor, dirs: torch.Tensor, sh_rest: torch.Tensor | None = None) -> torch.Tensor:
    """Colour from SH.

    sh: (N, K, 3) coefficients, K >= (degree + 1)^2, or with ``sh_rest`` (N, K - 1, 3) given, only the
    DC coefficient (N, 1, 3) (saves concatenating the two); dirs: (N, 3) unit view directions
    (camera centre -> surfel, world frame). Returns (N, 3) RGB, clamped at 0 (3DGS ``+0.5`` offset
    applied). Degree > 0 is one batched (1 x K) @ (K x 3) product per surfel over the basis values
    (a few large kernels instead of ~50 small ones; forward + backward about 2x faster at 50k surfels).
    """
    if degree == 0:
        return torch.clamp_min(C0 * sh[:, 0] + 0.5, 0.0)
    k = (degree + 1) ** 2
    basis = sh_basis(degree, dirs).to(sh.dtype)
    if sh_rest is None:
        res = torch.bmm(basis.unsqueeze(1), sh[:, :k]).squeeze(1)
    else:
        res = C0 * sh[:, 0] + torch.bmm(basis[:, 1:].unsqueeze(1), sh_rest[:, :k - 1]).squeeze(1)
    return torch.clamp_min(res + 0.5, 0.0)
