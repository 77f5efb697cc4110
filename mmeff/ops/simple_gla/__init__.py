"""Linear attention with one log-decay per head (RetNet, Lightning attention, SSD, linear attention).

Forms: ``naive`` (the spec), ``chunk`` (the default) and ``fused_recurrent`` (token by token), all
thin wrappers over the shared cores of :mod:`mmeff.ops.gla` with the gate broadcast over ``K``.
"""
from . import naive  # noqa: F401  (registers the reference implementation)
from .chunk import chunk_simple_gla
from .fused_recurrent import fused_recurrent_simple_gla

__all__ = ["chunk_simple_gla", "fused_recurrent_simple_gla"]
