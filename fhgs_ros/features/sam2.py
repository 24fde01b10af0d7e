"""``sam2`` feature extractor: the SAM 2.1 Hiera image encoders (tiny / small / base+ / large) as feature source.

The model code is the PyPI ``sam2==1.1.0`` package (Apache-2.0; installed by ``make setup`` with
``--no-deps --no-build-isolation``, docs/METHOD.md §8.13). The model is built from the package's own
hydra configs ``configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml`` (``hydra.compose`` + ``instantiate``,
as ``sam2.build_sam.build_sam2``; ``model=hiera_t`` ...), so the official checkpoints
(``{"model": state_dict}``) load key for key (``load_state_dict(strict=True)``).

Pipeline (``SAM2ImagePredictor.set_image``, re-done here because ``sam2.utils.transforms`` imports
torchvision, which does not load beside the pinned torch): the RGB image (uint8 -> [0, 1]) is resized
to ``input_size`` x ``input_size`` (bilinear, antialiased: torchvision ``Resize`` on a tensor; the
resize is **anisotropic**, there is no padding), normalized with the ImageNet mean/std, and run through
``image_encoder`` (Hiera trunk + FPN neck). The image embedding is the lowest-resolution FPN level,
256 x (input_size/16)^2 (64 x 64 at the standard 1024), plus ``no_mem_embed``
(``directly_add_no_mem_embed``), exactly the ``image_embed`` of the predictor. The high-resolution
FPN levels (``conv_s0``/``conv_s1`` inputs of the mask decoder) are not part of the feature.

Grid geometry: the 64 x 64 embedding covers the whole image with cells of (W/64, H/64) pixels. The
map's feature grids are isotropic and top-left aligned (``FeatureGrid``, docs/METHOD.md §1.2), so
the embedding is resampled (bilinear, border-clamped, at the exact cell centres) to
ceil(H * g / L) x ceil(W * g / L) cells with g = input_size / 16 and L = max(H, W): a 640 x 480
image gives 256 x 48 x 64, the same grid as SAM 1. ``FeatureGrid.scale`` = g / L.

Identity: ``model_id`` = ``sam2_<model>@<input_size>:<checkpoint fingerprint>``; the part before ':'
is the encoder key of the map file and of the feature cache (``features.selection``), so a map never
mixes SAM 2 features with SAM / MobileSAM ones (different embedding spaces).

Checkpoints: the official ``.pt`` files (``torch.load(weights_only=True)``) or a ``.safetensors``
export of the same state dict. Missing, truncated, non-tensor and wrong-family files raise
:class:`fhgs_ros.features.sam.CheckpointError` (a SAM / MobileSAM state dict is recognised and named).

Importing this module does not import ``sam2`` (the package is imported when a model is built).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fhgs_ros.features.base import FeatureError, FeatureGrid, image_to_uint8_hwc
from fhgs_ros.features.sam import (CheckpointError, _checkpoint_fingerprint, match_arch_by_width_and_depth,
                                   read_state_dict_file, resolve_device, resolve_dtype, state_dict_mismatch)

log = logging.getLogger(__name__)

PATCH = 16  # embedding stride (Hiera stride 32 with FPN scalp 1: the 1/16 level)
EMBED_DIM = 256
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CHECKPOINT_DIR = "checkpoints"
SAM2_VERSION = "1.1.0"
INSTALL_HINT = ("SAM2_BUILD_CUDA=0 pip install --no-deps --no-build-isolation sam2==1.1.0 hydra-core==1.3.2 "
                "omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 iopath==0.1.10 portalocker==3.2.0 "
                "(make setup does this)")
_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"


@dataclass(frozen=True)
class Sam2Arch:
    """One SAM 2.1 model: its shipped config, the official download, and the trunk shape
    (Hiera embed width, total block count) used to recognise a checkpoint."""

    config: str
    filename: str
    approx_size: str
    embed_dim: int
    blocks: int

    @property
    def url(self) -> str:
        return _URL + self.filename


SAM2_ARCHS: dict[str, Sam2Arch] = {
    "hiera_t": Sam2Arch("configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny.pt", "about 156 MB", 96, 12),
    "hiera_s": Sam2Arch("configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt", "about 184 MB", 96, 16),
    "hiera_b+": Sam2Arch("configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus.pt", "about 324 MB", 112, 24),
    "hiera_l": Sam2Arch("configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt", "about 898 MB", 144, 48),
}
SAM2_MODELS = tuple(SAM2_ARCHS)


def _arch(model: str) -> Sam2Arch:
    if model not in SAM2_ARCHS:
        raise FeatureError(f"unknown SAM 2 model '{model}'; choose one of {', '.join(SAM2_MODELS)}")
    return SAM2_ARCHS[model]


def import_sam2():
    """The ``sam2`` package, or FeatureError with the pinned install command."""
    try:
        import sam2  # noqa: F401  (initialises hydra's config module 'sam2')
        from hydra import compose  # noqa: F401
    except ImportError as exc:
        raise FeatureError(f"the 'sam2' extractor needs the sam2 package ({exc}); install it with: "
                           f"{INSTALL_HINT}") from exc
    return sam2


def sam2_available() -> bool:
    """True when ``sam2`` and hydra import (the tests skip SAM 2 otherwise)."""
    try:
        import_sam2()
        return True
    except FeatureError:
        return False


# ----------------------------------------------------------------------------- help texts
def missing_checkpoint_help(model: str = "hiera_t", dest_dir: str | os.PathLike = DEFAULT_CHECKPOINT_DIR) -> str:
    """What to download for SAM 2 ``model`` and where to put it."""
    arch = SAM2_ARCHS.get(model) or SAM2_ARCHS["hiera_t"]
    dest = Path(dest_dir) / arch.filename
    others = ", ".join(f"{m} -> {a.url}" for m, a in SAM2_ARCHS.items() if a is not arch)
    return (f"No SAM 2 checkpoint for model '{model}'. Download the official SAM 2.1 weights ({arch.approx_size}):\n"
            f"  {arch.url}\n"
            f"and put the file at {dest} , e.g.\n"
            f"  mkdir -p {dest_dir} && curl -L -o {dest} {arch.url}\n"
            f"then set features.extractor: sam2, features.sam2_model: {model}, features.sam2_checkpoint: {dest}. "
            f"Other models: {others}.")


def guess_sam2_model(state: dict[str, torch.Tensor]) -> str | None:
    """The SAM 2 model a state dict was saved from (Hiera width and block count), or None."""
    return match_arch_by_width_and_depth(state, "image_encoder.trunk.patch_embed.proj.weight",
                                         "image_encoder.trunk.blocks.",
                                         {n: (a.embed_dim, a.blocks) for n, a in SAM2_ARCHS.items()})


def _family_hint(state: dict[str, torch.Tensor], model: str) -> str:
    """A sentence naming the family/model the state dict looks like, when it is not ``model``."""
    guess = guess_sam2_model(state)
    if guess and guess != model:
        return f" It looks like a SAM 2 '{guess}' checkpoint: use features.sam2_model: {guess}."
    if guess:
        return ""
    from fhgs_ros.features.sam import guess_model_type
    g1 = guess_model_type(state)
    if g1 == "vit_t":
        return (" It looks like a MobileSAM checkpoint (TinyViT encoder, SAM 1 family): use features.extractor: sam "
                "with features.sam_model: vit_t.")
    if g1 and g1 != "sam2":
        return (f" It looks like a SAM 1 (segment_anything) '{g1}' checkpoint: use features.extractor: sam with "
                f"features.sam_model: {g1}.")
    return ""


def read_checkpoint(path: str | os.PathLike, model: str) -> dict[str, torch.Tensor]:
    """Tensor state dict of a SAM 2 checkpoint (``{"model": ...}`` unwrapped), or CheckpointError."""
    arch = _arch(model)
    return read_state_dict_file(
        path, "SAM 2", model, f"a '{model}' checkpoint, {arch.filename}",
        lambda folder: missing_checkpoint_help(model, folder or DEFAULT_CHECKPOINT_DIR),
        official=f"; the official {arch.filename} is {arch.approx_size}", source=arch.url)


# ----------------------------------------------------------------------------- model building
def build_sam2_model(model: str = "hiera_t", input_size: int = 1024):
    """A randomly initialised ``sam2.modeling.sam2_base.SAM2Base`` from the package's shipped config.

    Same overrides as ``sam2.build_sam.build_sam2`` (dynamic multimask fallback) plus
    ``model.image_size = input_size`` (a multiple of 64; 1024 is the trained size).
    """
    import_sam2()
    from hydra import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    arch = _arch(model)
    size = int(input_size)
    if size % 64 or size < 64:
        raise FeatureError(f"SAM 2 input_size must be a positive multiple of 64, got {size}")
    overrides = [f"++model.image_size={size}",
                 "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
                 "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
                 "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98"]
    cfg = compose(config_name=arch.config, overrides=overrides)
    OmegaConf.resolve(cfg)
    m = instantiate(cfg.model, _recursive_=True)
    m.eval()
    return m


def load_sam2(model: str, checkpoint: str | os.PathLike | None, input_size: int = 1024, allow_random: bool = False,
              seed: int = 0):
    """A SAM2Base of ``model`` with weights from ``checkpoint`` (strict, CPU, eval).

    ``checkpoint=None`` raises CheckpointError naming the official file, unless ``allow_random``.
    """
    _arch(model)
    if checkpoint is None or str(checkpoint) == "":
        if not allow_random:
            raise CheckpointError(missing_checkpoint_help(model), None, model)
        torch.manual_seed(seed)
        return build_sam2_model(model, input_size)
    state = read_checkpoint(checkpoint, model)
    m = build_sam2_model(model, input_size)
    target = m.state_dict()
    mismatch = state_dict_mismatch(state, target)
    if mismatch:
        raise CheckpointError(f"SAM 2 checkpoint '{checkpoint}' does not match the expected model '{model}' "
                              f"({SAM2_ARCHS[model].filename}): {mismatch}." + _family_hint(state, model),
                              checkpoint, model)
    m.load_state_dict({k: v.to(target[k].dtype) for k, v in state.items()}, strict=True)
    m.eval()
    return m


def save_random_checkpoint(path: str | os.PathLike, model: str = "hiera_t", input_size: int = 1024, seed: int = 0,
                           fmt: str = "pt") -> Path:
    """Save a randomly initialised SAM 2 in the official layout ``{"model": state_dict}`` (tests, benchmarks).

    fmt: "pt" (``torch.save``, like the official files) or "safetensors" (the plain state dict).
    """
    torch.manual_seed(seed)
    m = build_sam2_model(model, input_size)
    state = {k: v.contiguous() for k, v in m.state_dict().items()}
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        from safetensors.torch import save_file
        save_file(state, str(p))
    elif fmt == "pt":
        torch.save({"model": state}, p)
    else:
        raise ValueError(f"fmt must be 'pt' or 'safetensors', got '{fmt}'")
    return p


# ----------------------------------------------------------------------------- geometry
def isotropic_grid_shape(height: int, width: int, grid: int) -> tuple[int, int]:
    """(gh, gw) of the isotropic, top-left aligned grid with ``grid`` cells on the long side."""
    s = grid / max(height, width)
    return max(1, math.ceil(height * s - 1e-9)), max(1, math.ceil(width * s - 1e-9))


def square_to_isotropic(emb: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """Resample a (D, g, g) embedding of the anisotropically resized image to the isotropic grid.

    Cell (i, j) of the output has its centre at image pixel ((j + 0.5) L / g - 0.5, (i + 0.5) L / g - 0.5)
    (L = long side); that pixel sits at source cell ((x + 0.5) g / W - 0.5, (y + 0.5) g / H - 0.5),
    sampled bilinearly (border-clamped).
    """
    d, g, g2 = emb.shape
    h0, w0 = image_hw
    long = max(h0, w0)
    gh, gw = isotropic_grid_shape(h0, w0, g)
    ys = ((torch.arange(gh, dtype=torch.float32) + 0.5) * long / h0 - 0.5).clamp(0, g - 1)
    xs = ((torch.arange(gw, dtype=torch.float32) + 0.5) * long / w0 - 0.5).clamp(0, g2 - 1)
    ny = 2 * ys / max(g - 1, 1) - 1
    nx = 2 * xs / max(g2 - 1, 1) - 1
    grid = torch.stack(torch.meshgrid(nx, ny, indexing="xy"), -1)  # (gh, gw, 2) as (x, y)
    out = F.grid_sample(emb[None].float(), grid[None].to(emb.device), mode="bilinear", align_corners=True)
    return out[0]


def feature_image_to_square_grid(features: torch.Tensor, grid: int) -> torch.Tensor:
    """Area-average a (D, h, w) feature image of a view onto SAM 2's (D, g, g) grid.

    Cell (gx, gy) covers the image's [gx, gx + 1) * W / g x [gy, gy + 1) * H / g pixels: the cells the
    encoder sees after its anisotropic resize to a square (no padding).
    """
    return F.interpolate(features.float()[None], size=(grid, grid), mode="area")[0]


# ----------------------------------------------------------------------------- prompt side
@dataclass
class Sam2PromptModel:
    """SAM 2's prompt encoder and mask decoder (``segment_view`` on rendered SAM 2 features).

    High-resolution features: the mask decoder of SAM 2.1 adds the projected stride-4 / stride-8 FPN
    levels (``conv_s0``/``conv_s1``) into its upscaling path; a map holds only the 256-d stride-16
    embedding, so :meth:`decode` passes zeros for them. With zeros the decoder computes exactly what
    it computes with ``use_high_res_features`` off (the additions vanish), i.e. the low-resolution path.
    """

    model: Any  # SAM2Base (prompt encoder / mask decoder used)
    input_size: int = 1024
    mask_threshold: float = 0.0
    model_id: str = ""
    family = "sam2"

    @property
    def prompt_encoder(self) -> torch.nn.Module:
        return self.model.sam_prompt_encoder

    @property
    def mask_decoder(self) -> torch.nn.Module:
        return self.model.sam_mask_decoder

    @property
    def grid_size(self) -> int:
        return self.input_size // PATCH

    @property
    def device(self) -> torch.device:
        return next(self.mask_decoder.parameters()).device

    @torch.no_grad()
    def decode(self, grid: torch.Tensor, image_hw: tuple[int, int], points: Any = None, labels: Any = None,
               box: Any = None, multimask_output: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masks for prompts on a (256, g, g) embedding of an (H, W) image.

        points (P, 2) / box (x0, y0, x1, y1) in image pixels, labels (P,) 1/0. Returns
        (logits (M, H, W), low-res logits (M, 4g, 4g), predicted IoU (M,)), as ``SAM2ImagePredictor.predict``
        (box corners prepended to the points with labels 2/3; masks upsampled bilinearly to (H, W)).
        """
        h0, w0 = image_hw
        s = self.input_size
        dev = self.device
        scale = torch.tensor([s / w0, s / h0])
        coords, labs = [], []
        if box is not None:
            coords.append(torch.as_tensor(box, dtype=torch.float32).reshape(2, 2) * scale)
            labs.append(torch.tensor([2, 3], dtype=torch.int32))
        if points is not None:
            c = torch.as_tensor(points, dtype=torch.float32).reshape(-1, 2)
            lab = (torch.ones(c.shape[0], dtype=torch.int32) if labels is None
                   else torch.as_tensor(labels).reshape(-1).to(torch.int32))
            if lab.numel() != c.shape[0]:
                raise FeatureError(f"{c.shape[0]} points but {lab.numel()} labels")
            coords.append(c * scale)
            labs.append(lab)
        if not coords:
            raise FeatureError("SAM 2 decoding needs point prompts and/or a box")
        pts = (torch.cat(coords)[None].to(dev), torch.cat(labs)[None].to(dev))
        pe, md = self.prompt_encoder, self.mask_decoder
        sparse, dense = pe(points=pts, boxes=None, masks=None)
        g = self.grid_size
        dt = next(md.parameters()).dtype
        high = None
        if getattr(md, "use_high_res_features", False):
            high = [torch.zeros(1, EMBED_DIM // 8, 4 * g, 4 * g, device=dev, dtype=dt),
                    torch.zeros(1, EMBED_DIM // 4, 2 * g, 2 * g, device=dev, dtype=dt)]
        low, iou, _, _ = md(image_embeddings=grid[None].to(dev, dt), image_pe=pe.get_dense_pe(),
                            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                            multimask_output=multimask_output, repeat_image=False, high_res_features=high)
        low = low.float()
        logits = F.interpolate(low, (h0, w0), mode="bilinear", align_corners=False)[0].cpu()
        return logits, low[0].cpu(), iou[0].float().cpu()


# ----------------------------------------------------------------------------- extractor
class Sam2Extractor:
    """SAM 2.1 image-encoder features (D = 256). See the module docstring for the pipeline.

    Args (YAML keys ``features.sam2_*``):
        checkpoint: path to the official ``sam2.1_hiera_*.pt`` (or a .safetensors export); required
            unless ``allow_random``.
        model: hiera_t | hiera_s | hiera_b+ | hiera_l (configs sam2.1_hiera_{t,s,b+,l}.yaml).
        input_size: square input side in px (1024 trained; a multiple of 64).
        device: auto | cpu | cuda[:N]. dtype: auto (float16 on CUDA, float32 on CPU) | float32 | float16 | bfloat16.
        batch_size: keyframes per encoder call in ``extract_batch``.
        allow_random: permit ``checkpoint=None`` with random weights (benchmarks/tests only).
    """

    input_kind = "rgb"
    family = "sam2"

    def __init__(self, checkpoint: str | os.PathLike | None = None, model: str = "hiera_t", input_size: int = 1024,
                 device: str = "auto", dtype: str = "auto", batch_size: int = 4, allow_random: bool = False,
                 seed: int = 0):
        checkpoint = checkpoint or None  # "" (YAML default) means none
        self.model_type = model
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = load_sam2(model, checkpoint, int(input_size), allow_random=allow_random, seed=seed)
        self.input_size = int(self.model.image_size)
        self.grid_size = self.input_size // PATCH
        self.batch_size = max(1, int(batch_size))
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        fp = f"random{seed}" if checkpoint is None else _checkpoint_fingerprint(Path(checkpoint))
        self.model_id = f"sam2_{model}@{self.input_size}:{fp}"
        self.dim = EMBED_DIM
        self.model.to(self.device)
        self.model.image_encoder.to(self.dtype)
        self._mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def __repr__(self) -> str:
        return f"Sam2Extractor({self.model_id}, device={self.device}, dtype={self.dtype})"

    def preprocess(self, image: Any) -> tuple[torch.Tensor, tuple[int, int]]:
        """-> ((3, S, S) normalized float32 tensor, (H, W) original): SAM2Transforms without torchvision."""
        arr = image_to_uint8_hwc(image)
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].float() / 255.0
        s = self.input_size
        x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return ((x - self._mean) / self._std)[0], (int(arr.shape[0]), int(arr.shape[1]))

    @torch.inference_mode()
    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) preprocessed -> (B, 256, S/16, S/16) float32 CPU image embeddings (+ no_mem_embed)."""
        out = self.model.image_encoder(batch.to(self.device, self.dtype))
        emb = out["backbone_fpn"][-1].float()
        if getattr(self.model, "directly_add_no_mem_embed", False):
            emb = emb + self.model.no_mem_embed.float().reshape(1, -1, 1, 1)
        return emb.cpu()

    def extract(self, image: Any) -> FeatureGrid:
        return self.extract_batch([image])[0]

    def extract_batch(self, images: Sequence[Any]) -> list[FeatureGrid]:
        out: list[FeatureGrid] = []
        for i in range(0, len(images), self.batch_size):
            pre = [self.preprocess(im) for im in images[i:i + self.batch_size]]
            emb = self.encode(torch.stack([p[0] for p in pre]))
            for (_, (h0, w0)), e in zip(pre, emb):
                out.append(FeatureGrid(square_to_isotropic(e, (h0, w0)).contiguous(), self.grid_size / max(h0, w0),
                                       (h0, w0), self.model_id))
        return out

    def prompt_model(self) -> Sam2PromptModel:
        """Prompt encoder + mask decoder of the same checkpoint (for ``segment_view``)."""
        return Sam2PromptModel(self.model, self.input_size, 0.0, self.model_id)
