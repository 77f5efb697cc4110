"""Functional ops: each op's naive reference and fast forms, behind one signature per family.

Drop-in for ``fla.ops`` and ``mamba_ssm`` (same argument names, layouts ``[B, T, H, D]`` and
returns ``(o, final_state)``); :mod:`mmeff.ops._dispatch` says which implementation ran.
"""
from ._dispatch import dispatch, force_backend, implementations, last_backend
from .delta_rule import (chunk_delta_rule, chunk_gated_delta_rule, fused_recurrent_delta_rule,
                         fused_recurrent_gated_delta_rule)
from .gla import chunk_gla, fused_recurrent_gla
from .sparse_attention import (block_sparse_attention, compressed_attention, moba_attention,
                               moba_select, neighborhood_attention, nsa_select, selected_attention,
                               sliding_window_attention, window_attention)
from .selective_scan import selective_scan_fn, selective_scan_ref
from .simple_gla import chunk_simple_gla, fused_recurrent_simple_gla
from .ssd import mamba_chunk_scan_combined, ssd_naive

__all__ = ["dispatch", "force_backend", "implementations", "last_backend",
           "chunk_delta_rule", "chunk_gated_delta_rule", "fused_recurrent_delta_rule",
           "fused_recurrent_gated_delta_rule",
           "chunk_gla", "fused_recurrent_gla", "chunk_simple_gla", "fused_recurrent_simple_gla",
           "block_sparse_attention", "compressed_attention", "moba_attention", "moba_select",
           "neighborhood_attention", "nsa_select", "selected_attention", "sliding_window_attention",
           "window_attention",
           "selective_scan_fn", "selective_scan_ref", "mamba_chunk_scan_combined", "ssd_naive"]
