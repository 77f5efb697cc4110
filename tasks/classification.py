"""Classification task: images or audio clips (clip-level), or per-frame labels (streaming models).

A task knows three things: how to build its model for a dataset, the loss of a batch, and how to
turn gathered outputs into metrics.  New tasks (captioning, video) are new modules of this shape.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

import mmeff

from .metrics import mean_average_precision, topk_accuracy


class ClassificationTask:
    """Single-label (top-1/top-5) or multi-label (mAP) classification, clip- or frame-level."""

    def __init__(self, target: str = "clip", label_smoothing: float = 0.0) -> None:
        self.target, self.label_smoothing = target, label_smoothing

    def build_model(self, name: str, dataset, **kwargs: Any) -> nn.Module:
        return mmeff.create_model(name, num_classes=dataset.num_classes, **kwargs)

    def labels(self, batch: Dict[str, Any]) -> torch.Tensor:
        return batch["frame_labels"] if self.target == "frame" else batch["label"]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.target == "frame":  # logits [B, F, C] vs labels [B, F'] on the same time axis
            labels = _align_frames(labels, logits.shape[1])
            return F.cross_entropy(logits.flatten(0, 1), labels.flatten(),
                                   label_smoothing=self.label_smoothing)
        if labels.is_floating_point():  # multi-hot
            return F.binary_cross_entropy_with_logits(logits, labels)
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)

    def metrics(self, logits: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
        logits = logits.float()
        if self.target == "frame":
            labels = _align_frames(labels, logits.shape[1])
            logits, labels = logits.flatten(0, 1), labels.flatten()
        if labels.is_floating_point():
            return {"mAP": mean_average_precision(logits.sigmoid(), labels)}
        return topk_accuracy(logits, labels, ks=(1, 5))

    def predictions(self, logits: torch.Tensor, k: int) -> List[Tuple[int, float]]:
        """(class, confidence) of the first ``k`` rows (clip-level: argmax of the softmax)."""
        probs = logits[:k].float().softmax(-1)
        if self.target == "frame":
            probs = probs.mean(1)
        conf, cls = probs.max(-1)
        return list(zip(cls.tolist(), conf.tolist()))


def _align_frames(labels: torch.Tensor, frames: int) -> torch.Tensor:
    """Nearest-neighbour resample of frame labels [B, F'] to ``frames`` steps."""
    if labels.shape[1] == frames:
        return labels
    idx = (torch.arange(frames, device=labels.device) * labels.shape[1]) // frames
    return labels[:, idx]


TASKS = {"classification": ClassificationTask}
