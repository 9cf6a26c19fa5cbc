"""The 1-D ConvNeXt stack shared by the global encoder and the Vocos vocoder.

Both released checkpoints use the same parameter names (``embed``, ``norm``,
``convnext.{i}.{dwconv,norm,pwconv1,pwconv2,gamma}``, ``final_layer_norm``), so one module
serves both. With a mask every convolution sees zeros past each item's end, exactly what an
unpadded item sees from the convolution's own zero padding, so batched items match single ones.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


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
