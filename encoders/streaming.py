"""Streaming audio encoders: a causal conv front and a stack of causal linear-time mixers.

One class, :class:`StreamingAudioEncoder`; the families differ by table rows (mixer, width, depth):
``stream_mamba_*`` (Mamba, https://arxiv.org/abs/2312.00752), ``stream_mamba2_*`` (Mamba-2,
https://arxiv.org/abs/2405.21060) and ``stream_gdn_*`` (Gated DeltaNet, https://arxiv.org/abs/2412.06464).
Any causal mixer with ``init_state``/``step`` fits (``mixer=`` override).

Pipeline: waveform -> causal log-mel / fbank frames (10 ms, :class:`mmeff.layers.AudioFrontend`)
-> causal strided convolution (``subsample`` frames per token, 40 ms by default) -> pre-norm
mixer blocks -> norm -> a linear head on every token (event posteriors ``[B, T, C]``) and on
their mean (the clip output).  Every part is causal and carries its state, so
:meth:`StreamingAudioEncoder.step` over any split of a waveform equals the offline forward.

Look-ahead (``lookahead`` frames, a multiple of ``subsample``) delays the output: the token
computed at time t labels frame ``t - lookahead``, so the model has heard ``lookahead`` frames past
what it labels (latency = chunk + lookahead).  Offline, the waveform is padded with
``lookahead * hop`` zeros at the end and the first ``lookahead / subsample`` outputs are dropped;
a stream gets the same by :meth:`~StreamingAudioEncoder.flush` at its end.

Streaming contract (DESIGN.md): ``init_state(batch)`` is a flat dict of tensors (save it with
``torch.save``, resume after ``torch.load``); ``step(chunk[B, samples], state) -> (logits[B, n, C],
state)``; each stream keeps its own position (``state['pos']`` samples, ``state['tokens']``
tokens; no host sync); :meth:`~StreamingAudioEncoder.reset_streams` starts new streams in chosen
batch rows.  All streams of a batch receive chunks of the same length; a row can be reset only at a
token boundary (chunks of a multiple of ``subsample * hop`` samples keep every row on one).

For the task runner's ``target: frame``, build with ``frame_logits=True`` (``model.kwargs`` in the
config): ``forward`` then returns ``[B, T, C]`` instead of clip logits.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models import checkpoint_seq, generate_default_cfgs
from timm.models._features import feature_take_indices
from torch import nn

from mmeff._registry import build_model, register_model
from mmeff._utils import check_positive
from mmeff.blocks import Block
from mmeff.layers import RmsNorm
from mmeff.layers.audio import AudioFrontend, as_waveform

from ._audio import audio_cfg, set_waveform_input
from ._vision import prune_layers, strip_prefixes

State = Dict[str, torch.Tensor]


class CausalSubsample(nn.Module):
    """Strided causal convolution over frames: ``[B, F, C_in] -> [B, F // stride, C_out]``.

    Token ``j`` sees frames ``(j+1)*stride - kernel_size .. (j+1)*stride - 1`` (zeros before the
    start); streaming keeps the last ``kernel_size - stride`` frames plus those of an unfinished token.
    """

    def __init__(self, in_chans: int, out_chans: int, stride: int = 4, kernel_size: int = 8,
                 device=None, dtype=None) -> None:
        super().__init__()
        check_positive("subsample", stride)
        if kernel_size < stride:
            raise ValueError(f"kernel_size ({kernel_size}) must be >= stride ({stride})")
        self.stride, self.kernel_size, self.context = stride, kernel_size, kernel_size - stride
        self.in_chans = in_chans
        self.conv = nn.Conv1d(in_chans, out_chans, kernel_size, stride, device=device, dtype=dtype)

    def _conv(self, f: torch.Tensor) -> torch.Tensor:  # [B, L, C_in] -> [B, (L - k) // s + 1, C_out]
        # windows of k frames, one matmul (cheaper than conv1d for the few tokens of a stream step)
        windows = f.unfold(1, self.kernel_size, self.stride)  # [B, n, C_in, k]
        return F.linear(windows.flatten(2), self.conv.weight.flatten(1), self.conv.bias)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self._conv(F.pad(f, (0, 0, self.context, 0)))

    def init_state(self, batch: int, device=None, dtype=None) -> torch.Tensor:
        """Zero frames ``[B, kernel_size - stride, C_in]`` before the start."""
        return torch.zeros(batch, self.context, self.in_chans, device=device,
                           dtype=dtype or self.conv.weight.dtype)

    def step(self, f: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Continue with frames ``f[B, n, C_in]``; return the tokens completed and the new state."""
        buf = torch.cat([state, f.to(state.dtype)], dim=1)
        n = (buf.shape[1] - self.context) // self.stride
        if n == 0:
            return buf.new_zeros(buf.shape[0], 0, self.conv.out_channels), buf
        return self._conv(buf[:, :n * self.stride + self.context]), buf[:, n * self.stride:]


class StreamingAudioEncoder(nn.Module):
    """Causal audio encoder with frame-level and clip-level outputs and a streaming runtime.

    Args:
        num_classes: event classes (AudioSet's 527; 14 for ``audio_events``, whose class 0 is the
            background).
        sample_rate: input rate in Hz.
        features, n_mels, norm_mean, norm_std: the front end (see :class:`AudioFrontend`).
        spec_augment: SpecAugment masks in training (``n_mels // 5`` bins, 10 frames, 2 of each).
        embed_dim, depth: width and number of blocks.
        mixer, mixer_kwargs: any causal streaming mixer (always built with ``causal=True``).
        mlp_ratio: feed-forward width per block (0: mixer-only blocks, as in Mamba).
        subsample: frames per token (the stride of the conv front).
        lookahead: frames of look-ahead (a multiple of ``subsample``).
        frame_logits: ``forward`` returns per-token logits ``[B, T, C]`` (for ``target: frame``).
        global_pool: 'avg' (mean of the tokens) or '' (``forward_head`` keeps the time axis).
        drop_rate, drop_path_rate: head dropout and stochastic depth.
        norm_layer: norm of the blocks and the output.
    """

    def __init__(self, num_classes: int = 527, sample_rate: int = 16000, features: str = "logmel",
                 n_mels: int = 80, norm_mean: Optional[float] = None, norm_std: Optional[float] = None,
                 spec_augment: bool = True, embed_dim: int = 192, depth: int = 6,
                 mixer: Union[str, Callable, None] = "mamba2", mixer_kwargs: Optional[dict] = None,
                 mlp_ratio: float = 0.0, subsample: int = 4, lookahead: int = 0,
                 frame_logits: bool = False, global_pool: str = "avg", drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, norm_layer: Callable[..., nn.Module] = RmsNorm,
                 act_layer: Callable[..., nn.Module] = nn.GELU, device=None, dtype=None) -> None:
        super().__init__()
        check_positive("lookahead", lookahead, allow_zero=True)
        check_positive("subsample", subsample)
        if lookahead % subsample:
            raise ValueError(f"lookahead ({lookahead} frames) must be a multiple of subsample ({subsample})")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        fk = dict(device=device, dtype=dtype)
        self.num_classes, self.global_pool, self.frame_logits = num_classes, global_pool, frame_logits
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.subsample, self.lookahead, self.delay = subsample, lookahead, lookahead // subsample
        self.grad_checkpointing = False
        self.frontend = AudioFrontend(
            sample_rate, features, n_mels, norm_mean=norm_mean, norm_std=norm_std,
            freq_mask=n_mels // 5 if spec_augment else 0, time_mask=10 if spec_augment else 0,
            device=device)
        self.stem = CausalSubsample(n_mels, embed_dim, subsample, 2 * subsample, **fk)
        self.stem_act = act_layer()
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        mkw = {**(mixer_kwargs or {}), "causal": True}
        self.blocks = nn.Sequential(*[
            Block(embed_dim, mixer, mixer_kwargs=mkw, mlp_ratio=mlp_ratio, norm_layer=norm_layer,
                  act_layer=act_layer, drop_path=dpr[i], **fk) for i in range(depth)])
        self._layer_keys = [self._mixer_state_keys(blk) for blk in self.blocks]
        self.norm = norm_layer(embed_dim, **fk)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **fk) if num_classes > 0 else nn.Identity()
        self.samples_per_token = subsample * self.frontend.hop
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim,
                                  reduction=self.samples_per_token) for i in range(depth)]
        self._compiled_step: Optional[Callable] = None
        self._compiled_for: set = set()  # signatures (see _signature) the compiled step has run
        self.apply(_init_weights)

    @staticmethod
    def _mixer_state_keys(blk: Block) -> Optional[List[str]]:
        """Keys of a block's streaming state (None: a single tensor); refuses non-streaming mixers."""
        name = type(blk.mixer).__name__
        try:
            st = blk.init_state(1, device="meta")
        except (TypeError, RuntimeError) as e:
            raise ValueError(f"mixer {name} cannot stream ({e}); use a causal mixer with init_state/step "
                             f"(e.g. 'mamba', 'mamba2', 'gated_deltanet')") from None
        if torch.is_tensor(st):
            return None
        if isinstance(st, dict) and all(torch.is_tensor(v) for v in st.values()):
            return list(st)
        raise ValueError(f"mixer {name} cannot stream here: its state must be a fixed-size tensor or "
                         f"dict of tensors, got {type(st).__name__} with {sorted(st) if isinstance(st, dict) else ''}")

    # ------------------------------------------------------------------------- timm interface
    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r"^frontend|^stem", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._compiled_for.clear()  # a compiled step must see the new head through its guards

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Waveform -> stem tokens ``[B, T + delay, D]`` (the look-ahead padding included)."""
        x = as_waveform(x)
        if x.shape[1] < self.samples_per_token:
            raise ValueError(f"x: expected at least one token ({self.samples_per_token} samples), "
                             f"got {x.shape[1]}")
        f = self.frontend(F.pad(x, (0, self.lookahead * self.frontend.hop)))  # [B, F, M]
        return self.stem_act(self.stem(f))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token features ``[B, samples // samples_per_token, D]``, aligned with the frames."""
        x = self._tokens(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)[:, self.delay:]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward_frames(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token logits ``[B, T, C]`` (token t = samples ``[t, t+1) * samples_per_token``)."""
        return self.head(self.head_drop(self.forward_features(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frame_logits:
            return self.forward_frames(x)
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Features after selected blocks: ``[B, D, T]`` (channels first, 'NCHW') or ``[B, T, D]``
        ('NLC'), aligned with the frames like :meth:`forward_features`."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.blocks), indices)
        x = self._tokens(x)
        feats = []
        for i, blk in enumerate(self.blocks[:max_index + 1] if stop_early else self.blocks):
            x = blk(x)
            if i in take:
                y = (self.norm(x) if norm else x)[:, self.delay:]
                feats.append(y.transpose(1, 2).contiguous() if output_fmt == "NCHW" else y)
        if intermediates_only:
            return feats
        return self.norm(x)[:, self.delay:], feats

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        take = prune_layers(self, "blocks", indices, prune_norm, prune_head)
        self._layer_keys = self._layer_keys[:len(self.blocks)]
        self._compiled_for.clear()
        return take

    # ------------------------------------------------------------------------------ streaming
    def init_state(self, batch: int, device=None) -> State:
        """A fresh state for ``batch`` streams: a flat dict of tensors.

        ``pos`` [B] samples and ``tokens`` [B] tokens seen per stream, ``pool`` [B, D] the sum of the
        output features (for :meth:`clip_logits`), ``wave`` / ``frames`` the front end's and the conv
        front's carried inputs, and ``blocks.<i>[.<key>]`` each mixer's state.
        """
        device = device or self.stem.conv.weight.device
        dtype = self.stem.conv.weight.dtype
        state = {"pos": torch.zeros(batch, dtype=torch.long, device=device),
                 "tokens": torch.zeros(batch, dtype=torch.long, device=device),
                 "pool": torch.zeros(batch, self.embed_dim, device=device),
                 "wave": self.frontend.init_state(batch, device)["wave"],
                 "frames": self.stem.init_state(batch, device=device)}
        for i, blk in enumerate(self.blocks):
            self._put_layer_state(state, i, blk.init_state(batch, device=device, dtype=dtype))
        return state

    def _layer_state(self, state: State, i: int) -> Any:
        """Block ``i``'s mixer state out of the flat ``state``."""
        keys = self._layer_keys[i]
        return state[f"blocks.{i}"] if keys is None else {k: state[f"blocks.{i}.{k}"] for k in keys}

    def _put_layer_state(self, state: State, i: int, st: Any) -> None:
        """Store block ``i``'s mixer state ``st`` into the flat ``state`` (in place)."""
        keys = self._layer_keys[i]
        state.update({f"blocks.{i}": st} if keys is None else {f"blocks.{i}.{k}": st[k] for k in keys})

    def step(self, chunk: torch.Tensor, state: State) -> Tuple[torch.Tensor, State]:
        """Continue every stream with ``chunk[B, samples]`` (any length, the same for all rows).

        Returns the logits ``[B, n, C]`` of the ``n`` tokens completed by this chunk (``n`` may be 0)
        and the new state.  With look-ahead they label earlier frames: see :meth:`output_frames`.
        """
        chunk = as_waveform(chunk, "chunk")
        if self._compiled_step is None:
            return self._step(chunk, state)
        key = self._signature(chunk, state)
        if key in self._compiled_for:
            # a graph exists for exactly these inputs: choose it without re-checking all of
            # Dynamo's guards (~0.4 ms a step, a tenth of a compiled step)
            with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                return self._compiled_step(chunk, state)
        with warnings.catch_warnings():  # guarded as usual; compiles a new graph if needed
            # the front end's FFT stays an ATen call inside the graph (as fast as eager), which
            # inductor reports as "complex operators not supported"
            warnings.filterwarnings("ignore", message="Torchinductor does not support code generation")
            out = self._compiled_step(chunk, state)
        self._compiled_for.add(key)
        return out

    def _signature(self, chunk: torch.Tensor, state: State) -> tuple:
        """What a compiled step depends on: every input tensor's shape, strides, dtype, device,
        ``requires_grad`` and inference-ness (what Dynamo's tensor guards check), the state's keys,
        the grad / inference modes, train / eval and the weights' dtype."""
        meta = tuple((t.shape, t.stride(), t.dtype, t.device, t.requires_grad, t.is_inference())
                     for t in (chunk, *state.values()))
        return (meta, tuple(state), torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
                self.training, self.stem.conv.weight.dtype)

    def _step(self, chunk: torch.Tensor, state: State) -> Tuple[torch.Tensor, State]:
        """:meth:`step` on a checked chunk: what :meth:`compile_step` compiles."""
        f, fe = self.frontend.step(chunk, {"wave": state["wave"]})
        t, frames = self.stem.step(f, state["frames"])
        new = dict(state, pos=state["pos"] + chunk.shape[1], wave=fe["wave"], frames=frames)
        n = t.shape[1]
        if n == 0:
            return t.new_zeros(t.shape[0], 0, self.num_classes or self.embed_dim), new
        t = self.stem_act(t)
        for i, blk in enumerate(self.blocks):
            t, st = blk.step(t, self._layer_state(state, i))
            self._put_layer_state(new, i, st)
        t = self.norm(t)
        new["tokens"] = state["tokens"] + n
        _, valid = self.output_frames(new, n)
        new["pool"] = state["pool"] + (t * valid[..., None]).sum(1).float()
        return self.head(t), new

    def compile_step(self, **compile_kwargs) -> "StreamingAudioEncoder":
        """Compile :meth:`step` (front end, conv subsampling, blocks, norm, head: one graph) with
        ``torch.compile``; results equal the eager step.

        The small per-chunk work of a stream is dominated by per-operator overhead, which the
        compiled kernels remove (``mmeff bench audio`` shows both).  A graph is specialised to the
        chunk length (and the samples a stream carries): keep chunks of one length (the last chunk
        of a stream may differ: it compiles once more).  Once a graph has run for some inputs, later
        steps with inputs of the same shapes, strides, dtypes and modes take it without Dynamo's
        guard checks.  Call again after changing the model's modules, dtype or device.  Needs a C++
        compiler on CPU (inductor).  Returns ``self``.

        ``compile_kwargs`` go to ``torch.compile`` (default ``dynamic=False`` and, unless ``mode`` or
        ``options`` is given, ``options={"cpp_wrapper": True}``: the graph's kernels are called
        from C++, ~7% faster per step on CPU, measured; compiling takes longer).
        """
        defaults = {"dynamic": False}
        if "mode" not in compile_kwargs and "options" not in compile_kwargs:
            defaults["options"] = {"cpp_wrapper": True}
        self._compiled_step = torch.compile(self._step, **{**defaults, **compile_kwargs})
        self._compiled_for = set()
        return self

    def output_frames(self, state: State, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Token index each of the last step's ``n`` outputs labels, per stream ``[B, n]``, and
        whether it lies after the stream's start (False only in the first ``lookahead`` frames)."""
        idx = state["tokens"][:, None] - n + torch.arange(n, device=state["tokens"].device) - self.delay
        return idx, idx >= 0

    def flush(self, state: State) -> Tuple[torch.Tensor, State]:
        """End the streams: feed the look-ahead's zeros and return the last outputs (as offline)."""
        B = state["pos"].shape[0]
        return self.step(state["wave"].new_zeros(B, self.lookahead * self.frontend.hop), state)

    def clip_logits(self, state: State) -> torch.Tensor:
        """Clip logits ``[B, C]`` of everything each stream has output so far (the mean of its
        output features through the head, as :meth:`forward` does offline)."""
        count = (state["tokens"] - self.delay).clamp(min=1)[:, None]
        return self.head((state["pool"] / count).to(self.stem.conv.weight.dtype))

    def reset_streams(self, state: State, mask: torch.Tensor) -> State:
        """Start new streams in the rows where ``mask[B]`` is True (their state is zeroed, their
        position set to 0); the other rows continue.  Only at a token boundary."""
        B = state["pos"].shape[0]
        mask = torch.as_tensor(mask, device=state["pos"].device)
        if mask.shape != (B,):
            raise ValueError(f"mask: expected shape ({B},) (one flag per stream), got {tuple(mask.shape)}")
        pending = self.frontend.pending({"wave": state["wave"]})
        pending += (state["frames"].shape[1] - self.stem.context) * self.frontend.hop
        if pending:
            raise ValueError(
                f"reset_streams: the batch is {pending} samples into a token; streams can join only at "
                f"token boundaries: feed chunks of a multiple of {self.samples_per_token} samples")
        fresh = self.init_state(B, device=state["pos"].device)
        mask = mask.bool()
        return {k: torch.where(mask.view(-1, *[1] * (v.dim() - 1)), fresh[k], v) for k, v in state.items()}

    @staticmethod
    def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: "StreamingAudioEncoder"
                             ) -> Dict[str, torch.Tensor]:
        """Unwrap ``model.``/``module.`` prefixes (DDP, EMA, training checkpoints)."""
        return strip_prefixes(state_dict)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


# name -> model arguments (sizes and mixers are rows; one class)
_TEST = dict(embed_dim=32, depth=2, n_mels=32)
SIZES = {
    "stream_mamba_test": dict(mixer="mamba", mixer_kwargs=dict(d_state=8), **_TEST),
    "stream_mamba_tiny": dict(mixer="mamba", embed_dim=192, depth=6),
    "stream_mamba_small": dict(mixer="mamba", embed_dim=384, depth=12),
    "stream_mamba2_test": dict(mixer="mamba2", mixer_kwargs=dict(headdim=16, d_state=16, chunk_size=16),
                               **_TEST),
    "stream_mamba2_tiny": dict(mixer="mamba2", embed_dim=192, depth=6,
                               mixer_kwargs=dict(headdim=64, d_state=64, chunk_size=64)),
    "stream_mamba2_small": dict(mixer="mamba2", embed_dim=384, depth=12,
                                mixer_kwargs=dict(headdim=64, d_state=64, chunk_size=64)),
    "stream_gdn_test": dict(mixer="gated_deltanet", mixer_kwargs=dict(num_heads=2), **_TEST),
    "stream_gdn_tiny": dict(mixer="gated_deltanet", embed_dim=192, depth=6, mixer_kwargs=dict(num_heads=4)),
    "stream_gdn_small": dict(mixer="gated_deltanet", embed_dim=384, depth=12,
                             mixer_kwargs=dict(num_heads=6)),
}

default_cfgs = generate_default_cfgs({name: audio_cfg("stem.conv") for name in SIZES})


def _create(variant: str, pretrained: bool = False, **kwargs) -> StreamingAudioEncoder:
    row = dict(SIZES[variant])
    if "mixer" in kwargs:  # the row's mixer_kwargs belong to the row's mixer
        row.pop("mixer_kwargs", None)
    model = build_model(StreamingAudioEncoder, variant, pretrained, **{**row, **kwargs})
    return set_waveform_input(model, kwargs.get("sample_rate", 16000))  # 1 s


@register_model
def stream_mamba_test(pretrained: bool = False, **kwargs) -> StreamingAudioEncoder:
    """Tiny test size (2 Mamba blocks of width 32, 32 mel bins)."""
    return _create("stream_mamba_test", pretrained, **kwargs)


@register_model
def stream_mamba_tiny(pretrained: bool = False, **kwargs) -> StreamingAudioEncoder:
    """6 Mamba blocks of width 192 (1.7M parameters with 527 classes)."""
    return _create("stream_mamba_tiny", pretrained, **kwargs)


@register_model
def stream_mamba_small(pretrained: bool = False, **kwargs) -> StreamingAudioEncoder:
    """12 Mamba blocks of width 384."""
    return _create("stream_mamba_small", pretrained, **kwargs)


@register_model
def stream_mamba2_test(pretrained: bool = False, **kwargs) -> StreamingAudioEncoder:
    """Tiny test size (2 Mamba-2 blocks of width 32, 32 mel bins)."""
    return _create("stream_mamba2_test", pretrained, **kwargs)


@register_model
def stream_mamba2_tiny(pretrained: bool = False, **kwargs) -> StreamingAudioEncoder:
    """6 Mamba-2 blocks of width 192 (6 heads of 64, state 64)."""
    return _create("stream_mamba2_tiny", pretrained, **kwargs)


@register_model
def stream_mamba2_small(pretrained: bool = False, **kwargs) -> StreamingAudioEncoder:
    """12 Mamba-2 blocks of width 384 (12 heads of 64, state 64)."""
    return _create("stream_mamba2_small", pretrained, **kwargs)


@register_model
def stream_gdn_test(pretrained: bool = False, **kwargs) -> StreamingAudioEncoder:
    """Tiny test size (2 Gated DeltaNet blocks of width 32, 32 mel bins)."""
    return _create("stream_gdn_test", pretrained, **kwargs)


@register_model
def stream_gdn_tiny(pretrained: bool = False, **kwargs) -> StreamingAudioEncoder:
    """6 Gated DeltaNet blocks of width 192 (4 heads)."""
    return _create("stream_gdn_tiny", pretrained, **kwargs)


@register_model
def stream_gdn_small(pretrained: bool = False, **kwargs) -> StreamingAudioEncoder:
    """12 Gated DeltaNet blocks of width 384 (6 heads)."""
    return _create("stream_gdn_small", pretrained, **kwargs)
