"""Backbones. Importing this package registers every variant (see `_registry`)."""

from stts.models._registry import create_model, list_models, model_entry, register_model

__all__ = ["create_model", "list_models", "model_entry", "register_model"]

# One import per backbone module; each registers its variants at the bottom of its file.
from stts.models import mvit  # noqa: E402,F401
from stts.models import swin3d  # noqa: E402,F401
from stts.models import vit  # noqa: E402,F401
