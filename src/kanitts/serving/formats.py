"""Audio bytes for each ``response_format``: streamed where the format allows it.

``pcm`` (16-bit little-endian mono at the codec's rate, OpenAI's raw format) and ``wav`` stream
chunk by chunk. A streamed WAV cannot know its length up front, so its header says the largest
size (0xFFFFFFFF), as streaming servers do; players and libsndfile read such a file to its end.
``flac``, ``mp3`` and ``opus`` are written by libsndfile (through soundfile) once the audio is
complete, because their writers seek back to finish the header. Ogg Opus has no 22.05 kHz mode,
so opus is resampled to 24 kHz.
"""

from __future__ import annotations

import io
import struct

import numpy as np

MEDIA_TYPES = {
    "wav": "audio/wav",
    "pcm": "audio/pcm",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
}
STREAMED = ("wav", "pcm")
# soundfile (format, subtype) of the formats written whole
_WHOLE = {"flac": ("FLAC", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III"), "opus": ("OGG", "OPUS")}
OPUS_RATE = 24000


def available_formats() -> tuple[str, ...]:
    """The formats the installed libsndfile can write (wav and pcm need nothing)."""
    import soundfile as sf

    formats = sf.available_formats()
    usable = [name for name, (major, subtype) in _WHOLE.items()
              if major in formats and subtype in sf.available_subtypes(major)]
    return (*STREAMED, *usable)


def pcm16(audio: np.ndarray) -> bytes:
    """Float samples in [-1, 1] as 16-bit little-endian PCM (clipped, rounded)."""
    return (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def wav_header(sample_rate: int) -> bytes:
    """A 16-bit mono WAV header for a stream of unknown length (see the module docstring)."""
    unknown = 0xFFFFFFFF
    fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return b"RIFF" + struct.pack("<I", unknown) + b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt \
        + b"data" + struct.pack("<I", unknown)


def encode_whole(audio: np.ndarray, sample_rate: int, response_format: str) -> bytes:
    """The complete audio as a flac, mp3 or opus file."""
    import soundfile as sf

    major, subtype = _WHOLE[response_format]
    if response_format == "opus" and sample_rate != OPUS_RATE:
        from kanitts.audio import resample

        audio, sample_rate = resample(audio, sample_rate, OPUS_RATE), OPUS_RATE
    out = io.BytesIO()
    sf.write(out, np.clip(audio, -1.0, 1.0), sample_rate, format=major, subtype=subtype)
    return out.getvalue()
