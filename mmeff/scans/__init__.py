"""2D/3D token orderings (filled in by the scans issue)."""
