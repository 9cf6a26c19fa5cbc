"""Finite scalar quantization (FSQ) with linear projections in and out.

Levels [8, 8, 8, 5, 5] give 8*8*8*5*5 = 12,800 codes. Per dimension with level L:

- bound: ``tanh(z + shift) * half_l - offset`` with ``half_l = (L - 1)(1 - 1e-3) / 2``,
  ``offset = 0.5`` for even L (else 0) and ``shift = tan(offset / half_l)``. The released models
  use tan here (the FSQ paper uses atanh; the two differ by ~4e-6); kept for identical tokens.
- quantize: round (half to even) with a straight-through estimator, then divide by L // 2, so
  codes lie in [-1, 1].
- index: ``sum_i digit_i * basis_i`` with ``digit_i = code_i * (L_i // 2) + L_i // 2`` and
  ``basis = cumprod([1, L_0, L_1, ...])`` = [1, 8, 64, 512, 2560].

The level/basis buffers are non-persistent (not in the state dict), as in the released weights.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class FSQ(nn.Module):
    def __init__(self, levels: list[int] | tuple[int, ...], eps: float = 1e-3):
        super().__init__()
        levels = [int(level) for level in levels]
        if any(level < 2 for level in levels):
            raise ValueError(f"every FSQ level must be >= 2, got {levels}")
        self.levels_list = levels
        self.eps = eps
        basis = [1]
        for level in levels[:-1]:
            basis.append(basis[-1] * level)
        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.int64), persistent=False)
        self.register_buffer("_basis", torch.tensor(basis, dtype=torch.int64), persistent=False)
        half_l = [(level - 1) * (1 - eps) / 2 for level in levels]
        offset = [0.5 if level % 2 == 0 else 0.0 for level in levels]
        shift = [math.tan(o / h) for o, h in zip(offset, half_l)]
        self.register_buffer("_half_l", torch.tensor(half_l, dtype=torch.float32), persistent=False)
        self.register_buffer("_offset", torch.tensor(offset, dtype=torch.float32), persistent=False)
        self.register_buffer("_shift", torch.tensor(shift, dtype=torch.float32), persistent=False)
        self.register_buffer(
            "_half_width", torch.tensor([level // 2 for level in levels], dtype=torch.float32),
            persistent=False,
        )

    @property
    def dim(self) -> int:
        return len(self.levels_list)

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels_list)

    def bound(self, z: Tensor) -> Tensor:
        return torch.tanh(z + self._shift) * self._half_l - self._offset

    def quantize(self, z: Tensor) -> Tensor:
        """z: (..., dim) float -> normalised codes in [-1, 1] (straight-through gradient)."""
        bounded = self.bound(z.float())
        rounded = bounded + (torch.round(bounded) - bounded).detach()
        return rounded / self._half_width

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        digits = torch.round(codes.float() * self._half_width + self._half_width).long()
        return (digits * self._basis).sum(dim=-1)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        digits = (indices.long()[..., None] // self._basis) % self._levels
        return (digits.float() - self._half_width) / self._half_width

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        codes = self.quantize(z)
        return codes, self.codes_to_indices(codes)


class FiniteScalarQuantizer(nn.Module):
    """``proj_in`` (input_dim -> len(levels)) -> FSQ -> ``proj_out`` (len(levels) -> output_dim)."""

    def __init__(self, input_dim: int, output_dim: int, levels: list[int] | tuple[int, ...]):
        super().__init__()
        self.fsq = FSQ(levels)
        self.input_dim = input_dim
        self.output_dim = output_dim
        d = self.fsq.dim
        self.proj_in = nn.Linear(input_dim, d) if input_dim != d else nn.Identity()
        self.proj_out = nn.Linear(d, output_dim) if output_dim != d else nn.Identity()

    @property
    def codebook_size(self) -> int:
        return self.fsq.codebook_size

    def encode(self, x: Tensor, project_out: bool = True) -> tuple[Tensor, Tensor]:
        """x: (..., input_dim) -> (embedding (..., output_dim) or codes, indices (...) int64)."""
        codes, indices = self.fsq(self.proj_in(x))
        if project_out:
            return self.proj_out(codes), indices
        return codes, indices

    def decode(self, indices: Tensor) -> Tensor:
        """indices (...) -> embedding (..., output_dim)."""
        return self.proj_out(self.fsq.indices_to_codes(indices))

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Training entry point: embedding plus an info dict (latent, codes, indices, perplexity)."""
        latent = self.proj_in(x)
        codes, indices = self.fsq(latent)
        flat = indices.reshape(-1)
        counts = torch.bincount(flat, minlength=self.codebook_size).float()
        probs = counts / counts.sum().clamp_min(1)
        entropy = -(probs * torch.log(probs.clamp_min(1e-10))).sum()
        info = {
            "latent": latent,
            "quantized_latent": codes,
            "indices": indices,
            "perplexity": torch.exp(entropy),
        }
        return self.proj_out(codes), info
