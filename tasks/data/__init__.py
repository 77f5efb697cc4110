"""Datasets for mmeff's tasks: generated ones (``shapes``, ``audio_events``) and readers of users'
folders (``image_folder``, ``wav_folder``).

``build_dataset(name, split, **kwargs)`` creates any of them; ``list_datasets()`` names them. Every
sample is a dict ``{"input": Tensor, "label": int | multi-hot Tensor, "caption": str}`` (audio adds
``"frame_labels"``) that ``torch.utils.data.default_collate`` batches.
"""
from . import audio_events, folders, shapes  # noqa: F401  (register their datasets)
from .base import DATASETS, SPLITS, build_dataset, list_datasets, register_dataset
from .wav import read_wav, write_wav

__all__ = ["DATASETS", "SPLITS", "build_dataset", "list_datasets", "register_dataset", "read_wav",
           "write_wav"]
