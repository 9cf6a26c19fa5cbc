"""Audio in and out: decode, downmix, resample, normalise, trim, write. NumPy float32, no torch.

The one contract for audio in ``kanitts`` (the Kanade tokenizer keeps its own loader, which
resamples as the released models were trained):

- :func:`load_audio` reads a file or bytes as ``(samples (T, C) float32 in [-1, 1], sample_rate)``,
  every channel kept, at the file's own rate; :func:`to_mono` and :func:`resample` follow.
- :func:`write_wav` writes ``(T,)`` or ``(T, C)`` float samples as 16-bit PCM WAV (clipped to
  [-1, 1]), whole or not at all (:mod:`kanitts.atomic`), creating the folder.

- Decoding is libsndfile through ``soundfile`` (wav, flac, ogg/vorbis/opus, mp3 and more), from a
  path or from bytes; no torchaudio, torchcodec or ffmpeg.
- Resampling is ``soxr`` at high quality.
- Loudness is ITU-R BS.1770-4 integrated loudness (K-weighting, 400 ms blocks with 75 % overlap,
  absolute gate at -70 LUFS, relative gate at -10 LU), implemented here with scipy filters. It is
  kept rather than ``pyloudnorm`` for measured reasons (benchmarks/RESULTS.md): the standard's
  reference, a 0 dBFS 997 Hz sine, reads -3.01 LUFS here at 48 kHz and -2.98 at 22.05 kHz, but
  -3.05 and -3.07 with pyloudnorm 0.2 (its K-weighting is designed differently); pyloudnorm
  refuses clips under 400 ms, which prepare accepts; both take the same time (36 ms per minute
  of audio). On speech-like signals the two agree within 0.1 LU (tests/test_audio.py).

Every function takes and returns a 1-D mono signal unless it says otherwise.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

from kanitts.atomic import atomic_file


class AudioDecodeError(Exception):
    """The bytes are not audio that libsndfile can read (the message says why)."""


def wav_truncation(header: bytes, total_size: int) -> str | None:
    """Why a RIFF/WAVE file is cut short, or None: its ``data`` chunk claims more bytes than the
    file holds. (libsndfile reads such files without complaint, returning only what is there,
    which pairs a full transcript with part of the audio.) Sizes 0 and 0xFFFFFFFF, which
    streaming writers leave when they do not know the length, are not judged."""
    if len(header) < 12 or header[:4] not in (b"RIFF", b"RIFX") or header[8:12] != b"WAVE":
        return None
    order = "little" if header[:4] == b"RIFF" else "big"
    pos = 12
    while pos + 8 <= len(header):
        chunk, size = header[pos : pos + 4], int.from_bytes(header[pos + 4 : pos + 8], order)
        if chunk == b"data":
            if size in (0, 0xFFFFFFFF):
                return None
            available = total_size - (pos + 8)
            if available < size:
                return f"truncated: the data chunk declares {size} bytes but the file holds {available}"
            return None
        pos += 8 + size + (size & 1)
    return None


def load_audio(source: str | Path | bytes | BinaryIO) -> tuple[np.ndarray, int]:
    """Decode a file or in-memory bytes to ``(samples (T, C) float32, sample_rate)``.

    Raises :class:`AudioDecodeError` for anything libsndfile cannot read and for WAV files that
    are cut short (see :func:`wav_truncation`).
    """
    import soundfile as sf

    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        problem = wav_truncation(data[:65536], len(data))
        source = io.BytesIO(data)
    elif isinstance(source, (str, Path)):
        source = str(source)
        try:
            with open(source, "rb") as f:
                problem = wav_truncation(f.read(65536), os.fstat(f.fileno()).st_size)
        except OSError as exc:
            raise AudioDecodeError(str(exc)) from None
    else:
        problem = None
    if problem:
        raise AudioDecodeError(problem)
    try:
        data, sr = sf.read(source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, EOFError) as exc:
        message = str(exc).strip() or type(exc).__name__
        raise AudioDecodeError(message) from None
    return np.ascontiguousarray(data), int(sr)


def write_wav(path: Path | str, audio: np.ndarray, sample_rate: int) -> Path:
    """16-bit PCM WAV (plays in every browser and tool), encoded in memory and renamed into place,
    so a reader never sees half a file."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0), sample_rate,
             format="WAV", subtype="PCM_16")
    with atomic_file(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return path


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average the channels of ``(T, C)`` (or pass ``(T,)`` through) to a 1-D float32 signal."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 1:
        return samples
    if samples.ndim != 2:
        raise ValueError(f"expected (T,) or (T, C) audio, got shape {samples.shape}")
    if samples.shape[1] == 1:
        return samples[:, 0].copy()
    return samples.mean(axis=1, dtype=np.float64).astype(np.float32)


def resample(samples: np.ndarray, orig_sr: int, target_sr: int, quality: str = "HQ") -> np.ndarray:
    """Resample a mono signal with soxr (``quality``: QQ, LQ, MQ, HQ, VHQ)."""
    if orig_sr == target_sr:
        return np.asarray(samples, dtype=np.float32)
    import soxr

    out = soxr.resample(np.asarray(samples, dtype=np.float32), orig_sr, target_sr, quality=quality)
    return np.asarray(out, dtype=np.float32)


def peak_dbfs(samples: np.ndarray) -> float:
    """Sample peak in dB relative to full scale (``-inf`` for digital silence)."""
    peak = float(np.max(np.abs(samples))) if len(samples) else 0.0
    return 20.0 * math.log10(peak) if peak > 0 else -math.inf


def peak_normalize(samples: np.ndarray, target_dbfs: float = -1.0) -> np.ndarray:
    """Scale so the sample peak sits at ``target_dbfs``; silence is returned unchanged."""
    peak = peak_dbfs(samples)
    if not math.isfinite(peak):
        return samples
    return (samples * 10.0 ** ((target_dbfs - peak) / 20.0)).astype(np.float32)


def _k_weighting(sr: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """BS.1770 K-weighting at any sample rate: a +4 dB high shelf (the head's acoustic effect)
    then the RLB high pass, designed as in libebur128 so 48 kHz gives the standard's
    coefficients."""
    # Stage 1: high shelf.
    f0, gain_db, q = 1681.974450955533, 3.999843853973347, 0.7071752369554196
    k = math.tan(math.pi * f0 / sr)
    vh = 10.0 ** (gain_db / 20.0)
    vb = vh**0.4996667741545416
    a0 = 1.0 + k / q + k * k
    shelf_b = np.array([(vh + vb * k / q + k * k) / a0, 2.0 * (k * k - vh) / a0, (vh - vb * k / q + k * k) / a0])
    shelf_a = np.array([1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / q + k * k) / a0])
    # Stage 2: high pass.
    f0, q = 38.13547087602444, 0.5003270373238773
    k = math.tan(math.pi * f0 / sr)
    a0 = 1.0 + k / q + k * k
    hp_b = np.array([1.0, -2.0, 1.0])
    hp_a = np.array([1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / q + k * k) / a0])
    return [(shelf_b, shelf_a), (hp_b, hp_a)]


def integrated_loudness(samples: np.ndarray, sr: int) -> float:
    """ITU-R BS.1770-4 integrated loudness of a mono signal in LUFS (``-inf`` if all gated).

    A full-scale 997 Hz sine reads about -3.0 LUFS. Clips shorter than one 400 ms block are
    measured as a single block.
    """
    from scipy.signal import lfilter

    x = np.asarray(samples, dtype=np.float64)
    if len(x) == 0:
        return -math.inf
    for b, a in _k_weighting(sr):
        x = lfilter(b, a, x)
    block = int(round(0.4 * sr))
    hop = int(round(0.1 * sr))
    if len(x) <= block:
        powers = np.array([np.mean(x**2)])
    else:
        starts = np.arange(0, len(x) - block + 1, hop)
        csum = np.concatenate([[0.0], np.cumsum(x**2)])
        powers = (csum[starts + block] - csum[starts]) / block
    with np.errstate(divide="ignore"):
        loudness = -0.691 + 10.0 * np.log10(powers)
    gated = powers[loudness > -70.0]
    if len(gated) == 0:
        return -math.inf
    relative_gate = -0.691 + 10.0 * math.log10(float(np.mean(gated))) - 10.0
    with np.errstate(divide="ignore"):
        keep = gated[(-0.691 + 10.0 * np.log10(gated)) > relative_gate]
    if len(keep) == 0:
        return -math.inf
    return -0.691 + 10.0 * math.log10(float(np.mean(keep)))


def loudness_normalize(
    samples: np.ndarray, sr: int, target_lufs: float = -23.0, peak_limit_dbfs: float = -1.0
) -> np.ndarray:
    """Scale to ``target_lufs`` integrated loudness, then down if the peak would pass
    ``peak_limit_dbfs`` (a plain gain, no limiter). Silence is returned unchanged."""
    loudness = integrated_loudness(samples, sr)
    if not math.isfinite(loudness):
        return samples
    out = samples * 10.0 ** ((target_lufs - loudness) / 20.0)
    if peak_dbfs(out) > peak_limit_dbfs:
        out = peak_normalize(out, peak_limit_dbfs)
    return np.asarray(out, dtype=np.float32)


def trim_silence(
    samples: np.ndarray,
    sr: int,
    top_db: float = 40.0,
    frame_ms: float = 25.0,
    hop_ms: float = 10.0,
    keep_ms: float = 50.0,
) -> np.ndarray:
    """Cut leading and trailing stretches quieter than ``top_db`` below the loudest frame.

    Frame energy is RMS over ``frame_ms`` windows every ``hop_ms``; ``keep_ms`` of the quiet part
    is kept on each side so word onsets and decays are not clipped. Silence stays as it is.
    """
    x = np.asarray(samples, dtype=np.float32)
    frame = max(1, int(sr * frame_ms / 1000))
    hop = max(1, int(sr * hop_ms / 1000))
    if len(x) <= frame:
        return x
    starts = np.arange(0, len(x) - frame + 1, hop)
    csum = np.concatenate([[0.0], np.cumsum(x.astype(np.float64) ** 2)])
    rms = np.sqrt((csum[starts + frame] - csum[starts]) / frame)
    ref = float(rms.max())
    if ref <= 0:
        return x
    loud = np.flatnonzero(rms >= ref * 10.0 ** (-top_db / 20.0))
    keep = int(sr * keep_ms / 1000)
    begin = max(0, int(starts[loud[0]]) - keep)
    end = min(len(x), int(starts[loud[-1]]) + frame + keep)
    return x[begin:end]
