"""Mamba-1's selective scan (S6), mamba_ssm-compatible: ``selective_scan_fn`` / ``selective_scan_ref``.

Forms: ``naive`` (the fp32 loop over time, the spec) and ``chunk`` (the default: a closed form
inside each chunk, exact fallback for very strong decays, written-out backward; see :mod:`.chunk`).
"""
from .chunk import selective_scan_fn
from .naive import selective_scan_ref

__all__ = ["selective_scan_fn", "selective_scan_ref"]
