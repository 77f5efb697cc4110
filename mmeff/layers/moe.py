"""Mixture-of-experts feed-forward: token-choice (softmax / sigmoid) and expert-choice routing.

A drop-in ``ffn_layer`` for :class:`mmeff.blocks.Block` (``functools.partial(MoE, num_experts=8)``).

Papers:
- Switch Transformer (load-balancing loss, capacity factor): https://arxiv.org/abs/2101.03961
- ST-MoE (router z-loss): https://arxiv.org/abs/2202.08906
- Mixtral (8 experts, top-2 softmax router): https://arxiv.org/abs/2401.04088
- DeepSeekMoE (fine-grained and shared experts): https://arxiv.org/abs/2401.06066
- DeepSeek-V3 (sigmoid router, auxiliary-loss-free bias balancing): https://arxiv.org/abs/2412.19437
- Expert-choice routing: https://arxiv.org/abs/2202.09368
- MegaBlocks (dropless MoE as grouped matmuls): https://arxiv.org/abs/2211.15841
- Sparse upcycling: https://arxiv.org/abs/2212.05055

Dispatch sorts the (token, expert) assignments by expert and runs the experts as batched matmuls:
one ``torch.nn.functional.grouped_mm`` over the jagged groups on CUDA sm90+ in bf16, otherwise
``torch.bmm`` over groups padded to a common length (other GPUs, fp32/fp16: one bmm of all
experts padded to the largest group; CPU: one bmm per segment of as many consecutive experts as
threads, each segment padded to its own largest group, see :func:`_segment_span`); no Python loop
over tokens.  On CUDA the rows move with ``index_select`` and the gated combine is
one ``index_add_``.  On CPU, where a multi-threaded scatter-add (``index_add_``, and the backward
of ``index_select``) is many times slower than a gather, every row movement is a gather both ways:
the combine is one ``embedding_bag`` (sum of each token's rows weighted by their gates) and the
backward of the dispatch sums each token's row gradients with one ``embedding_bag`` too
(:class:`_GatherRows`, :class:`_CombineRows`).  ``moe_naive`` is the per-token reference.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple, Type, Union

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import GluMlp, Mlp
from torch import nn
from torch.autograd.function import once_differentiable

from .._utils import check_positive, unknown_name_error

logger = logging.getLogger("mmeff")

ROUTERS = ("softmax", "sigmoid", "expert_choice")
IMPLS = ("auto", "grouped_mm", "bmm")
_ANNOUNCED: set = set()
# devices where rows move by gathers only (see _Placement): a multi-threaded CPU scatter-add is slow
_GATHER_ONLY_DEVICES = ("cpu",)


def _pair(v: Union[bool, Tuple[bool, bool]]) -> Tuple[bool, bool]:
    return (v, v) if isinstance(v, bool) else tuple(v)


class MoE(nn.Module):
    """Mixture-of-experts MLP over ``x[..., D]`` (``[B, L, D]`` or ``[N, D]``).

    Routers (``router=``):

    - ``'softmax'`` (Mixtral): probabilities ``softmax(x W_r)`` over all experts, top-k chosen, gates
      renormalised over the chosen k, which is the same as a softmax over the top-k logits.
    - ``'sigmoid'`` (DeepSeek-V3): scores ``sigmoid(x W_r)``, top-k chosen, gates normalised over the
      chosen k.
    - ``'expert_choice'`` (Zhou et al.): each expert picks its top-c tokens of each sequence (softmax
      scores over experts as gates), ``c = ceil(capacity_factor * top_k * L / E)``.  Balanced by
      construction, but a token's output depends on later tokens: encoders only (``causal=False``).

    Token-choice routers select on ``scores + expert_bias``; the bias steers selection only (gates
    use the unbiased scores) and moves by :meth:`update_bias` (auxiliary-loss-free balancing).
    ``capacity_factor=None`` is dropless; otherwise each expert takes at most
    ``ceil(capacity_factor * N * top_k / E)`` assignments per call (first choices of all tokens
    before second choices, then token order) and the rest are dropped: they add zero to the output
    (the block's residual carries the token) and are counted in ``last_dropped``.

    After each forward: ``aux_loss`` (Switch balance loss + router z-loss, a scalar; zero when both
    are off), ``last_load`` (assignments routed to each expert, before dropping) and
    ``last_dropped``.  :func:`collect_aux_loss` sums ``aux_loss`` over a model.

    Args:
        in_features: D.
        hidden_features: hidden width of one coarse expert (Block passes ``dim * mlp_ratio``).
        out_features: output width (default D).
        act_layer: activation; with ``glu=True`` it gates: ``(x W_v) * act(x W_g)`` (SwiGLU with
            ``nn.SiLU``).
        num_experts: E routed experts.
        top_k: experts per token (token choice) or the average per token (expert choice).
        router: ``'softmax'``, ``'sigmoid'`` or ``'expert_choice'``.
        num_shared_experts: always-on experts of the same width (DeepSeekMoE), run as one dense MLP.
        granularity: fine-grained experts (DeepSeekMoE): each expert's hidden width is
            ``hidden_features // granularity`` (``expert_hidden``).
        glu: gated (SwiGLU/GEGLU) experts instead of plain two-layer MLPs.
        bias: biases of the expert layers (bool or a pair for fc1/fc2, as timm's Mlp).
        capacity_factor: None (dropless) or > 0.
        normalize_gates: renormalise the top-k gates to sum to 1; None means ``top_k > 1`` (a top-1
            gate of exactly 1 would give the router no gradient: Switch keeps the raw probability).
        aux_loss_coef: alpha of the Switch loss ``alpha * E * sum_i f_i P_i`` (0 turns it off;
            f_i: share of the N*k assignments routed to expert i, before dropping; P_i: mean router
            probability, sigmoid scores normalised per token; equals alpha when balanced).
        z_loss_coef: weight of the router z-loss ``mean(logsumexp(logits)^2)`` (ST-MoE uses 1e-3).
        causal: the layer sits in a causal model (rules out expert choice).
        impl: ``'auto'``, ``'grouped_mm'`` or ``'bmm'`` (expert-choice groups are equal: always bmm).
            ``'auto'`` takes grouped_mm on CUDA sm90+ in bf16 and bmm otherwise (CPU included: a
            batched matmul that hands each thread whole experts beats per-expert matmuls there,
            each of which syncs the thread pool).
    """

    def __init__(self, in_features: int, hidden_features: Optional[int] = None,
                 out_features: Optional[int] = None, act_layer: Type[nn.Module] = nn.GELU, *,
                 num_experts: int = 8, top_k: int = 2, router: str = "softmax",
                 num_shared_experts: int = 0, granularity: int = 1, glu: bool = False,
                 bias: Union[bool, Tuple[bool, bool]] = True, capacity_factor: Optional[float] = None,
                 normalize_gates: Optional[bool] = None, aux_loss_coef: float = 0.01,
                 z_loss_coef: float = 0.0, causal: bool = False, impl: str = "auto",
                 device=None, dtype=None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        for name, value in (("in_features", in_features), ("hidden_features", hidden_features),
                            ("out_features", out_features), ("num_experts", num_experts),
                            ("granularity", granularity)):
            check_positive(name, value)
        check_positive("num_shared_experts", num_shared_experts, allow_zero=True)
        if not isinstance(top_k, int) or not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be an int in [1, num_experts={num_experts}], got {top_k!r}")
        if router not in ROUTERS:
            raise unknown_name_error("router", router, ROUTERS)
        if impl not in IMPLS:
            raise unknown_name_error("impl", impl, IMPLS)
        if capacity_factor is not None and not capacity_factor > 0:
            raise ValueError(f"capacity_factor must be None (dropless) or > 0, "
                             f"got {capacity_factor!r}")
        for name, value in (("aux_loss_coef", aux_loss_coef), ("z_loss_coef", z_loss_coef)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if hidden_features % granularity:
            raise ValueError(f"granularity ({granularity}) must divide hidden_features "
                             f"({hidden_features})")
        if router == "expert_choice" and causal:
            raise ValueError("router='expert_choice' lets a token's output depend on later tokens "
                             "and cannot decode; use it with causal=False (encoders) or pick "
                             "router='softmax' or 'sigmoid'")
        self.in_features, self.out_features = in_features, out_features
        self.num_experts, self.top_k, self.router_type = num_experts, top_k, router
        self.expert_hidden = hidden = hidden_features // granularity
        self.glu, self.capacity_factor, self.causal, self.impl = glu, capacity_factor, causal, impl
        self.normalize_gates = top_k > 1 if normalize_gates is None else normalize_gates
        self.aux_loss_coef, self.z_loss_coef = aux_loss_coef, z_loss_coef

        E, h1 = num_experts, hidden * (2 if glu else 1)  # glu: fc1 gives [value, gate]
        b1, b2 = _pair(bias)
        self.router = nn.Linear(in_features, E, bias=False, **fk)
        self.w1 = nn.Parameter(torch.empty(E, in_features, h1, **fk))  # [E, D, H] (2H with glu)
        self.b1 = nn.Parameter(torch.empty(E, h1, **fk)) if b1 else None  # [E, H]
        self.w2 = nn.Parameter(torch.empty(E, hidden, out_features, **fk))  # [E, H, D_out]
        self.b2 = nn.Parameter(torch.empty(E, out_features, **fk)) if b2 else None  # [E, D_out]
        self.act = act_layer()
        self.shared = None
        if num_shared_experts:
            mlp = GluMlp if glu else Mlp  # timm's GluMlp gates with the second half, as here
            self.shared = mlp(in_features, num_shared_experts * h1, out_features,
                              act_layer=act_layer, bias=bias, **fk)
        self.register_buffer("expert_bias", torch.zeros(E, device=device), persistent=True)
        self.register_buffer("_load_since_update", torch.zeros(E, dtype=torch.long, device=device),
                             persistent=False)
        self.aux_loss = torch.zeros(())
        self.last_load = torch.zeros(E, dtype=torch.long)
        self.last_dropped = torch.zeros((), dtype=torch.long)
        self._last_units = 0
        self.reset_parameters()

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        # the selection bias stays fp32 when the module is cast: bf16 would swallow 1e-3 steps
        self.expert_bias = self.expert_bias.float()
        return self

    def reset_parameters(self) -> None:
        """Each expert initialised like an ``nn.Linear`` pair: U(+-1/sqrt(fan_in))."""
        for w, b in ((self.w1, self.b1), (self.w2, self.b2)):
            bound = w.shape[1] ** -0.5
            nn.init.uniform_(w, -bound, bound)
            if b is not None:
                nn.init.uniform_(b, -bound, bound)

    # ---------------------------------------------------------------- routing
    def capacity(self, num_tokens: int) -> Optional[int]:
        """Assignments one expert may take from ``num_tokens`` tokens (None: dropless)."""
        if self.router_type == "expert_choice":
            c = math.ceil((self.capacity_factor or 1.0) * self.top_k * num_tokens / self.num_experts)
            return min(c, num_tokens)
        if self.capacity_factor is None:
            return None
        return math.ceil(self.capacity_factor * num_tokens * self.top_k / self.num_experts)

    def router_logits(self, x: torch.Tensor) -> torch.Tensor:
        """fp32 router logits ``[..., E]`` (the router runs in fp32 even under autocast)."""
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x.float(), self.router.weight.float())

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-expert affinities: softmax over experts, or sigmoid for the sigmoid router."""
        return logits.sigmoid() if self.router_type == "sigmoid" else logits.softmax(-1)

    def select(self, scores: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Token choice: top-k experts on ``scores + expert_bias``; gates from the unbiased scores.

        Returns ``(idx[N, k], gates[N, k])``.
        """
        idx = (scores + self.expert_bias).topk(self.top_k, dim=-1).indices
        gates = scores.gather(-1, idx)
        if self.normalize_gates:
            gates = gates / gates.sum(-1, keepdim=True)
        return idx, gates

    def _aux_loss(self, logits: torch.Tensor, scores: torch.Tensor,
                  load: torch.Tensor) -> torch.Tensor:  # [N, E], [N, E], [E]
        loss = logits.new_zeros(())
        with torch.autocast(logits.device.type, enabled=False):  # fp32 statistics, as the router
            if self.aux_loss_coef > 0 and self.router_type != "expert_choice":
                f = load.float() / load.sum()                      # fraction of assignments
                if self.router_type == "sigmoid":                  # as probabilities per token
                    scores = scores / scores.sum(-1, keepdim=True)
                # sum_i f_i P_i with P the mean probability = the mean over tokens of scores @ f
                # (a matrix-vector product: cheaper on CPU threads than a reduction over tokens)
                loss = loss + self.aux_loss_coef * self.num_experts * torch.mv(scores, f).mean()
            if self.z_loss_coef > 0:
                loss = loss + self.z_loss_coef * logits.logsumexp(-1).square().mean()
        return loss

    # ---------------------------------------------------------------- experts
    def _activate(self, h: torch.Tensor) -> torch.Tensor:
        if self.glu:
            value, gate = h.chunk(2, dim=-1)
            return value * self.act(gate)
        return self.act(h)

    def _experts(self, rows: Callable[[], torch.Tensor], linear: Callable) -> torch.Tensor:
        """The expert MLPs over rows already grouped by expert; ``linear(x, w[E, ...], b[E, ...])``
        applies each group's weight and bias (``b`` may be None).  ``rows()`` makes the input rows
        on demand, so that nothing holds them past the first layer: without autograd they are
        freed there, and the layer's peak of fresh memory stays small enough for the C allocator
        to keep it between calls (a larger peak is handed back to the OS after each call and
        page-faulted in again by the next: measured ~16k page faults per call of the 64-expert
        bench config, ~40% of its forward time)."""
        return linear(self._activate(linear(rows(), self.w1, self.b1)), self.w2, self.b2)

    def _experts_padded(self, rows: Callable[[], torch.Tensor], segments: "_Segments",
                        dtype: torch.dtype) -> torch.Tensor:
        """Rows ``[R, D]`` laid out in padded ``segments`` (one bmm each), matmuls in ``dtype``."""
        def linear(a, w, b):
            return _SegmentedLinear.apply(a.to(dtype), w.to(dtype),
                                          None if b is None else b.to(dtype), segments)

        return self._experts(rows, linear)

    def _experts_grouped(self, rows: Callable[[], torch.Tensor], sizes: torch.Tensor, count: int,
                         dtype: torch.dtype) -> torch.Tensor:
        """``count`` rows ``[R, D]`` in consecutive groups of ``sizes[E]`` rows (the last takes any
        rest), matmuls in ``dtype``."""
        sizes = torch.cat([sizes[:-1], count - sizes[:-1].sum(0, keepdim=True)])
        offs = sizes.cumsum(0).to(torch.int32)
        expert_of_row = torch.repeat_interleave(torch.arange(self.num_experts, device=sizes.device),
                                                sizes, output_size=count)  # [R]

        def linear(a, w, b):
            y = F.grouped_mm(a.to(dtype), w.to(dtype), offs=offs)
            return y if b is None else y + b.index_select(0, expert_of_row)

        return self._experts(rows, linear)

    def _use_grouped(self, x: torch.Tensor) -> bool:
        dims = (self.in_features, self.out_features, self.expert_hidden)
        dtype = _compute_dtype(x)
        aligned = all(d * dtype.itemsize % 16 == 0 for d in dims)
        if self.impl == "grouped_mm":
            if not hasattr(F, "grouped_mm"):
                raise ValueError(f"impl='grouped_mm' needs torch.nn.functional.grouped_mm "
                                 f"(torch >= 2.9), this torch is {torch.__version__}")
            if not aligned:
                raise ValueError(f"impl='grouped_mm' needs in/out/expert widths {dims} to be "
                                 f"multiples of 16 bytes in {dtype}")
            return True
        if self.impl == "bmm":
            return False
        return (hasattr(F, "grouped_mm") and x.device.type == "cuda" and dtype == torch.bfloat16
                and aligned and torch.cuda.get_device_capability(x.device) >= (9, 0))

    # ---------------------------------------------------------------- dispatch
    def _token_choice(self, idx: torch.Tensor, grouped: bool) -> Tuple[object, ...]:
        """Rows of the sorted-by-expert layout for the choices ``idx[N, k]``; ``grouped`` picks
        grouped_mm's jagged groups over padded segments of experts (:func:`_padded_segments`).

        Returns ``(row_of[N, k], rows, groups, load[E], dropped)``: the row of each assignment
        (``rows`` when dropped), the row count, the layout (grouped: rows kept per expert ``[E]``;
        padded: the segments), assignments routed to each expert (before dropping) and the
        dropped count.
        """
        (n, k), num_e, dev = idx.shape, self.num_experts, idx.device
        expert = idx.t().reshape(-1)                             # [k*N] first choices first
        # [E] (a scatter-add rather than bincount, which syncs with the host on CUDA)
        load = expert.new_zeros(num_e).scatter_add_(0, expert, torch.ones_like(expert))
        # index_select / scatter_ rather than tensor[index]: advanced indexing opens a thread
        # pool region even for a few thousand elements, which stalls a loaded multi-core CPU
        sorted_expert, order = torch.sort(expert, stable=True)
        first = (load.cumsum(0) - load).index_select(0, sorted_expert)
        rank = torch.empty_like(order).scatter_(                 # place in its expert's queue
            0, order, torch.arange(n * k, device=dev) - first)
        cap = self.capacity(n)
        kept = load if cap is None else load.clamp(max=cap)
        if grouped:  # jagged groups, no padding; a static row count avoids a host sync
            rows, groups = n * k, kept
            start = kept.cumsum(0) - kept
        else:
            groups, first_rows = _padded_segments(kept.tolist(), _segment_span(dev, num_e))
            rows, start = groups.rows, torch.tensor(first_rows, device=dev)
        row = start.index_select(0, expert) + rank
        if cap is not None:
            row = torch.where(rank < cap, row, rows)            # dropped -> no row
        return row.view(k, n).t(), rows, groups, load, load.sum() - kept.sum()

    def _expert_choice(self, scores: torch.Tensor, length: int) -> Tuple[torch.Tensor, ...]:
        """Each expert takes its top-c tokens of each sequence of ``length`` tokens by
        ``scores[G*L, E]``.  Returns ``(row_of[G*L, E], rows, load[E], dropped)``: the row of each
        (token, expert) pair (``rows`` when the expert did not pick the token), the row count
        ``E*G*c`` (rows by expert, then sequence, then pick), assignments per expert and the
        tokens no expert took."""
        num_e, dev = self.num_experts, scores.device
        g, c = scores.shape[0] // length, self.capacity(length)
        pick = scores.view(g, length, num_e).topk(c, dim=1).indices      # [G, c, E]
        token = pick + torch.arange(g, device=dev)[:, None, None] * length
        rows = num_e * g * c
        row = rearrange(torch.arange(rows, device=dev), "(e g c) -> g c e", e=num_e, g=g)
        row_of = torch.full_like(scores, rows, dtype=torch.long)       # [G*L, E]
        row_of.scatter_(0, rearrange(token, "g c e -> (g c) e"), rearrange(row, "g c e -> (g c) e"))
        load = torch.full((num_e,), g * c, dtype=torch.long, device=dev)
        segments = _Segments((num_e,), (g * c,))
        return row_of, rows, segments, load, (row_of == rows).all(1).sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., D] -> [..., D_out]
        if x.shape[-1] != self.in_features:
            raise ValueError(f"MoE expects x[..., {self.in_features}], got {tuple(x.shape)}")
        xf = x.reshape(-1, self.in_features)                     # [N, D]
        logits = self.router_logits(xf)                          # [N, E] fp32
        scores = self.scores(logits)
        grouped = False
        if self.router_type == "expert_choice":
            row_of, rows, groups, load, dropped = self._expert_choice(
                scores, x.shape[-2] if x.dim() > 2 else x.shape[0])
            gates = scores                                       # [N, E], rows only where picked
        else:
            idx, gates = self.select(scores)
            grouped = self._use_grouped(x)
            row_of, rows, groups, load, dropped = self._token_choice(idx, grouped)
        _announce(x.device, grouped)
        placed = _place(row_of, rows)
        weight = gates.new_zeros(rows + 1).scatter(0, row_of.reshape(-1), gates.reshape(-1))[:rows]
        dtype = _compute_dtype(x)  # rows cast before the gather: k times fewer to convert
        gather = lambda: placed.gather(xf.to(dtype))  # noqa: E731 (on demand, see _experts)
        if grouped:
            yr = self._experts_grouped(gather, groups, rows, dtype)     # [R, D_out]
        else:
            yr = self._experts_padded(gather, groups, dtype)
        shared = self.shared(xf) if self.shared is not None else None
        y = placed.combine(yr, weight, shared)                   # [N, D_out]
        self.aux_loss = self._aux_loss(logits, scores, load)
        self.last_load, self.last_dropped = load.detach(), dropped.detach()
        self._last_units = xf.shape[0] * (1 if self.router_type == "expert_choice" else self.top_k)
        if self.training:
            self._load_since_update += load.detach()
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def step(self, x: torch.Tensor, state=None):
        """Decoding step ``(y, state)``: the layer is per-token and keeps no state.

        Raises for expert choice, whose routing needs the whole sequence."""
        if self.router_type == "expert_choice":
            raise RuntimeError("MoE with router='expert_choice' cannot decode (each expert picks "
                               "from the whole sequence); use router='softmax' or 'sigmoid'")
        return self(x), state

    # ---------------------------------------------------------------- balancing and stats
    @torch.no_grad()
    def update_bias(self, rate: float = 1e-3) -> None:
        """Auxiliary-loss-free balancing (DeepSeek-V3): after an optimiser step, move each expert's
        selection bias by ``rate`` towards balance (up if under-loaded, down if over-loaded), using
        the load of the training forwards since the last update."""
        if self.router_type == "expert_choice":
            raise RuntimeError("update_bias() applies to token-choice routers; expert choice is "
                               "balanced by construction")
        load = self._load_since_update.float()
        self.expert_bias += rate * torch.sign(load.mean() - load)
        self._load_since_update.zero_()

    def load_stats(self) -> Dict[str, object]:
        """Last forward's routing statistics for logging: per-expert ``load`` (assignments routed,
        before dropping), ``imbalance`` = max/mean load, ``dropped`` (token choice: assignments over
        capacity; expert choice: tokens no expert picked) and ``drop_fraction`` of assignments or
        tokens."""
        load, dropped = self.last_load.float(), int(self.last_dropped)
        return {"load": self.last_load.tolist(), "imbalance": (load.max() / load.mean()).item(),
                "dropped": dropped, "drop_fraction": dropped / max(self._last_units, 1)}

    # ---------------------------------------------------------------- upcycling
    @classmethod
    def from_dense(cls, mlp: Union[nn.Module, Mapping[str, torch.Tensor]], num_experts: int,
                   top_k: int, *, act_layer: Optional[Type[nn.Module]] = None, **kwargs) -> "MoE":
        """Sparse upcycling: an MoE whose experts are all copies of a dense MLP.

        ``mlp`` is a timm ``Mlp`` / ``GluMlp`` / ``SwiGLU`` or its state dict (``fc1.*``/``fc2.*``,
        or ``fc1_g.*``/``fc1_x.*``/``fc2.*``; ``act_layer`` is then required).  With normalised
        gates (the default for ``top_k > 1``) and no dropping, the MoE equals the dense MLP at init.
        The router is freshly initialised.
        """
        for name, ok in (("granularity", kwargs.get("granularity", 1) == 1),
                         ("num_shared_experts", kwargs.get("num_shared_experts", 0) == 0)):
            if not ok:
                raise ValueError(f"from_dense copies whole experts: {name} must be its default, "
                                 f"got {kwargs[name]!r}")
        if isinstance(mlp, nn.Module):
            if not isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity):
                raise ValueError("from_dense: mlp.norm must be nn.Identity (no norm in the MLP)")
            act_layer = act_layer or type(mlp.act)
            gate_first = not getattr(mlp, "gate_last", True)
            sd = mlp.state_dict()
        elif act_layer is None:
            raise ValueError("from_dense: act_layer is required when mlp is a state dict")
        else:
            gate_first, sd = False, dict(mlp)
        if "fc1_g.weight" in sd:  # SwiGLU: act(fc1_g x) * fc1_x x -> fc1 = [value; gate]
            sd["fc1.weight"] = torch.cat([sd["fc1_x.weight"], sd["fc1_g.weight"]])
            if "fc1_g.bias" in sd:
                sd["fc1.bias"] = torch.cat([sd["fc1_x.bias"], sd["fc1_g.bias"]])
        w1, w2 = sd["fc1.weight"], sd["fc2.weight"]              # [H1, D], [D_out, H]
        if w1.dim() != 2 or w2.dim() != 2:
            raise ValueError(f"from_dense needs linear fc1/fc2 weights, got shapes "
                             f"{tuple(w1.shape)} and {tuple(w2.shape)}")
        glu = w1.shape[0] == 2 * w2.shape[1]
        b1 = sd.get("fc1.bias")
        if gate_first:  # GluMlp(gate_last=False): act(first half) * second half
            w1 = torch.cat(w1.chunk(2)[::-1])
            b1 = torch.cat(b1.chunk(2)[::-1]) if b1 is not None else None
        moe = cls(w1.shape[1], w2.shape[1], w2.shape[0], act_layer=act_layer, glu=glu,
                  num_experts=num_experts, top_k=top_k, bias=(b1 is not None, "fc2.bias" in sd),
                  device=w1.device, dtype=w1.dtype, **kwargs)
        with torch.no_grad():
            moe.w1.copy_(w1.t().expand_as(moe.w1))
            moe.w2.copy_(w2.t().expand_as(moe.w2))
            if b1 is not None:
                moe.b1.copy_(b1.expand_as(moe.b1))
            if moe.b2 is not None:
                moe.b2.copy_(sd["fc2.bias"].expand_as(moe.b2))
        return moe

    def extra_repr(self) -> str:
        return (f"{self.in_features}->{self.out_features}, experts={self.num_experts}x"
                f"{self.expert_hidden}, top_k={self.top_k}, router={self.router_type}, "
                f"glu={self.glu}, capacity_factor={self.capacity_factor}")


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matmuls run in: the autocast dtype when autocast is on, else ``x``'s."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class _Segments(NamedTuple):
    """Consecutive experts in padded batches: segment i holds ``counts[i]`` experts with ``caps[i]``
    rows each (the largest of their groups, the rest padding), segment after segment in the rows
    ``[R, D]`` of the layout."""
    counts: Tuple[int, ...]
    caps: Tuple[int, ...]

    @property
    def rows(self) -> int:
        return sum(n * c for n, c in zip(self.counts, self.caps))

    def batches(self, t: torch.Tensor) -> List[torch.Tensor]:  # [R, D] -> [count, cap, D] views
        pieces = t.split([n * c for n, c in zip(self.counts, self.caps)])
        return [p.view(n, c, t.shape[-1]) for n, c, p in zip(self.counts, self.caps, pieces)]

    def experts(self, t: Optional[torch.Tensor]) -> List[Optional[torch.Tensor]]:
        """``t[E, ...]`` split by segment (None: a None per segment)."""
        return [None] * len(self.counts) if t is None else list(t.split(self.counts))


def _segment_span(device: torch.device, num_experts: int) -> int:
    """Experts per padded batch.  On CPU one per thread: a bmm hands each thread whole experts (no
    sync inside a small matmul), and each batch pads only to its own largest group (64-expert bench
    config, 2 threads: ~5% padding instead of ~25% for one batch of all experts).  Elsewhere all
    experts: one launch."""
    return torch.get_num_threads() if device.type == "cpu" else num_experts


def _padded_segments(kept: List[int], span: int) -> Tuple[_Segments, List[int]]:
    """Consecutive experts in segments of ``span``, each padded to its largest group of
    ``kept[E]`` rows.  Returns the segments and each expert's first row."""
    counts, caps, first, row = [], [], [], 0
    for start in range(0, len(kept), span):
        group = kept[start:start + span]
        counts.append(len(group))
        caps.append(max(group))
        first += [row + i * caps[-1] for i in range(len(group))]
        row += len(group) * caps[-1]
    return _Segments(tuple(counts), tuple(caps)), first


class _SegmentedLinear(torch.autograd.Function):
    """``y[r] = a[r] @ w[e] + b[e]`` for the rows ``a[R, K]`` of each expert ``e``, laid out in
    padded segments: one batched matmul per segment, each written in place into ``y[R, N]`` (and
    the same for the gradients: no concatenation either way).  ``b`` may be None."""

    @staticmethod
    def forward(ctx, a, w, b, segments):  # [R, K], [E, K, N], [E, N] -> [R, N]
        ctx.save_for_backward(a, w)
        ctx.segments = segments
        y = a.new_empty(a.shape[0], w.shape[2])
        bias = segments.experts(None if b is None else b.unsqueeze(1))
        for a_s, w_s, b_s, y_s in zip(segments.batches(a), segments.experts(w), bias,
                                      segments.batches(y)):
            if b_s is None:
                torch.bmm(a_s, w_s, out=y_s)
            else:
                torch.baddbmm(b_s, a_s, w_s, out=y_s)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):  # [R, N] -> [R, K], [E, K, N], [E, N]
        a, w = ctx.saved_tensors
        seg = ctx.segments
        need_a, need_w, need_b = ctx.needs_input_grad[:3]
        grad_y = grad_y.contiguous()
        grad_a = torch.empty_like(a) if need_a else None
        grad_w = torch.empty_like(w) if need_w else None
        grad_b = grad_y.new_empty(w.shape[0], w.shape[2]) if need_b else None
        none = [None] * len(seg.counts)
        for g, a_s, w_s, ga, gw, gb in zip(seg.batches(grad_y), seg.batches(a), seg.experts(w),
                                           seg.batches(grad_a) if need_a else none,
                                           seg.experts(grad_w), seg.experts(grad_b)):
            if ga is not None:
                torch.bmm(g, w_s.transpose(1, 2), out=ga)
            if gw is not None:  # a segment without rows (cap 0) has zero gradients
                torch.bmm(a_s.transpose(1, 2), g, out=gw)
            if gb is not None:
                torch.sum(g, 1, out=gb)
        return grad_a, grad_w, grad_b, None


def _place(row_of: torch.Tensor, rows: int) -> "_Placement":
    """The :class:`_Placement` of ``row_of[N, m]``: the row of each of a token's m assignments
    (``rows`` where there is none) among ``rows`` rows."""
    n, m = row_of.shape
    token = torch.arange(n, device=row_of.device).repeat_interleave(m)    # [N*m]
    index = row_of.new_full((rows + 1,), max(n - 1, 0)).scatter_(0, row_of.reshape(-1), token)
    if row_of.device.type not in _GATHER_ONLY_DEVICES:
        return _Placement(n, index[:rows], None, None)
    taken = row_of < rows                                                   # [N, m]
    return _Placement(n, index[:rows], row_of.masked_select(taken),
                      F.pad(taken.sum(1).cumsum(0), (1, 0)))


class _Placement(NamedTuple):
    """Where the assignments of ``num_tokens`` tokens sit in the rows ``[R, D]`` grouped by expert.

    On CUDA the rows are gathered with ``index_select`` and combined with ``index_add_``; on CPU
    with gathers only (``order``/``offsets`` list each token's rows as ``embedding_bag`` bags).
    """
    num_tokens: int
    index: torch.Tensor              # [R] token of each row (empty rows: the last token, gate 0)
    order: Optional[torch.Tensor]    # [A] the occupied rows, token by token (CPU only)
    offsets: Optional[torch.Tensor]  # [N + 1] where each token's rows start in ``order`` (CPU only)

    def gather(self, x: torch.Tensor) -> torch.Tensor:  # [N, D] -> [R, D]
        """Each row's token (empty rows get a real token: finite values that are gated by 0)."""
        if self.order is None:
            return x.index_select(0, self.index)
        return _GatherRows.apply(x, self.index, self.order, self.offsets)

    def combine(self, yr: torch.Tensor, weight: torch.Tensor,
                base: Optional[torch.Tensor]) -> torch.Tensor:  # [R, D], [R], [N, D] -> [N, D]
        """``base[n]`` plus ``weight[r] * yr[r]`` summed over token n's rows (``base`` None: 0)."""
        weight = weight.to(yr.dtype)
        if self.order is None:
            y = base.to(yr.dtype) if base is not None else yr.new_zeros(self.num_tokens,
                                                                         yr.shape[1])
            return y.index_add_(0, self.index, yr * weight[:, None])
        y = _CombineRows.apply(yr, weight, self.index, self.order, self.offsets)
        return y if base is None else y.add_(base.to(y.dtype))  # y is fresh: added in place


class _GatherRows(torch.autograd.Function):
    """``x[index]``; the backward sums each token's row gradients with one ``embedding_bag`` (a
    gather) where autograd would scatter-add (slow on multi-threaded CPU)."""

    @staticmethod
    def forward(ctx, x, index, order, offsets):  # [N, D], [R], [A], [N + 1] -> [R, D]
        ctx.save_for_backward(order, offsets)
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):  # [R, D] -> [N, D]
        order, offsets = ctx.saved_tensors
        return _bag_sum(grad, order, offsets), None, None, None


class _CombineRows(torch.autograd.Function):
    """``y[n] = sum_r weight[r] * yr[r]`` over token n's rows: one ``embedding_bag`` forward, and
    gathers of ``grad_y`` by row backward."""

    @staticmethod
    def forward(ctx, yr, weight, index, order, offsets):  # [R, D], [R], [R], [A], [N+1] -> [N, D]
        ctx.save_for_backward(yr if ctx.needs_input_grad[1] else None, weight, index)
        return _bag_sum(yr, order, offsets, weight.index_select(0, order))

    @staticmethod
    def backward(ctx, grad_y):  # [N, D] -> [R, D], [R]
        yr, weight, index = ctx.saved_tensors
        grad_rows = grad_y.index_select(0, index)                 # [R, D]
        grad_weight = torch.einsum("rd,rd->r", grad_rows, yr) if ctx.needs_input_grad[1] else None
        return grad_rows.mul_(weight[:, None]), grad_weight, None, None, None


def _bag_sum(rows: torch.Tensor, order: torch.Tensor, offsets: torch.Tensor,
             weight: Optional[torch.Tensor] = None) -> torch.Tensor:  # [R, D] -> [N, D]
    """Sum of the (weighted) ``rows[order]`` in the bags that ``offsets[N + 1]`` delimit."""
    return F.embedding_bag(order, rows, offsets, mode="sum", per_sample_weights=weight,
                           include_last_offset=True)


def _announce(device: torch.device, grouped: bool) -> None:
    """Say once per device type and path how the experts ran."""
    key = (device.type, grouped)
    if key not in _ANNOUNCED:
        _ANNOUNCED.add(key)
        logger.warning("mmeff MoE on %s: experts run as %s; rows move by %s", device.type,
                       "one grouped matmul (torch grouped_mm)" if grouped
                       else "padded batched matmuls (torch.bmm, %s)" % (
                           "one per segment of as many experts as threads" if device.type == "cpu"
                           else "one for all experts"),
                       "gathers only (embedding_bag combine)" if device.type in _GATHER_ONLY_DEVICES
                       else "index_select and an index_add_ combine")


def moe_naive(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Reference MoE forward: a plain loop over tokens (and experts for expert choice), fp32.

    Uses ``moe``'s parameters and rules (capacity, gate normalisation, bias); for tests only.
    """
    lead, d, dev = x.shape[:-1], x.shape[-1], x.device
    w1, w2 = moe.w1.float(), moe.w2.float()
    b1 = moe.b1.float() if moe.b1 is not None else w1.new_zeros(w1.shape[0], w1.shape[2])
    b2 = moe.b2.float() if moe.b2 is not None else w2.new_zeros(w2.shape[0], w2.shape[2])
    wr = moe.router.weight.float()

    def expert(e: int, v: torch.Tensor) -> torch.Tensor:  # [D] -> [D_out]
        return moe._activate(v @ w1[e] + b1[e]) @ w2[e] + b2[e]

    def affinity(v: torch.Tensor) -> torch.Tensor:  # [D] -> [E]
        logit = wr @ v
        return logit.sigmoid() if moe.router_type == "sigmoid" else logit.softmax(-1)

    xs = x.float().reshape(-1, x.shape[-2] if x.dim() > 2 else x.shape[0], d)  # [G, L, D]
    out = [[torch.zeros(moe.out_features, device=dev) for _ in range(xs.shape[1])]
           for _ in range(xs.shape[0])]
    if moe.router_type == "expert_choice":
        c = moe.capacity(xs.shape[1])
        for g, seq in enumerate(xs):
            s = torch.stack([affinity(v) for v in seq])          # [L, E]
            for e in range(moe.num_experts):
                for t in s[:, e].topk(c).indices.tolist():
                    out[g][t] = out[g][t] + s[t, e] * expert(e, seq[t])
    else:
        tokens = [(g, t) for g in range(xs.shape[0]) for t in range(xs.shape[1])]
        choices = []
        for g, t in tokens:
            s = affinity(xs[g, t])
            idx = (s + moe.expert_bias.float()).topk(moe.top_k).indices
            gate = s[idx] / s[idx].sum() if moe.normalize_gates else s[idx]
            choices.append((idx.tolist(), gate))
        cap, taken = moe.capacity(len(tokens)), [0] * moe.num_experts
        for j in range(moe.top_k):           # all first choices, then all second choices, ...
            for (g, t), (idx, gate) in zip(tokens, choices):
                e = idx[j]
                if cap is None or taken[e] < cap:
                    taken[e] += 1
                    out[g][t] = out[g][t] + gate[j] * expert(e, xs[g, t])
    y = torch.stack([torch.stack(row) for row in out]).reshape(*lead, moe.out_features)
    if moe.shared is not None:
        y = y + _float_module(moe.shared, x)
    return y.to(x.dtype)


def _float_module(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` computed in fp32 (without changing the module's dtype)."""
    with torch.autocast(x.device.type, enabled=False):
        params = {n: p.float() for n, p in module.named_parameters()}
        return torch.func.functional_call(module, params, (x.float(),))


def collect_aux_loss(model: nn.Module) -> torch.Tensor:
    """Sum of ``aux_loss`` over every :class:`MoE` in ``model`` (from their last forward)."""
    losses = [m.aux_loss for m in model.modules() if isinstance(m, MoE)]
    return torch.stack([loss.float() for loss in losses]).sum() if losses else torch.zeros(())


def update_balance_bias(model: nn.Module, rate: float = 1e-3) -> None:
    """Call :meth:`MoE.update_bias` on every token-choice MoE in ``model`` (after optimizer.step)."""
    for m in model.modules():
        if isinstance(m, MoE) and m.router_type != "expert_choice":
            m.update_bias(rate)
