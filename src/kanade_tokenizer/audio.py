"""Audio I/O for the Kanade tokenizer: soundfile for reading and writing, and the original's
windowed-sinc resampler. Every reader and writer of the package goes through here:
:func:`audio_info` (header), :func:`read_frames` (raw frames at the file's rate),
:func:`load_audio` (the model's input) and :func:`save_audio`, with one contract: a path that
cannot be used raises :class:`AudioLoadError` (or FileNotFoundError) naming the file.

``load_audio`` follows the original's recipe: read, average the
channels to mono, resample to the model's rate, then peak-normalise with
``x / (max|x| + 1e-8)``. The model was trained on peak-normalised audio, so keep
``normalize=True`` unless the input is already normalised.

Resampling is :class:`~kanade_tokenizer.modules.resample.Resampler` (torchaudio's ``Resample``
with its defaults, bit for bit), the resampler the released models were trained and run with,
for every input of the tokenizer: ``load_audio`` (and so ``kanade encode``) and the training
data. A different resampler (soxr, say) gives slightly different samples and so, now and then, a
different token.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch

from kanade_tokenizer.files import atomic_path
from kanade_tokenizer.modules.resample import Resampler

#: File suffixes the CLI treats as audio when it scans folders (all readable by libsndfile).
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif", ".au")


class AudioLoadError(ValueError):
    """An audio file that cannot be used: unreadable, empty, or of an unsupported format."""


@functools.lru_cache(maxsize=16)
def _resampler(orig_sr: int, target_sr: int) -> Resampler:
    return Resampler(orig_sr, target_sr)


def resample(audio: torch.Tensor, orig_sr: int, target_sr: int) -> torch.Tensor:
    """Resample float ``(..., samples)`` audio along its last axis with the original's resampler
    (windowed sinc, Hann window, 6 zero crossings, rolloff 0.99); ceil(L * target / orig) samples."""
    orig_sr, target_sr = int(orig_sr), int(target_sr)
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    if orig_sr == target_sr:
        return audio
    with torch.no_grad():
        return _resampler(orig_sr, target_sr)(audio)


def wav_truncation(path: str | os.PathLike[str]) -> str | None:
    """Why the WAV file at ``path`` is cut short (its ``data`` chunk claims more bytes than the
    file holds), or None; libsndfile reads such files without an error, returning what is there.
    The rule is :func:`kanitts.audio.wav_truncation`'s, so ``kanitts prepare`` and ``kanade``
    judge a file alike."""
    from kanitts.audio import wav_truncation as header_truncation

    with open(path, "rb") as f:
        return header_truncation(f.read(65536), os.fstat(f.fileno()).st_size)


def peak_normalize(audio: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``audio / (max|audio| + eps)`` (silence stays silence)."""
    return audio / (audio.abs().max() + eps)


def audio_info(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(frames, sample rate) from the file's header, without reading the samples.

    Raises:
        FileNotFoundError: the file does not exist.
        AudioLoadError: not a file libsndfile can open, no samples, or a WAV file cut short.
    """
    import soundfile as sf

    path = _usable(path)
    try:
        info = sf.info(str(path))
    except Exception as e:  # soundfile.LibsndfileError, RuntimeError, TypeError on odd headers
        raise AudioLoadError(f"{path}: cannot read audio ({e})") from e
    if int(info.frames) == 0:
        raise AudioLoadError(f"{path}: the file holds no audio samples")
    return int(info.frames), int(info.samplerate)


def read_frames(path: str | os.PathLike[str], start: int = 0, frames: int = -1) -> tuple[torch.Tensor, int]:
    """``frames`` frames (-1: to the end) from frame ``start``, as float32 ``(channels, n)`` at the
    file's own rate, and that rate. Errors as :func:`audio_info`; no samples at ``start`` is one."""
    import soundfile as sf

    path = _usable(path)
    try:
        with sf.SoundFile(str(path)) as f:
            if start:
                f.seek(int(start))
            data = f.read(int(frames), dtype="float32", always_2d=True)
            rate = int(f.samplerate)
    except Exception as e:  # soundfile.LibsndfileError, RuntimeError, TypeError on odd headers
        raise AudioLoadError(f"{path}: cannot read audio ({e})") from e
    if data.shape[0] == 0:
        where = f" at frame {start}" if start else ""
        raise AudioLoadError(f"{path}: the file holds no audio samples{where}")
    return torch.from_numpy(data.T), rate


def _usable(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"audio file not found: {path}")
    if path.is_dir():
        raise AudioLoadError(f"{path}: is a folder, not an audio file")
    problem = wav_truncation(path)
    if problem is not None:
        raise AudioLoadError(f"{path}: {problem}")
    return path


def load_audio(
    path: str | os.PathLike[str], sample_rate: int = 24000, *, normalize: bool = True
) -> torch.Tensor:
    """Read an audio file as a mono float32 tensor of shape ``(samples,)`` at ``sample_rate``.

    Channels are averaged, the audio is resampled with :func:`resample` (the original's
    windowed-sinc resampler) when its rate differs, and (by default) peak-normalised to
    ``x / (max|x| + 1e-8)``, as the original ``load_audio`` does.

    Raises:
        FileNotFoundError: the file does not exist.
        AudioLoadError: libsndfile cannot decode it, it holds no samples, or it is a WAV file
            cut short (see :func:`wav_truncation`).
    """
    channels, orig_sr = read_frames(path)
    wave = channels.mean(dim=0)  # (C, T) -> (T,), averaged in torch as the original
    wave = resample(wave, orig_sr, int(sample_rate)).contiguous()
    if normalize:
        wave = peak_normalize(wave)
    return wave


def save_audio(
    path: str | os.PathLike[str], audio: torch.Tensor | np.ndarray, sample_rate: int, subtype: str | None = None
) -> Path:
    """Write mono ``(samples,)`` audio (float in [-1, 1]); the format follows the suffix (.wav, .flac, ...).

    The file is written to a temporary name and renamed when complete.
    """
    import soundfile as sf

    path = Path(path)
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().float().cpu().numpy()
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    audio = np.clip(audio, -1.0, 1.0)
    fmt = path.suffix.lstrip(".").upper() or "WAV"
    with atomic_path(path) as tmp:
        sf.write(str(tmp), audio, int(sample_rate), subtype=subtype, format=fmt)
    return path


__all__ = [
    "AUDIO_SUFFIXES", "AudioLoadError", "audio_info", "load_audio", "peak_normalize", "read_frames", "resample",
    "save_audio", "wav_truncation",
]
