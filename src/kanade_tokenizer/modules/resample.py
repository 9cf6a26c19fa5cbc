"""Band-limited (windowed-sinc) resampling in pure PyTorch.

Numerically the same algorithm as ``torchaudio.transforms.Resample`` with its defaults
(``sinc_interp_hann``, ``lowpass_filter_width=6``, ``rolloff=0.99``): the kernel is built in
float64 and stored as float32, the signal is zero-padded, convolved with stride ``orig`` and the
output is cut to ``ceil(new * length / orig)`` samples (rates reduced by their gcd). It runs on
any device, batches, and keeps torchaudio out of the dependencies.

Batched inputs that are right-padded with zeros give, for every item, exactly the samples that
item gives alone (the padding only adds the zeros the kernel would see anyway).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinc_resample_kernel(
    orig_freq: int, new_freq: int, lowpass_filter_width: int = 6, rolloff: float = 0.99
) -> tuple[Tensor, int]:
    """(new, 1, K) float32 kernel and the padding width, for rates already divided by their gcd."""
    base_freq = min(orig_freq, new_freq) * rolloff
    width = math.ceil(lowpass_filter_width * orig_freq / base_freq)
    idx = torch.arange(-width, width + orig_freq, dtype=torch.float64)[None, None] / orig_freq
    t = torch.arange(0, -new_freq, -1, dtype=torch.float64)[:, None, None] / new_freq + idx
    t = t * base_freq
    t = t.clamp(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    scale = base_freq / orig_freq
    kernels = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
    kernels = kernels * window * scale
    return kernels.to(torch.float32), width


class Resampler(nn.Module):
    """Resample the last axis from ``orig_freq`` to ``new_freq``."""

    def __init__(self, orig_freq: int, new_freq: int, lowpass_filter_width: int = 6, rolloff: float = 0.99):
        super().__init__()
        gcd = math.gcd(int(orig_freq), int(new_freq))
        self.orig = int(orig_freq) // gcd
        self.new = int(new_freq) // gcd
        kernel, self.width = sinc_resample_kernel(self.orig, self.new, lowpass_filter_width, rolloff)
        self.register_buffer("kernel", kernel, persistent=False)

    def output_length(self, length: int | Tensor) -> int | Tensor:
        """ceil(new * length / orig), for ints or integer tensors."""
        if isinstance(length, Tensor):
            return torch.div(self.new * length + self.orig - 1, self.orig, rounding_mode="floor")
        return (self.new * int(length) + self.orig - 1) // self.orig

    def forward(self, waveform: Tensor) -> Tensor:
        if self.orig == self.new:
            return waveform
        shape = waveform.shape
        x = waveform.reshape(-1, 1, shape[-1])
        x = F.pad(x, (self.width, self.width + self.orig))
        kernel = self.kernel.to(dtype=x.dtype)
        y = F.conv1d(x, kernel, stride=self.orig)  # (N, new, frames)
        y = y.transpose(1, 2).reshape(x.size(0), -1)
        y = y[:, : self.output_length(shape[-1])]
        return y.reshape(*shape[:-1], y.size(-1))
