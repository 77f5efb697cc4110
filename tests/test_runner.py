"""The training runner: exact resume, 1 vs 2 processes, atomic checkpoints, eval, bad input."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from mmeff.tasks import checkpoint as ckpt
from mmeff.tasks.config import load_config
from mmeff.tasks.runner import evaluate, train

BASE = ["model.name=mixervit_test", "model.kwargs={embed_dim: 16, depth: 2, mixer_kwargs: {num_heads: 2}, drop_path_rate: 0.1}",
        "data.name=shapes", "data.kwargs={num_samples: 64, img_size: 32}", "data.batch_size=16",
        "data.eval_batch_size=32", "train.epochs=2", "train.log_every=1", "train.warmup_steps=2",
        "show_predictions=0", "device=cpu"]


def _cfg(out, *extra):
    return load_config(None, BASE + [f"output_dir={out}", *extra])


def _weights(out):
    return load_file(os.path.join(ckpt.latest(str(out)), "model.safetensors"))


def _losses(out):
    recs = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    return [r["loss"] for r in recs if r["split"] == "train"]


def test_resume_continues_exactly(tmp_path):
    train(_cfg(tmp_path / "full"))
    train(_cfg(tmp_path / "cut", "train.max_steps=3", "train.checkpoint_every=1"))  # "killed" at 3
    assert ckpt.latest(str(tmp_path / "cut")).endswith("step_00000003")
    train(_cfg(tmp_path / "cut", "resume=true"))
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "full")
    assert os.path.isfile(tmp_path / "full" / "curves.png")


def test_two_processes_follow_the_same_curve(tmp_path):
    """1 process vs 2 (gloo) with the same global batch: DDP, and FSDP2 ``fully_shard`` per block;
    an FSDP2 run stopped after 2 steps and resumed continues its curve exactly."""
    args = [a for a in BASE if not a.startswith("model.kwargs")]
    args += ["model.kwargs={embed_dim: 16, depth: 2, mixer_kwargs: {num_heads: 2}}", "train.epochs=1"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    fsdp = ["dist.fsdp=true"]
    runs = [("one", [sys.executable], []), ("ddp", torchrun, []), ("fsdp", torchrun, fsdp),
            ("cut", torchrun, [*fsdp, "train.max_steps=2", "train.checkpoint_every=1"]),
            ("cut", torchrun, [*fsdp, "resume=true"])]
    for name, launcher, extra in runs:
        r = subprocess.run([*launcher, "-m", "mmeff.cli", "train", "/dev/null", *args, *extra,
                            f"output_dir={tmp_path / name}"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
    l1 = torch.tensor(_losses(tmp_path / "one"))
    assert len(l1) == 4
    for name in ("ddp", "fsdp"):
        torch.testing.assert_close(torch.tensor(_losses(tmp_path / name)), l1, rtol=1e-4, atol=1e-5)
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "fsdp")
    a, b = _weights(tmp_path / "fsdp"), _weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_disk_full_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path / "run", "train.max_steps=2", "train.checkpoint_every=1")
    calls = {"n": 0}
    real = ckpt.save_file

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint's weights: the disk is full
            raise OSError(28, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(ckpt, "save_file", flaky)
    with pytest.raises(RuntimeError, match="previous checkpoint is intact"):
        train(cfg)
    latest = ckpt.latest(str(tmp_path / "run"))
    assert latest.endswith("step_00000001")
    assert ckpt.load(latest)["trainer"]["step"] == 1
    leftovers = [d for d in os.listdir(tmp_path / "run" / "checkpoints") if d.startswith(".tmp")]
    assert leftovers == []


def test_eval_and_checkpoint_of_another_model(tmp_path):
    cfg = _cfg(tmp_path / "run", "train.max_steps=1")
    train(cfg)
    res = evaluate(cfg, str(tmp_path / "run"))
    assert 0.0 <= res["top1"] <= 1.0
    other = load_config(None, BASE + ["model.kwargs={embed_dim: 24, depth: 1, mixer_kwargs: {num_heads: 2}}"])
    with pytest.raises(ValueError, match="shape mismatch|unexpected"):
        evaluate(other, str(tmp_path / "run"))


def test_bad_data_config(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        train(_cfg(tmp_path / "r", "data.batch_size=128"))
    with pytest.raises(FileNotFoundError):
        train(load_config(None, BASE + ["data.name=image_folder",
                                        f"data.kwargs={{root: {tmp_path / 'missing'}}}",
                                        f"output_dir={tmp_path / 'r2'}"]))
