"""Mamba-1 (``mamba``, incl. Vim's bidirectional block) and Mamba-2 (``mamba2``) mixers."""
import math

import pytest
import torch
import torch.nn.functional as F

import mmeff
from mmeff.testing import assert_close, random_splits, run_in_chunks

DIM = 32
TINY = {"mamba": {}, "mamba2": dict(d_state=16, headdim=16)}


def _mixer(name, causal=True, **kw):
    return mmeff.create_mixer(name, DIM, causal=causal, **{**TINY[name], **kw})


def _n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
@pytest.mark.parametrize("causal", [True, False])
def test_forward_backward(name, causal):
    m = _mixer(name, causal)
    x = torch.randn(2, 37, DIM, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in m.parameters())  # every parameter, both directions, is used


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_step_equals_forward(name):
    m = _mixer(name).eval()
    x = torch.randn(2, 30, DIM)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        full = m(x)
        for splits in ([1] * 5 + [25], [30], random_splits(30, gen), random_splits(30, gen)):
            y, _ = run_in_chunks(m.step, x, m.init_state(2), splits)
            assert_close(f"{name} step {splits}", y, full, 1e-5)


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_causality(name):
    """Causal: the past ignores the future.  Bidirectional: position 0 sees the last token."""
    x = torch.randn(1, 20, DIM)
    x2 = x.clone()
    x2[:, -1] += 1.0
    with torch.no_grad():
        m = _mixer(name)
        assert torch.equal(m(x)[:, :-1], m(x2)[:, :-1])
        b = _mixer(name, causal=False)
        assert (b(x)[:, 0] - b(x2)[:, 0]).abs().max() > 1e-6
        with pytest.raises(RuntimeError, match="causal"):
            b.step(x[:, :1], None)
        with pytest.raises(RuntimeError, match="causal"):
            b.init_state(1)


def test_mamba_param_count_matches_paper_formula():
    D = DIM
    E, N, k, R = 2 * D, 16, 4, math.ceil(D / 16)
    branch = (k * E + E) + E * (R + 2 * N) + (R * E + E) + E * N + E  # conv, x_proj, dt_proj, A_log, D
    assert _n_params(_mixer("mamba")) == 2 * D * E + branch + E * D
    assert _n_params(_mixer("mamba", causal=False)) == 2 * D * E + 2 * branch + E * D  # Vim v2


@pytest.mark.parametrize("ngroups", [1, 2])
def test_mamba2_param_count_matches_paper_formula(ngroups):
    D, E, N, P, k = DIM, 2 * DIM, 16, 16, 4
    H, Cv = E // P, E + 2 * ngroups * N
    want = D * (2 * E + 2 * ngroups * N + H) + (k * Cv + Cv) + 3 * H + E + E * D
    for causal in (True, False):  # bidirectional Mamba-2 shares every parameter
        assert _n_params(_mixer("mamba2", causal, ngroups=ngroups)) == want


def test_mamba_init():
    m = _mixer("mamba", d_state=8, dt_min=1e-3, dt_max=0.1)
    assert torch.allclose(m.ssm.A_log, torch.log(torch.arange(1.0, 9.0)).expand(2 * DIM, 8))
    assert torch.equal(m.ssm.D, torch.ones(2 * DIM))
    dt = F.softplus(m.ssm.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert m.dt_rank == math.ceil(DIM / 16) and m.ssm.A_log._no_weight_decay


def test_mamba2_init_and_checks():
    m = _mixer("mamba2")
    dt = F.softplus(m.dt_bias)
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    A = m.A_log.exp()
    assert A.min() >= 1 and A.max() <= 16
    with pytest.raises(ValueError, match="headdim"):
        _mixer("mamba2", headdim=24)  # 64 channels
    with pytest.raises(ValueError, match="ngroups"):
        _mixer("mamba2", ngroups=3)
    # mamba_ssm's kernels want heads % 8 == 0; the chunked scan does not (here 4 heads)
    assert m.nheads == 4 and torch.isfinite(m(torch.randn(1, 5, DIM))).all()


def test_vim_backward_direction_is_used():
    m = _mixer("mamba", causal=False)
    x = torch.randn(2, 17, DIM)
    with torch.no_grad():
        y = m(x)
        forward_only = m.out_proj(m.ssm(*m.in_proj(x).chunk(2, dim=-1)))
        assert (y - forward_only).abs().max() > 1e-4
        for p in (m.ssm_backward.x_proj.weight, m.ssm_backward.A_log, m.ssm_backward.D,
                  m.ssm_backward.conv.conv.weight, m.ssm_backward.dt_proj.bias):
            p.add_(0.5)
            assert (m(x) - y).abs().max() > 1e-6
            p.sub_(0.5)
        # the backward direction is the forward block on the flipped sequence
        xs, z = m.in_proj(x).chunk(2, dim=-1)
        assert_close("backward == flipped forward", m.ssm_backward(xs, z, reverse=True),
                     m.ssm_backward(xs.flip(1), z.flip(1)).flip(1), 1e-5)


def test_bf16_forward():
    for name in ("mamba", "mamba2"):
        m = _mixer(name, dtype=torch.bfloat16)
        y = m(torch.randn(1, 19, DIM, dtype=torch.bfloat16))
        assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
