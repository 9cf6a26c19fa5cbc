"""Per-sample measurements of generated speech that need no model and no network.

They catch the failures listeners complain about first: audio that stops mid-word (truncated),
runs on in silence, rushes or drags (characters per second far from the training speaker's),
or clips. Silence is measured in 20 ms frames whose RMS level lies more than
``SILENCE_BELOW_PEAK_DB`` under the clip's loudest frame (and always below ``SILENCE_FLOOR_DBFS``
counts as silence), so a quiet voice is not mistaken for silence.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

FRAME_SEC = 0.02
SILENCE_BELOW_PEAK_DB = 40.0
SILENCE_FLOOR_DBFS = -60.0
CLIP_LEVEL = 0.999


@dataclass(frozen=True)
class SampleMetrics:
    duration_sec: float
    chars_per_sec: float | None
    leading_silence_sec: float
    trailing_silence_sec: float
    clipping_fraction: float
    peak_dbfs: float | None
    truncated: bool

    def as_dict(self) -> dict[str, float | bool | None]:
        return asdict(self)


# Column names and how the report shows them, in display order.
METRIC_LABELS: dict[str, str] = {
    "duration_sec": "duration (s)",
    "chars_per_sec": "chars/s",
    "leading_silence_sec": "leading silence (s)",
    "trailing_silence_sec": "trailing silence (s)",
    "clipping_fraction": "clipped samples",
    "peak_dbfs": "peak (dBFS)",
    "truncated": "truncated",
    "speaker_similarity": "speaker similarity",
    "wer": "WER",
    "cer": "CER",
    "mos": "MOS",
}


def frame_levels_db(audio: np.ndarray, sample_rate: int, frame_sec: float = FRAME_SEC) -> np.ndarray:
    """RMS level in dBFS of consecutive frames (the last partial frame included)."""
    hop = max(1, int(round(sample_rate * frame_sec)))
    n = math.ceil(len(audio) / hop)
    if n == 0:
        return np.zeros(0)
    padded = np.zeros(n * hop, dtype=np.float64)
    padded[: len(audio)] = audio
    rms = np.sqrt(np.mean(padded.reshape(n, hop) ** 2, axis=1))
    return 20.0 * np.log10(np.maximum(rms, 1e-10))


def silence_edges(audio: np.ndarray, sample_rate: int) -> tuple[float, float]:
    """(leading, trailing) silence in seconds; an all-silent clip is all leading silence."""
    levels = frame_levels_db(audio, sample_rate)
    duration = len(audio) / sample_rate
    if not len(levels):
        return 0.0, 0.0
    threshold = max(SILENCE_FLOOR_DBFS, float(levels.max()) - SILENCE_BELOW_PEAK_DB)
    voiced = np.flatnonzero(levels > threshold)
    if not len(voiced) or float(levels.max()) <= SILENCE_FLOOR_DBFS:
        return duration, 0.0
    hop = len(audio) / len(levels)
    leading = voiced[0] * hop / sample_rate
    trailing = max(0.0, duration - (voiced[-1] + 1) * hop / sample_rate)
    return float(leading), float(trailing)


def measure(audio: np.ndarray, sample_rate: int, num_chars: int, truncated: bool) -> SampleMetrics:
    """Metrics of one sample; ``num_chars`` counts the spoken text (no speaker prefix)."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    duration = len(audio) / sample_rate
    leading, trailing = silence_edges(audio, sample_rate)
    peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
    return SampleMetrics(
        duration_sec=round(duration, 4),
        chars_per_sec=round(num_chars / duration, 3) if duration > 0 else None,
        leading_silence_sec=round(leading, 4),
        trailing_silence_sec=round(trailing, 4),
        clipping_fraction=round(float(np.mean(np.abs(audio) >= CLIP_LEVEL)), 6) if len(audio) else 0.0,
        peak_dbfs=round(20.0 * math.log10(peak), 2) if peak > 0 else None,
        truncated=bool(truncated),
    )
