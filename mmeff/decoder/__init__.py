"""Hybrid MoE multimodal decoder (filled in by the decoder issue)."""
