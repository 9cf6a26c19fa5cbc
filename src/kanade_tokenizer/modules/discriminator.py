"""Multi-band spectrogram discriminator for the GAN stage (the reference recipe's).

The mel spectrogram is split into frequency bands; each band has its own stack of weight-normed
2-D convolutions (time is the first spatial axis, and dilation widens the view along time only),
so the critic judges fine spectral texture band by band. The band maps are joined along
frequency and reduced to a logits map by ``conv_post``. Every post-activation map is returned
for the feature-matching loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

LEAKY_SLOPE = 0.1


class SpectrogramDiscriminator(nn.Module):
    def __init__(
        self,
        frequency_bins: int,
        channels: int = 32,
        kernel_size: Sequence[int] = (3, 3),
        dilation: Sequence[int] = (1, 2, 4),
        bands: Sequence[Sequence[float]] = ((0.0, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8), (0.8, 1.0)),
        use_downsample: bool = True,
    ):
        super().__init__()
        self.bands = [(int(lo * frequency_bins), int(hi * frequency_bins)) for lo, hi in bands]
        if any(hi <= lo for lo, hi in self.bands):
            raise ValueError(f"every band must hold at least one of the {frequency_bins} bins, got {list(bands)}")
        k = tuple(kernel_size)

        def conv(cin: int, cout: int, d: int = 1) -> nn.Module:
            return weight_norm(nn.Conv2d(cin, cout, k, dilation=(d, 1), padding="same"))

        self.stacks = nn.ModuleList(
            nn.ModuleList(
                [conv(1, channels)] + [conv(channels, channels, d) for d in dilation] + [conv(channels, channels)]
            )
            for _ in self.bands
        )
        self.conv_post = conv(channels, 1)
        self.downsample = nn.AvgPool2d(4, stride=2, padding=1, count_include_pad=False) if use_downsample else None

    def forward(self, mel: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(B, F, T) or (B, 1, F, T) mel -> logits (B, 1, T', F') and the intermediate maps."""
        if mel.dim() == 3:
            mel = mel.unsqueeze(1)
        x = mel.transpose(-1, -2)  # (B, 1, T, F)
        features: list[Tensor] = []
        outputs = []
        for (lo, hi), stack in zip(self.bands, self.stacks):
            h = x[..., lo:hi]
            for layer in stack:
                h = F.leaky_relu(layer(h), LEAKY_SLOPE)
                features.append(h)
            outputs.append(h)
        logits = self.conv_post(torch.cat(outputs, dim=-1))
        if self.downsample is not None:
            logits = self.downsample(logits)
        return logits, features
