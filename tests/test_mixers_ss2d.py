"""The vision mixers: ss2d (VMamba / PlainMamba / LocalMamba), mambavision, vig."""
import pytest
import torch
import torch.nn.functional as F

import mmeff
from mmeff.mixers.ss2d import STEP_DIRECTIONS, step_directions
from mmeff.ops.selective_scan import selective_scan_ref
from mmeff.testing import assert_close


def _count(m):
    return sum(p.numel() for p in m.parameters())


def _ss2d_reference(m, x, grid):
    """SS2D path by path with the naive scan (no folding of paths into channels)."""
    scan = mmeff.create_scan(m.scan_name, grid, **m.scan_kwargs)
    K, E, N, R = m.num_paths, m.d_inner, m.d_state, m.dt_rank
    P = m.x_proj_weight.shape[0]
    u = m.in_proj(x)
    u, z = u.chunk(2, dim=-1) if m.gate else (u, None)
    if m.conv2d is not None:
        H, W = grid
        u = m.conv2d(u.transpose(1, 2).reshape(x.shape[0], E, H, W)).flatten(2).transpose(1, 2)
    if m.conv1d is None:
        u = F.silu(u)
    ys = []
    for k in range(K):
        p = k % P
        uk = u[:, scan.paths[k]]  # [B, L, E] along path k
        if m.conv1d is not None:
            w = m.conv1d.conv.weight[k * E:(k + 1) * E]
            b = m.conv1d.conv.bias[k * E:(k + 1) * E]
            uk = F.conv1d(F.pad(uk.transpose(1, 2), (w.shape[-1] - 1, 0)), w, b, groups=E)  # causal
            uk = F.silu(uk).transpose(1, 2)
        dt, Bk, Ck = (uk @ m.x_proj_weight[p].T).split([R, N, N], dim=-1)
        if m.direction_B is not None:
            Bk = Bk + m.direction_B[step_directions(scan)[k]]
        A = -torch.exp(m.A_log[p * E:(p + 1) * E].float())
        y = selective_scan_ref(uk.transpose(1, 2), (dt @ m.dt_proj_weight[p].T).transpose(1, 2), A,
                               Bk.transpose(1, 2), Ck.transpose(1, 2), m.D[p * E:(p + 1) * E],
                               delta_bias=m.dt_proj_bias[p], delta_softplus=True).transpose(1, 2)
        if m.path_attn is not None:
            y = m.path_attn(y)
        ys.append(y[:, scan.inverse[k]])  # back to grid order
    y = torch.stack(ys).mean(0) if m.merge == "mean" else torch.stack(ys).sum(0)
    if m.out_norm is not None:
        y = m.out_norm(y)
    if z is not None:
        y = y * F.silu(z)
    return m.out_proj(y)


VARIANTS = {
    "vmamba_v2": dict(d_state=1),
    "plainmamba": dict(scan="snake4", d_state=4, d_conv=7, conv_bias=True, gate=True, out_norm=False,
                       bias=True, shared_ssm=True, direction_embed=True),
    "localvim": dict(scan="localmamba", scan_kwargs=dict(directions=("h", "v_flip", "w2", "w2_flip")),
                     conv="1d", d_conv=4, conv_bias=True, d_state=4, gate=True, out_norm=False,
                     path_attn=True),
    "localvmamba": dict(scan="localmamba", scan_kwargs=dict(layer=3, table="vmamba"), d_state=4, gate=True,
                        conv_bias=True, path_attn=True, merge="sum"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_ss2d_matches_per_path_reference(variant):
    torch.manual_seed(0)
    grid = (5, 6)
    m = mmeff.create_mixer("ss2d", 20, grid=grid, **VARIANTS[variant])
    x = torch.randn(2, 30, 20, requires_grad=True)
    y = m(x)
    ref = _ss2d_reference(m, x, grid)
    assert_close(f"ss2d {variant}", y, ref, 1e-5)
    gy, = torch.autograd.grad(y.square().sum(), x)
    gr, = torch.autograd.grad(ref.square().sum(), x)
    assert_close(f"ss2d {variant} grad", gy, gr, 1e-5)


def test_ss2d_parameter_counts():
    D, E, R, N, K = 96, 192, 6, 1, 4  # VMamba-T, first stage
    vm = mmeff.create_mixer("ss2d", D)
    assert _count(vm) == (D * E + 9 * E + K * (R + 2 * N) * E + K * (R * E + E) + K * E * N + K * E
                          + 2 * E + E * D)
    D, E, R, N = 192, 384, 12, 16  # PlainMamba-L1 layer (7x7 conv, biases, shared SSM, 6 directions)
    pm = mmeff.create_mixer("ss2d", D, **{**VARIANTS["plainmamba"], "d_state": 16})
    assert _count(pm) == (D * 2 * E + 2 * E) + (49 * E + E) + (R + 2 * N) * E + (R * E + E) + E * N + E \
        + len(STEP_DIRECTIONS) * N + (E * D + D)


def test_ss2d_grid_handling():
    m = mmeff.create_mixer("ss2d", 16)
    x = torch.randn(1, 12, 16)
    y_row = m(x)  # no grid: one row
    torch.testing.assert_close(m(x, grid=(1, 12)), y_row)
    m.set_grid((3, 4))
    torch.testing.assert_close(m(x), m(x, grid=(3, 4)))
    with pytest.raises(ValueError, match="has 20 tokens but x has L=12"):
        m(x, grid=(4, 5))
    with pytest.raises(ValueError, match="causal"):
        mmeff.create_mixer("ss2d", 16, causal=True)
    with pytest.raises(ValueError, match="unknown scan"):
        mmeff.create_mixer("ss2d", 16, scan="crosss")
    with pytest.raises(ValueError, match="d_conv must be odd"):
        mmeff.create_mixer("ss2d", 16, d_conv=4)


def test_ss2d_is_bidirectional():
    m = mmeff.create_mixer("ss2d", 16, grid=(4, 4), d_conv=1, conv=None)
    x = torch.randn(1, 16, 16, requires_grad=True)
    g, = torch.autograd.grad(m(x)[0, 0].sum(), x)
    assert g[0, -1].abs().sum() > 0  # the first token sees the last one


def test_step_directions():
    snake = mmeff.create_scan("snake4", (3, 4))
    ids = step_directions(snake)
    assert ids.shape == (4, 12) and (ids[:, 0] == 0).all()
    assert not (ids == STEP_DIRECTIONS.index("jump")).any()  # snakes only step to neighbours
    assert ids[0, 1:5].tolist() == [1, 1, 1, 4]  # right x3, then down
    raster = step_directions(mmeff.create_scan("raster", (3, 4)))
    assert raster[0].tolist().count(STEP_DIRECTIONS.index("jump")) == 2  # the two row wraps


def test_mambavision_mixer():
    D, E, R, N, k = 320, 320, 20, 8, 3  # MambaVision-T, stage 3
    m = mmeff.create_mixer("mambavision", D)
    h = E // 2
    assert _count(m) == D * E + 2 * k * h + h * (R + 2 * N) + R * h + h + h * N + h + E * D
    small = mmeff.create_mixer("mambavision", 16, d_state=4)
    x = torch.randn(2, 9, 16, requires_grad=True)
    y = small(x)
    g, = torch.autograd.grad(y[0, 0].sum(), x)
    # the conv looks one step ahead, the scan only forward
    assert g[0, 1].abs().sum() > 0 and g[0, 2:].abs().sum() == 0
    with pytest.raises(ValueError, match="causal"):
        mmeff.create_mixer("mambavision", 16, causal=True)
    with pytest.raises(ValueError, match="even"):
        mmeff.create_mixer("mambavision", 15)


def test_vig_mixer():
    torch.manual_seed(0)
    D = 32
    m = mmeff.create_mixer("vig", D, grid=(3, 4), inner_kwargs=dict(num_heads=2))
    inner = mmeff.create_mixer("gla", D, causal=False, num_heads=2)
    assert _count(m) == 9 * D + (D * D + D) + D + _count(inner)
    assert not m.inner.causal
    x = torch.randn(2, 12, D, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    g, = torch.autograd.grad(y[0, 0].sum(), x)
    assert g[0, -1].abs().sum() > 0  # bidirectional
    with torch.no_grad():  # gate fully open on the inner mixer: y = inner(conv branch)
        m.gate.weight.zero_(), m.gate.bias.fill_(30.0)
        c = F.silu(m.conv(x.detach().transpose(1, 2).reshape(2, D, 3, 4)).flatten(2).transpose(1, 2))
        torch.testing.assert_close(m(x), m.inner(c))
    scanned = mmeff.create_mixer("vig", D, scan="cross", inner="mamba", inner_kwargs=dict(d_state=4))
    assert scanned(torch.randn(1, 12, D), grid=(3, 4)).shape == (1, 12, D)
    with pytest.raises(ValueError, match="causal"):
        mmeff.create_mixer("vig", D, causal=True)
    with pytest.raises(ValueError, match="tokens but x has"):
        m(torch.randn(1, 10, D))
