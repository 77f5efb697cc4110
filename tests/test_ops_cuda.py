"""The linear-time ops on a GPU (their GPU-only branches: one-matmul state passing, one segment)
against the fp32 naive loops on CPU, gradients included; skipped without CUDA."""
import pytest
import torch

from mmeff import ops
from mmeff.bench.mixers import OPS, _inputs
from mmeff.testing import assert_close, assert_grads_close, grads


@pytest.mark.cuda
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("T", [63, 700])
def test_chunked_op_on_cuda_matches_naive(op, T):
    torch.manual_seed(0)
    args, kw = _inputs(op, 2, T, 2, "cuda", torch.float32)
    leaves = [a.detach().requires_grad_() if torch.is_tensor(a) else a for a in args]
    cpu = [a.detach().cpu().requires_grad_() if torch.is_tensor(a) else a for a in args]
    out = getattr(ops, op)(*leaves, **kw)
    ref = ops.implementations(op)["naive"](*cpu, **kw)
    out, ref = (o[0] if isinstance(o, tuple) else o for o in (out, ref))
    assert_close(f"{op} T={T}", out.cpu(), ref, 5e-3)
    tensors = [a for a in leaves if torch.is_tensor(a)]
    got = [g.cpu() for g in grads([out], tensors)]
    assert_grads_close(op, got, grads([ref], [a for a in cpu if torch.is_tensor(a)]), 5e-3)
