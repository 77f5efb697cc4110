"""MoE layer: fast dispatch == per-token reference, routing, losses, balancing, upcycling."""
import functools
import math

import pytest
import torch
from timm.layers import GluMlp, Mlp, SwiGLU
from torch import nn

from mmeff.blocks import Block
from mmeff.layers import moe as moe_module
from mmeff.layers.moe import MoE, collect_aux_loss, moe_naive, update_balance_bias
from mmeff.testing import assert_close, assert_grads_close, grads

CONFIGS = {
    "softmax": dict(),
    "softmax_top1": dict(top_k=1),
    "sigmoid": dict(router="sigmoid", top_k=3),
    "shared_fine_glu": dict(num_shared_experts=2, granularity=2, glu=True, act_layer=nn.SiLU,
                            top_k=3),
    "expert_choice": dict(router="expert_choice"),
    "capacity_drop": dict(capacity_factor=0.6, top_k=2),
    "grouped_mm": dict(impl="grouped_mm", num_shared_experts=1),
    "grouped_mm_drop": dict(impl="grouped_mm", capacity_factor=0.6, router="sigmoid", bias=False),
}


@pytest.fixture(autouse=True)
def _one_thread():
    """The tensors here are tiny: threads only add contention on a shared machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _moe(**kw):
    kw = {"num_experts": 6, **kw}
    return MoE(60, 48, **kw)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("shape", [(2, 63, 60), (75, 60)])
def test_matches_naive(name, shape):
    _check_matches_naive(name, shape)


@pytest.mark.parametrize("name", ["softmax", "shared_fine_glu", "expert_choice", "capacity_drop",
                                  "grouped_mm_drop"])
def test_index_add_rows_match_naive(name, monkeypatch):
    """The CUDA row movement (index_select + index_add_ combine), run here on CPU."""
    monkeypatch.setattr(moe_module, "_GATHER_ONLY_DEVICES", ())
    _check_matches_naive(name, (2, 63, 60))


def _check_matches_naive(name, shape):
    moe = _moe(**CONFIGS[name])
    with torch.no_grad():  # a non-zero selection bias (expert choice has none)
        moe.expert_bias.copy_(torch.randn(moe.num_experts) * 0.05)
    x = torch.randn(shape, requires_grad=True)
    params = [x] + [p for p in moe.parameters()]
    names = ["x"] + [n for n, _ in moe.named_parameters()]
    y, ref = moe(x), moe_naive(moe, x)
    assert_close(f"{name}.y", y, ref, 1e-5)
    assert_grads_close(name, grads([y], params), grads([ref], params), 1e-5, names)
    if "drop" not in name:
        assert int(moe.last_dropped) == 0 or name == "expert_choice"


@pytest.mark.parametrize("threads", [2, 4])
@pytest.mark.parametrize("name", ["softmax", "shared_fine_glu", "capacity_drop"])
def test_padded_segments_match_naive(name, threads):
    """On CPU the experts run in padded batches of one expert per thread, each batch padded to its
    own largest group (4 threads over 6 experts: a shorter last batch); output and gradients
    still equal the reference, and the rows are fewer than one batch padded to the largest group."""
    torch.set_num_threads(threads)
    moe = _moe(**CONFIGS[name])
    with torch.no_grad():  # uneven loads: experts 0 and 3 favoured
        moe.expert_bias.copy_(torch.tensor([0.3, 0, 0, 0.2, 0, 0]))
    idx, _ = moe.select(moe.scores(moe.router_logits(torch.randn(75, 60))))
    _, rows, segments, load, _ = moe._token_choice(idx, grouped=False)
    kept = (load if moe.capacity_factor is None else load.clamp(max=moe.capacity(75))).tolist()
    starts = range(0, 6, threads)
    assert segments.counts == tuple(min(threads, 6 - i) for i in starts)
    assert segments.caps == tuple(max(kept[i:i + threads]) for i in starts)
    assert rows == segments.rows == sum(n * c for n, c in zip(*segments)) < 6 * max(kept)
    _check_matches_naive(name, (75, 60))


def test_segmented_linear_gradcheck():
    """The padded-segment linear in float64: segments of 2, 1 and 3 experts, one without rows."""
    segments = moe_module._Segments(counts=(2, 1, 3), caps=(3, 0, 2))  # rows 0-5, none, 6-11
    opts = dict(dtype=torch.float64, requires_grad=True)
    a, w, b = torch.randn(12, 4, **opts), torch.randn(6, 4, 5, **opts), torch.randn(6, 5, **opts)
    assert torch.autograd.gradcheck(lambda *t: moe_module._SegmentedLinear.apply(*t, segments),
                                    (a, w, b))
    y = moe_module._SegmentedLinear.apply(a, w, None, segments)
    torch.testing.assert_close(y[7], a[7] @ w[3])       # row 7: second row of expert 3
    torch.testing.assert_close(y[10], a[10] @ w[5])     # rows 10-11: expert 5
    w.grad = None
    y.sum().backward()
    assert w.grad[2].abs().sum() == 0                   # expert 2 had no rows


def test_gather_only_rows_gradcheck():
    """Gather + gated combine through the gather-only autograd functions, in float64: tokens with
    two rows, one, none (all dropped); an empty padding row; weights scattered from the gates."""
    rows = 7
    row_of = torch.tensor([[0, 4], [2, rows], [rows, rows], [5, 1], [3, rows]])  # [N=5, k=2]
    placed = moe_module._place(row_of, rows)
    assert placed.order is not None                     # CPU: the gather-only path
    opts = dict(dtype=torch.float64, requires_grad=True)
    x, gates, w = torch.randn(5, 3, **opts), torch.rand(5, 2, **opts), torch.randn(3, 4, **opts)

    def layer(x, gates, w):
        weight = gates.new_zeros(rows + 1).scatter(0, row_of.reshape(-1), gates.reshape(-1))[:rows]
        return placed.combine(placed.gather(x) @ w, weight, None)

    assert torch.autograd.gradcheck(layer, (x, gates, w))
    y = layer(x, gates, w)
    assert y[2].abs().sum() == 0                        # token 2 lost both assignments
    expected = gates[0, 0] * x[0] @ w + gates[0, 1] * x[0] @ w
    torch.testing.assert_close(y[0], expected)


@pytest.mark.parametrize("name", ["softmax", "sigmoid", "shared_fine_glu", "expert_choice",
                                  "capacity_drop"])
def test_cpu_rows_move_without_scatter_add(name):
    """On CPU the rows [R, D] move by gathers both ways (a threaded scatter-add is slow there);
    the only scatter-adds left are the router's gate gradient on [N, E] and the load count."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            calls.append((str(func), tuple(out.shape) if isinstance(out, torch.Tensor) else ()))
            return out

    calls = []
    moe = _moe(**CONFIGS[name])
    x = torch.randn(2, 20, 60, requires_grad=True)
    with Record():
        moe(x).square().sum().backward()
    names = {f for f, _ in calls}
    assert "aten._embedding_bag_forward_only.default" in names    # the combine ran
    assert not {f for f in names if "index_add" in f or "index_put" in f or "index.Tensor" in f}
    # (and the count of assignments per expert, [E])
    assert {shape for f, shape in calls if "scatter_add" in f} <= {(40, moe.num_experts),
                                                                  (moe.num_experts,)}


def test_bf16_close_to_fp32_reference():
    moe = _moe(num_shared_experts=1)
    x = torch.randn(2, 33, 60)
    ref = moe_naive(moe, x)
    moe_bf16 = moe.to(torch.bfloat16)
    assert moe_bf16.expert_bias.dtype == torch.float32  # 1e-3 bias steps need fp32
    assert_close("bf16", moe_bf16(x.bfloat16()).float(), ref, 3e-2)


def test_cpu_autocast_bf16():
    moe = _moe(num_shared_experts=1)
    x = torch.randn(2, 33, 60, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = moe(x)
    assert y.dtype == torch.float32
    assert_close("autocast", y, moe_naive(moe, x), 3e-2)
    y.sum().backward()
    assert moe.w1.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()


def test_dropless_drops_nothing_even_when_all_tokens_pick_one_expert():
    moe = _moe(top_k=2)
    with torch.no_grad():  # every token prefers experts 0 and 1
        moe.expert_bias.copy_(torch.tensor([2.0, 1.0, 0, 0, 0, 0]))
    y = moe(torch.randn(50, 60))
    assert int(moe.last_dropped) == 0
    assert moe.last_load.tolist() == [50, 50, 0, 0, 0, 0]
    assert moe.load_stats()["imbalance"] == pytest.approx(3.0)
    assert torch.isfinite(y).all()


def test_capacity_drops_are_counted_and_give_zero():
    moe = _moe(top_k=1, capacity_factor=1.0, bias=False)
    with torch.no_grad():
        moe.expert_bias.copy_(torch.tensor([5.0, 0, 0, 0, 0, 0]))  # everyone wants expert 0
    x = torch.randn(30, 60)
    y = moe(x)
    cap = math.ceil(30 / 6)
    assert moe.capacity(30) == cap == 5
    assert int(moe.last_dropped) == 30 - cap
    assert moe.load_stats()["drop_fraction"] == pytest.approx((30 - cap) / 30)
    # the first `cap` tokens are served in order; the rest pass through the MoE as zero
    assert (y[:cap].abs().sum(-1) > 0).all() and (y[cap:] == 0).all()
    # top-2: each expert's queue is truncated at capacity, first choices before second ones
    moe2 = _moe(top_k=2, capacity_factor=0.5)
    moe2(x)
    load, cap2 = moe2.last_load, moe2.capacity(30)
    assert int(moe2.last_dropped) == int((load - cap2).clamp(min=0).sum())


def test_switch_loss_and_z_loss_hand_computed():
    moe = MoE(2, 4, num_experts=2, top_k=1, aux_loss_coef=0.01, z_loss_coef=0.001)
    with torch.no_grad():
        moe.router.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    moe(x)
    p = math.exp(2) / (math.exp(2) + 1)          # router probability of the preferred expert
    f = [3 / 4, 1 / 4]                            # three tokens go to expert 0, one to expert 1
    mean_p = [(3 * p + (1 - p)) / 4, (3 * (1 - p) + p) / 4]
    switch = 0.01 * 2 * (f[0] * mean_p[0] + f[1] * mean_p[1])
    z = 0.001 * math.log(math.exp(2) + 1) ** 2
    assert moe.aux_loss.item() == pytest.approx(switch + z, rel=1e-5)
    assert moe.last_load.tolist() == [3, 1]
    off = MoE(2, 4, num_experts=2, top_k=1, aux_loss_coef=0.0)
    off(x)
    assert off.aux_loss.item() == 0.0


def test_collect_aux_loss_sums_every_moe():
    model = nn.Sequential(_moe(), nn.GELU(), _moe(router="sigmoid"))
    model(torch.randn(2, 9, 60))
    total = collect_aux_loss(model)
    assert total.item() == pytest.approx(model[0].aux_loss.item() + model[2].aux_loss.item())
    assert total.requires_grad and total.item() > 0
    assert collect_aux_loss(nn.Linear(2, 2)).item() == 0.0


def _skewed_tokens(n=256, d=16):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, d, generator=gen) + torch.randn(d, generator=gen)  # a shared offset


def _imbalance(moe, x):
    moe.eval()
    with torch.no_grad():
        moe(x)
    moe.train()
    return moe.load_stats()["imbalance"]


def _train(moe, x, steps, *, bias_rate=0.0):
    opt = torch.optim.Adam(moe.parameters(), lr=1e-2)
    target = torch.randn(x.shape[0], moe.out_features, generator=torch.Generator().manual_seed(2))
    for _ in range(steps):
        loss = (moe(x) - target).pow(2).mean() + collect_aux_loss(moe)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if bias_rate:
            update_balance_bias(moe, bias_rate)


@pytest.mark.parametrize("mode", ["aux_loss", "loss_free_bias"])
def test_balancing_reduces_imbalance(mode):
    x = _skewed_tokens()
    kw = dict(num_experts=8, top_k=2)
    if mode == "aux_loss":
        moe, control = (MoE(16, 32, aux_loss_coef=coef, **kw) for coef in (0.1, 0.0))
        control.load_state_dict(moe.state_dict())
        rate = 0.0
    else:
        moe, control = (MoE(16, 32, router="sigmoid", aux_loss_coef=0.0, **kw) for _ in range(2))
        control.load_state_dict(moe.state_dict())
        rate = 0.01
    before = _imbalance(moe, x)
    _train(moe, x, 40, bias_rate=rate)
    _train(control, x, 40)
    after, after_control = _imbalance(moe, x), _imbalance(control, x)
    assert before > 2.0, before                          # the skewed tokens crowd a few experts
    assert after < 0.6 * before and after < after_control, (before, after, after_control)


def test_update_bias_sign_rule():
    moe = _moe(top_k=1)
    with torch.no_grad():
        moe.expert_bias.copy_(torch.tensor([3.0, 0, 0, 0, 0, 0]))
    moe.train()
    moe(torch.randn(12, 60))                  # all 12 assignments on expert 0
    moe.update_bias(rate=1e-3)
    expected = torch.tensor([3.0 - 1e-3] + [1e-3] * 5)
    torch.testing.assert_close(moe.expert_bias, expected)
    moe.update_bias(rate=1e-3)                # nothing routed since the last update: no change
    torch.testing.assert_close(moe.expert_bias, expected)
    moe.eval()
    moe(torch.randn(12, 60))                  # eval forwards do not count
    moe.update_bias(rate=1e-3)
    torch.testing.assert_close(moe.expert_bias, expected)
    with pytest.raises(RuntimeError, match="expert choice"):
        _moe(router="expert_choice").update_bias()


@pytest.mark.parametrize("router", ["softmax", "sigmoid"])
@pytest.mark.parametrize("dense", ["mlp", "glu_mlp", "swiglu", "state_dict"])
def test_upcycling_equals_dense(dense, router):
    if dense == "mlp":
        mlp, act = Mlp(60, 100), None
    elif dense == "glu_mlp":
        mlp, act = GluMlp(60, 96, act_layer=nn.SiLU, gate_last=False), None
    elif dense == "swiglu":
        mlp, act = SwiGLU(60, 48), None
    else:
        mlp, act = Mlp(60, 100, bias=(True, False)).state_dict(), nn.GELU
    moe = MoE.from_dense(mlp, num_experts=4, top_k=2, router=router, act_layer=act)
    dense_fn = Mlp(60, 100, bias=(True, False)) if dense == "state_dict" else mlp
    if dense == "state_dict":
        dense_fn.load_state_dict(mlp)
    x = torch.randn(2, 21, 60)
    assert_close(f"upcycle.{dense}", moe(x), dense_fn(x), 1e-6)
    assert moe.w1.shape[0] == 4 and moe.glu == (dense in ("glu_mlp", "swiglu"))


def test_upcycling_rejects_what_cannot_copy():
    with pytest.raises(ValueError, match="granularity"):
        MoE.from_dense(Mlp(8, 16), num_experts=4, top_k=2, granularity=2)
    with pytest.raises(ValueError, match="act_layer"):
        MoE.from_dense(Mlp(8, 16).state_dict(), num_experts=4, top_k=2)
    with pytest.raises(ValueError, match="norm"):
        MoE.from_dense(Mlp(8, 16, norm_layer=nn.LayerNorm), num_experts=4, top_k=2)


@pytest.mark.parametrize("kw, arg", [
    (dict(top_k=9), "top_k"), (dict(top_k=0), "top_k"), (dict(top_k=-1), "top_k"),
    (dict(capacity_factor=0.0), "capacity_factor"), (dict(capacity_factor=-1), "capacity_factor"),
    (dict(router="topk"), "router"), (dict(impl="cuda"), "impl"), (dict(num_experts=0), "num_experts"),
    (dict(granularity=5), "granularity"), (dict(aux_loss_coef=-1.0), "aux_loss_coef"),
    (dict(router="expert_choice", causal=True), "causal"),
])
def test_bad_config_raises(kw, arg):
    with pytest.raises(ValueError, match=arg):
        MoE(16, 32, **{"num_experts": 8, **kw})


def test_bad_input_and_decode_errors():
    with pytest.raises(ValueError, match=r"x\[\.\.\., 60\]"):
        _moe()(torch.randn(2, 5, 61))
    with pytest.raises(RuntimeError, match="cannot decode"):
        _moe(router="expert_choice").step(torch.randn(1, 1, 60))
    moe = _moe(causal=True)
    x = torch.randn(2, 1, 60)
    y, state = moe.step(x, None)
    torch.testing.assert_close(y, moe(x))


@pytest.mark.parametrize("router", ["softmax", "expert_choice"])
def test_inside_block_as_ffn_layer(router):
    ffn = functools.partial(MoE, num_experts=4, top_k=2, router=router, num_shared_experts=1)
    block = Block(32, "attention", mixer_kwargs=dict(num_heads=4, causal=False), ffn_layer=ffn)
    assert isinstance(block.ffn, MoE) and block.ffn.expert_hidden == 128
    x = torch.randn(2, 10, 32)
    y = block(x)
    loss = y.square().mean() + collect_aux_loss(block)
    loss.backward()
    assert y.shape == x.shape and block.ffn.w1.grad is not None
    assert block.ffn.router.weight.grad.abs().sum() > 0


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["softmax", "shared_fine_glu", "expert_choice", "capacity_drop"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_naive(name, dtype):
    """On CUDA: fp32 runs one padded bmm of all experts, bf16 autocast grouped_mm on sm90+ (padded
    bmm before); rows move by index_select and an index_add_ combine."""
    moe = _moe(**CONFIGS[name]).cuda()
    x = torch.randn(2, 63, 60, device="cuda", requires_grad=True)
    params = [x] + list(moe.parameters())
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        y = moe(x)
    ref = moe_naive(moe, x)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert_close(f"{name}.y", y.float(), ref, tol)
    assert_grads_close(name, grads([y.float()], params), grads([ref], params), tol)
