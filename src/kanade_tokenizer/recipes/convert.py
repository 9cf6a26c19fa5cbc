"""``kanade convert``: voice conversion, the source's words in the reference's voice."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from kanade_tokenizer.audio import load_audio, save_audio
from kanade_tokenizer.errors import KanadeInputError
from kanade_tokenizer.recipes import common
from kanade_tokenizer.vocoders import load_vocoder_for, mel_to_audio


def convert_voice(model, vocoder, source: str | os.PathLike[str], reference: str | os.PathLike[str],
                  output: str | os.PathLike[str], seed: int | None = None) -> Path:
    """Speak ``source``'s content in ``reference``'s voice; writes ``output`` (same length as the
    source). ``seed`` makes a stochastic vocoder (HiFT) deterministic."""
    sr = common.model_sample_rate(model)
    pairs = common.read_audio_headers([common.AudioInput(Path(p), Path(output)) for p in (source, reference)])
    common.check_long_enough(pairs[:1], model, sr)  # the reference only gives a voice: any length does
    device = common.model_device(model)
    src = load_audio(source, sample_rate=sr).to(device)
    ref = load_audio(reference, sample_rate=sr).to(device)
    with torch.inference_mode():
        mel = model.voice_conversion(src, ref)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    audio = mel_to_audio(vocoder, mel, src.numel(), generator=generator)
    return save_audio(output, audio, sr)


def run(*, source: str, reference: str, output: str, model: str, weights: str | None = None,
        vocoder: str | None = None, device: str | None = None, seed: int | None = None) -> int:
    """The job: check both audio files, load model and vocoder, convert, write ``output``."""
    for path in (source, reference):
        if not Path(path).is_file():
            raise KanadeInputError(f"{path}: no such audio file")
    common.read_audio_headers([common.AudioInput(Path(p), Path(output)) for p in (source, reference)])
    device = device or common.default_device()
    loaded = common.load_model(model, weights, device=device)
    voc = load_vocoder_for(loaded, vocoder, device=device)
    print(f"wrote {convert_voice(loaded, voc, source, reference, output, seed=seed)}")
    return 0
