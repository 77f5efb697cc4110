"""Pieces shared by the chunked forms: within-block decay sums and state passing between chunks."""
from __future__ import annotations

import torch
import torch.nn.functional as F

MATMUL_MAX_CHUNKS = 2048  # GPU state passing as one [N+1, N+1] matmul up to this many chunks


def segsum(a: torch.Tensor) -> torch.Tensor:
    """``[..., Q] -> [..., Q, Q]``: ``out[t, s] = a_{s+1} + ... + a_t`` for ``s <= t``, else -inf.

    Built as a cumulative sum of the masked repeats (not as a difference of two cumulative sums),
    so each entry is exact to the precision of its own terms.
    """
    q = a.shape[-1]
    ones = torch.ones(q, q, dtype=torch.bool, device=a.device)
    rows = a[..., :, None].expand(*a.shape, q).masked_fill(~ones.tril(-1), 0.0)  # [t, s] = a_t, s < t
    return rows.cumsum(-2).masked_fill(~ones.tril(), float("-inf"))


def use_matmul(x: torch.Tensor, chunks: int) -> bool:
    """Whether to pass states by matmul: on a GPU (a loop costs launches per chunk there), up to
    ``MATMUL_MAX_CHUNKS`` chunks (its cost grows with their square); on CPU the loop is cheap."""
    return x.is_cuda and chunks <= MATMUL_MAX_CHUNKS


def pass_states(h0: torch.Tensor, local: torch.Tensor, a_end: torch.Tensor, matmul: bool) -> torch.Tensor:
    """States entering each chunk and the final one: ``H_{i+1} = exp(a_end_i) H_i + local_i``.

    Args:
        h0: ``[*lead, *state]`` the state before the first chunk.
        local: ``[*lead, N, *state]`` each chunk's end state from a zero start.
        a_end: ``[*lead, N]`` each chunk's total log-decay (a scalar per chunk and lead index).
        matmul: one matmul with the chunk-level decay matrix ``exp(segsum(a_end))`` (the Mamba-2
            paper's state passing), else a loop over chunks; see :func:`use_matmul`.

    Returns:
        ``[*lead, N + 1, *state]``: ``H_0 = h0`` .. ``H_N`` (the state after the last chunk).
    """
    dim = a_end.dim() - 1  # the chunk axis
    if matmul:
        states = torch.cat([h0.unsqueeze(dim), local], dim=dim).flatten(dim + 1)  # [*lead, N+1, S]
        decay = torch.exp(segsum(F.pad(a_end, (1, 0))))  # [*lead, N+1, N+1]: chunk m's end to i's
        return (decay @ states).view(local.shape[:dim] + (local.shape[dim] + 1,) + local.shape[dim + 1:])
    decay = torch.exp(a_end).view(a_end.shape + (1,) * (local.dim() - a_end.dim()))
    entering = [h0]
    for local_i, decay_i in zip(local.unbind(dim), decay.unbind(dim)):
        entering.append(local_i + decay_i * entering[-1])
    return torch.stack(entering, dim=dim)
