"""Mamba-2's SSD scan, mamba_ssm-compatible: ``mamba_chunk_scan_combined`` / ``ssd_naive``.

Forms: ``naive`` (the fp32 loop over time, the spec) and ``chunk`` (the default: the paper's
chunked algorithm in matmuls, see :mod:`.chunk`).
"""
from .chunk import mamba_chunk_scan_combined
from .naive import ssd_naive

__all__ = ["mamba_chunk_scan_combined", "ssd_naive"]
