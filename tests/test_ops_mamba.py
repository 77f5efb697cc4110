"""Mamba ops against their fp32 loops: ``selective_scan_fn`` (Mamba-1) and
``mamba_chunk_scan_combined`` (Mamba-2's SSD): outputs, final states, every gradient."""
import pytest
import torch
import torch.nn.functional as F

import mmeff.ops
from mmeff.ops import force_backend, last_backend, mamba_chunk_scan_combined, selective_scan_fn
from mmeff.ops.selective_scan import selective_scan_ref
from mmeff.ops.selective_scan import chunk as s6_chunk
from mmeff.ops.selective_scan._common import run_selective_scan
from mmeff.ops.selective_scan.chunk import chunked_selective_scan
from mmeff.ops.ssd import ssd_naive
from mmeff.ops.ssd._common import run_ssd
from mmeff.ops._chunks import pass_states
from mmeff.ops.ssd.chunk import chunk_core, chunked_ssd, short_core
from mmeff.testing import AWKWARD_D, AWKWARD_T, assert_close, assert_grads_close, grads

TOL = 5e-3


def _leaf(*shape, scale=1.0, shift=0.0, dtype=torch.float32):
    return (torch.randn(*shape) * scale + shift).to(dtype).requires_grad_()


# ----------------------------------------------------------------------------------- Mamba-1 (S6)

def _s6_inputs(b, d, n, l, groups=None, strong=False, dtype=torch.float32):
    """Arguments of selective_scan_fn with every optional tensor given (all leaves)."""
    bc = (b, n, l) if groups is None else (b, groups, n, l)
    A = (-torch.rand(d, n) * (8.0 if strong else 1.0) - 0.1).to(dtype).requires_grad_()
    return dict(u=_leaf(b, d, l, dtype=dtype), delta=_leaf(b, d, l, scale=0.5, shift=2.0 if strong else -1.0,
                dtype=dtype), A=A, B=_leaf(*bc, dtype=dtype), C=_leaf(*bc, dtype=dtype),
                D=_leaf(d, dtype=dtype), z=_leaf(b, d, l, dtype=dtype), delta_bias=_leaf(d, scale=0.1, dtype=dtype),
                initial_state=_leaf(b, d, n))


@pytest.mark.parametrize("T,groups,strong", [(T, None, False) for T in AWKWARD_T]
                         + [(63, 2, True), (75, 4, True)])
def test_selective_scan_matches_naive(T, groups, strong):
    kw = _s6_inputs(2, 12, 5, T, groups, strong)
    names = list(kw)
    ref = selective_scan_ref(**kw, delta_softplus=True, return_last_state=True)
    out = selective_scan_fn(**kw, delta_softplus=True, return_last_state=True)
    assert last_backend("selective_scan_fn") == "chunk"
    assert_close("out", out[0], ref[0], TOL)
    assert_close("last_state", out[1], ref[1], TOL)
    assert_grads_close("grad", grads(out, list(kw.values())), grads(ref, list(kw.values())), TOL, names)


@pytest.mark.parametrize("T,groups,strong", [(1, None, False), (75, None, False), (500, 2, True)])
def test_selective_scan_gpu_core_matches_naive(T, groups, strong):
    """The GPU's core (sqrt(L) chunks advanced position by position), run here on CPU."""
    kw = _s6_inputs(2, 12, 5, T, groups, strong)
    ref = selective_scan_ref(**kw, delta_softplus=True, return_last_state=True)
    out = run_selective_scan(s6_chunk.sweep_core, **kw, delta_softplus=True, return_last_state=True)
    assert_close("out", out[0], ref[0], TOL)
    assert_close("last_state", out[1], ref[1], TOL)
    leaves = list(kw.values())
    assert_grads_close("grad", grads(out, leaves), grads(ref, leaves), TOL, list(kw))


def test_selective_scan_odd_width_no_options():
    d = AWKWARD_D[0]
    u, delta, B, C = _leaf(1, d, 75), _leaf(1, d, 75, scale=0.3), _leaf(1, 3, 75), _leaf(1, 3, 75)
    A = (-torch.rand(d, 3)).requires_grad_()
    ref = selective_scan_ref(u, delta.abs(), A, B, C)
    out = selective_scan_fn(u, delta.abs(), A, B, C)
    assert isinstance(out, torch.Tensor)
    assert_close("out", out, ref, TOL)
    assert_grads_close("grad", grads([out], [u, delta, A, B, C]), grads([ref], [u, delta, A, B, C]), TOL)


def test_selective_scan_bf16():
    kw = _s6_inputs(2, 8, 4, 63, dtype=torch.bfloat16)
    out, last = selective_scan_fn(**kw, delta_softplus=True, return_last_state=True)
    ref, ref_last = selective_scan_ref(**{k: v.float() for k, v in kw.items()}, delta_softplus=True,
                                       return_last_state=True)
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
    assert_close("bf16 out", out, ref, 2e-2)
    assert_close("bf16 last_state", last, ref_last, 1e-2)


def test_selective_scan_chunk_size_invariance():
    kw = _s6_inputs(1, 6, 4, 75, groups=3)
    ref = chunked_selective_scan(**kw, delta_softplus=True, return_last_state=True, chunk_size=75)
    for q in (1, 7, 16, 128):
        out = chunked_selective_scan(**kw, delta_softplus=True, return_last_state=True, chunk_size=q)
        assert_close(f"out q={q}", out[0], ref[0], 1e-5)
        assert_close(f"last q={q}", out[1], ref[1], 1e-5)


def test_selective_scan_reverse_is_flip():
    kw = {k: v.detach() for k, v in _s6_inputs(2, 6, 4, 40).items()}
    kw.pop("initial_state")
    out, last = selective_scan_fn(**kw, delta_softplus=True, return_last_state=True, reverse=True)
    flip = {k: (v.flip(-1) if k in ("u", "delta", "B", "C", "z") else v) for k, v in kw.items()}
    ref, ref_last = selective_scan_fn(**flip, delta_softplus=True, return_last_state=True)
    assert_close("reverse", out, ref.flip(-1), 1e-6)
    assert_close("reverse last", last, ref_last, 1e-6)


def test_selective_scan_initial_state_threads():
    kw = {k: v.detach() for k, v in _s6_inputs(2, 6, 4, 50).items()}
    whole, last = selective_scan_fn(**kw, return_last_state=True)
    cut = lambda s: {k: (v[..., s] if k in ("u", "delta", "B", "C", "z") else v) for k, v in kw.items()}  # noqa: E731
    a = cut(slice(0, 21))
    ya, ha = selective_scan_fn(**a, return_last_state=True)
    yb, hb = selective_scan_fn(**{**cut(slice(21, 50)), "initial_state": ha}, return_last_state=True)
    assert_close("threaded out", torch.cat([ya, yb], -1), whole, 1e-5)
    assert_close("threaded state", hb, last, 1e-5)


def test_selective_scan_long_strong_decay_is_finite():
    l = 65536
    u, delta = torch.randn(1, 2, l), torch.rand(1, 2, l) * 20 + 5  # dt*A down to -500 per step
    A, B, C = -torch.rand(2, 2) * 16 - 8, torch.randn(1, 2, l), torch.randn(1, 2, l)
    out, last = selective_scan_fn(u, delta, A, B, C, return_last_state=True)
    assert torch.isfinite(out).all() and torch.isfinite(last).all()
    # with this decay the state forgets within a few tokens: the tail alone gives the same output
    tail = slice(l - 40, l)
    ref, ref_last = selective_scan_ref(u[..., tail], delta[..., tail], A, B[..., tail], C[..., tail],
                                       return_last_state=True)
    assert_close("tail", out[..., tail], ref, 1e-5)
    assert_close("tail last", last, ref_last, 1e-5)


def _s6_mixed_decay(b, d, n, l, g=1):
    """Leaves where some (state, channel) pairs decay far past the factors' range within a chunk
    of 8 and the rest decay weakly: both paths of the chunked form run."""
    A = -torch.rand(d, n) * 0.5
    A[::2, ::2] = -torch.rand(d // 2 + d % 2, n // 2 + n % 2) * 40 - 20  # |A dt| up to ~100 a token
    return dict(u=_leaf(b, d, l), delta=_leaf(b, d, l, scale=0.5, shift=1.0), A=A.requires_grad_(),
                B=_leaf(b, g, n, l), C=_leaf(b, g, n, l), D=_leaf(d), z=_leaf(b, d, l),
                delta_bias=_leaf(d, scale=0.1), initial_state=_leaf(b, d, n))


def test_selective_scan_fallback_positions_match_naive():
    """Positions past ``SAFE_SPAN / 2`` go through the exact recurrence, forward and backward."""
    kw = _s6_mixed_decay(2, 6, 4, 45, g=2)
    x = kw["delta"].detach()
    dt = torch.nn.functional.softplus(x + kw["delta_bias"].detach()[:, None])
    c = s6_chunk._prepare(dt * kw["u"].detach(), dt, kw["A"].detach(), kw["B"].detach(), kw["C"].detach(), 8)
    assert c.fallback is not None and 0 < c.fallback.bad.sum() < c.fallback.bad.numel()
    ref = selective_scan_ref(**kw, delta_softplus=True, return_last_state=True)
    out = chunked_selective_scan(**kw, delta_softplus=True, return_last_state=True, chunk_size=8)
    assert_close("out", out[0], ref[0], TOL)
    assert_close("last_state", out[1], ref[1], TOL)
    assert_grads_close("grad", grads(out, list(kw.values())), grads(ref, list(kw.values())), TOL, list(kw))


@pytest.mark.parametrize("segment_size", [1, 2 * 4 * 8 * 3, 4 * 4 * 8 * 3 * 9])
def test_selective_scan_segments_match_naive(monkeypatch, segment_size):
    """Segments of one chunk, of several chunks of a row, and of several whole rows: the states
    carried across segment boundaries (forward and backward) give the same result."""
    monkeypatch.setattr(s6_chunk, "SEGMENT_SIZE", segment_size)
    kw = _s6_mixed_decay(3, 12, 4, 70, g=4)
    ref = selective_scan_ref(**kw, delta_softplus=True, return_last_state=True)
    out = chunked_selective_scan(**kw, delta_softplus=True, return_last_state=True, chunk_size=8)
    assert_close("out", out[0], ref[0], TOL)
    assert_close("last_state", out[1], ref[1], TOL)
    assert_grads_close("grad", grads(out, list(kw.values())), grads(ref, list(kw.values())), TOL, list(kw))


def test_selective_scan_negative_dt_matches_naive():
    """dt of either sign (no softplus): the factors' range is taken over |D|."""
    kw = _s6_inputs(2, 6, 4, 50)
    kw.pop("delta_bias")
    kw["delta"] = _leaf(2, 6, 50, scale=0.3, shift=0.05)
    names = list(kw)
    ref = selective_scan_ref(**kw, return_last_state=True)
    out = selective_scan_fn(**kw, return_last_state=True)
    assert_close("out", out[0], ref[0], TOL)
    assert_grads_close("grad", grads(out, list(kw.values())), grads(ref, list(kw.values())), TOL, names)


def test_selective_scan_is_causal_bitwise():
    """An output never depends on later tokens, not even in rounding (strong decays included)."""
    kw = {k: v.detach() for k, v in _s6_mixed_decay(1, 6, 4, 40).items()}
    out = selective_scan_fn(**kw, delta_softplus=True)
    for k in ("u", "delta", "B", "C", "z"):
        later = {**kw, k: kw[k].clone()}
        later[k][..., 35:] += 3.0
        assert torch.equal(selective_scan_fn(**later, delta_softplus=True)[..., :35], out[..., :35]), k


def test_selective_scan_force_naive_and_errors():
    kw = {k: v.detach() for k, v in _s6_inputs(1, 4, 3, 9).items()}
    with force_backend("naive"):
        ref = selective_scan_fn(**kw)
    assert last_backend("selective_scan_fn") == "naive"
    assert_close("forced", selective_scan_fn(**kw), ref, 1e-5)
    bad = {"delta": torch.randn(1, 4, 8), "A": torch.randn(5, 3), "B": torch.randn(1, 3, 3, 9),
           "D": torch.randn(3), "z": torch.randn(1, 4, 8), "delta_bias": torch.randn(5),
           "initial_state": torch.randn(1, 4, 2)}
    for name, value in bad.items():
        with pytest.raises(ValueError, match=name):
            selective_scan_fn(**{**kw, name: value})
    with pytest.raises(ValueError, match="u must"):
        selective_scan_fn(**{**kw, "u": torch.randn(4, 9)})
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_selective_scan(**kw, chunk_size=0)


# ------------------------------------------------------------------------------------ Mamba-2 (SSD)

def _ssd_inputs(b, l, h, p, n, g=1, strong=False, D_per_channel=False, dtype=torch.float32):
    return dict(x=_leaf(b, l, h, p, dtype=dtype), dt=_leaf(b, l, h, scale=0.5, shift=2.0 if strong else -1.0,
                dtype=dtype), A=(-torch.rand(h) * (8.0 if strong else 1.0) - 0.1).to(dtype).requires_grad_(),
                B=_leaf(b, l, g, n, dtype=dtype), C=_leaf(b, l, g, n, dtype=dtype),
                D=_leaf(*((h, p) if D_per_channel else (h,)), dtype=dtype), z=_leaf(b, l, h, p, dtype=dtype),
                dt_bias=_leaf(h, scale=0.1, dtype=dtype), initial_states=_leaf(b, h, p, n))


@pytest.mark.parametrize("T", AWKWARD_T)
@pytest.mark.parametrize("g,strong,D_per_channel", [(1, False, False), (2, True, True)])
def test_ssd_matches_naive(T, g, strong, D_per_channel):
    kw = _ssd_inputs(2, T, 4, 6, 5, g, strong, D_per_channel)
    names = list(kw)
    ref = ssd_naive(**kw, chunk_size=16, dt_softplus=True, return_final_states=True)
    out = mamba_chunk_scan_combined(**kw, chunk_size=16, dt_softplus=True, return_final_states=True)
    assert last_backend("mamba_chunk_scan_combined") == "chunk"
    assert_close("y", out[0], ref[0], TOL)
    assert_close("final_states", out[1], ref[1], TOL)
    assert_grads_close("grad", grads(out, list(kw.values())), grads(ref, list(kw.values())), TOL, names)


@pytest.mark.parametrize("T,g,strong,h0", [(1, 1, False, True), (3, 2, True, True), (8, 1, False, False)])
def test_ssd_short_core_matches_naive(T, g, strong, h0):
    """The one-chunk broadcast form that compiled streaming steps use, outputs and gradients."""
    kw = _ssd_inputs(2, T, 4, 6, 5, g, strong, D_per_channel=True)
    if not h0:
        kw.pop("initial_states")
    ins = list(kw.values())
    ref = ssd_naive(**kw, chunk_size=16, dt_softplus=True, return_final_states=True)
    out = run_ssd(short_core, **kw, chunk_size=16, dt_softplus=True, return_final_states=True)
    assert_close("y", out[0], ref[0], TOL)
    assert_close("final_states", out[1], ref[1], TOL)
    assert_grads_close("grad", grads(out, ins), grads(ref, ins), TOL, list(kw))


@pytest.mark.parametrize("p", AWKWARD_D)
def test_ssd_odd_head_dim_no_options(p):
    x, dt, B, C = _leaf(1, 75, 2, p), _leaf(1, 75, 2, scale=0.3), _leaf(1, 75, 1, 4), _leaf(1, 75, 1, 4)
    A = (-torch.rand(2)).requires_grad_()
    ins = [x, dt, A, B, C]
    ref = ssd_naive(x, dt.abs(), A, B, C, 32)
    out = mamba_chunk_scan_combined(x, dt.abs(), A, B, C, 32)
    assert isinstance(out, torch.Tensor)
    assert_close("y", out, ref, TOL)
    assert_grads_close("grad", grads([out], ins), grads([ref], ins), TOL)


def test_ssd_bf16():
    kw = _ssd_inputs(2, 63, 4, 8, 4, dtype=torch.bfloat16)
    y, last = mamba_chunk_scan_combined(**kw, chunk_size=16, dt_softplus=True, return_final_states=True)
    ref, ref_last = ssd_naive(**{k: v.float() for k, v in kw.items()}, chunk_size=16, dt_softplus=True,
                              return_final_states=True)
    assert y.dtype == torch.bfloat16 and last.dtype == torch.float32
    assert_close("bf16 y", y, ref, 2e-2)
    assert_close("bf16 final_states", last, ref_last, 1e-2)


def test_ssd_chunk_size_invariance():
    """The chunked core at any chunk (the CPU path caps it at 64; other devices use it as given)."""
    kw = {k: v.detach() for k, v in _ssd_inputs(1, 100, 4, 6, 5, g=4).items()}
    ref = chunked_ssd(**kw, chunk_size=256, return_final_states=True)
    for q in (1, 7, 32, 100, 256):
        out = run_ssd(chunk_core, **kw, chunk_size=q, return_final_states=True)
        assert_close(f"y q={q}", out[0], ref[0], 1e-5)
        assert_close(f"final q={q}", out[1], ref[1], 1e-5)


def test_ssd_reverse_is_flip():
    kw = {k: v.detach() for k, v in _ssd_inputs(2, 40, 2, 4, 3).items()}
    kw.pop("initial_states")
    y, last = mamba_chunk_scan_combined(**kw, chunk_size=16, return_final_states=True, reverse=True)
    flip = {k: (v.flip(1) if k in ("x", "dt", "B", "C", "z") else v) for k, v in kw.items()}
    ref, ref_last = mamba_chunk_scan_combined(**flip, chunk_size=16, return_final_states=True)
    assert_close("reverse", y, ref.flip(1), 1e-6)
    assert_close("reverse last", last, ref_last, 1e-6)


def test_ssd_initial_states_thread():
    kw = {k: v.detach() for k, v in _ssd_inputs(2, 50, 2, 4, 3).items()}
    whole, last = mamba_chunk_scan_combined(**kw, chunk_size=16, return_final_states=True)
    cut = lambda s: {k: (v[:, s] if k in ("x", "dt", "B", "C", "z") else v) for k, v in kw.items()}  # noqa: E731
    ya, ha = mamba_chunk_scan_combined(**cut(slice(0, 21)), chunk_size=16, return_final_states=True)
    yb, hb = mamba_chunk_scan_combined(**{**cut(slice(21, 50)), "initial_states": ha}, chunk_size=16,
                                       return_final_states=True)
    assert_close("threaded y", torch.cat([ya, yb], 1), whole, 1e-5)
    assert_close("threaded state", hb, last, 1e-5)


def test_ssd_long_strong_decay_is_finite():
    l = 65536
    x, dt = torch.randn(1, l, 1, 4), torch.rand(1, l, 1) * 20 + 5
    A, B, C = torch.tensor([-16.0]), torch.randn(1, l, 1, 4), torch.randn(1, l, 1, 4)
    y, last = mamba_chunk_scan_combined(x, dt, A, B, C, 64, return_final_states=True)
    assert torch.isfinite(y).all() and torch.isfinite(last).all()
    tail = slice(l - 40, l)
    ref, ref_last = ssd_naive(x[:, tail], dt[:, tail], A, B[:, tail], C[:, tail], 64, return_final_states=True)
    assert_close("tail", y[:, tail], ref, 1e-5)
    assert_close("tail last", last, ref_last, 1e-5)


@pytest.mark.parametrize("strong", [False, True])
def test_ssd_state_passing_matmul_equals_loop(strong):
    """The GPU's one-matmul state passing (exp(segsum) over chunks) == the CPU's loop, with grads."""
    h0, local = _leaf(2, 3, 5, 4), _leaf(2, 3, 9, 5, 4)  # [B, H, (N,) P, N]
    a_end = (-torch.rand(2, 3, 9) * (200.0 if strong else 2.0)).requires_grad_()
    loop = pass_states(h0, local, a_end, matmul=False)
    mm = pass_states(h0, local, a_end, matmul=True)
    assert torch.isfinite(mm).all()
    assert_close("states", mm, loop, 1e-5)
    assert_grads_close("states", grads([mm], (h0, local, a_end)), grads([loop], (h0, local, a_end)), 1e-5)


def test_ssd_errors():
    kw = {k: v.detach() for k, v in _ssd_inputs(1, 9, 4, 3, 2, g=2).items()}
    bad = {"dt": torch.randn(1, 9, 3), "A": torch.randn(2), "B": torch.randn(1, 9, 3, 2),
           "C": torch.randn(1, 9, 2, 3), "D": torch.randn(4, 2), "z": torch.randn(1, 9, 4, 2),
           "dt_bias": torch.randn(3), "initial_states": torch.randn(1, 4, 3, 3), "chunk_size": 0}
    for name, value in bad.items():
        with pytest.raises(ValueError, match=name):
            mamba_chunk_scan_combined(**{"chunk_size": 8, **kw, name: value})
    with pytest.raises(ValueError, match="x must"):
        mamba_chunk_scan_combined(**{**kw, "x": torch.randn(9, 4, 3)}, chunk_size=8)


@pytest.mark.skipif(not hasattr(mmeff.ops, "chunk_simple_gla"), reason="mmeff.ops.chunk_simple_gla absent")
def test_ssd_is_simple_gla():
    """SSD == simple GLA with q = C, k = B, v = dt * x, g = dt * A, scale 1 (state transposed)."""
    kw = {k: v.detach() for k, v in _ssd_inputs(2, 70, 4, 6, 5, g=2).items()}
    x, dt, A, B, C, h0 = (kw[k] for k in ("x", "dt", "A", "B", "C", "initial_states"))
    dt = F.softplus(dt)
    y, last = mamba_chunk_scan_combined(x, dt, A, B, C, 16, initial_states=h0, return_final_states=True)
    heads = lambda t: t.repeat_interleave(2, dim=2)  # noqa: E731  [B, L, G, N] -> [B, L, H, N]
    o, ht = mmeff.ops.chunk_simple_gla(heads(C), heads(B), x * dt[..., None], dt * A, scale=1.0,
                                       initial_state=h0.transpose(-1, -2), output_final_state=True)
    assert_close("ssd vs simple_gla", y, o, 1e-5)
    assert_close("ssd vs simple_gla state", last, ht.transpose(-1, -2), 1e-5)
