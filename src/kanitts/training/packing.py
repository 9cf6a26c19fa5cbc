"""Exact padding-free packing for LFM2: every sequence in a pack sees only itself.

A pack is one row holding several sequences (see :class:`kanitts.data.collate.PackingCollator`).
Two parts of LFM2 would let a sequence see the one before it:

- **The short convolution.** ``Lfm2ShortConv`` runs a depthwise causal convolution (kernel 3)
  over the whole row, so the first two tokens of a sequence read the last two of the previous
  one. transformers can keep sequences apart only through the CUDA ``causal_conv1d`` kernel; its
  PyTorch fallback either leaks silently or refuses packed input. Here the convolution is
  recomputed tap by tap, and a tap that would reach back past the start of the token's own
  sequence reads zero: the same arithmetic as running that sequence alone, on CPU and GPU.
- **Attention.** Causal attention over the row would let every token attend to earlier
  sequences, and the attention layers would then carry the conv leak through the whole of the
  next sequence. With flash-attention 2 the ``cu_seq_lens`` boundaries select its varlen kernel;
  without it, :data:`PACKED_SDPA` runs PyTorch's scaled-dot-product attention on each sequence
  separately, which costs no L x L mask and no attention across sequences.

``enable_exact_packing(model)`` installs both on a loaded model; the packed and unpacked
per-token losses then agree to float rounding (tests/test_packing.py).
"""

from __future__ import annotations

from types import MethodType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Name under which the per-sequence attention is registered with transformers.
PACKED_SDPA = "kanitts_packed_sdpa"

# Attention implementations that read the cu_seq_lens boundaries themselves.
VARLEN_NATIVE = ("flash_attention_2", "flash_attention_3")


def positions_in_sequence(cu_seq_lens: torch.Tensor, length: int) -> torch.Tensor:
    """Each token's index inside its own sequence, from the cumulative boundaries [0, n1, n1+n2, ...]."""
    cu_seq_lens = cu_seq_lens.to(torch.long)
    tokens = torch.arange(length, device=cu_seq_lens.device)
    sequence = torch.searchsorted(cu_seq_lens[1:], tokens, right=True)
    return tokens - cu_seq_lens[sequence]


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


def _segment_aware_short_conv_forward(
    self: nn.Module,
    hidden_states: torch.Tensor,
    past_key_values: Any = None,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Lfm2ShortConv.forward for packed rows; anything else goes to the class's own forward."""
    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    if cu_seq_lens is None or past_key_values is not None:
        return type(self).forward(self, hidden_states, past_key_values, attention_mask, **kwargs)
    if hidden_states.shape[0] != 1:
        raise ValueError(
            f"packed batches are one row of sequences laid end to end; got {hidden_states.shape[0]} rows"
        )
    gates = self.in_proj(hidden_states).transpose(-1, -2)
    b_gate, c_gate, x = gates.chunk(3, dim=-2)
    positions = positions_in_sequence(cu_seq_lens, hidden_states.shape[1])
    conv = segment_causal_conv1d(b_gate * x, self.conv.weight.squeeze(1), self.conv.bias, positions)
    y = (c_gate * conv.to(c_gate.dtype)).transpose(-1, -2).contiguous()
    return self.out_proj(y)


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
    transformers' attention functions.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is not None:
        raise ValueError(
            f"{PACKED_SDPA} attends within packed sequences and takes no padding mask; "
            "batch with PackingCollator, or use sdpa for padded batches"
        )
    cu_seq_lens = kwargs.pop("cu_seq_lens_q", None)
    if cu_seq_lens is None:
        return sdpa_attention_forward(module, query, key, value, None, dropout=dropout, scaling=scaling, **kwargs)
    bounds = cu_seq_lens.tolist()
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


def register_packed_attention() -> None:
    """Makes :data:`PACKED_SDPA` a name transformers accepts as an attention implementation.

    It is registered without a mask function on purpose: transformers then builds no
    (tokens x tokens) mask for packed rows, which this function would not read.
    """
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)


def is_short_conv(module: nn.Module) -> bool:
    """LFM2's gated short-convolution block (Lfm2ShortConv, and its namesakes in LFM2 variants)."""
    return type(module).__name__.endswith("ShortConv") and all(
        hasattr(module, name) for name in ("in_proj", "conv", "out_proj")
    )


def enable_exact_packing(model: nn.Module) -> str:
    """Makes a loaded LFM2 train on packed rows exactly as on its sequences one by one.

    Patches every short-conv block to respect sequence boundaries and, unless the model already
    uses a varlen-capable flash attention, switches attention to :data:`PACKED_SDPA`. Returns the
    attention implementation now in use. Padded batches (no ``cu_seq_lens_q``) still take the
    stock convolution path; :func:`disable_exact_packing` restores the original attention.
    """
    for module in model.modules():
        if is_short_conv(module):
            module.forward = MethodType(_segment_aware_short_conv_forward, module)
    implementation = model.config._attn_implementation
    if implementation in VARLEN_NATIVE:
        return implementation
    register_packed_attention()
    model._kanitts_attention_before_packing = implementation
    model.set_attn_implementation(PACKED_SDPA)
    return PACKED_SDPA


def disable_exact_packing(model: nn.Module) -> None:
    """Undoes :func:`enable_exact_packing` (before saving, so no checkpoint names our attention)."""
    for module in model.modules():
        if is_short_conv(module) and "forward" in vars(module):
            del module.forward
    previous = getattr(model, "_kanitts_attention_before_packing", None)
    if previous is not None:
        model.set_attn_implementation(previous)
        del model._kanitts_attention_before_packing
