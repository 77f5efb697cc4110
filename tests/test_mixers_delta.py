"""DeltaNet and Gated DeltaNet mixers: contract, streaming, bidirectional form, parameter counts."""
import pytest
import torch

import mmeff
from mmeff.mixers import DeltaNet, GatedDeltaNet
from mmeff.testing import assert_close, random_splits, run_in_chunks

DIM = 48
NAMES = ["deltanet", "gated_deltanet"]


def paper_param_count(dim, num_heads, head_dim, expand_v, use_gate, gated, conv_size=4):
    """Parameters of the paper's layer (fla's DeltaNet / GatedDeltaNet, no biases) at this width."""
    kd = num_heads * head_dim
    vd = int(kd * expand_v)
    n = dim * kd * 2 + dim * vd  # q, k, v projections
    n += dim * num_heads  # beta projection
    n += conv_size * (2 * kd + vd)  # depthwise short convs on q, k, v
    n += vd // num_heads  # output RMSNorm weight (shared over heads)
    n += vd * dim  # output projection
    if use_gate:
        n += dim * vd  # output gate projection
    if gated:
        n += dim * num_heads + 2 * num_heads  # decay input projection, A_log, dt_bias
    return n


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("causal", [True, False])
def test_forward_backward(name, causal):
    m = mmeff.create_mixer(name, DIM, causal=causal)
    for L in (1, 9, 130):  # recurrent path (short) and chunk path
        x = torch.randn(2, L, DIM, requires_grad=True)
        y = m(x)
        assert y.shape == x.shape and torch.isfinite(y).all()
        y.square().mean().backward()
        assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize("name,kw", [("deltanet", {}), ("deltanet", dict(use_gate=True, expand_v=2.0)),
                                     ("gated_deltanet", {}), ("gated_deltanet", dict(use_gate=False))])
def test_step_over_random_splits_equals_forward(name, kw):
    m = mmeff.create_mixer(name, DIM, **kw).eval()
    L = 150
    x = torch.randn(2, L, DIM)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        full = m(x)
        for splits in ([1] * 5 + [L - 5], [7, 70, 73], random_splits(L, gen), random_splits(L, gen, 8)):
            y, state = run_in_chunks(m.step, x, m.init_state(2), splits)
            assert_close(f"{name} step {splits}", y, full, 1e-5)
        assert state["recurrent"].dtype == torch.float32
        assert state["conv"].shape == (2, m.conv.channels, m.conv.kernel_size - 1)


@pytest.mark.parametrize("name", NAMES)
def test_bidirectional_sees_both_sides_and_cannot_stream(name):
    x = torch.randn(1, 30, DIM, requires_grad=True)
    for causal in (True, False):
        m = mmeff.create_mixer(name, DIM, causal=causal)
        (g,) = torch.autograd.grad(m(x)[0, 0].sum(), x)
        future = g[0, 1:].abs().sum().item()
        assert (future > 0) if not causal else (future == 0)
    with pytest.raises(RuntimeError, match="causal"):
        m.step(x[:, :1], None)
    with pytest.raises(RuntimeError, match="causal"):
        m.init_state(1)


@pytest.mark.parametrize("dim,kw", [(64, {}), (48, dict(num_heads=2, use_gate=True)),
                                    (60, dict(num_heads=3, head_dim=16, expand_v=2.0))])
def test_param_count_deltanet(dim, kw):
    m = DeltaNet(dim, **kw)
    H = kw.get("num_heads", 4)
    expect = paper_param_count(dim, H, kw.get("head_dim", dim // H), kw.get("expand_v", 1.0),
                               kw.get("use_gate", False), gated=False)
    assert sum(p.numel() for p in m.parameters()) == expect


@pytest.mark.parametrize("dim,kw", [(64, {}), (96, dict(num_heads=2, use_gate=False)),
                                    (2048, dict(num_heads=6, head_dim=256))])
def test_param_count_gated_deltanet(dim, kw):
    m = GatedDeltaNet(dim, **kw, device="meta")
    H = kw.get("num_heads", 4)
    head_dim = kw.get("head_dim", round(0.75 * dim / H))
    expect = paper_param_count(dim, H, head_dim, 2.0, kw.get("use_gate", True), gated=True)
    assert sum(p.numel() for p in m.parameters()) == expect
    if dim == 2048:  # the paper's 1.3B layer: ~6 D^2 (0.75 each for q, k; 1.5 each for v, gate, out)
        assert abs(expect / dim ** 2 - 6.0) < 0.02


def test_decay_gate_is_a_log_decay():
    m = GatedDeltaNet(DIM)
    parts = {"a": torch.randn(2, 9, m.num_heads) * 5}
    g = m._log_decay(parts)
    assert g.shape == (2, 9, m.num_heads) and g.dtype == torch.float32 and (g <= 0).all()


def test_bf16_forward():
    m = mmeff.create_mixer("gated_deltanet", DIM, dtype=torch.bfloat16)
    y = m(torch.randn(2, 80, DIM, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_heads"):
        DeltaNet(DIM, num_heads=0)
    with pytest.raises(ValueError, match="expand_v"):
        DeltaNet(DIM, expand_v=0.3)
    with pytest.raises(ValueError, match="dt_min"):
        GatedDeltaNet(DIM, dt_min=0.5, dt_max=0.1)
    with pytest.raises(ValueError, match=r"\[B, L"):
        DeltaNet(DIM)(torch.randn(2, 5, DIM + 1))
