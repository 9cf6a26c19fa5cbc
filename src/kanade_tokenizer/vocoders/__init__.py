"""Vocoders that turn Kanade's mel spectrograms into audio, in pure PyTorch.

``load_vocoder()`` gives the Vocos vocoder the 12.5 Hz and 25 Hz models were trained for
(``charactr/vocos-mel-24khz``), from the Hugging Face Hub or from a local folder in the same
layout (config.yaml + pytorch_model.bin or model.safetensors). ``vocode(vocoder, mel)`` runs it.

The HiFT vocoder of the 25 Hz "clean" model is not part of this package: ``load_vocoder("hift")``
says so instead of failing later.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from kanade_tokenizer.vocoders.vocos import (
    CONFIG_NAME,
    Vocos,
    VocosConfig,
    VocosLoadError,
)
from kanitts.files import is_hub_id

DEFAULT_VOCODER = "charactr/vocos-mel-24khz"
_ALIASES = {"vocos": DEFAULT_VOCODER}


#: The vocoder could not be found or loaded; the message names the repo, folder or file and why.
VocoderLoadError = VocosLoadError


def load_vocoder(
    name: str | os.PathLike[str] = DEFAULT_VOCODER,
    *,
    revision: str | None = None,
    device: str | torch.device | None = None,
) -> nn.Module:
    """Load a vocoder in eval mode.

    Args:
        name: a Hub repo id (default ``charactr/vocos-mel-24khz``), the alias ``"vocos"``, or a
            local folder holding Vocos's ``config.yaml`` and ``pytorch_model.bin`` (or
            ``model.safetensors``). Local folders never touch the network.
        revision: Hub revision (branch, tag or commit) for repo ids.
        device: where to put the model (default: CPU).
    """
    name = os.fspath(name)
    if name.lower() == "hift":
        raise VocoderLoadError(
            "the HiFT vocoder (for the kanade-25hz-clean model) is not available in this package; "
            "use a Vocos-style model (kanade-12.5hz / kanade-25hz) with load_vocoder('vocos')"
        )
    name = _ALIASES.get(name.lower(), name)
    path = Path(name).expanduser()
    if path.is_dir():
        model = Vocos.from_folder(path)
    elif path.exists():
        raise VocoderLoadError(f"{path}: is a file; pass the folder that holds {CONFIG_NAME} and the weights")
    elif is_hub_id(name):
        model = Vocos.from_pretrained(name, revision=revision)
    else:
        raise VocoderLoadError(f"{name}: no such folder, and not a Hugging Face repo id (owner/name)")
    if device is not None:
        model = model.to(device)
    return model.eval()


def vocode(vocoder: nn.Module, mel: torch.Tensor) -> torch.Tensor:
    """Mel spectrogram -> waveform.

    ``mel`` is ``(n_mels, frames)``, ``(batch, n_mels, frames)`` or has more leading
    dimensions; the output has the same leading dimensions followed by ``samples``. The mel is
    cast to the vocoder's dtype (float32 unless you cast the vocoder) and moved to its
    device; the waveform is float32. For the default Vocos (center padding)
    the waveform has ``hop · (frames - 1)`` samples.
    """
    if mel.dim() < 2:
        raise ValueError(f"expected a mel of shape (..., n_mels, frames), got {tuple(mel.shape)}")
    lead = mel.shape[:-2]
    x = mel.reshape(-1, *mel.shape[-2:])
    param = next(vocoder.parameters(), None)
    if param is not None and param.is_floating_point():
        x = x.to(device=param.device, dtype=param.dtype)  # float32 unless the vocoder was cast
    else:
        x = x.float()
    with torch.inference_mode():
        if hasattr(vocoder, "decode"):
            audio = vocoder.decode(x)
        elif hasattr(vocoder, "inference"):
            audio = vocoder.inference(x)
            if isinstance(audio, tuple):  # HiFT-style (waveform, source)
                audio = audio[0]
        else:
            raise TypeError(f"{type(vocoder).__name__} has neither decode() nor inference()")
    audio = audio.float().reshape(x.shape[0], -1)
    return audio.reshape(*lead, audio.shape[-1])


def load_vocoder_for(model, name: str | None = None, device: str | torch.device | None = None):
    """The vocoder ``name``, or the one the model's config names (``vocoder_name``); checks that
    its number of mel bins matches the model's."""
    config = getattr(model, "config", None)
    if name is None:
        name = getattr(config, "vocoder_name", None) or "vocos"
    vocoder = load_vocoder(name, device=device)
    want = getattr(config, "n_mels", None)
    have = getattr(getattr(vocoder, "config", None), "n_mels", None)
    if want is not None and have is not None and int(want) != int(have):
        raise VocoderLoadError(
            f"the vocoder {name!r} takes {have}-bin mels but the model makes {want}-bin mels; "
            "pass a matching --vocoder"
        )
    return vocoder


def mel_to_audio(vocoder, mel: torch.Tensor, num_samples: int | None = None) -> torch.Tensor:
    """Vocode one ``(n_mels, T)`` mel to ``(samples,)`` audio, trimmed or zero-padded to ``num_samples``."""
    audio = vocode(vocoder, mel.unsqueeze(0))[0].float().cpu()
    if num_samples is not None:
        if audio.numel() >= num_samples:
            audio = audio[:num_samples]
        else:
            audio = torch.nn.functional.pad(audio, (0, num_samples - audio.numel()))
    return audio


__all__ = [
    "DEFAULT_VOCODER",
    "Vocos",
    "VocosConfig",
    "VocoderLoadError",
    "load_vocoder",
    "load_vocoder_for",
    "mel_to_audio",
    "vocode",
]
