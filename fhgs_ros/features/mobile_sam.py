"""MobileSAM's image encoder (TinyViT-5M, Zhang et al. 2023 "Faster Segment Anything") in plain PyTorch.

MobileSAM distils SAM ViT-H's image encoder into a TinyViT (Wu et al. 2022) and keeps SAM's prompt
encoder and mask decoder unchanged, so its 256 x 64 x 64 embedding feeds ``segment_view`` exactly
like SAM's. This module re-implements the TinyViT of the official repository
(``mobile_sam/modeling/tiny_vit_sam.py``, Apache-2.0, Copyright (c) 2022 Microsoft; itself adapted
from LeViT and Swin) with the **same module names and parameter shapes**, so the official
``mobile_sam.pt`` state dict loads key for key (``image_encoder.*``, plus segment_anything's
``prompt_encoder.*`` / ``mask_decoder.*``); it needs neither ``timm`` nor ``torchvision``.

Checked alternative: the PyPI wheel ``mobilesam-mirror`` 1.0.0 (Apache-2.0) packages the official
code, but imports ``timm`` (not declared as a dependency; it registers its models in timm's registry)
and ``torchvision`` (which does not load beside the pinned torch here), so it is not used.

Differences from the official code, none of which changes a key, a shape or an inference result
(beyond float rounding): BatchNorm folded into the convolution in eval mode; no stochastic depth (drop_path is 0 in MobileSAM), no layer-lr-decay bookkeeping, no gradient
checkpointing; the window attention adds its relative-position bias inside
``F.scaled_dot_product_attention``; the final reshape uses the actual grid (input_size / 16)
instead of a hard-coded 64 x 64, so ``input_size=512`` (32 x 32 grid) works with the same weights
(TinyViT has no absolute position embedding; its attention biases are per window).

Architecture (``vit_t``): stem (two 3x3/2 conv-BN, GELU) -> stage 0: 2 MBConv blocks (64 ch,
stride 4) -> patch merging -> stage 1: 2 TinyViT blocks (128 ch, window 7, 4 heads, stride 8) ->
stage 2: 6 blocks (160 ch, window 14, 5 heads, stride 16) -> merging with stride 1 (320 ch) ->
stage 3: 2 blocks (320 ch, window 7, 10 heads) -> neck (1x1 conv, LayerNorm2d, 3x3 conv,
LayerNorm2d) -> 256 channels at stride 16.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

MOBILE_SAM_URL = "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt"
MOBILE_SAM_FILENAME = "mobile_sam.pt"
#: TinyViT-5M as configured by MobileSAM's ``build_sam_vit_t``.
TINY_VIT_5M = dict(embed_dims=(64, 128, 160, 320), depths=(2, 2, 6, 2), num_heads=(2, 4, 5, 10),
                   window_sizes=(7, 7, 14, 7), mlp_ratio=4.0, mbconv_expand_ratio=4.0, local_conv_size=3,
                   num_classes=1000)


class Conv2d_BN(nn.Sequential):  # noqa: N801 - official name and key layout (".c", ".bn")
    """Conv (no bias) + BatchNorm, keys ``c.weight`` and ``bn.*``."""

    def __init__(self, a: int, b: int, ks: int = 1, stride: int = 1, pad: int = 0, dilation: int = 1,
                 groups: int = 1, bn_weight_init: float = 1.0):
        super().__init__()
        self.add_module("c", nn.Conv2d(a, b, ks, stride, pad, dilation, groups, bias=False))
        bn = nn.BatchNorm2d(b)
        nn.init.constant_(bn.weight, bn_weight_init)
        nn.init.constant_(bn.bias, 0)
        self.add_module("bn", bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training: conv then BN. Eval: one convolution with the BN folded into its weight and bias
        (same result up to rounding; one pass over the activations instead of two)."""
        c, bn = self.c, self.bn
        if self.training:
            return bn(c(x))
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        w = c.weight * scale[:, None, None, None]
        b = bn.bias - bn.running_mean * scale
        return F.conv2d(x, w.to(x.dtype), b.to(x.dtype), c.stride, c.padding, c.dilation, c.groups)


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, embed_dim: int, resolution: int):
        super().__init__()
        self.patches_resolution = (resolution // 4, resolution // 4)
        n = embed_dim
        self.seq = nn.Sequential(Conv2d_BN(in_chans, n // 2, 3, 2, 1), nn.GELU(), Conv2d_BN(n // 2, n, 3, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU."""

    def __init__(self, in_chans: int, out_chans: int, expand_ratio: float):
        super().__init__()
        hidden = int(in_chans * expand_ratio)
        self.conv1 = Conv2d_BN(in_chans, hidden, ks=1)
        self.act1 = nn.GELU()
        self.conv2 = Conv2d_BN(hidden, hidden, ks=3, stride=1, pad=1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2d_BN(hidden, out_chans, ks=1, bn_weight_init=0.0)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.act3(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """1x1 conv, 3x3 depthwise conv (stride 2; stride 1 into the 320/448/576-wide last stage), 1x1 conv."""

    def __init__(self, input_resolution: tuple[int, int], dim: int, out_dim: int):
        super().__init__()
        self.input_resolution = input_resolution
        self.act = nn.GELU()
        self.conv1 = Conv2d_BN(dim, out_dim, 1, 1, 0)
        stride = 1 if out_dim in (320, 448, 576) else 2
        self.conv2 = Conv2d_BN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2d_BN(out_dim, out_dim, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            h, w = self.input_resolution
            x = x.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
        x = self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])  # = flatten(2).transpose(1, 2)


class ConvLayer(nn.Module):
    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int, out_dim: int,
                 conv_expand_ratio: float, downsample: bool):
        super().__init__()
        self.blocks = nn.ModuleList([MBConv(dim, dim, conv_expand_ratio) for _ in range(depth)])
        self.downsample = PatchMerging(input_resolution, dim, out_dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_features)
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class Attention(nn.Module):
    """Multi-head attention over one window with a learned bias per head and per |offset| (LeViT)."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, attn_ratio: float, resolution: tuple[int, int]):
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.d = int(attn_ratio * key_dim)
        self.dh = self.d * num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, self.dh + 2 * key_dim * num_heads)
        self.proj = nn.Linear(self.dh, dim)
        points = list(itertools.product(range(resolution[0]), range(resolution[1])))
        offsets: dict[tuple[int, int], int] = {}
        idxs = []
        for p1 in points:
            for p2 in points:
                off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                idxs.append(offsets.setdefault(off, len(offsets)))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        self.register_buffer("attention_bias_idxs", torch.tensor(idxs, dtype=torch.long).view(len(points), -1),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C)
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, -1)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.d], dim=3)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)  # (heads, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[None])  # scale key_dim ** -0.5
        return self.proj(out.transpose(1, 2).reshape(b, n, self.dh))


class TinyViTBlock(nn.Module):
    """Window attention (zero-padded to whole windows) + 3x3 depthwise conv-BN + MLP, pre-norm residuals."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int,
                 mlp_ratio: float, local_conv_size: int):
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.window_size = window_size
        self.attn = Attention(dim, dim // num_heads, num_heads, attn_ratio=1, resolution=(window_size, window_size))
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2d_BN(dim, dim, ks=local_conv_size, stride=1, pad=local_conv_size // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.input_resolution
        b, n, c = x.shape
        ws = self.window_size
        res = x
        if h == ws and w == ws:
            x = self.attn(x)
        else:
            x = x.view(b, h, w, c)
            pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
            if pad_b or pad_r:
                x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
            ph, pw = h + pad_b, w + pad_r
            nh, nw = ph // ws, pw // ws
            x = x.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
            x = self.attn(x)
            x = x.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
            if pad_b or pad_r:
                x = x[:, :h, :w].contiguous()
            x = x.view(b, n, c)
        x = res + x
        # (B, N, C) <-> (B, C, H, W) as channels-last views (the official transpose/reshape, without copies)
        x = self.local_conv(x.reshape(b, h, w, c).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(b, n, c)
        return x + self.mlp(x)


class BasicLayer(nn.Module):
    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int, num_heads: int, window_size: int,
                 mlp_ratio: float, local_conv_size: int, out_dim: int, downsample: bool):
        super().__init__()
        self.blocks = nn.ModuleList([TinyViTBlock(dim, input_resolution, num_heads, window_size, mlp_ratio,
                                                  local_conv_size) for _ in range(depth)])
        self.downsample = PatchMerging(input_resolution, dim, out_dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class LayerNorm2d(nn.Module):
    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * ((x - u) / torch.sqrt(s + self.eps)) + self.bias[:, None, None]


class TinyViT(nn.Module):
    """TinyViT image encoder with MobileSAM's neck: (B, 3, S, S) normalized -> (B, 256, S/16, S/16).

    ``img_size`` must be a multiple of 64 (stride 4 stem, two stride-2 mergings, window padding).
    The classification head (``norm_head``, ``head``) is unused but kept: the official checkpoint has it.
    """

    def __init__(self, img_size: int = 1024, in_chans: int = 3, num_classes: int = 1000,
                 embed_dims: Sequence[int] = (64, 128, 160, 320), depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (2, 4, 5, 10), window_sizes: Sequence[int] = (7, 7, 14, 7),
                 mlp_ratio: float = 4.0, mbconv_expand_ratio: float = 4.0, local_conv_size: int = 3):
        super().__init__()
        if img_size % 64:
            raise ValueError(f"TinyViT img_size must be a multiple of 64, got {img_size}")
        self.img_size = img_size
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0], img_size)
        pr = self.patch_embed.patches_resolution
        self.layers = nn.ModuleList()
        n = len(depths)
        for i in range(n):
            f = 2 ** (i - 1 if i == 3 else i)
            res = (pr[0] // f, pr[1] // f)
            out_dim = embed_dims[min(i + 1, n - 1)]
            if i == 0:
                layer: nn.Module = ConvLayer(embed_dims[0], res, depths[0], out_dim, mbconv_expand_ratio, n > 1)
            else:
                layer = BasicLayer(embed_dims[i], res, depths[i], num_heads[i], window_sizes[i], mlp_ratio,
                                   local_conv_size, out_dim, i < n - 1)
            self.layers.append(layer)
        self.grid = pr[0] // 2 ** (n - 2) if n >= 3 else pr[0]
        self.norm_head = nn.LayerNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.neck = nn.Sequential(nn.Conv2d(embed_dims[-1], 256, kernel_size=1, bias=False), LayerNorm2d(256),
                                  nn.Conv2d(256, 256, kernel_size=3, padding=1, bias=False), LayerNorm2d(256))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x.contiguous(memory_format=torch.channels_last))  # NHWC convolutions on CPU
        for layer in self.layers:
            x = layer(x)
        b, _, c = x.shape
        x = x.view(b, self.grid, self.grid, c).permute(0, 3, 1, 2)
        return self.neck(x)


def build_mobile_sam(input_size: int = 1024):
    """A randomly initialised MobileSAM (``segment_anything.modeling.Sam`` with a TinyViT encoder).

    Same modules and hyper-parameters as MobileSAM's ``build_sam_vit_t`` (prompt encoder, two-way
    transformer mask decoder, SAM's pixel mean/std), with the encoder input ``input_size``.
    """
    from fhgs_ros.features.sam import SAM_PIXEL_MEAN, SAM_PIXEL_STD, sam_prompt_modules
    from fhgs_ros.features.tv_compat import import_segment_anything

    import_segment_anything()
    from segment_anything.modeling import Sam

    size = int(input_size)
    sam = Sam(image_encoder=TinyViT(img_size=size, **TINY_VIT_5M), **sam_prompt_modules(size),
              pixel_mean=list(SAM_PIXEL_MEAN), pixel_std=list(SAM_PIXEL_STD))
    sam.image_encoder.to(memory_format=torch.channels_last)  # conv weights NHWC (keys and values unchanged)
    sam.eval()
    return sam
