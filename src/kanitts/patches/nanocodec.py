"""Patches of nanocodec-torch's NanoCodec: exact batched encoding and fast decoding.

Both are installed by :class:`kanitts.codecs.nanocodec.NanoCodec` on the model it wraps, and both
were tested with nanocodec-torch 1.0.0 (the distribution version; the package's ``__version__``
says 0.1.0).

- :class:`ReplicateFill` (encoder): forward pre-hooks that make a padded batch encode like each
  clip alone.
- :func:`install_fast_upsampling` (decoder): one grouped transposed convolution instead of the
  package's Python loop over groups.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from types import MethodType

import torch
import torch.nn.functional as F
from torch import nn

from kanitts.patches import unsupported

TESTED = ("1.0.0",)


def _unsupported(what_changed: str):
    return unsupported("nanocodec-torch", what_changed, TESTED)


class ReplicateFill:
    """Makes every encoder convolution see, past each clip's end, what it sees for the clip alone.

    Relies on: every convolution of ``audio_encoder`` being a ``nanocodec_torch.layers.Conv1dNorm``
    whose ``forward(x)`` pads ``x`` by its ``padding_mode`` (``"replicate"`` repeats the edge value,
    anything else pads zeros) and then convolves; and on every layer's input width dividing the
    padded input length (the encoder down-samples by whole factors). Why: the encoder has no
    length masking, so in a padded batch a short clip's last frames would read the neighbour's
    padding instead of the replicated edge; filling positions past each item's end with its last
    valid value (or zeros) before every convolution gives batched codes equal to one-clip-at-a-time
    codes. The fill works in place on the padding tail only: every convolution's input is a fresh
    tensor (the padded audio or an activation's output), and only padding positions change.
    """

    def __init__(self, encoder: nn.Module):
        try:
            from nanocodec_torch.layers import Conv1dNorm
        except ImportError as exc:
            raise _unsupported(f"nanocodec_torch.layers.Conv1dNorm cannot be imported ({exc})") from None
        wrappers = [m for m in encoder.modules() if isinstance(m, Conv1dNorm)]
        if not wrappers:
            raise _unsupported(f"{type(encoder).__name__} has no Conv1dNorm layers")
        if any(not isinstance(getattr(m, "padding_mode", None), str) for m in wrappers):
            raise _unsupported("Conv1dNorm has no padding_mode attribute")
        wrapped = {id(getattr(m, "conv", None)) for m in wrappers}
        bare = [
            name
            for name, m in encoder.named_modules()
            if isinstance(m, nn.modules.conv._ConvNd) and id(m) not in wrapped
        ]
        if bare:
            raise _unsupported(f"the encoder has convolutions outside Conv1dNorm ({', '.join(bare[:3])})")
        self._lengths: tuple[torch.Tensor, int] | None = None
        for module in wrappers:
            module.register_forward_pre_hook(self._fill_hook)

    @contextlib.contextmanager
    def lengths(self, padded_lengths: torch.Tensor, padded_total: int) -> Iterator[None]:
        """While active, encoder inputs are items of ``padded_lengths`` samples in a batch of ``padded_total``."""
        self._lengths = (padded_lengths, padded_total)
        try:
            yield
        finally:
            self._lengths = None

    def _fill_hook(self, module: nn.Module, args: tuple) -> None:
        if self._lengths is None:
            return
        x = args[0]
        padded_lengths, padded_total = self._lengths
        width = x.shape[-1]
        if padded_total % width:
            raise _unsupported(
                f"an encoder layer's input is {width} wide, which does not divide the padded input of "
                f"{padded_total} samples"
            )
        valid = padded_lengths // (padded_total // width)
        start = int(valid.min())
        if start >= width:
            return
        tail = x[:, :, start:]
        beyond = torch.arange(start, width, device=x.device)[None, None, :] >= valid[:, None, None]
        if module.padding_mode == "replicate":
            last_index = (valid - 1).clamp(min=0).view(-1, 1, 1).expand(x.shape[0], x.shape[1], 1)
            fill = x.gather(2, last_index)
        else:
            fill = torch.zeros((), dtype=x.dtype, device=x.device)
        tail.copy_(torch.where(beyond, fill, tail))


def _fast_transposed_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``CausalConvTranspose1d.forward`` as one grouped transposed convolution (same result)."""
    weight = self.weight.permute(0, 2, 1)  # [in, K, 1] -> [in, 1, K]
    out = F.conv_transpose1d(x, weight.to(x.dtype), self.bias.to(x.dtype), stride=self.stride, groups=self.groups)
    if self.trim > 0 and out.shape[2] > self.trim:
        out = out[:, :, : -self.trim]
    return out


def _check_upsampling_layer(layer: nn.Module, index: int) -> None:
    where = f"audio_decoder.up_sample_conv_layers[{index}] ({type(layer).__name__})"
    missing = [
        a for a in ("weight", "bias", "stride", "groups", "trim", "in_channels", "kernel_size") if not hasattr(layer, a)
    ]
    if missing:
        raise _unsupported(f"{where} has no {', '.join(missing)}")
    expected = (layer.in_channels, layer.kernel_size, 1)
    if tuple(layer.weight.shape) != expected:
        raise _unsupported(f"{where} keeps its weight as {tuple(layer.weight.shape)}, not [in, kernel, 1] = {expected}")


def install_fast_upsampling(decoder: nn.Module) -> None:
    """Replaces ``forward`` of the decoder's up-sampling layers with one ``conv_transpose1d(groups=...)``.

    Relies on: ``audio_decoder.up_sample_conv_layers``, each a
    ``nanocodec_torch.models.decoder.CausalConvTranspose1d`` with ``weight`` of shape
    ``[in_channels, kernel_size, 1]``, ``bias``, ``stride``, ``groups`` and ``trim`` (samples cut from
    the end), computing a grouped transposed convolution; checked against the package's forward on
    a short random input before anything changes. Why: the package computes it as a Python loop
    over up to 432 groups, which dominates decoding time.
    """
    layers = getattr(decoder, "up_sample_conv_layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise _unsupported(f"{type(decoder).__name__} has no up_sample_conv_layers")
    for index, layer in enumerate(layers):
        _check_upsampling_layer(layer, index)
    _check_against_stock(min(layers, key=lambda layer: layer.groups))
    for layer in layers:
        layer.forward = MethodType(_fast_transposed_forward, layer)


def _check_against_stock(layer: nn.Module) -> None:
    """The package's forward and the fast one agree on random weights (a copy; ``layer`` is untouched)."""
    probe = copy.deepcopy(layer).float().cpu()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        probe.weight.copy_(torch.randn(probe.weight.shape, generator=generator))
        probe.bias.copy_(torch.randn(probe.bias.shape, generator=generator))
        x = torch.randn(1, probe.in_channels, 3, generator=generator)
        stock = type(layer).forward(probe, x)
        fast = _fast_transposed_forward(probe, x)
    if stock.shape != fast.shape or not torch.allclose(stock, fast, atol=1e-4, rtol=1e-4):
        raise _unsupported(
            f"{type(layer).__name__}.forward no longer computes the transposed convolution the fast "
            "path reproduces"
        )
