"""Gated linear attention with a per-key-channel decay (GLA, HGRN2, RWKV-6-style decays).

Forms: ``naive`` (the spec), ``chunk`` (the default) and ``fused_recurrent`` (token by token);
the same cores serve the per-head family :mod:`mmeff.ops.simple_gla`.
"""
from . import naive  # noqa: F401  (registers the reference implementation)
from .chunk import chunk_gla
from .fused_recurrent import fused_recurrent_gla

__all__ = ["chunk_gla", "fused_recurrent_gla"]
