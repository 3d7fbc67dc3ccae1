"""Backbones. Importing this package registers every variant and backbone family (see `_registry`)."""

from stts.models._registry import (checkpoint_filter_for, create_model, list_models, load_pretrained, model_entry,
                                   official_readers, register_family, register_model)
from stts.models.base import VideoClassifier

__all__ = ["create_model", "list_models", "model_entry", "register_model", "register_family", "load_pretrained",
           "checkpoint_filter_for", "official_readers", "VideoClassifier"]

# One import per backbone module; each registers its variants and family at the bottom of its file.
from stts.models import mvit  # noqa: E402,F401
from stts.models import swin3d  # noqa: E402,F401
from stts.models import vit  # noqa: E402,F401
