"""Frozen SSL feature extractor: WavLM through transformers' ``WavLMModel``.

The released Kanade models use WavLM-base+ (torchaudio's ``WAVLM_BASE_PLUS``); here the same
network comes from the Hugging Face port ``microsoft/wavlm-base-plus``. Layer mapping: config
layer k (1-based) is the output of the k-th transformer layer, i.e. HF ``hidden_states[k]``
(``hidden_states[0]`` is the input of layer 1). Only the layers up to ``output_layer`` run.

Batching: the HF model normalises the first conv layer with a per-channel GroupNorm over the
whole (padded) time axis, so padding would change every frame. This module drives the HF
sub-modules itself and computes that GroupNorm over each item's valid samples only, passes the
attention (key padding) mask to the transformer layers and zeroes padded frames before the
positional convolution. A padded item thus gets the features it gets alone.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..files import hub_error
from .resample import Resampler
from .utils import lengths_to_mask

#: model_name in the configs -> Hugging Face repository with the pretrained weights
HF_MODELS = {
    "wavlm_base_plus": "microsoft/wavlm-base-plus",
    "wavlm_base": "microsoft/wavlm-base",
    "wavlm_large": "microsoft/wavlm-large",
}

#: settings that only matter for SSL pre-training; off for randomly initialised models
_INFERENCE_OVERRIDES = {"apply_spec_augment": False, "mask_time_prob": 0.0, "layerdrop": 0.0}


def build_wavlm_config(model_name: str, model_config=None):
    """A ``WavLMConfig`` for ``model_name`` without any download.

    ``model_config`` is a ``WavLMConfig`` (used as is) or its keyword arguments (applied over the
    inference defaults). WavLM-base and base+ share ``WavLMConfig()``'s defaults; other models
    need ``model_config``.
    """
    from transformers import WavLMConfig

    if isinstance(model_config, WavLMConfig):
        return model_config
    if model_config is None and model_name not in ("wavlm_base_plus", "wavlm_base"):
        raise ValueError(
            f"no offline architecture for SSL model {model_name!r}: pass model_config "
            "(WavLMConfig keyword arguments) or load it pretrained"
        )
    kwargs = dict(_INFERENCE_OVERRIDES)
    kwargs.update(model_config or {})
    return WavLMConfig(**kwargs)


def _group_norm_per_item(norm: nn.GroupNorm, x: Tensor, lengths: Tensor) -> Tensor:
    """GroupNorm of each item over its valid time steps only (zeros past them). x: (B, C, T)."""
    out = torch.zeros_like(x)
    for i, n in enumerate(lengths.tolist()):
        out[i : i + 1, :, :n] = F.group_norm(x[i : i + 1, :, :n], norm.num_groups, norm.weight, norm.bias, norm.eps)
    return out


class SSLFeatureExtractor(nn.Module):
    """Resample to 16 kHz and return WavLM's hidden states of layers 1..``output_layer``.

    Args:
        model_name: key of ``HF_MODELS`` (configs use ``wavlm_base_plus``).
        output_layer: run and return layers 1..output_layer (Kanade uses 9).
        sample_rate: rate of the input waveforms (24 kHz for Kanade).
        pretrained: True loads ``HF_MODELS[model_name]`` through ``WavLMModel.from_pretrained``
            (downloads once, then the HF cache; honours HF_HUB_OFFLINE); a string is a repo id or
            local folder to load instead; False builds a randomly initialised model.
        model_config: ``WavLMConfig`` keyword arguments for a randomly initialised model (tests
            use a tiny one).
        model: an already built ``WavLMModel`` to use as is (overrides the above).

    The WavLM model is frozen: always in eval mode, parameters without gradients.
    """

    def __init__(
        self,
        model_name: str = "wavlm_base_plus",
        output_layer: int = 9,
        sample_rate: int = 24000,
        pretrained: bool | str = True,
        model_config: dict | None = None,
        model: nn.Module | None = None,
    ):
        super().__init__()
        self.model_name = model_name
        self.output_layer = int(output_layer)
        self.sample_rate = int(sample_rate)
        self.pretrained = pretrained
        self.model_config = model_config
        self.injected = model is not None
        if model is None:
            model = self._build_model()
        self.model = model
        cfg = model.config
        if self.output_layer > cfg.num_hidden_layers:
            raise ValueError(f"output_layer {output_layer} > the model's {cfg.num_hidden_layers} layers")
        self.ssl_sample_rate = 16000
        self.conv_config = list(zip(cfg.conv_kernel, cfg.conv_stride))
        self.hop_size = math.prod(cfg.conv_stride)
        self.feature_dim = cfg.hidden_size
        self.resampler = Resampler(self.sample_rate, self.ssl_sample_rate)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()

    def _build_model(self) -> nn.Module:
        from transformers import WavLMModel

        if self.pretrained:
            source = self.pretrained if isinstance(self.pretrained, str) else HF_MODELS.get(self.model_name)
            if source is None:
                raise ValueError(f"unknown SSL model {self.model_name!r}; known: {sorted(HF_MODELS)}")
            try:
                model = WavLMModel.from_pretrained(source)
            except OSError as exc:  # offline and not cached, no network, no such repo
                if Path(str(source)).exists():
                    raise
                raise hub_error(f"the SSL model {source}", str(source), exc) from None
        else:
            model = WavLMModel(build_wavlm_config(self.model_name, self.model_config))
        # layers past output_layer never run: drop them to save memory
        model.encoder.layers = model.encoder.layers[: self.output_layer]
        return model

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()  # frozen SSL: no dropout / layer drop / SpecAugment
        return self

    # --- length arithmetic -------------------------------------------------------------------

    def get_minimum_input_length(self, num_frames: int) -> int:
        """Fewest 16 kHz samples that give ``num_frames`` frames: n <- (n - 1) * stride + kernel."""
        n = int(num_frames)
        for kernel, stride in reversed(self.conv_config):
            n = (n - 1) * stride + kernel
        return n

    def num_frames(self, num_samples_16k: int | Tensor) -> int | Tensor:
        n = num_samples_16k
        for kernel, stride in self.conv_config:
            if isinstance(n, Tensor):
                n = torch.div(n - kernel, stride, rounding_mode="floor") + 1
            else:
                n = (n - kernel) // stride + 1
        return n

    # --- forward ------------------------------------------------------------------------------

    def _feature_encoder(self, x: Tensor, lengths16: Tensor | None) -> tuple[Tensor, Tensor | None]:
        hidden = x[:, None]  # (B, 1, S)
        lengths = lengths16
        for layer in self.model.feature_extractor.conv_layers:
            kernel, stride = layer.conv.kernel_size[0], layer.conv.stride[0]
            if lengths is not None:
                lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
            norm = getattr(layer, "layer_norm", None)
            if isinstance(norm, nn.GroupNorm) and lengths is not None:
                hidden = layer.activation(_group_norm_per_item(norm, layer.conv(hidden), lengths))
            else:
                hidden = layer(hidden)
        return hidden, lengths

    def forward(self, waveform: Tensor, lengths: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        """waveform: (B, S) at ``sample_rate`` (right-padded with zeros); lengths: (B,) or None.

        Returns the hidden states of layers 1..output_layer, each (B, E, D), and the number of
        valid frames per item (B,).
        """
        if waveform.dim() == 1:
            waveform = waveform[None]
        device = waveform.device
        ctx = torch.autocast(device.type, enabled=False) if device.type in ("cuda", "cpu") else contextlib.nullcontext()
        with ctx:
            x = self.resampler(waveform.float())
            lengths16 = None
            if lengths is not None:
                lengths16 = self.resampler.output_length(lengths.to(device=device, dtype=torch.long))
                if bool((lengths16 >= x.size(-1)).all()):
                    lengths16 = None
                else:
                    x = x * lengths_to_mask(lengths16, x.size(-1)).to(x.dtype)
            features, frame_lengths = self._feature_encoder(x, lengths16)
            hidden, _ = self.model.feature_projection(features.transpose(1, 2))
            E = hidden.size(1)
            if frame_lengths is None:
                frame_lengths = torch.full((hidden.size(0),), E, dtype=torch.long, device=device)
                attention_mask = None
            else:
                attention_mask = lengths_to_mask(frame_lengths, E)
                hidden = hidden * attention_mask[..., None].to(hidden.dtype)

            encoder = self.model.encoder
            hidden = hidden + encoder.pos_conv_embed(hidden)
            if not self.model.config.do_stable_layer_norm:
                hidden = encoder.layer_norm(hidden)
            hidden = encoder.dropout(hidden)
            outputs = []
            position_bias = None
            with warnings.catch_warnings():
                # HF passes a bool key-padding mask next to the float position bias
                warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask")
                for i, layer in enumerate(encoder.layers[: self.output_layer]):
                    hidden, position_bias = layer(
                        hidden, attention_mask=attention_mask, position_bias=position_bias, index=i
                    )
                    outputs.append(hidden)
        return outputs, frame_lengths
