"""Readers for users' own data laid out as ``root/<split>/<class>/<file>``.

- ``image_folder``: PNG / JPEG / BMP / WebP images (torchvision's ImageFolder layout), with the usual
  transforms: random-resized-crop + horizontal flip for 'train', resize + center-crop for 'val' /
  'test', then normalisation.
- ``wav_folder``: WAV files read by ``wav.read_wav``, down-mixed to mono, resampled to
  ``sample_rate`` (``torchaudio.functional.resample``) and cropped (random offset for 'train',
  centred otherwise) or zero-padded to ``clip_seconds``.

Class indices come from the sorted class-folder names found under *every* split of ``root`` (or an
explicit ``classes`` list), so they agree between splits even when a split lacks a class. All files
are checked when the dataset is built (image header + PIL ``verify``, WAV header), so a bad file is
reported up front: ``on_corrupt='error'`` raises a ValueError naming it, ``'skip'`` leaves it out
and warns once with the count. Empty class folders are handled by ``on_empty`` the same way.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torchaudio.functional as AF
import torchvision.transforms as T
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset

from .base import SPLITS, check_choice, check_positive, register_dataset, warn_skipped
from .wav import read_wav, wav_info

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
WAV_EXTENSIONS = (".wav",)
POLICIES = ("error", "skip")


def scan_folder(root: str | os.PathLike, split: str, extensions: Sequence[str],
                check: Callable[[Path], object], classes: Optional[Sequence[str]] = None,
                on_empty: str = "error", on_corrupt: str = "error",
                ) -> Tuple[List[str], List[Tuple[Path, int]]]:
    """List ``(file, class index)`` pairs under ``root/split/<class>/`` (searched recursively).

    Args:
        extensions: lower-case file suffixes to keep.
        check: raises on a corrupt file (anything it raises counts as corrupt).
        classes: class-folder names in index order; default: sorted names found under all splits.
    Returns:
        ``(classes, samples)``.
    Raises:
        FileNotFoundError: ``root`` or ``root/split`` is missing (the message names the path).
        ValueError: no class folders; an empty class folder with ``on_empty='error'``; a corrupt file
            with ``on_corrupt='error'``; no usable file at all.
    """
    check_choice("on_empty", on_empty, POLICIES)
    check_choice("on_corrupt", on_corrupt, POLICIES)
    root = Path(root).expanduser()
    split_dir = root / split
    for folder in (root, split_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"data folder not found: {folder} (expected {root}/<split>/<class>/*)")
    if classes is None:
        classes = sorted({d.name for s in SPLITS if (root / s).is_dir() for d in (root / s).iterdir()
                          if d.is_dir() and not d.name.startswith(".")})
    if not classes:
        raise ValueError(f"{split_dir}: no class folders (expected {split_dir}/<class>/*)")
    samples, empty, corrupt = [], [], []
    for label, name in enumerate(classes):
        folder = split_dir / name
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in extensions and p.is_file())
        if not files:
            if on_empty == "error":
                raise ValueError(f"class folder {folder} has no {'/'.join(extensions)} files "
                                 f"(pass on_empty='skip' to allow this)")
            empty.append(str(folder))
        for path in files:
            try:
                check(path)
            except Exception as err:   # PIL and the WAV parser raise various types for bad files
                if on_corrupt == "error":
                    raise ValueError(corrupt_message(path, err)) from err
                corrupt.append(str(path))
                continue
            samples.append((path, label))
    warn_skipped("empty class folders", empty, "on_empty='skip'")
    warn_skipped("corrupt files", corrupt, "on_corrupt='skip'")
    if not samples:
        raise ValueError(f"{split_dir}: no usable {'/'.join(extensions)} files")
    return list(classes), samples


def corrupt_message(path: Path, err: Exception) -> str:
    """'corrupt file <path>: <reason>' (the path once, even when ``err`` already names it)."""
    text = str(err)
    return f"corrupt file {text}" if text.startswith(str(path)) else f"corrupt file {path}: {text}"


def _caption(template: str, name: str) -> str:
    """Caption of a sample of class folder ``name`` ('golden_retriever' -> 'golden retriever')."""
    return template.format(name.replace("_", " "))


def _verify_image(path: Path) -> None:
    with Image.open(path) as im:
        im.verify()


@register_dataset("image_folder")
class ImageFolderDataset(Dataset):
    """Images in ``root/<split>/<class>/*`` with training / evaluation transforms.

    Args:
        split: 'train', 'val' or 'test'.
        root: data folder.
        img_size: output height and width.
        crop_pct: evaluation images are resized to ``img_size / crop_pct`` then center-cropped.
        mean, std: normalisation per channel (default ImageNet's).
        classes: class-folder names in index order (default: sorted folder names of all splits).
        on_empty, on_corrupt: 'error' or 'skip' (see the module docstring).
        caption_template: caption with ``{}`` for the class name.
    """
    task = "image"
    multi_label = False

    def __init__(self, split: str, *, root: str, img_size: int = 224, crop_pct: float = 0.875,
                 mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD,
                 classes: Optional[Sequence[str]] = None, on_empty: str = "error",
                 on_corrupt: str = "error", caption_template: str = "a photo of a {}"):
        self.split = check_choice("split", split, SPLITS)
        self.img_size = check_positive("img_size", img_size)
        self.classes, self.samples = scan_folder(root, split, IMAGE_EXTENSIONS, _verify_image,
                                                 classes, on_empty, on_corrupt)
        self.num_classes = len(self.classes)
        self.mean, self.std, self.caption_template = tuple(mean), tuple(std), caption_template
        if split == "train":
            resize = [T.RandomResizedCrop(img_size), T.RandomHorizontalFlip()]
        else:
            resize = [T.Resize(round(img_size / crop_pct)), T.CenterCrop(img_size)]
        self.transform = T.Compose(resize + [T.ToTensor(), T.Normalize(self.mean, self.std)])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        path, label = self.samples[index]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except Exception as err:   # a file that passed verify() can still fail to decode
            raise ValueError(corrupt_message(path, err)) from err
        return {"input": self.transform(img), "label": label,                 # input [3, H, W]
                "caption": _caption(self.caption_template, self.classes[label])}


@register_dataset("wav_folder")
class WavFolderDataset(Dataset):
    """WAV clips in ``root/<split>/<class>/*.wav``, mono at ``sample_rate``, ``clip_seconds`` long.

    ``frame_labels`` repeats the clip's class on every frame (folders carry clip labels only).

    Args:
        split: 'train', 'val' or 'test'.
        root: data folder.
        sample_rate: output rate in Hz; files at other rates are resampled.
        clip_seconds: output length; longer files are cropped (random offset for 'train', centred
            otherwise), shorter ones zero-padded at the end.
        frame_hop: samples per frame of ``frame_labels``.
        classes, on_empty, on_corrupt, caption_template: as for ``image_folder``.
    """
    task = "audio"
    multi_label = False

    def __init__(self, split: str, *, root: str, sample_rate: int = 16000, clip_seconds: float = 1.0,
                 frame_hop: int = 160, classes: Optional[Sequence[str]] = None, on_empty: str = "error",
                 on_corrupt: str = "error", caption_template: str = "a recording of {}"):
        self.split = check_choice("split", split, SPLITS)
        self.sample_rate = check_positive("sample_rate", sample_rate)
        self.frame_hop = check_positive("frame_hop", frame_hop)
        self.clip_samples = check_positive("clip_seconds * sample_rate", round(clip_seconds * sample_rate))
        self.num_frames = self.clip_samples // frame_hop
        self.classes, self.samples = scan_folder(root, split, WAV_EXTENSIONS, wav_info,
                                                 classes, on_empty, on_corrupt)
        self.num_classes = len(self.classes)
        self.caption_template = caption_template

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, path: Path) -> torch.Tensor:
        """Mono waveform of ``path`` at ``sample_rate``, uncropped. # [samples]"""
        wave, rate = read_wav(path)                                          # [C, S]
        wave = wave.mean(0)                                                  # down-mix, [S]
        if rate != self.sample_rate:
            wave = AF.resample(wave, rate, self.sample_rate)
        return wave

    def __getitem__(self, index: int) -> dict:
        path, label = self.samples[index]
        wave = self.load(path)
        excess = wave.shape[0] - self.clip_samples
        if excess > 0:
            start = int(torch.randint(excess + 1, ())) if self.split == "train" else excess // 2
            wave = wave[start:start + self.clip_samples]
        else:
            wave = torch.nn.functional.pad(wave, (0, -excess))
        return {"input": wave, "label": label,                               # input [clip_samples]
                "caption": _caption(self.caption_template, self.classes[label]),
                "frame_labels": torch.full((self.num_frames,), label, dtype=torch.long)}
