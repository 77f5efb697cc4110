"""DESIGN.md's contracts as tests: every registered mixer, the Block, op dispatch, the registries."""
import logging

import pytest
import torch

import mmeff
from mmeff.blocks import Block
from mmeff.mixers import Mixer, mixer_class
from mmeff.ops import _dispatch
from mmeff.testing import assert_close, random_splits, run_in_chunks

DIM = 64
# mixers whose construction needs more than a width (e.g. a grid for 2D/3D neighbourhoods)
EXTRA_KW = {"neighborhood": dict(grid=(3, 4, 5), kernel_size=3),
            "window": dict(grid=(4, 6), window_size=2, shift_size=1)}
GRID_L = {"neighborhood": 60, "window": 24}  # mixer name -> sequence length implied by its grid


def _mixer(name, causal):
    return mmeff.create_mixer(name, DIM, causal=causal, **EXTRA_KW.get(name, {}))


@pytest.mark.parametrize("name", mmeff.list_mixers())
def test_mixer_forward_contract(name):
    for causal in (True, False):
        try:
            m = _mixer(name, causal)
        except ValueError as e:  # a family that exists only in one direction says so clearly
            assert "causal" in str(e)
            continue
        assert isinstance(m, Mixer) and m.causal is causal
        L = GRID_L.get(name, 19)
        x = torch.randn(2, L, DIM, requires_grad=True)
        y = m(x)
        assert y.shape == x.shape and torch.isfinite(y).all()
        y.square().mean().backward()
        assert torch.isfinite(x.grad).all()
        with pytest.raises(ValueError, match=r"\[B, L"):
            m(torch.randn(2, L, DIM + 1))
        if not causal:
            with pytest.raises(RuntimeError, match="causal"):
                m.step(x[:, :1], None)


@pytest.mark.parametrize("name", mmeff.list_mixers())
def test_mixer_step_equals_forward(name):
    try:
        m = _mixer(name, True).eval()
    except ValueError:
        pytest.skip(f"{name} has no causal form")
    L = GRID_L.get(name, 23)
    x = torch.randn(2, L, DIM)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        full = m(x)
        for _ in range(2):
            y, _ = run_in_chunks(m.step, x, m.init_state(2), random_splits(L, gen))
            assert_close(f"{name} step", y, full, 1e-5)


def test_create_mixer_errors():
    with pytest.raises(ValueError, match="did you mean"):
        mmeff.create_mixer("atention", DIM)
    with pytest.raises(ValueError, match="unknown argument"):
        mmeff.create_mixer("attention", DIM, no_such=1)
    with pytest.raises(ValueError, match="num_heads"):
        mmeff.create_mixer("attention", DIM, num_heads=5)
    assert mixer_class("attention").mixer_name == "attention"


def test_block_residual_and_streaming():
    blk = Block(DIM, "attention", mixer_kwargs=dict(num_heads=4, causal=True)).eval()
    x = torch.randn(2, 11, DIM)
    with torch.no_grad():
        y = blk(x)
        ys, _ = run_in_chunks(blk.step, x, blk.init_state(2), [4, 1, 6])
    assert_close("block step", ys, y, 1e-5)
    # zeroed output projections make the block the identity: the residual is there
    with torch.no_grad():
        blk.mixer.proj.weight.zero_(), blk.mixer.proj.bias.zero_()
        blk.ffn.fc2.weight.zero_(), blk.ffn.fc2.bias.zero_()
        torch.testing.assert_close(blk(x), x)


def test_block_residual_in_fp32_under_autocast():
    blk = Block(DIM, "attention", mixer_kwargs=dict(causal=False), residual_in_fp32=True)
    x = torch.randn(2, 7, DIM)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = blk(x)
    assert y.dtype == torch.float32
    no_ffn = Block(DIM, "attention", mlp_ratio=0)
    assert no_ffn.ffn is None and no_ffn(x).shape == x.shape


def test_dispatch_reports_and_forces(caplog):
    calls = []
    _dispatch.register_impl("_demo_op", "naive")(lambda: calls.append("naive"))
    _dispatch.register_impl("_demo_op", "chunk")(lambda: calls.append("chunk"))
    with caplog.at_level(logging.WARNING, logger="mmeff"):
        _dispatch.dispatch("_demo_op", torch.device("cpu"))()
        _dispatch.dispatch("_demo_op", torch.device("cpu"))()
    said = [r.getMessage() for r in caplog.records if "_demo_op" in r.getMessage()]
    assert len(said) == 1 and "chunk" in said[0]  # said once, loudly, with the path taken
    assert _dispatch.last_backend("_demo_op") == "chunk"
    with _dispatch.force_backend("naive"):
        _dispatch.dispatch("_demo_op", torch.device("cpu"))()
    assert calls == ["chunk", "chunk", "naive"]
    with pytest.raises(ValueError, match="backend"):
        with _dispatch.force_backend("cuda"):
            pass
    with _dispatch.force_backend("triton"), pytest.raises(ValueError, match="requested"):
        _dispatch.dispatch("_demo_op", torch.device("cpu"))


def test_dispatch_env_override(monkeypatch):
    _dispatch.register_impl("_demo_env", "naive")(lambda: "naive")
    _dispatch.register_impl("_demo_env", "chunk")(lambda: "chunk")
    monkeypatch.setenv("MMEFF_OPS_BACKEND", "naive")
    assert _dispatch.dispatch("_demo_env", torch.device("cpu"))() == "naive"
    monkeypatch.setenv("MMEFF_OPS_BACKEND", "fast")
    with pytest.raises(ValueError, match="MMEFF_OPS_BACKEND"):
        _dispatch.dispatch("_demo_env", torch.device("cpu"))
