"""Delta rule (DeltaNet) and gated delta rule (Gated DeltaNet): one family, one folder.

The plain delta rule is the gated one with no decay (``g=None`` inside), so both ops share every
form: ``naive`` (the spec), ``chunk`` (WY / UT-transform chunked form, the default) and
``fused_recurrent`` (token by token, for decoding).
"""
from . import naive  # noqa: F401  (registers the reference implementations)
from .chunk import chunk_delta_rule, chunk_gated_delta_rule
from .fused_recurrent import fused_recurrent_delta_rule, fused_recurrent_gated_delta_rule

__all__ = ["chunk_delta_rule", "chunk_gated_delta_rule", "fused_recurrent_delta_rule",
           "fused_recurrent_gated_delta_rule"]
