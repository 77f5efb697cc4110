"""2D/3D token orderings (scans) and a wrapper that runs any mixer along them.

``create_scan(name, grid, **kw)`` gives a cached :class:`Scan` (``paths``, ``inverse``, ``gather``,
``merge``); ``ScannedMixer`` runs a mixer along the K paths of a scan and merges the results.
"""
from .base import Scan, check_grid, create_scan, list_scans, locality, register_scan
from . import orders  # noqa: F401  (registers the orderings)
from .curves import hilbert_order
from .mixer import ScannedMixer

__all__ = ["Scan", "ScannedMixer", "check_grid", "create_scan", "hilbert_order", "list_scans",
           "locality", "register_scan"]
