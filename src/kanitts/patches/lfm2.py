"""Patches of transformers' LFM2 that let a packed row train exactly like its sequences alone.

Why they exist is told in :mod:`kanitts.training.packing` (which installs them) and
docs/training.md: the short convolution and attention of stock LFM2 let a packed sequence see the
one before it. Two patches, both tested with transformers 5.20.2 (the locked version for Python
3.10), 5.23.0 and 5.24.0:

- :func:`patch_short_convs` replaces ``forward`` of every ``*ShortConv`` block on a loaded model.
- :func:`use_packed_sdpa` registers :data:`PACKED_SDPA` with ``transformers.AttentionInterface``
  and switches the model to it.

The packed rows carry their boundaries as ``cu_seq_lens_q`` (from
:class:`kanitts.training.batching.PackingCollator`); transformers passes that keyword from the model's
forward down to the decoder layers and their attention.

One module of about 400 lines on purpose: both patches, the version checks they share and the
self-test that compares them with the stock forward are one unit that must change together
when transformers does.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import partial
from types import MethodType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kanitts.patches import unsupported

TESTED = ("5.20.2", "5.23.0", "5.24.0")

# Name under which the per-sequence attention is registered with transformers.
PACKED_SDPA = "kanitts_packed_sdpa"

# The keyword holding a packed row's cumulative boundaries [0, n1, n1+n2, ...].
BOUNDARIES = "cu_seq_lens_q"

# Names the short convolution's cache argument has had (5.24 renamed past_key_values to cache).
CACHE_ARGUMENTS = ("cache", "past_key_values", "past_key_value")


def _unsupported(what_changed: str):
    return unsupported("transformers", what_changed, TESTED, remedy="set training.packing: false")


# --- packed boundaries, read once per forward -----------------------------------------------------


def sequence_bounds(cu_seq_lens: torch.Tensor) -> list[int]:
    """The boundaries as Python ints, copied from the device once per batch.

    Every layer of one forward (and its recomputation under gradient checkpointing) receives the
    same boundaries tensor, so the first layer that needs the list on the host copies it (a
    device synchronisation on GPU) and leaves it on the tensor for the others.
    """
    bounds = getattr(cu_seq_lens, "_kanitts_bounds", None)
    if bounds is None:
        bounds = cu_seq_lens.tolist()
        cu_seq_lens._kanitts_bounds = bounds
    return bounds


def positions_in_sequence(cu_seq_lens: torch.Tensor, length: int) -> torch.Tensor:
    """Each token's index inside its own sequence, from the cumulative boundaries [0, n1, n1+n2, ...]."""
    cu_seq_lens = cu_seq_lens.to(torch.long)
    tokens = torch.arange(length, device=cu_seq_lens.device)
    sequence = torch.searchsorted(cu_seq_lens[1:], tokens, right=True)
    return tokens - cu_seq_lens[sequence]


def _cached_positions(cu_seq_lens: torch.Tensor, length: int) -> torch.Tensor:
    """:func:`positions_in_sequence`, computed once per batch rather than once per conv layer."""
    cached = getattr(cu_seq_lens, "_kanitts_positions", None)
    if cached is None or cached.shape[0] != length:
        cached = positions_in_sequence(cu_seq_lens, length)
        cu_seq_lens._kanitts_positions = cached
    return cached


def segment_causal_conv1d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, positions: torch.Tensor
) -> torch.Tensor:
    """Depthwise causal convolution that never reaches into the previous sequence.

    x: (1, channels, tokens); weight: (channels, kernel); positions: (tokens,) as from
    :func:`positions_in_sequence`. Output position t is the sum over taps k of
    ``weight[:, k] * x[t - (kernel - 1 - k)]``, the tap counted only when it stays inside t's
    sequence, which is exactly what a zero-padded convolution of that sequence alone computes.
    """
    kernel = weight.shape[-1]
    length = x.shape[-1]
    x = x.to(weight.dtype)
    out = torch.zeros_like(x) if bias is None else bias[None, :, None].expand_as(x).clone()
    for tap in range(kernel):
        back = kernel - 1 - tap
        shifted = F.pad(x, (back, 0))[..., :length] if back else x
        if back:
            shifted = shifted * (positions >= back).to(x.dtype)
        out = out + weight[None, :, tap, None] * shifted
    return out


# --- the short convolution --------------------------------------------------------------------------


@dataclass(frozen=True)
class ShortConvCall:
    """Where the installed ``*ShortConv.forward`` takes the arguments the patch reads.

    Found by role in the upstream signature at patch time, so a renamed or moved parameter is
    either understood or refused, never mixed up; every argument is passed on as the caller gave it.
    """

    positions: dict[str, int]
    cache: str

    @classmethod
    def of(cls, conv_class: type) -> ShortConvCall:
        name = f"{conv_class.__name__}.forward"
        try:
            signature = inspect.signature(conv_class.forward)
        except (TypeError, ValueError) as exc:
            raise _unsupported(f"the signature of {name} cannot be read ({exc})") from None
        parameters = list(signature.parameters.values())[1:]  # after self
        names = [p.name for p in parameters]
        shown = f"{name}{signature}"
        if names[:1] != ["hidden_states"]:
            raise _unsupported(f"{shown} no longer takes hidden_states first")
        cache = next((n for n in names if n in CACHE_ARGUMENTS), None)
        if cache is None:
            raise _unsupported(f"{shown} has no cache argument (looked for {', '.join(CACHE_ARGUMENTS)})")
        if "attention_mask" not in names:
            raise _unsupported(f"{shown} has no attention_mask argument")
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        positions = {p.name: i for i, p in enumerate(parameters) if p.kind in positional}
        return cls(positions=positions, cache=cache)

    def get(self, name: str, args: tuple, kwargs: dict) -> Any:
        if name in kwargs:
            return kwargs[name]
        index = self.positions.get(name)
        return args[index] if index is not None and index < len(args) else None

    def cache_of(self, args: tuple, kwargs: dict) -> Any:
        # upstream's deprecation decorator still accepts the old spellings as keywords
        for alias in CACHE_ARGUMENTS:
            if kwargs.get(alias) is not None:
                return kwargs[alias]
        return self.get(self.cache, args, kwargs)


def is_short_conv(module: nn.Module) -> bool:
    """LFM2's gated short-convolution block (Lfm2ShortConv, and its namesakes in LFM2 variants)."""
    return type(module).__name__.endswith("ShortConv")


def _check_short_conv_module(module: nn.Module) -> None:
    name = type(module).__name__
    missing = [
        attr for attr in ("in_proj", "conv", "out_proj") if not isinstance(getattr(module, attr, None), nn.Module)
    ]
    if missing:
        raise _unsupported(f"{name} has no {', '.join(missing)} submodule")
    conv = module.conv
    weight = getattr(conv, "weight", None)
    if not (
        isinstance(conv, nn.Conv1d)
        and conv.groups == conv.in_channels == conv.out_channels
        and weight is not None
        and weight.ndim == 3
        and weight.shape[1] == 1
    ):
        raise _unsupported(f"{name}.conv is no longer a depthwise Conv1d (got {conv!r})")


def _packed_short_conv(module: nn.Module, hidden_states: torch.Tensor, cu_seq_lens: torch.Tensor) -> torch.Tensor:
    """The gated short convolution of LFM2 on one packed row, kept inside each sequence."""
    if hidden_states.shape[0] != 1:
        raise ValueError(
            f"packed batches are one row of sequences laid end to end; got {hidden_states.shape[0]} rows"
        )
    gates = module.in_proj(hidden_states).transpose(-1, -2)
    b_gate, c_gate, x = gates.chunk(3, dim=-2)
    positions = _cached_positions(cu_seq_lens, hidden_states.shape[1])
    conv = segment_causal_conv1d(b_gate * x, module.conv.weight.squeeze(1), module.conv.bias, positions)
    y = (c_gate * conv.to(c_gate.dtype)).transpose(-1, -2).contiguous()
    return module.out_proj(y)


def _stock_forward(module: nn.Module):
    previous = module._kanitts_previous_forward
    return previous if previous is not None else MethodType(type(module).forward, module)


def _short_conv_forward(self: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``*ShortConv.forward`` for packed rows; everything else goes to the stock forward untouched."""
    call: ShortConvCall = self._kanitts_conv_call
    boundaries = kwargs.get(BOUNDARIES)
    if boundaries is None:
        boundaries = self._kanitts_boundaries
    if boundaries is None or call.cache_of(args, kwargs) is not None:
        return _stock_forward(self)(*args, **kwargs)
    if call.get("attention_mask", args, kwargs) is not None:
        raise ValueError("a packed row takes no padding mask; batch with PackingCollator, or turn packing off")
    return _packed_short_conv(self, call.get("hidden_states", args, kwargs), boundaries)


def _hand_boundaries_to_conv(conv: nn.Module, layer: nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook of the layer that holds a short conv: gives the conv the row's boundaries.

    transformers up to 5.20 calls the short conv without the layer's keyword arguments, so the
    boundaries reach it only through here. The value is replaced at every call of the layer (None
    for an unpacked batch) and kept afterwards, where a gradient-checkpointing recomputation of the
    same layer finds it.
    """
    boundaries = kwargs.get(BOUNDARIES)
    if boundaries is None:
        _refuse_unmarked_packed_row(layer, kwargs.get("position_ids"))
    conv._kanitts_boundaries = boundaries


def _refuse_unmarked_packed_row(layer: nn.Module, position_ids: torch.Tensor | None) -> None:
    """A row whose positions restart at 0 is packed; without boundaries it would leak, so refuse it."""
    if position_ids is None or position_ids.ndim != 2 or position_ids.shape[0] != 1 or position_ids.shape[1] < 2:
        return
    restarts = getattr(position_ids, "_kanitts_restarts", None)
    if restarts is None:
        restarts = bool((position_ids[0, 1:] == 0).any())
        position_ids._kanitts_restarts = restarts
    if restarts:
        raise ValueError(
            f"a packed row (position_ids restarting at 0) reached {type(layer).__name__} without "
            f"{BOUNDARIES}: batch with kanitts' PackingCollator (it adds them), or turn packing off"
        )


def _short_convs_with_parents(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    return [(parent, child) for parent in model.modules() for child in parent.children() if is_short_conv(child)]


def _check_against_stock(module: nn.Module) -> None:
    """One packed sequence through the stock forward and through the patch must agree.

    This catches an upstream change in what the block computes (gate order, activation, padding)
    that keeps every name the patch reads. Skipped for weights that are not materialised here.
    """
    weight = module.conv.weight
    if weight.device.type == "meta" or weight.numel() == 0:
        return
    tokens = 6
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, tokens, module.conv.in_channels, generator=generator).to(weight.device, weight.dtype)
    boundaries = torch.tensor([0, tokens], dtype=torch.int32, device=weight.device)
    with torch.no_grad():
        stock = _stock_forward(module)(x)
        ours = _packed_short_conv(module, x, boundaries)
    difference = float((ours.float() - stock.float()).abs().max() / stock.float().abs().max().clamp_min(1e-12))
    tolerance = 1e-4 if weight.dtype == torch.float32 else 3e-2
    if not difference <= tolerance:
        raise _unsupported(
            f"{type(module).__name__}.forward no longer computes the gated short convolution the patch "
            f"reproduces (relative difference {difference:.2g} on one sequence)"
        )


def patch_short_convs(model: nn.Module) -> int:
    """Makes every short-conv block of ``model`` respect packed sequence boundaries.

    Relies on: ``*ShortConv.forward(hidden_states, <cache>, attention_mask, ...)`` (the cache
    argument is ``past_key_values`` up to 5.23 and ``cache`` from 5.24, found by name), and on the
    block computing ``out_proj(C * conv(B * x))`` with ``B, C, x = in_proj(h).chunk(3)`` and a
    depthwise ``conv`` of kernel ``conv_L_cache`` (checked against the stock forward on one
    sequence before anything changes). Why: the stock convolution runs over the whole row, so
    the first ``kernel - 1`` tokens of a sequence read the end of the previous one; transformers
    keeps sequences apart only through the CUDA ``causal_conv1d`` kernel, and its PyTorch fallback
    leaks or refuses. The patched forward recomputes the convolution tap by tap, dropping taps
    that reach back past the token's own sequence: the arithmetic of that sequence alone, on CPU
    and GPU. Padded batches, a cache (generation) and rows without boundaries take the stock
    forward with the caller's arguments untouched. Returns the number of blocks patched.
    """
    pairs = [
        (parent, conv) for parent, conv in _short_convs_with_parents(model) if "_kanitts_conv_call" not in vars(conv)
    ]
    calls = []
    for _, conv in pairs:
        _check_short_conv_module(conv)
        calls.append(ShortConvCall.of(type(conv)))
    for (_parent, conv), call in zip(pairs, calls):
        conv._kanitts_conv_call = call
        conv._kanitts_previous_forward = vars(conv).get("forward")
        conv._kanitts_boundaries = None
    if pairs:
        try:
            _check_against_stock(pairs[0][1])
        except BaseException:
            for _, conv in pairs:
                _forget_patch(conv)
            raise
    for parent, conv in pairs:
        conv.forward = MethodType(_short_conv_forward, conv)
        conv._kanitts_hook = parent.register_forward_pre_hook(partial(_hand_boundaries_to_conv, conv), with_kwargs=True)
    return len(pairs)


def _forget_patch(conv: nn.Module) -> None:
    for attr in ("_kanitts_conv_call", "_kanitts_previous_forward", "_kanitts_boundaries", "_kanitts_hook"):
        vars(conv).pop(attr, None)


def unpatch_short_convs(model: nn.Module) -> None:
    """Undoes :func:`patch_short_convs`: the blocks run their previous forward again."""
    for _, conv in _short_convs_with_parents(model):
        if "_kanitts_conv_call" not in vars(conv):
            continue
        previous = conv._kanitts_previous_forward
        if previous is None:
            del conv.forward
        else:
            conv.forward = previous
        conv._kanitts_hook.remove()
        _forget_patch(conv)


# --- attention ------------------------------------------------------------------------------------


def packed_sdpa_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal SDPA run on each packed sequence alone; an unpacked row is one sequence.

    query/key/value: (1, heads, tokens, head_dim). Returns (1, tokens, heads, head_dim) like
    transformers' attention functions. The boundaries are read on the host once per forward
    (:func:`sequence_bounds`), not once per layer.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is not None:
        raise ValueError(
            f"{PACKED_SDPA} attends within packed sequences and takes no padding mask; "
            "batch with PackingCollator, or use sdpa for padded batches"
        )
    cu_seq_lens = kwargs.pop(BOUNDARIES, None)
    if cu_seq_lens is None:
        return sdpa_attention_forward(module, query, key, value, None, dropout=dropout, scaling=scaling, **kwargs)
    bounds = sequence_bounds(cu_seq_lens)
    if query.ndim != 4 or query.shape[0] != 1 or query.shape[2] != bounds[-1]:
        raise _unsupported(
            f"attention functions receive a query of shape {tuple(query.shape)}, not "
            f"(1, heads, {bounds[-1]} packed tokens, head_dim)"
        )
    outputs = [
        sdpa_attention_forward(
            module,
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            None,
            dropout=dropout,
            scaling=scaling,
            **kwargs,
        )[0]
        for start, end in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(outputs, dim=1), None


def register_packed_sdpa() -> None:
    """Makes :data:`PACKED_SDPA` a name transformers accepts as an attention implementation.

    Relies on: ``transformers.AttentionInterface.register`` and
    ``transformers.integrations.sdpa_attention.sdpa_attention_forward(module, query, key, value,
    attention_mask, dropout=..., scaling=..., **kwargs)``, causal when given no mask. It is
    registered without a mask function on purpose: transformers then builds no (tokens x tokens)
    mask for packed rows, which this function would not read.
    """
    try:
        from transformers import AttentionInterface
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
    except ImportError as exc:
        raise _unsupported(f"packed attention needs {exc.name or exc}") from None
    parameters = inspect.signature(sdpa_attention_forward).parameters
    expected = ["module", "query", "key", "value", "attention_mask"]
    kinds = {p.kind for p in parameters.values()}
    if (
        list(parameters)[:5] != expected
        or not {"dropout", "scaling"} <= set(parameters)
        or inspect.Parameter.VAR_KEYWORD not in kinds
    ):
        raise _unsupported(
            f"sdpa_attention_forward{inspect.signature(sdpa_attention_forward)} no longer takes "
            "(module, query, key, value, attention_mask, dropout, scaling, **kwargs)"
        )
    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)


def use_packed_sdpa(model: nn.Module) -> str:
    """Switches ``model`` to :data:`PACKED_SDPA`; returns the implementation it used before.

    Relies on ``model.config._attn_implementation`` and ``model.set_attn_implementation``.
    """
    previous = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if not isinstance(previous, str) or not callable(getattr(model, "set_attn_implementation", None)):
        raise _unsupported(f"{type(model).__name__} has no config._attn_implementation or set_attn_implementation")
    register_packed_sdpa()
    model.set_attn_implementation(PACKED_SDPA)
    return previous
