"""``kanade encode``: audio files or folders -> one token file each (:mod:`kanade_tokenizer.tokens`).

Bad inputs (missing, unreadable, truncated, shorter than one token) stop the run before the
model loads or anything is written, naming every such file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kanade_tokenizer.audio import load_audio
from kanade_tokenizer.errors import KanadeInputError
from kanade_tokenizer.recipes import common
from kanade_tokenizer.tokens import model_facts, save_tokens


@dataclass
class EncodeSummary:
    files: int = 0
    audio_seconds: float = 0.0
    tokens: int = 0
    seconds: float = 0.0
    outputs: list[Path] = field(default_factory=list)

    def __str__(self) -> str:
        rate = self.audio_seconds / self.seconds if self.seconds > 0 else float("inf")
        return (
            f"encoded {self.files} file(s), {self.audio_seconds / 3600:.3f} h of audio, {self.tokens} tokens "
            f"in {self.seconds:.1f} s ({rate:.1f}x real time)"
        )


def encode_files(model, inputs: Sequence[str | os.PathLike[str]], output_dir: str | os.PathLike[str], *,
                 batch_size: int = 8, model_name: str = "", save_content_embedding: bool = False,
                 progress: bool = True) -> EncodeSummary:
    """Encode audio files (or folders of them) into one token file each, under ``output_dir``.

    Files are read at the model's rate, grouped by length into batches of ``batch_size`` and
    encoded with ``model.encode_batch``.
    """
    if batch_size < 1:
        raise KanadeInputError(f"batch size must be at least 1, got {batch_size}")
    pairs = common.read_audio_headers(common.collect_audio_inputs(inputs, output_dir))
    sr = common.model_sample_rate(model)
    common.check_long_enough(pairs, model, sr)
    facts = model_facts(model)
    device = common.model_device(model)
    summary = EncodeSummary()
    start = time.perf_counter()
    bar = common.progress_bar(total=len(pairs), unit="file", desc="encode", enabled=progress)
    pairs = sorted(pairs, key=lambda p: p.num_frames / p.sample_rate)  # similar lengths batch with less padding
    try:
        for start_at in range(0, len(pairs), batch_size):
            group = pairs[start_at : start_at + batch_size]
            waves = [load_audio(p.path, sample_rate=sr) for p in group]
            with torch.inference_mode():
                features = model.encode_batch([w.to(device) for w in waves])
            for pair, wave, feat in zip(group, waves, features):
                save_tokens(pair.output, feat, source=str(pair.path), num_samples=wave.numel(), sample_rate=sr,
                            model_name=model_name, save_content_embedding=save_content_embedding, facts=facts)
                summary.files += 1
                summary.audio_seconds += wave.numel() / sr
                if feat.content_token_indices is not None:
                    summary.tokens += int(feat.content_token_indices.numel())
                summary.outputs.append(pair.output)
            bar.update(len(group))
            bar.set_postfix(audio_h=f"{summary.audio_seconds / 3600:.3f}")
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


def run(*, inputs: Sequence[str], output: str, model: str, weights: str | None = None, device: str | None = None,
        batch_size: int = 8, save_content_embedding: bool = False, progress: bool = True) -> int:
    """The job: check the inputs, load the model, encode, print the summary; the exit code."""
    if batch_size < 1:
        raise KanadeInputError(f"--batch-size must be at least 1, got {batch_size}")
    common.read_audio_headers(common.collect_audio_inputs(inputs, output))
    loaded = common.load_model(model, weights, device=device or common.default_device())
    summary = encode_files(loaded, inputs, output, batch_size=batch_size, model_name=model,
                           save_content_embedding=save_content_embedding, progress=progress)
    print(f"{summary} -> {output}")
    return 0
