"""Batches of variable-length items: waveform lists to padded batches.

Bucketing itself is the distribution's one rule, :func:`kanitts.bucketing.bucket_by_length`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def pad_right(items: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """1-D tensors -> a right-zero-padded (B, max L) batch and the (B,) lengths."""
    lengths = torch.tensor([w.size(-1) for w in items], dtype=torch.long, device=items[0].device)
    batch = items[0].new_zeros(len(items), int(lengths.max()))
    for i, wave in enumerate(items):
        batch[i, : wave.size(-1)] = wave
    return batch, lengths


def as_1d(x: Any, name: str) -> Tensor:
    """One utterance as a 1-D tensor ((1, L) is accepted), or an error naming ``name``."""
    x = torch.as_tensor(x)
    if x.dim() == 2 and x.size(0) == 1:
        x = x[0]
    if x.dim() != 1:
        raise ValueError(
            f"{name} must be 1-D (one utterance), got shape {tuple(x.shape)}; "
            "use encode_batch / decode_batch for batches"
        )
    return x


def as_waveform_list(waveforms: Sequence[Tensor] | Tensor, lengths: Sequence[int] | Tensor | None) -> list[Tensor]:
    """A list of 1-D waveforms from a list, or from a right-padded (B, L) / (B, 1, L) tensor with
    optional per-item ``lengths``."""
    if isinstance(waveforms, Tensor):
        if waveforms.dim() == 1:
            waveforms = waveforms[None]
        if waveforms.dim() == 3 and waveforms.size(1) == 1:
            waveforms = waveforms[:, 0]
        if waveforms.dim() != 2:
            raise ValueError(f"padded waveforms must be (B, L), got {tuple(waveforms.shape)}")
        if lengths is None:
            return list(waveforms)
        lengths = [int(n) for n in torch.as_tensor(lengths).reshape(-1).tolist()]
        if len(lengths) != waveforms.size(0):
            raise ValueError(f"{len(lengths)} lengths for {waveforms.size(0)} waveforms")
        return [waveforms[i, :n] for i, n in enumerate(lengths)]
    items = [as_1d(w, f"waveforms[{i}]") for i, w in enumerate(waveforms)]
    if lengths is not None:
        lengths = [int(n) for n in torch.as_tensor(lengths).reshape(-1).tolist()]
        items = [w[:n] for w, n in zip(items, lengths)]
    return items


__all__ = ["as_1d", "as_waveform_list", "pad_right"]
