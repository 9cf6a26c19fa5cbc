"""Exact padding-free packing for LFM2: every sequence in a pack sees only itself.

A pack is one row holding several sequences (see :class:`kanitts.training.batching.PackingCollator`).
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

``enable_exact_packing(model)`` installs both on a loaded model (the patches themselves, what
they rely on in transformers and the versions they were tested with are in
:mod:`kanitts.patches.lfm2`); the packed and unpacked per-token losses then agree to float
rounding (tests/test_packing.py).
"""

from __future__ import annotations

from torch import nn

from kanitts.patches.lfm2 import PACKED_SDPA, patch_short_convs, unpatch_short_convs, use_packed_sdpa

# Attention implementations that read the cu_seq_lens boundaries themselves.
VARLEN_NATIVE = ("flash_attention_2", "flash_attention_3")


def enable_exact_packing(model: nn.Module) -> str:
    """Makes a loaded LFM2 train on packed rows exactly as on its sequences one by one.

    Patches every short-conv block to respect sequence boundaries and, unless the model already
    uses a varlen-capable flash attention, switches attention to :data:`PACKED_SDPA`. Returns the
    attention implementation now in use. Padded batches (no ``cu_seq_lens_q``) still take the
    stock convolution path; :func:`disable_exact_packing` restores the original attention.
    Raises :class:`kanitts.patches.UnsupportedVersion` on a transformers it does not understand.
    """
    patch_short_convs(model)
    implementation = model.config._attn_implementation
    if implementation in VARLEN_NATIVE:
        return implementation
    try:
        model._kanitts_attention_before_packing = use_packed_sdpa(model)
    except BaseException:
        unpatch_short_convs(model)
        raise
    return PACKED_SDPA


def disable_exact_packing(model: nn.Module) -> None:
    """Undoes :func:`enable_exact_packing` (before saving, so no checkpoint names our attention)."""
    unpatch_short_convs(model)
    previous = getattr(model, "_kanitts_attention_before_packing", None)
    if previous is not None:
        model.set_attn_implementation(previous)
        del model._kanitts_attention_before_packing
