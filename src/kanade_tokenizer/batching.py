"""Batches of variable-length items: length bucketing, and waveform lists to padded batches.

:func:`bucket_by_length` is the one bucketing rule of the distribution (``KanadeModel.encode_batch``
uses it; so can any encoder that pads a batch to its longest item). It takes plain lengths,
not tensors or clips, so any caller can map its items to lengths and back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def bucket_by_length(
    lengths: Sequence[int],
    *,
    max_items: int | None = None,
    max_padded: int | None = None,
    max_padding: float | None = None,
) -> list[list[int]]:
    """Indices of ``lengths`` grouped into batches, longest first.

    A batch is padded to its first (longest) item, so its padded size is ``longest x count``.
    The next item starts a new batch when adding it would give more than ``max_items`` items,
    a padded size over ``max_padded``, or a padded size over ``(1 + max_padding)`` times the
    batch's real size (the sum of its lengths). None lifts a limit; an item longer than
    ``max_padded`` gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i in order:
        if current:
            padded = lengths[current[0]] * (len(current) + 1)
            if (
                (max_items is not None and len(current) >= max_items)
                or (max_padded is not None and padded > max_padded)
                or (max_padding is not None and padded > (1 + max_padding) * (total + lengths[i]))
            ):
                groups.append(current)
                current, total = [], 0
        current.append(i)
        total += lengths[i]
    if current:
        groups.append(current)
    return groups


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


__all__ = ["as_1d", "as_waveform_list", "bucket_by_length", "pad_right"]
