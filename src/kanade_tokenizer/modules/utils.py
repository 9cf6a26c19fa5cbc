"""Small helpers shared by the modules."""

from __future__ import annotations

import torch
from torch import Tensor


def lengths_to_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B,) lengths -> (B, max_len) bool mask, True on valid (non-padded) positions."""
    positions = torch.arange(max_len, device=lengths.device)
    return positions[None, :] < lengths[:, None]
