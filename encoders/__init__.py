"""Encoder families, registered in timm's registry on import (``mmeff.encoders``)."""
from . import vit  # noqa: F401
