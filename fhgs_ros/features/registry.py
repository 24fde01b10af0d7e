"""Feature extractors by name, and the one mapping from the ``features:`` configuration to an extractor.

``make_extractor("sam", checkpoint=..., model="vit_b")``, ``make_extractor("sam2", checkpoint=..., model="hiera_t")``, ``make_extractor("label", num_labels=8)``;
:func:`make_extractor_from_config` takes the YAML ``features:`` block (``extractor: sam``,
``sam_checkpoint: ...``, ``cache_dir: ...``; any non-empty ``cache_dir`` wraps the extractor in
the on-disk cache); :func:`build_extractor` adds the checks with advice that a user needs when
the configuration cannot work (no checkpoint, no labels).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from fhgs_ros.config import ConfigError, FHGSConfig
from fhgs_ros.features.base import FeatureError, FeatureExtractor

_REGISTRY: dict[str, Callable[..., FeatureExtractor]] = {}
# Built-ins are imported lazily so that importing this module never imports segment_anything or sam2.
_LAZY: dict[str, str] = {
    "sam": "fhgs_ros.features.sam:SamExtractor",
    "sam2": "fhgs_ros.features.sam2:Sam2Extractor",
    "label": "fhgs_ros.features.label_extractor:LabelExtractor",
    "vgg16": "fhgs_ros.features.vgg16:VGG16Extractor",
}


def register_extractor(name: str, factory: Callable[..., FeatureExtractor] | None = None):
    """Register ``factory`` (a class or callable taking config keywords) under ``name``.

    Usable as ``register_extractor("x", Cls)`` or as a class decorator ``@register_extractor("x")``.
    """
    def _do(f):
        _REGISTRY[name] = f
        return f

    return _do if factory is None else _do(factory)


def available_extractors() -> list[str]:
    return sorted(set(_REGISTRY) | set(_LAZY))


def _factory(name: str) -> Callable[..., FeatureExtractor]:
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _LAZY:
        mod, attr = _LAZY[name].split(":")
        f = getattr(importlib.import_module(mod), attr)
        _REGISTRY.setdefault(name, f)
        return _REGISTRY[name]
    raise FeatureError(f"unknown feature extractor '{name}'; available: {', '.join(available_extractors())}")


def make_extractor(name: str, **config: Any) -> FeatureExtractor:
    """Build the extractor registered as ``name`` from keyword config (YAML keys).

    Unknown keys raise FeatureError naming the key and the accepted ones. ``cache_dir`` (and
    ``cache_dtype``) is understood for every extractor: a non-empty value wraps the result in
    :class:`fhgs_ros.features.cache.CachedExtractor`.
    """
    config = dict(config)
    cache_dir = config.pop("cache_dir", None)
    cache_dtype = config.pop("cache_dtype", "float16")
    factory = _factory(name)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # signature not introspectable: let the factory check
        params = None
    if params is not None and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        bad = [k for k in config if k not in params]
        if bad:
            ok = [k for k in params if k != "self"]
            raise FeatureError(f"feature extractor '{name}': unknown config key(s) {bad}; accepted: {ok}")
    ext = factory(**config)
    if cache_dir:
        from fhgs_ros.features.cache import CachedExtractor
        ext = CachedExtractor(ext, cache_dir, dtype=cache_dtype)
    return ext


def make_extractor_from_config(cfg: Any) -> FeatureExtractor:
    """Build from the YAML ``features:`` block (a mapping or an object with those attributes).

    ``extractor`` (or ``name``) picks the extractor. Keys prefixed with its name are passed without
    the prefix (``sam_checkpoint`` -> ``checkpoint``, ``sam_model`` -> ``model``, ``sam_input_size``
    -> ``input_size``); keys prefixed with another extractor's name are ignored; other keys
    (``device``, ``dim``, ``grid_long_side``, ...) are passed when the extractor accepts them.
    A nested mapping under the extractor's name is merged in too. ``cache_dir`` (empty = none)
    wraps the extractor in the on-disk cache.
    """
    if not isinstance(cfg, dict):
        cfg = {k: v for k, v in vars(cfg).items() if not k.startswith("_")}
    cfg = dict(cfg)
    name = cfg.pop("extractor", None) or cfg.pop("name", None)
    if not name:
        raise FeatureError("features config needs 'extractor' (one of: " + ", ".join(available_extractors()) + ")")
    factory = _factory(name)
    try:
        params = inspect.signature(factory).parameters
        accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        params, accepts_any = {}, True
    kwargs: dict[str, Any] = {}
    nested = cfg.pop(name, None) or {}
    others = [o for o in available_extractors() if o != name]
    for k, v in cfg.items():
        if k in ("cache_dir", "cache_dtype"):
            kwargs[k] = v
        elif k.startswith(name + "_"):
            kwargs[k[len(name) + 1:]] = v
        elif k in others or any(k.startswith(o + "_") for o in others):
            continue
        elif accepts_any or k in params:
            kwargs[k] = v
    kwargs.update(nested)
    return make_extractor(name, **kwargs)


def build_extractor(cfg: FHGSConfig) -> FeatureExtractor:
    """The feature extractor of ``cfg.features`` for the node, the batch mappers and ``fhgs-map``
    (``auto`` resolved by :mod:`fhgs_ros.features.selection`). Raises ConfigError with what to change."""
    from fhgs_ros.features.selection import ExtractorConfigError, build_feature_extractor
    try:
        return build_feature_extractor(cfg.features)
    except ExtractorConfigError as exc:
        raise ConfigError(str(exc)) from None
