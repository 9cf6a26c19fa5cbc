"""Global (speaker) encoder: a ConvNeXt backbone (Vocos-style) and attentive statistics pooling.

Padding-aware: with ``lengths`` every convolution sees zeros past each item's end (exactly what a
single unpadded item sees from the convolution's own zero padding) and the pooling ignores padded
frames, so a batched item gets the same embedding as when it is encoded alone.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .utils import lengths_to_mask


class ConvNeXtBlock(nn.Module):
    """Depthwise conv (k7) -> LayerNorm -> Linear -> GELU -> Linear -> layer scale, residual."""

    def __init__(self, dim: int, intermediate_dim: int, layer_scale_init_value: float | None):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        if layer_scale_init_value is not None and layer_scale_init_value > 0:
            self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
        else:
            self.gamma = None

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: (B, C, T); mask: (B, 1, T) float, 1 on valid frames."""
        residual = x
        if mask is not None:
            x = x * mask
        x = self.dwconv(x).transpose(1, 2)
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        if self.gamma is not None:
            x = self.gamma * x
        return residual + x.transpose(1, 2)


class ConvNeXtBackbone(nn.Module):
    """(B, T, input_channels) -> (B, T, dim or output_channels)."""

    def __init__(
        self,
        input_channels: int,
        dim: int,
        intermediate_dim: int,
        num_layers: int,
        output_channels: int | None = None,
        skip_embed: bool = False,
        layer_scale_init_value: float | None = None,
    ):
        super().__init__()
        if skip_embed and input_channels != dim:
            raise ValueError("skip_embed needs input_channels == dim")
        self.embed = nn.Identity() if skip_embed else nn.Conv1d(input_channels, dim, kernel_size=7, padding=3)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        scale = layer_scale_init_value if layer_scale_init_value is not None else 1.0 / num_layers
        self.convnext = nn.ModuleList(
            ConvNeXtBlock(dim, intermediate_dim, scale) for _ in range(num_layers)
        )
        self.final_layer_norm = nn.LayerNorm(dim, eps=1e-6)
        self.proj_out = nn.Linear(dim, output_channels) if output_channels else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv1d, nn.Linear)):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: (B, T, C_in); mask: (B, 1, T) float or None."""
        x = x.transpose(1, 2)
        if mask is not None:
            x = x * mask
        x = self.embed(x)
        x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        for block in self.convnext:
            x = block(x, mask)
        x = self.final_layer_norm(x.transpose(1, 2))
        return self.proj_out(x)


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
