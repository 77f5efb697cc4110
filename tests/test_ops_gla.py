"""chunk / fused_recurrent vs naive for both gated-linear-attention families (simple_gla, gla)."""
import pytest
import torch
import torch.nn.functional as F

from mmeff.ops import (chunk_gla, chunk_simple_gla, force_backend, fused_recurrent_gla,
                       fused_recurrent_simple_gla, implementations, last_backend)
from mmeff.ops.gla import chunk as gla_chunk
from mmeff.ops.gla.chunk import SAFE_SPAN
from mmeff.testing import AWKWARD_T, assert_close, assert_grads_close, grads, nan_poisoned_empty

FAMILIES = {  # name -> (public chunk op, fused_recurrent op, gate has a key axis)
    "simple_gla": (chunk_simple_gla, fused_recurrent_simple_gla, False),
    "gla": (chunk_gla, fused_recurrent_gla, True),
}
NAMES = ["q", "k", "v", "g", "initial_state"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The token loops run thousands of tiny ops: one thread is faster than two (and than a
    contended pair)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _impl(family, backend):
    return implementations(f"chunk_{family}")[backend]


def _inputs(family, B=1, T=63, H=2, K=60, V=100, decay="weak", dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    per_key = FAMILIES[family][2]
    q, k = (torch.randn(B, T, H, K, generator=gen) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen)
    logits = torch.randn((B, T, H, K) if per_key else (B, T, H), generator=gen)
    if decay == "weak":  # ~0.02 per token: one factorisation per chunk
        g = F.logsigmoid(logits + 4)
    else:  # up to ~-15 per token: chunks are halved, some factors underflow
        g = -torch.exp(logits.clamp(max=2.7))
    h0 = torch.randn(B, H, K, V, generator=gen)
    return [t.to(dtype).requires_grad_() for t in (q, k, v, g)] + [h0.requires_grad_()]


@pytest.mark.parametrize("decay", ["weak", "strong"])
@pytest.mark.parametrize("T", AWKWARD_T)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_forms_match_naive(family, T, decay, monkeypatch):
    monkeypatch.setattr(gla_chunk, "SEGMENT_SIZE", 2 ** 15)  # several segments of 1-2 chunks
    x = _inputs(family, B=2 if T < 500 else 1, T=T, decay=decay)
    ref = _impl(family, "naive")(*x[:4], initial_state=x[4], output_final_state=True)
    ref_grads = grads(ref, x)
    fused = FAMILIES[family][1]
    for name, fn in (("chunk", _impl(family, "chunk")), ("fused_recurrent", fused)):
        out = fn(*x[:4], initial_state=x[4], output_final_state=True)
        assert_close(f"{family}/{name}.o", out[0], ref[0], 5e-3)
        assert_close(f"{family}/{name}.final_state", out[1], ref[1], 5e-3)
        assert_grads_close(f"{family}/{name}", grads(out, x), ref_grads, 5e-3, NAMES)


@pytest.mark.parametrize("decay", ["weak", "strong"])
def test_gpu_state_passing_matches_naive(decay, monkeypatch):
    """The GPU's per-head state passing (one exp(segsum) matmul over chunks), run here on CPU."""
    monkeypatch.setattr(gla_chunk, "use_matmul", lambda x, chunks: True)
    x = _inputs("simple_gla", T=500, decay=decay)
    ref = _impl("simple_gla", "naive")(*x[:4], initial_state=x[4], output_final_state=True)
    out = _impl("simple_gla", "chunk")(*x[:4], initial_state=x[4], output_final_state=True)
    assert_close("o", out[0], ref[0], 5e-3)
    assert_close("final_state", out[1], ref[1], 5e-3)
    assert_grads_close("grads", grads(out, x), grads(ref, x), 5e-3, NAMES)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_bf16_inputs(family):
    x = [t.detach() for t in _inputs(family, T=75, K=64, V=64, dtype=torch.bfloat16)]
    o, s = FAMILIES[family][0](*x[:4], initial_state=x[4], output_final_state=True)
    ref, ref_s = _impl(family, "naive")(*(t.float() for t in x[:4]), initial_state=x[4],
                                        output_final_state=True)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert_close(f"{family} bf16 o", o, ref, 2e-2)
    assert_close(f"{family} bf16 state", s, ref_s, 1e-2)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_chunk_and_segment_size_invariance(family, monkeypatch):
    x = [t.detach() for t in _inputs(family, T=75, decay="strong")]
    chunk = _impl(family, "chunk")
    o64, s64 = chunk(*x[:4], initial_state=x[4], output_final_state=True, chunk_size=64)
    for cs in (1, 16, 128):
        o, s = chunk(*x[:4], initial_state=x[4], output_final_state=True, chunk_size=cs)
        assert_close(f"chunk_size={cs} o", o, o64, 1e-5)
        assert_close(f"chunk_size={cs} state", s, s64, 1e-5)
    monkeypatch.setattr(gla_chunk, "SEGMENT_SIZE", 1)  # one chunk per segment
    o, s = chunk(*x[:4], initial_state=x[4], output_final_state=True, chunk_size=16)
    assert_close("segmented o", o, o64, 1e-5)
    assert_close("segmented state", s, s64, 1e-5)
    with pytest.raises(ValueError, match="chunk_size"):
        chunk(*x[:4], chunk_size=48)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_one_factorisation_at_its_limit(family):
    """Decays whose chunk span sits just under SAFE_SPAN: factors reach exp(+-60), still exact."""
    x = _inputs(family, T=130)
    with torch.no_grad():
        x[3].copy_(-SAFE_SPAN / 64 * (0.97 + 0.02 * torch.rand_like(x[3])))
    G = x[3].detach()[:, :64].cumsum(1)
    assert 0.9 * SAFE_SPAN < -G.min() < SAFE_SPAN  # one chunk of 64 spans almost SAFE_SPAN
    ref = _impl(family, "naive")(*x[:4], initial_state=x[4], output_final_state=True)
    out = _impl(family, "chunk")(*x[:4], initial_state=x[4], output_final_state=True, chunk_size=64)
    assert_close("o", out[0], ref[0], 1e-4)
    assert_close("final_state", out[1], ref[1], 1e-4)
    assert_grads_close(family, grads(out, x), grads(ref, x), 1e-4, NAMES)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_reverse_is_flipped_op(family):
    x = _inputs(family, T=75)
    for fn in (_impl(family, "chunk"), FAMILIES[family][1]):
        o, s = fn(*x[:4], initial_state=x[4], output_final_state=True, reverse=True)
        fo, fs = fn(*(t.flip(1) for t in x[:4]), initial_state=x[4], output_final_state=True)
        assert_close("reverse o", o, fo.flip(1), 1e-6)
        assert_close("reverse state", s, fs, 1e-6)
        assert_grads_close("reverse", grads([o, s], x), grads([fo.flip(1), fs], x), 1e-5, NAMES)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_initial_state_threading(family):
    x = [t.detach() for t in _inputs(family, T=75, decay="strong")]
    for fn in (_impl(family, "chunk"), FAMILIES[family][1]):
        o, s = fn(*x[:4], initial_state=x[4], output_final_state=True)
        oa, sa = fn(*(t[:, :40] for t in x[:4]), initial_state=x[4], output_final_state=True)
        ob, sb = fn(*(t[:, 40:] for t in x[:4]), initial_state=sa, output_final_state=True)
        assert_close("threaded o", torch.cat([oa, ob], 1), o, 1e-5)
        assert_close("threaded state", sb, s, 1e-5)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_long_strong_decay_stays_finite(family):
    """T=65536 with decays down to exp(-100) per token: no overflow, and the tail is exact."""
    T, tail = 65536, 50
    per_key = FAMILIES[family][2]
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, T, 1, 8, generator=gen) for _ in range(3))
    g = -100 * torch.rand((1, T, 1, 8) if per_key else (1, T, 1), generator=gen)
    with torch.no_grad():
        o, s = FAMILIES[family][0](q, k, v, g, output_final_state=True)
        assert torch.isfinite(o).all() and torch.isfinite(s).all()
        _, s_head = FAMILIES[family][0](*(t[:, :-tail] for t in (q, k, v, g)), output_final_state=True)
        o_tail, s_tail = _impl(family, "naive")(*(t[:, -tail:] for t in (q, k, v, g)),
                                                initial_state=s_head, output_final_state=True)
    assert_close("tail o", o[:, -tail:], o_tail, 1e-4)  # fp32 cumulative decays reach ~-3000
    assert_close("final state", s, s_tail, 1e-4)


def test_simple_gla_without_gate_is_linear_attention():
    q, k, v = (torch.randn(1, 70, 2, 16) for _ in range(3))
    o, _ = chunk_simple_gla(q, k, v)
    o0, _ = chunk_simple_gla(q, k, v, torch.zeros(1, 70, 2))
    scores = torch.einsum("bthk,bshk->bhts", q, k).tril() * 16 ** -0.5
    assert_close("g=None", o, o0, 1e-6)
    assert_close("linear attention", o, torch.einsum("bhts,bshv->bthv", scores, v), 1e-5)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_dispatch_and_no_uninitialised_reads(family):
    x = [t.detach() for t in _inputs(family, T=63)]
    op = FAMILIES[family][0]
    with nan_poisoned_empty():
        o, s = op(*x[:4], initial_state=x[4], output_final_state=True)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    assert last_backend(f"chunk_{family}") == "chunk"
    assert op(*x[:4])[1] is None
    with force_backend("naive"):
        on, _ = op(*x[:4], initial_state=x[4])
    assert last_backend(f"chunk_{family}") == "naive"
    assert_close("naive via dispatch", on, o, 5e-3)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_bad_inputs_name_the_argument(family):
    op, fused, per_key = FAMILIES[family]
    q, k, v, g, h0 = [t.detach() for t in _inputs(family, B=1, T=5, K=4, V=6)]
    for fn in (op, fused):
        with pytest.raises(ValueError, match="q must"):
            fn(q[0], k, v, g)
        with pytest.raises(ValueError, match="k must"):
            fn(q, k[..., :3], v, g)
        with pytest.raises(ValueError, match="v must"):
            fn(q, k, v[:, :4], g)
        with pytest.raises(ValueError, match=r"g must have shape \[B, T, H" + (", K" if per_key else "")):
            fn(q, k, v, g[..., 0] if per_key else g[..., None])
        with pytest.raises(ValueError, match="initial_state"):
            fn(q, k, v, g, initial_state=h0[..., :5])
        with pytest.raises(ValueError, match="floating-point"):
            fn(q, k.long(), v, g)
        with pytest.raises(ValueError, match="scale"):
            fn(q, k, v, g, scale=0.0)
