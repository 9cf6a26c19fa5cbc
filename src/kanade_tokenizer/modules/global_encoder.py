"""Global (speaker) encoder: a ConvNeXt backbone and attentive statistics pooling.

Padding-aware: with ``lengths`` every convolution sees zeros past each item's end (exactly what a
single unpadded item sees from the convolution's own zero padding) and the pooling ignores padded
frames, so a batched item gets the same embedding as when it is encoded alone.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .convnext import ConvNeXtBackbone
from .utils import lengths_to_mask


class AttentiveStatsPooling(nn.Module):
    """Channel-wise attentive statistics pooling (ECAPA-style, no global-context concat).

    alpha = softmax_t(Conv1x1 -> tanh -> Conv1x1); mu = sum_t alpha x;
    sigma = sqrt(clamp(sum_t alpha x^2 - mu^2, 1e-4, 1e4)); out = LayerNorm(Linear([mu; sigma])).
    Padded frames get zero weight.
    """

    def __init__(self, input_channels: int, output_channels: int, attention_channels: int = 128):
        super().__init__()
        self.attn = nn.Sequential(
            nn.Conv1d(input_channels, attention_channels, kernel_size=1),
            nn.Tanh(),
            nn.Conv1d(attention_channels, input_channels, kernel_size=1),
        )
        self.proj = nn.Linear(2 * input_channels, output_channels)
        self.norm = nn.LayerNorm(output_channels)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: (B, C, T); mask: (B, 1, T) bool or None -> (B, output_channels)."""
        logits = self.attn(x).float()
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        alpha = torch.softmax(logits, dim=-1)
        xf = x.float()
        mu = (alpha * xf).sum(dim=-1)
        var = (alpha * xf * xf).sum(dim=-1) - mu * mu
        sigma = torch.sqrt(var.clamp(min=1e-4, max=1e4))
        return self.norm(self.proj(torch.cat([mu, sigma], dim=-1)))


class GlobalEncoder(nn.Module):
    """(B, T, input_channels) SSL features -> (B, output_channels) global embedding."""

    def __init__(
        self,
        input_channels: int = 768,
        output_channels: int = 128,
        dim: int = 384,
        intermediate_dim: int = 1152,
        num_layers: int = 4,
        skip_embed: bool = False,
        attention_channels: int = 128,
        use_attn_pool: bool = True,
    ):
        super().__init__()
        if not use_attn_pool:
            raise ValueError("use_attn_pool: false is unsupported: the released models pool with attentive statistics")
        self.backbone = ConvNeXtBackbone(
            input_channels=input_channels,
            dim=dim,
            intermediate_dim=intermediate_dim,
            num_layers=num_layers,
            skip_embed=skip_embed,
        )
        self.pooling = AttentiveStatsPooling(dim, output_channels, attention_channels)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        mask = None
        if lengths is not None and bool((lengths < x.size(1)).any()):
            mask = lengths_to_mask(lengths.to(x.device), x.size(1))[:, None, :]  # (B, 1, T)
        features = self.backbone(x, None if mask is None else mask.to(x.dtype))
        return self.pooling(features.transpose(1, 2), mask)
