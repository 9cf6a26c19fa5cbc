"""``kanade decode``: token files -> mel (the model's decoder) -> audio (the vocoder).

Every token file is read and checked before the model loads, and against the model before the
first one is decoded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kanade_tokenizer.audio import AUDIO_SUFFIXES, save_audio
from kanade_tokenizer.errors import KanadeInputError
from kanade_tokenizer.recipes import common
from kanade_tokenizer.tokens import check_tokens_match, load_tokens
from kanade_tokenizer.vocoders import load_vocoder_for, mel_to_audio


@dataclass
class DecodeSummary:
    files: int = 0
    audio_seconds: float = 0.0
    seconds: float = 0.0
    outputs: list[Path] = field(default_factory=list)

    def __str__(self) -> str:
        return f"wrote {self.files} file(s), {self.audio_seconds:.1f} s of audio in {self.seconds:.1f} s"


def decode_files(model, vocoder, token_files: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str], *,
                 reference: str | os.PathLike[str] | None = None, progress: bool = True,
                 model_name: str = "", seed: int | None = None) -> DecodeSummary:
    """Token files -> mel (model.decode) -> waveform (vocoder) -> audio files.

    With one token file and an ``output`` that ends in an audio suffix, that file is written;
    otherwise ``output`` is a folder and each input ``x.safetensors`` becomes ``output/x.wav``.
    ``reference`` (a token file or an audio file) replaces every file's global embedding, i.e.
    speaks the content in the reference's voice. Every file is checked against the model
    (:func:`check_tokens_match`) before the first one is decoded. ``seed`` makes a stochastic
    vocoder (HiFT) deterministic: each file is vocoded with a generator seeded with it, so a file's
    audio does not depend on the other files.
    """
    output = Path(output)
    token_files = [Path(t) for t in token_files]
    if not token_files:
        raise KanadeInputError("no token files given")
    if output.suffix.lower() in AUDIO_SUFFIXES:
        if len(token_files) > 1:
            raise KanadeInputError(f"{output}: one output file for {len(token_files)} inputs; pass a folder as -o")
        targets = [output]
    else:
        targets = [output / (t.stem + ".wav") for t in token_files]
    for src in token_files:
        check_tokens_match(src, load_tokens(src), model, model_name)
    sr = common.model_sample_rate(model)
    device = common.model_device(model)
    override = common.global_embedding_from(model, reference, model_name) if reference is not None else None
    summary = DecodeSummary()
    start = time.perf_counter()
    bar = common.progress_bar(total=len(token_files), unit="file", desc="decode", enabled=progress)
    try:
        for src, dst in zip(token_files, targets):
            tokens = load_tokens(src)
            g = override if override is not None else tokens.global_embedding
            kwargs: dict[str, Any] = {"global_embedding": g.to(device), "target_audio_length": tokens.num_samples}
            if tokens.content_embedding is not None and tokens.content_token_indices is None:
                kwargs["content_embedding"] = tokens.content_embedding.to(device)
            else:
                kwargs["content_token_indices"] = tokens.content_token_indices.to(device)
            with torch.inference_mode():
                mel = model.decode(**kwargs)
            generator = None if seed is None else torch.Generator().manual_seed(seed)
            audio = mel_to_audio(vocoder, mel, tokens.num_samples, generator=generator)
            save_audio(dst, audio, sr)
            summary.files += 1
            summary.audio_seconds += audio.numel() / sr
            summary.outputs.append(dst)
            bar.update(1)
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


def run(*, tokens: Sequence[str], output: str, model: str, weights: str | None = None, vocoder: str | None = None,
        device: str | None = None, reference: str | None = None, progress: bool = True,
        seed: int | None = None) -> int:
    """The job: check the token files, load model and vocoder, decode, print the summary."""
    for path in tokens:
        load_tokens(path)
    device = device or common.default_device()
    loaded = common.load_model(model, weights, device=device)
    voc = load_vocoder_for(loaded, vocoder, device=device)
    summary = decode_files(loaded, voc, tokens, output, reference=reference, progress=progress, model_name=model,
                           seed=seed)
    print(f"{summary} -> {output}")
    return 0
