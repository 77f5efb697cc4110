"""Config validation and metrics, checked on hand-computed examples."""
import math

import pytest
import torch

from mmeff.tasks.config import load_config
from mmeff.tasks.metrics import average_precision, mean_average_precision, topk_accuracy


def test_config_overrides_and_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: mixervit_test\ntrain:\n  lr: 0.01\n  epochs: 2\n")
    cfg = load_config(str(path), ["train.lr=3e-4", "data.batch_size=16", "model.kwargs={depth: 1}"])
    assert cfg.train.lr == 3e-4 and cfg.train.epochs == 2 and cfg.data.batch_size == 16
    assert cfg.model.kwargs == {"depth": 1}
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0  # ints are fine where floats are expected


@pytest.mark.parametrize("override, match", [
    ("train.lrr=0.1", "train.lrr"),
    ("train.lr=fast", "train.lr: expected float"),
    ("train.epochs=1.5", "train.epochs: expected int"),
    ("train.compile=maybe", "train.compile: expected bool"),
    ("train.precision=fp8", "train.precision"),
    ("data.batch_size=0", "data.batch_size"),
    ("nokey", "key=value"),
])
def test_config_errors_name_the_key(override, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, [override])


def test_config_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(str(bad))
    typo = tmp_path / "typo.yaml"
    typo.write_text("trian:\n  lr: 1\n")
    with pytest.raises(ValueError, match="'trian'"):
        load_config(str(typo))


def test_topk_accuracy_hand_computed():
    logits = torch.tensor([[0.1, 0.9, 0.0],    # top1 = 1
                           [0.8, 0.1, 0.7],    # top1 = 0, top2 = {0, 2}
                           [0.2, 0.3, 0.5]])   # top1 = 2
    target = torch.tensor([1, 2, 0])
    acc = topk_accuracy(logits, target, ks=(1, 2, 5))
    assert acc["top1"] == pytest.approx(1 / 3)
    assert acc["top2"] == pytest.approx(2 / 3)
    assert acc["top5"] == pytest.approx(1.0)  # k capped at the number of classes


def test_average_precision_hand_computed():
    # class 0: ranked targets [1, 0, 1] -> precisions at hits 1/1, 2/3 -> AP = (1 + 2/3) / 2
    # class 1: ranked targets [0, 1, 0] -> AP = 1/2; class 2: no positive -> NaN, left out of mAP
    scores = torch.tensor([[0.9, 0.8, 0.1], [0.5, 0.9, 0.2], [0.4, 0.1, 0.3]])
    target = torch.tensor([[1, 0, 0], [0, 0, 0], [1, 1, 0]])
    ap = average_precision(scores, target)
    assert ap[0].item() == pytest.approx((1 + 2 / 3) / 2)
    # class 1 ranking by score: rows 1 (0.9, t=0), 0 (0.8, t=0), 2 (0.1, t=1) -> AP = 1/3
    assert ap[1].item() == pytest.approx(1 / 3)
    assert math.isnan(ap[2].item())
    assert mean_average_precision(scores, target) == pytest.approx(((1 + 2 / 3) / 2 + 1 / 3) / 2)
