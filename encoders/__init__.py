"""Encoder families, registered in timm's registry on import (``mmeff.encoders``)."""
from . import vit  # noqa: F401
from . import localmamba, mambavision, plainmamba, vig, vim, vmamba  # noqa: F401
from . import audiomamba, streaming  # noqa: F401
