"""Residual convolutional post-net (FastSpeech 2 style) that refines the decoded mel."""

from __future__ import annotations

from torch import Tensor, nn


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a (B, C, T) tensor (keys ``norm.weight``/``norm.bias``)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class PostNet(nn.Module):
    """``num_layers`` x [Conv1d -> norm -> tanh (not after the last) -> dropout], plus the input.

    Dropout (default 0.5) is an ``nn.Dropout``: active only in training mode.
    """

    def __init__(
        self,
        input_channels: int = 100,
        channels: int = 256,
        kernel_size: int = 7,
        num_layers: int = 4,
        dropout: float = 0.5,
        use_layer_norm: bool = True,
    ):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.convolutions = nn.ModuleList()
        for i in range(num_layers):
            c_in = input_channels if i == 0 else channels
            c_out = input_channels if i == num_layers - 1 else channels
            norm = ChannelLayerNorm(c_out) if use_layer_norm else nn.BatchNorm1d(c_out)
            self.convolutions.append(
                nn.Sequential(nn.Conv1d(c_in, c_out, kernel_size, padding=(kernel_size - 1) // 2), norm)
            )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: (B, n_mels, T); mask: (B, 1, T) float with 1 on valid frames, or None."""
        y = x
        last = len(self.convolutions) - 1
        for i, layer in enumerate(self.convolutions):
            if mask is not None:
                y = y * mask
            y = layer(y)
            if i < last:
                y = y.tanh()
            y = self.dropout(y)
        return x + y
