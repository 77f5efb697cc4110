"""Dataset registry and the small helpers every dataset here shares.

``build_dataset(name, split, **kwargs)`` is the one entry point the task runner uses; a dataset is a
``torch.utils.data.Dataset`` class registered with ``@register_dataset(name)`` whose ``__init__``
takes ``split`` plus keyword-only options. Unknown options are refused here, once, for all of them.
"""
from __future__ import annotations

import inspect
import random
import warnings
from typing import Callable, Dict, Iterable, List, Sequence

import torch
from torch.utils.data import Dataset

SPLITS = ("train", "val", "test")

DATASETS: Dict[str, Callable[..., Dataset]] = {}


def register_dataset(name: str) -> Callable:
    """Class decorator adding a dataset factory to ``DATASETS`` under ``name``."""
    def wrap(factory: Callable) -> Callable:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        DATASETS[name] = factory
        return factory
    return wrap


def list_datasets() -> List[str]:
    """Names of all registered datasets, sorted."""
    return sorted(DATASETS)


def dataset_options(name: str) -> Dict[str, inspect.Parameter]:
    """Keyword options of dataset ``name`` (everything its factory takes except ``split``)."""
    if name not in DATASETS:
        raise ValueError(f"name: expected one of {list_datasets()}, got {name!r}")
    params = inspect.signature(DATASETS[name]).parameters
    return {k: p for k, p in params.items() if k != "split"}


def build_dataset(name: str, split: str, **kwargs) -> Dataset:
    """Create dataset ``name`` for ``split`` ('train', 'val' or 'test') with its keyword options.

    Raises:
        ValueError: unknown name or split, an option the dataset does not take (the message lists the
            valid ones), or a required option left out.
    """
    options = dataset_options(name)
    check_choice("split", split, SPLITS)
    for key in kwargs:
        if key not in options:
            raise ValueError(f"{name}: unknown option {key!r}; valid options: {sorted(options)}")
    missing = [k for k, p in options.items() if p.default is inspect.Parameter.empty and k not in kwargs]
    if missing:
        raise ValueError(f"{name}: missing required option(s) {missing}")
    return DATASETS[name](split=split, **kwargs)


def check_choice(arg: str, value, choices: Sequence):
    """Raise ValueError naming ``arg`` unless ``value`` is one of ``choices``; return ``value``."""
    if value not in choices:
        raise ValueError(f"{arg}: expected one of {list(choices)}, got {value!r}")
    return value


def check_positive(arg: str, value, minimum=1):
    """Raise ValueError naming ``arg`` unless ``value >= minimum``; return ``value``."""
    if not value >= minimum:
        raise ValueError(f"{arg}: expected a number >= {minimum}, got {value!r}")
    return value


def sample_rng(name: str, seed: int, split: str, index: int) -> random.Random:
    """A reproducible random stream for one generated sample.

    Derived from ``(name, seed, split, index)`` only, so a sample never depends on ``num_samples``,
    on the order of access or on worker processes, and the splits draw from disjoint streams.
    """
    return random.Random(f"{name}/{seed}/{split}/{index}")   # str seeds hash with sha512: stable


def torch_generator(rng: random.Random) -> torch.Generator:
    """A torch CPU generator seeded from ``rng`` (for tensor-valued noise of the same sample)."""
    return torch.Generator().manual_seed(rng.getrandbits(63))


def check_index(index: int, length: int) -> int:
    """Normalise a possibly negative ``index``; IndexError when out of ``range(length)``."""
    if index < 0:
        index += length
    if not 0 <= index < length:
        raise IndexError(f"index {index} out of range for a dataset of {length} samples")
    return index


def warn_skipped(what: str, items: Iterable[str], reason: str) -> None:
    """One warning for all ``items`` that were skipped (count plus the first few names)."""
    items = list(items)
    if items:
        shown = ", ".join(items[:5]) + (", ..." if len(items) > 5 else "")
        warnings.warn(f"skipped {len(items)} {what} ({reason}): {shown}", stacklevel=3)
