"""Gated-linear-attention mixers: linear_attention, retnet, gla, hgrn2, rwkv6."""
import pytest
import torch
import torch.nn.functional as F

import mmeff
from mmeff.mixers.linear_attention import dpfp
from mmeff.mixers.retnet import retention_log_decays
from mmeff.mixers.rwkv6 import RWKV6TimeMix
from mmeff.testing import assert_close, random_splits, run_in_chunks

DIM = 64
CASES = [  # (name, kwargs) at width DIM
    ("linear_attention", {}),
    ("linear_attention", dict(feature_map="dpfp", num_heads=4)),
    ("linear_attention", dict(feature_map="relu", normalize=False)),
    ("retnet", {}),
    ("gla", {}),
    ("hgrn2", dict(expand_ratio=16, lower_bound=0.5)),
    ("rwkv6", dict(head_size=16)),
]
IDS = [f"{n}-{'-'.join(map(str, kw.values())) or 'default'}" for n, kw in CASES]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Short streaming chunks run token loops of tiny ops: one thread is faster than two."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_forward_backward(name, kw, causal):
    m = mmeff.create_mixer(name, DIM, causal=causal, **kw)
    for L in (1, 13, 100):  # token loop (<= 4) and chunked form
        x = torch.randn(2, L, DIM, requires_grad=True)
        y = m(x)
        assert y.shape == x.shape and torch.isfinite(y).all()
        y.square().mean().backward()
        assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_step_over_random_splits_equals_forward(name, kw):
    m = mmeff.create_mixer(name, DIM, **kw).eval()
    L = 90
    x = torch.randn(2, L, DIM)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        full = m(x)
        for splits in ([1] * 3 + [L - 3], [40, 50], random_splits(L, gen, 4), random_splits(L, gen, 8)):
            y, state = run_in_chunks(m.step, x, m.init_state(2), splits)
            assert_close(f"{name} step {splits}", y, full, 1e-5)
    assert state["recurrent"].dtype == torch.float32
    assert state["recurrent"].shape == (2, *m.state_shape)


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_bidirectional_sees_both_sides_and_cannot_stream(name, kw):
    x = torch.randn(1, 20, DIM, requires_grad=True)
    for causal in (True, False):
        m = mmeff.create_mixer(name, DIM, causal=causal, **kw)
        (g,) = torch.autograd.grad(m(x)[0, 0].sum(), x)
        future = g[0, 1:].abs().sum().item()
        assert (future > 0) if not causal else (future == 0)
    with pytest.raises(RuntimeError, match="causal"):
        m.step(x[:, :1], None)
    with pytest.raises(RuntimeError, match="causal"):
        m.init_state(1)


# --- parameter counts from each paper's layer ------------------------------------------------

@pytest.mark.parametrize("dim,kw", [(64, {}), (96, dict(num_heads=3, feature_map="dpfp"))])
def test_param_count_linear_attention(dim, kw):
    """Katharopoulos et al.: the attention layer's W_Q, W_K, W_V, W_O with biases."""
    m = mmeff.create_mixer("linear_attention", dim, **kw)
    assert sum(p.numel() for p in m.parameters()) == 4 * (dim * dim + dim)


@pytest.mark.parametrize("dim,kw", [(64, {}), (96, dict(num_heads=3, expand_v=1.0))])
def test_param_count_retnet(dim, kw):
    """RetNet: W_Q, W_K [d, d]; W_V, W_G [d, 2d]; W_O [2d, d] -> 8 d^2 at expand_v = 2."""
    vd = int(dim * kw.get("expand_v", 2.0))
    m = mmeff.create_mixer("retnet", dim, **kw)
    assert sum(p.numel() for p in m.parameters()) == 2 * dim * dim + 2 * dim * vd + vd * dim
    if not kw:
        assert sum(p.numel() for p in m.parameters()) == 8 * dim * dim


@pytest.mark.parametrize("dim,heads", [(64, 4), (96, 2)])
def test_param_count_gla(dim, heads):
    """GLA: W_Q, W_K [d, d/2]; W_V, W_r, W_O [d, d]; b_r; W_a1 [d, 16] W_a2 [16, d/2] + b_a;
    an RMSNorm weight per head channel."""
    m = mmeff.create_mixer("gla", dim, num_heads=heads)
    dk = dim // 2
    expect = 2 * dim * dk + 3 * dim * dim + dim + (dim * 16 + 16 * dk + dk) + dim // heads
    assert sum(p.numel() for p in m.parameters()) == expect


@pytest.mark.parametrize("dim,ratio", [(64, 64), (96, 32)])
def test_param_count_hgrn2(dim, ratio):
    """HGRN2: W_q, W_f, W_i, W_o [d, d] (the expansion adds none) + the output norm's d."""
    m = mmeff.create_mixer("hgrn2", dim, expand_ratio=ratio)
    assert sum(p.numel() for p in m.parameters()) == 4 * dim * dim + dim


@pytest.mark.parametrize("dim,head", [(64, 64), (128, 32)])
def test_param_count_rwkv6(dim, head):
    """Finch time mixing: W_R, W_K, W_V, W_G, W_O; mu_x and lambda_{w,k,v,r,g}; five rank-32
    LoRAs; decay lambda_d + rank-64 LoRA; u; GroupNorm weight and bias."""
    m = mmeff.create_mixer("rwkv6", dim, head_size=head)
    expect = 5 * dim * dim + dim + 5 * dim + 5 * 2 * 32 * dim + dim + 2 * 64 * dim + dim + 2 * dim
    assert sum(p.numel() for p in m.parameters()) == expect == 5 * dim * dim + 458 * dim


# --- family-specific pieces ------------------------------------------------------------------

def test_linear_attention_matches_quadratic_form():
    """The chunked scan equals the paper's phi(Q) phi(K)^T masked, row-normalised, times V."""
    m = mmeff.create_mixer("linear_attention", DIM, num_heads=4, feature_map="dpfp").eval()
    x = torch.randn(2, 37, DIM)
    q, k, v = (t.unflatten(-1, (4, -1)) for t in m.qkv(x).chunk(3, dim=-1))
    a = torch.einsum("blhf,bshf->bhls", dpfp(q), dpfp(k)).tril()
    o = torch.einsum("bhls,bshd->blhd", a / (a.sum(-1, keepdim=True) + m.eps), v)
    assert_close("linear attention", m(x), m.proj(o.flatten(2)), 1e-5)


def test_retnet_decays_and_relative_positions():
    gammas = torch.tensor([1 - 2 ** -5, 1 - 2 ** -6, 1 - 2 ** -7])
    assert torch.allclose(retention_log_decays(3).exp(), gammas)
    m = mmeff.create_mixer("retnet", DIM).eval()
    x = torch.randn(1, 20, DIM)
    with torch.no_grad():  # a stream that starts later (pos offset) gives the same outputs
        state = m.init_state(1)
        state["pos"] += 1000
        y, state = m.step(x, state)
    assert_close("retnet shifted positions", y, m(x), 1e-4)
    assert state["pos"].tolist() == [1020]


def test_hgrn2_gates():
    m = mmeff.create_mixer("hgrn2", DIM, expand_ratio=16, lower_bound=0.25)
    z = torch.linspace(-30, 30, 101)
    g, k = m._gates(z)
    f = 0.25 + 0.75 * torch.sigmoid(z.double())
    assert_close("log f", g, f.log().float(), 1e-6)
    assert_close("k = 1 - f", k, (1 - f).float(), 1e-6)
    assert g.min() >= torch.log(torch.tensor(0.25)) - 1e-6  # the lower bound holds
    with pytest.raises(ValueError, match="lower_bound"):
        mmeff.create_mixer("hgrn2", DIM, lower_bound=1.0)


def _rwkv6_wkv_reference(r, k, v, log_w, u):
    """The paper's wkv, token by token: o_t = r_t (S + diag(u) k_t^T v_t), S <- diag(w_t) S + k_t^T v_t."""
    B, T, H, K = r.shape
    S = torch.zeros(B, H, K, v.shape[-1], dtype=torch.float64)
    r, k, v, w, u = r.double(), k.double(), v.double(), log_w.double().exp(), u.double()
    out = []
    for t in range(T):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]
        out.append(torch.einsum("bhk,bhkv->bhv", r[:, t], S + u[..., None] * kv))
        S = w[:, t, :, :, None] * S + kv
    return torch.stack(out, 1), S


@pytest.mark.parametrize("T", [5, 75])
def test_rwkv6_wkv_is_the_papers_recurrence(T):
    """GLA on shifted k, v, log w plus the bonus == RWKV-6's wkv; also right-to-left."""
    m = RWKV6TimeMix(DIM, head_size=16)
    B, H, K = 2, 4, 16
    r, k, v = (torch.randn(B, T, H, K) for _ in range(3))
    log_w = -torch.exp(torch.randn(B, T, H, K))
    u = torch.randn(H, K)
    bonus = (r * u * k).sum(-1, keepdim=True) * v
    for reverse in (False, True):
        flip = (lambda t: t.flip(1)) if reverse else (lambda t: t)
        ref, ref_S = _rwkv6_wkv_reference(*(flip(t) for t in (r, k, v, log_w)), u)
        state = None if reverse else torch.zeros(B, H, K, K)
        o, S = m._wkv(r, k, v, log_w, state, reverse=reverse)
        assert_close(f"wkv reverse={reverse}", o + bonus, flip(ref), 1e-5)
        if not reverse:  # the op's state lags one token; the mixer adds the last one in step()
            S = log_w[:, -1, :, :, None].exp() * S + k[:, -1, :, :, None] * v[:, -1, :, None, :]
            assert_close("wkv state", S, ref_S, 1e-5)


def test_rwkv6_token_shift_state():
    m = mmeff.create_mixer("rwkv6", DIM, head_size=16).eval()
    x = torch.randn(2, 10, DIM)
    with torch.no_grad():
        _, state = m.step(x, m.init_state(2))
    assert torch.equal(state["shift"], x[:, -1])


def test_bad_arguments():
    with pytest.raises(ValueError, match="feature_map"):
        mmeff.create_mixer("linear_attention", DIM, feature_map="softmax")
    with pytest.raises(ValueError, match="head_size"):
        mmeff.create_mixer("rwkv6", 96, head_size=64)
    with pytest.raises(ValueError, match="expand_ratio"):
        mmeff.create_mixer("hgrn2", 96, expand_ratio=64)
    with pytest.raises(ValueError, match="expand_k"):
        mmeff.create_mixer("gla", DIM, num_heads=3)
    with pytest.raises(ValueError, match="num_heads"):
        mmeff.create_mixer("retnet", DIM, num_heads=5)
