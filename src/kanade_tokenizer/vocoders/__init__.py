"""Vocoders that turn Kanade's mel spectrograms into audio, in pure PyTorch.

``load_vocoder()`` gives the Vocos vocoder the 12.5 Hz and 25 Hz models were trained for
(``charactr/vocos-mel-24khz``), from the Hugging Face Hub or from a local folder in the same
layout (config.yaml + pytorch_model.bin or model.safetensors); ``load_vocoder("hift")`` (or a
``hift.pt`` file, or a folder holding one) gives the HiFT vocoder of the 25 Hz "clean" model
(:mod:`~kanade_tokenizer.vocoders.hift`). ``load_vocoder_for(model)`` picks the one the model's
config names, looking for ``hift.pt`` in the model's checkpoint folder first.
``vocode(vocoder, mel, generator=None)`` runs it; the generator seeds HiFT's noise source.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from kanade_tokenizer.vocoders.hift import WEIGHTS_NAME as HIFT_WEIGHTS_NAME
from kanade_tokenizer.vocoders.hift import HiFTConfig, HiFTGenerator, load_hift
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
            ``model.safetensors``); for HiFT: ``"hift"`` (the released ``hift.pt`` of
            ``FunAudioLLM/CosyVoice2-0.5B``), a ``.pt`` file, or a folder holding ``hift.pt``.
            Local files and folders never touch the network.
        revision: Hub revision (branch, tag or commit) for repo ids.
        device: where to put the model (default: CPU).
    """
    name = os.fspath(name)
    path = Path(name).expanduser()
    if name.lower() == "hift" or (path.is_file() and path.suffix == ".pt") or (path / HIFT_WEIGHTS_NAME).is_file():
        return load_hift(name, revision=revision, device=device)
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


def vocode(vocoder: nn.Module, mel: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mel spectrogram -> waveform.

    ``mel`` is ``(n_mels, frames)``, ``(batch, n_mels, frames)`` or has more leading
    dimensions; the output has the same leading dimensions followed by ``samples``. The mel is
    cast to the vocoder's dtype (float32 unless you cast the vocoder) and moved to its
    device; the waveform is float32. For the default Vocos (center padding)
    the waveform has ``hop · (frames - 1)`` samples, for HiFT ``480 · frames``.

    ``generator`` seeds the noise of a stochastic vocoder (HiFT), so the same seed gives the same
    audio; Vocos is deterministic and does not take one.
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
        if isinstance(vocoder, HiFTGenerator):
            audio = vocoder.decode(x, generator=generator)
        elif hasattr(vocoder, "decode"):
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
    its mel bins and hop match the model's.

    For ``hift`` the model's checkpoint folder (``model.checkpoint_folder``, set by
    ``from_pretrained``) is searched for ``hift.pt`` before the Hub.
    """
    config = getattr(model, "config", None)
    if name is None:
        name = getattr(config, "vocoder_name", None) or "vocos"
    if os.fspath(name).lower() == "hift":
        vocoder = load_hift(None, model_folder=getattr(model, "checkpoint_folder", None), device=device)
    else:
        vocoder = load_vocoder(name, device=device)
    want_bins, have_bins = getattr(config, "n_mels", None), getattr(getattr(vocoder, "config", None), "n_mels", None)
    want_hop, have_hop = getattr(config, "hop_length", None), getattr(vocoder, "hop_length", None)
    problem = None
    if want_bins is not None and have_bins is not None and int(want_bins) != int(have_bins):
        problem = f"takes {have_bins}-bin mels but the model makes {want_bins}-bin mels"
    elif want_hop is not None and have_hop is not None and int(want_hop) != int(have_hop):
        problem = f"makes {have_hop} samples per mel frame but the model's mels have a hop of {want_hop}"
    if problem:
        raise VocoderLoadError(f"the vocoder {os.fspath(name)!r} {problem}; pass a matching --vocoder")
    return vocoder


def mel_to_audio(vocoder, mel: torch.Tensor, num_samples: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Vocode one ``(n_mels, T)`` mel to ``(samples,)`` audio, trimmed or zero-padded to
    ``num_samples``; ``generator`` as in :func:`vocode`."""
    audio = vocode(vocoder, mel.unsqueeze(0), generator=generator)[0].float().cpu()
    if num_samples is not None:
        if audio.numel() >= num_samples:
            audio = audio[:num_samples]
        else:
            audio = torch.nn.functional.pad(audio, (0, num_samples - audio.numel()))
    return audio


__all__ = [
    "DEFAULT_VOCODER",
    "HiFTConfig",
    "HiFTGenerator",
    "Vocos",
    "VocosConfig",
    "VocoderLoadError",
    "load_hift",
    "load_vocoder",
    "load_vocoder_for",
    "mel_to_audio",
    "vocode",
]
