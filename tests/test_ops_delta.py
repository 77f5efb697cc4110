"""Delta rule and gated delta rule: chunk and fused_recurrent against the naive loop."""
import pytest
import torch
import torch.nn.functional as F

from mmeff.ops import (chunk_delta_rule, chunk_gated_delta_rule, force_backend, fused_recurrent_delta_rule,
                       fused_recurrent_gated_delta_rule, last_backend)
from mmeff.ops.delta_rule.chunk import chunked_gated_delta_rule
from mmeff.ops.delta_rule.naive import naive_gated_delta_rule
from mmeff.testing import (AWKWARD_D, AWKWARD_T, assert_close, assert_grads_close, grads,
                           nan_poisoned_empty)

K, V = AWKWARD_D  # odd head sizes: 60 for q/k, 100 for v


def make_inputs(B, T, H, gated, decay="weak", k_dim=K, v_dim=V, dtype=torch.float32):
    """q, k (unit norm), v, g (log-decay or None), beta, h0 -- all leaves."""
    q = torch.randn(B, T, H, k_dim)
    k = F.normalize(torch.randn(B, T, H, k_dim), dim=-1)
    v = torch.randn(B, T, H, v_dim)
    beta = torch.rand(B, T, H)
    g = None
    if gated:  # weak: ~-0.05 per step; strong: ~-3 per step (state forgotten within a few tokens)
        g = F.logsigmoid(torch.randn(B, T, H) + (3.0 if decay == "weak" else -3.0))
    h0 = torch.randn(B, H, k_dim, v_dim)
    ts = [q, k, v, g, beta, h0]
    return [None if t is None else t.to(dtype).requires_grad_() for t in ts]


def call(form, q, k, v, g, beta, **kw):
    """The public op of ``form`` ('chunk' / 'recurrent'), gated iff ``g`` is given."""
    if form == "chunk":
        return chunk_delta_rule(q, k, v, beta, **kw) if g is None else chunk_gated_delta_rule(q, k, v, g, beta, **kw)
    if g is None:
        return fused_recurrent_delta_rule(q, k, v, beta, **kw)
    return fused_recurrent_gated_delta_rule(q, k, v, g, beta, **kw)


def leaves(q, k, v, g, beta, h0):
    names = ["q", "k", "v", "g", "beta", "h0"]
    return [(n, t) for n, t in zip(names, (q, k, v, g, beta, h0)) if t is not None]


CASES = [(T, False, "-") for T in AWKWARD_T] + [(T, True, d) for T in AWKWARD_T for d in ("weak", "strong")]


@pytest.mark.parametrize("T,gated,decay", CASES)
def test_forms_match_naive(T, gated, decay):
    q, k, v, g, beta, h0 = make_inputs(1 if T >= 500 else 2, T, 2, gated, decay)
    names, ins = zip(*leaves(q, k, v, g, beta, h0))
    ref = naive_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    ref_grads = grads(ref, ins)
    for form in ("chunk", "recurrent"):
        with nan_poisoned_empty():
            out = call(form, q, k, v, g, beta, initial_state=h0, output_final_state=True)
        if form == "chunk":
            assert last_backend("chunk_gated_delta_rule" if gated else "chunk_delta_rule") == "chunk"
        assert_close(f"{form}.o", out[0], ref[0], 5e-3)
        assert_close(f"{form}.final_state", out[1], ref[1], 5e-3)
        assert_grads_close(form, grads(out, ins), ref_grads, 5e-3, names)


@pytest.mark.parametrize("gated", [False, True])
def test_chunk_without_autograd_equals_with(gated):
    """Without autograd the chunk form builds each chunk's output in its loop (no stacked states);
    it equals the autograd path and the naive loop."""
    q, k, v, g, beta, h0 = (None if t is None else t.detach() for t in make_inputs(2, 75, 2, gated, "strong"))
    with torch.no_grad():
        fast = call("chunk", q, k, v, g, beta, initial_state=h0, output_final_state=True)
        ref = naive_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    taped = call("chunk", *(None if t is None else t.requires_grad_() for t in (q, k, v, g, beta)),
                 initial_state=h0, output_final_state=True)
    assert_close("no-grad o vs autograd", fast[0], taped[0].detach(), 1e-6)
    assert_close("no-grad state vs autograd", fast[1], taped[1].detach(), 1e-6)
    assert_close("no-grad o vs naive", fast[0], ref[0], 5e-3)


@pytest.mark.parametrize("gated", [False, True])
def test_bf16_inputs_accumulate_in_fp32(gated):
    ins = make_inputs(1, 75, 2, gated, dtype=torch.bfloat16)[:5]  # q, k, v, g, beta
    up = [None if t is None else t.detach().float().requires_grad_() for t in ins]
    ref = naive_gated_delta_rule(*up, output_final_state=True)
    ref_grads = grads(ref, [t for t in up if t is not None])
    for form in ("chunk", "recurrent"):
        o, ht = call(form, *ins, output_final_state=True)
        assert o.dtype == torch.bfloat16 and ht.dtype == torch.float32
        assert_close(f"{form}.o", o, ref[0], 2e-2)
        assert_close(f"{form}.final_state", ht, ref[1], 2e-2)
        out_grads = grads((o, ht), [t for t in ins if t is not None])
        assert all(gr.dtype == torch.bfloat16 for gr in out_grads)
        assert_grads_close(f"{form}.bf16", out_grads, ref_grads, 5e-2)


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("T", [75, 200])
def test_chunk_size_invariance(gated, T):
    q, k, v, g, beta, h0 = make_inputs(1, T, 2, gated)
    with torch.no_grad():
        base = chunked_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True)
        for C in (8, 16, 32, 128):
            o, ht = chunked_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                             chunk_size=C)
            assert_close(f"C={C}.o", o, base[0], 1e-5)
            assert_close(f"C={C}.final_state", ht, base[1], 1e-5)


def test_fp64_stays_fp64_and_chunk_size_is_checked():
    q, k, v, g, beta, h0 = (t.detach().double() for t in make_inputs(1, 45, 2, True))
    o, ht = chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    ref = naive_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    assert o.dtype == ht.dtype == torch.float64
    assert_close("fp64.o", o, ref[0], 1e-10)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_gated_delta_rule(q, k, v, g, beta, chunk_size=0)


@pytest.mark.parametrize("form", ["chunk", "recurrent"])
@pytest.mark.parametrize("gated", [False, True])
def test_reverse_is_flipped_op(form, gated):
    q, k, v, g, beta, h0 = make_inputs(2, 63, 2, gated)
    flip = lambda t: None if t is None else t.flip(1)  # noqa: E731
    with torch.no_grad():
        o, ht = call(form, q, k, v, g, beta, initial_state=h0, output_final_state=True, reverse=True)
        of, htf = call(form, flip(q), flip(k), flip(v), flip(g), flip(beta), initial_state=h0,
                       output_final_state=True)
        ref = naive_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                     reverse=True)
    assert_close("reverse.o", o, of.flip(1), 1e-6)
    assert_close("reverse.final_state", ht, htf, 1e-6)
    assert_close("reverse vs naive", o, ref[0], 5e-3)


@pytest.mark.parametrize("form", ["chunk", "recurrent"])
@pytest.mark.parametrize("gated", [False, True])
def test_initial_state_threads(form, gated):
    q, k, v, g, beta, h0 = make_inputs(2, 75, 2, gated)
    cut = 37
    part = lambda t, s: None if t is None else t[:, s]  # noqa: E731
    a, b = slice(0, cut), slice(cut, None)
    with torch.no_grad():
        o, ht = call(form, q, k, v, g, beta, initial_state=h0, output_final_state=True)
        oa, ha = call(form, *(part(t, a) for t in (q, k, v, g, beta)), initial_state=h0, output_final_state=True)
        ob, hb = call(form, *(part(t, b) for t in (q, k, v, g, beta)), initial_state=ha, output_final_state=True)
        o0, none = call(form, q, k, v, g, beta)
    assert none is None
    assert_close("threaded.o", torch.cat([oa, ob], 1), o, 1e-5)
    assert_close("threaded.final_state", hb, ht, 1e-5)
    assert not torch.allclose(o0, o)  # the initial state matters


@pytest.mark.parametrize("gated", [False, True])
def test_long_sequence_strong_decay_is_finite(gated):
    T = 65536
    q, k, v = torch.randn(1, T, 1, 16), F.normalize(torch.randn(1, T, 1, 16), dim=-1), torch.randn(1, T, 1, 16)
    beta = torch.rand(1, T, 1)
    g = -20.0 * torch.rand(1, T, 1) if gated else None
    with torch.no_grad():
        o, ht = call("chunk", q, k, v, g, beta, output_final_state=True)
    assert torch.isfinite(o).all() and torch.isfinite(ht).all()
    # no state survives a step of g = -20 * u for long: the tail only sees the last few tokens
    if gated:
        with torch.no_grad():
            tail = call("chunk", *(t[:, -64:] for t in (q, k, v, g, beta)))[0]
        assert_close("tail", o[:, -16:], tail[:, -16:], 1e-4)


def test_scale_and_l2norm_options():
    q, k, v, g, beta, h0 = make_inputs(1, 40, 2, True)
    q_raw, k_raw = torch.randn_like(q) * 3, torch.randn_like(k) * 3
    l2 = lambda t: t / (t.pow(2).sum(-1, keepdim=True) + 1e-6).sqrt()  # noqa: E731
    with torch.no_grad():
        for form in ("chunk", "recurrent"):
            o = call(form, q_raw, k_raw, v, g, beta, use_qk_l2norm_in_kernel=True)[0]
            assert_close(f"{form}.l2norm", o, call(form, l2(q_raw), l2(k_raw), v, g, beta)[0], 1e-5)
            assert_close(f"{form}.scale", call(form, q, k, v, g, beta)[0],
                         call(form, q, k, v, g, beta, scale=K ** -0.5)[0], 1e-6)
            o2 = call(form, q, k, v, g, beta, scale=2.0)[0]
            assert_close(f"{form}.scale2", o2, call(form, q * 2.0, k, v, g, beta, scale=1.0)[0], 1e-5)


def test_forced_naive_backend_runs_the_spec():
    q, k, v, g, beta, h0 = make_inputs(1, 30, 2, True)
    with torch.no_grad(), force_backend("naive"):
        o = chunk_gated_delta_rule(q, k, v, g, beta)[0]
        assert last_backend("chunk_gated_delta_rule") == "naive"
        o1 = chunk_delta_rule(q, k, v, beta)[0]
        assert last_backend("chunk_delta_rule") == "naive"
    assert_close("naive", o, naive_gated_delta_rule(q, k, v, g, beta)[0], 0.0)
    assert_close("naive", o1, naive_gated_delta_rule(q, k, v, None, beta)[0], 0.0)


@pytest.mark.parametrize("op", [chunk_gated_delta_rule, fused_recurrent_gated_delta_rule])
def test_bad_inputs_raise_clear_errors(op):
    q, k, v, g, beta, h0 = (t.detach() for t in make_inputs(1, 10, 2, True))
    with pytest.raises(ValueError, match="q must be a 4D"):
        op(q[0], k, v, g, beta)
    with pytest.raises(ValueError, match="k must have shape"):
        op(q, k[..., :-1], v, g, beta)
    with pytest.raises(ValueError, match="v must have shape"):
        op(q, k, v[:, :-1], g, beta)
    with pytest.raises(ValueError, match="beta must have shape"):
        op(q, k, v, g, beta[..., None])
    with pytest.raises(ValueError, match="g must have shape"):
        op(q, k, v, g[..., None].expand(-1, -1, -1, K), beta)
    with pytest.raises(ValueError, match="initial_state must have shape"):
        op(q, k, v, g, beta, initial_state=h0[..., :-1])
    with pytest.raises(ValueError, match="floating-point"):
        op(q, k, v, g, (beta > 0.5).long())
    with pytest.raises(ValueError, match="beta must have shape"):
        chunk_delta_rule(q, k, v, beta[:, :, :1])
