"""Small helpers shared by the modules: length masks and masked sequence ops."""

from __future__ import annotations

import torch
from torch import Tensor


def lengths_to_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B,) lengths -> (B, max_len) bool mask, True on valid (non-padded) positions."""
    positions = torch.arange(max_len, device=lengths.device)
    return positions[None, :] < lengths[:, None]


def needs_mask(lengths: Tensor | None, max_len: int) -> bool:
    """True when some item is shorter than ``max_len`` (so masking changes results)."""
    if lengths is None:
        return False
    return bool((lengths < max_len).any())


def conv_output_length(length: int, kernel_size: int, stride: int) -> int:
    """Output length of an unpadded Conv1d."""
    return (length - kernel_size) // stride + 1
