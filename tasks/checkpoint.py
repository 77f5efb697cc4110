"""Training checkpoints: weights as safetensors, trainer state beside them, written atomically.

A checkpoint is a directory ``<output_dir>/checkpoints/step_<N>/`` holding ``model.safetensors``,
``ema.safetensors`` (if EMA is on) and ``trainer.pt`` (optimizer, scheduler, step, RNG states).
It is written into a temporary directory and renamed into place, then ``latest`` (a one-line text
file) is replaced atomically; an error midway (a full disk, say) leaves the previous checkpoint and
``latest`` untouched.  Only the newest ``keep`` checkpoints are kept.
"""
from __future__ import annotations

import os
import random
import shutil
import tempfile
from typing import Any, Dict, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn


def _weights(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu().clone() for k, v in model.state_dict().items()}


def rng_state() -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_pos": random.getstate()[2]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(int(v) for v in state["python"]), state["python_pos"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(output_dir: str, step: int, model: nn.Module, trainer_state: Dict[str, Any],
         ema: Optional[nn.Module] = None, keep: int = 2) -> str:
    """Write checkpoint ``step`` atomically; return its directory."""
    root = os.path.join(output_dir, "checkpoints")
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, f"step_{step:08d}")
    tmp = tempfile.mkdtemp(prefix=".tmp_step_", dir=root)
    try:
        save_file(_weights(model), os.path.join(tmp, "model.safetensors"))
        if ema is not None:
            save_file(_weights(ema), os.path.join(tmp, "ema.safetensors"))
        torch.save({**trainer_state, "step": step, "rng": rng_state()}, os.path.join(tmp, "trainer.pt"))
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        latest_tmp = os.path.join(root, ".latest.tmp")
        with open(latest_tmp, "w") as f:
            f.write(os.path.basename(final) + "\n")
        os.replace(latest_tmp, os.path.join(root, "latest"))
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise RuntimeError(f"could not write checkpoint step {step} to {root}: {e}; "
                               f"the previous checkpoint is intact") from e
        raise
    olds = sorted(d for d in os.listdir(root) if d.startswith("step_") and d != os.path.basename(final))
    for d in olds[:max(0, len(olds) - (keep - 1))]:
        shutil.rmtree(os.path.join(root, d), ignore_errors=True)
    return final


def latest(output_dir: str) -> Optional[str]:
    """Directory of the newest complete checkpoint in ``output_dir`` (None if there is none)."""
    pointer = os.path.join(output_dir, "checkpoints", "latest")
    if not os.path.isfile(pointer):
        return None
    with open(pointer) as f:
        path = os.path.join(output_dir, "checkpoints", f.read().strip())
    return path if os.path.isdir(path) else None


def load(ckpt_dir: str) -> Dict[str, Any]:
    """``{"model": state_dict, "ema": state_dict | None, "trainer": dict}`` of a checkpoint directory."""
    ema_path = os.path.join(ckpt_dir, "ema.safetensors")
    return {"model": load_file(os.path.join(ckpt_dir, "model.safetensors")),
            "ema": load_file(ema_path) if os.path.isfile(ema_path) else None,
            "trainer": torch.load(os.path.join(ckpt_dir, "trainer.pt"), weights_only=True)}
