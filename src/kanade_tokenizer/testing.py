"""Tiny Kanade models for tests and offline demos (random weights, no download).

``tiny_config()`` is a complete config (released layout) with a 2-layer, 32-wide WavLM and small
Kanade modules; the data flow, rates and token vocabulary (12,800) are the real ones, so a tiny
model encodes 24 kHz audio into 25 Hz tokens and decodes 100-bin-style mels (16 bins here) fast
on a CPU.

``tiny_clean_config()`` is the same model in the ``25hz_clean`` style (BigVGAN-style mel, hop 480,
``vocoder_name: hift``) and ``build_tiny_hift()`` a HiFT vocoder for its 16-bin mels: the real
upsampling rates and iSTFT (so 480 samples per frame), with 16 channels and one resblock per stage.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

TINY_WAVLM = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": [16, 16, 16, 16, 16, 16, 16],
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
    "num_buckets": 32,
    "max_bucket_distance": 100,
}

_TINY = {
    "model": {
        "class_path": "kanade_tokenizer.model.KanadeModel",
        "init_args": {
            "config": {
                "local_ssl_layers": [1, 2],
                "global_ssl_layers": [1],
                "normalize_ssl_features": True,
                "downsample_factor": 2,
                "mel_upsample_factor": 4,
                "use_conv_downsample": True,
                "mel_interpolation_mode": "linear",
                "sample_rate": 24000,
                "n_fft": 1024,
                "hop_length": 256,
                "n_mels": 16,
                "padding": "center",
            },
            "ssl_feature_extractor": {
                "class_path": "kanade_tokenizer.modules.ssl.SSLFeatureExtractor",
                "init_args": {
                    "model_name": "wavlm_base_plus",
                    "output_layer": 2,
                    "sample_rate": 24000,
                    "pretrained": False,
                    "model_config": TINY_WAVLM,
                },
            },
            "local_encoder": {
                "class_path": "kanade_tokenizer.modules.transformer.Transformer",
                "init_args": {
                    "dim": 32, "n_layers": 2, "n_heads": 2, "window_size": 9, "use_rope": True,
                    "rope_theta": 10000.0, "max_seq_len": 512, "use_flash_attention": True,
                },
            },
            "local_quantizer": {
                "class_path": "kanade_tokenizer.modules.fsq.FiniteScalarQuantizer",
                "init_args": {"input_dim": 32, "output_dim": 32, "levels": [8, 8, 8, 5, 5]},
            },
            "feature_decoder": {
                "class_path": "kanade_tokenizer.modules.transformer.Transformer",
                "init_args": {
                    "dim": 32, "n_layers": 1, "n_heads": 2, "window_size": 9, "use_rope": True,
                    "rope_theta": 10000.0, "max_seq_len": 512, "use_flash_attention": True,
                },
            },
            "global_encoder": {
                "class_path": "kanade_tokenizer.modules.global_encoder.GlobalEncoder",
                "init_args": {
                    "input_channels": 32, "output_channels": 16, "num_layers": 2, "dim": 24,
                    "intermediate_dim": 48, "attention_channels": 8,
                },
            },
            "mel_prenet": {
                "class_path": "kanade_tokenizer.modules.transformer.Transformer",
                "init_args": {
                    "dim": 32, "output_dim": 24, "n_layers": 1, "n_heads": 2, "window_size": 5,
                    "use_rope": True, "rope_theta": 10000.0, "max_seq_len": 512,
                    "use_flash_attention": True,
                },
            },
            "mel_decoder": {
                "class_path": "kanade_tokenizer.modules.transformer.Transformer",
                "init_args": {
                    "dim": 24, "output_dim": 16, "n_layers": 2, "n_heads": 2, "window_size": 9,
                    "use_rope": True, "rope_theta": 10000.0, "max_seq_len": 512,
                    "adanorm_condition_dim": 16, "use_adaln_zero": True, "use_flash_attention": True,
                },
            },
            "mel_postnet": {
                "class_path": "kanade_tokenizer.modules.postnet.PostNet",
                "init_args": {
                    "input_channels": 16, "channels": 16, "kernel_size": 5, "num_layers": 3,
                    "use_layer_norm": True,
                },
            },
        },
    }
}


TINY_HIFT = {
    "n_mels": 16,
    "base_channels": 16,
    "nb_harmonics": 2,
    "resblock_kernel_sizes": [3],
    "resblock_dilation_sizes": [[1]],
    "source_resblock_kernel_sizes": [3, 3, 3],
    "source_resblock_dilation_sizes": [[1], [1], [1]],
    "f0_predictor_channels": 16,
}


def tiny_config() -> dict[str, Any]:
    """A fresh copy of the tiny config (released config.yaml layout)."""
    return copy.deepcopy(_TINY)


def tiny_clean_config() -> dict[str, Any]:
    """The tiny config in the ``25hz_clean`` style: 16-bin BigVGAN-style mels at hop 480 (50 Hz,
    twice the token rate), decoded by the HiFT vocoder."""
    config = tiny_config()
    config["model"]["init_args"]["config"].update(
        mel_upsample_factor=2, n_fft=1920, hop_length=480, padding="same", mel_fmin=0, mel_fmax=8000,
        bigvgan_style_mel=True, vocoder_name="hift",
    )
    return config


def build_tiny_hift(seed: int = 0):
    """A tiny ``HiFTGenerator`` (for 16-bin mels, hop 480) in eval mode with deterministic random weights."""
    from .vocoders.hift import HiFTConfig, HiFTGenerator

    torch.manual_seed(seed)
    return HiFTGenerator(HiFTConfig(**copy.deepcopy(TINY_HIFT))).eval()


def build_tiny_model(seed: int = 0, config: dict[str, Any] | None = None, **from_config_kwargs):
    """A tiny ``KanadeModel`` in eval mode with deterministic random weights, from ``config``
    (default ``tiny_config()``; ``tiny_clean_config()`` for the 25hz_clean style).

    AdaLN-Zero projections start at zero (the global embedding would have no effect); they get
    small random values here so every module influences the output.
    """
    from .model import KanadeModel

    torch.manual_seed(seed)
    model = KanadeModel.from_config(config or tiny_config(), **from_config_kwargs)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "condition_proj" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model.eval()


def synthetic_speech(seconds: float, sample_rate: int = 24000, seed: int = 0) -> torch.Tensor:
    """A speech-like test signal: a gliding harmonic tone with syllable-rate amplitude modulation
    plus a little noise, peak-normalised to 0.9. Shape (samples,)."""
    generator = torch.Generator().manual_seed(seed)
    n = int(round(seconds * sample_rate))
    t = torch.arange(n, dtype=torch.float64) / sample_rate
    f0 = 110 + 40 * torch.rand(1, generator=generator, dtype=torch.float64)
    pitch = f0 * (1 + 0.1 * torch.sin(2 * torch.pi * 0.7 * t))
    phase = 2 * torch.pi * torch.cumsum(pitch, 0) / sample_rate
    voice = sum(torch.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 * (1 + torch.sin(2 * torch.pi * 4.0 * t + torch.rand(1, generator=generator, dtype=torch.float64)))
    x = voice * envelope + 0.02 * torch.randn(n, generator=generator, dtype=torch.float64)
    x = x / x.abs().max().clamp_min(1e-8) * 0.9
    return x.float()
