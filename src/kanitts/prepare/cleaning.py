"""One source item -> one clean clip at the codec rate, or the reason it is rejected.

Decode, downmix, resample to the codec rate, optional trimming and normalisation; the checks that
reject a clip (unreadable, empty, silent, too short, too long, no text) and those that mark it as
suspect (clipped, over full scale, a transcript too long or short for the audio): kept with a
``warnings`` entry, or rejected with ``suspect_clips="reject"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from kanitts.audio import (
    AudioDecodeError,
    loudness_normalize,
    peak_dbfs,
    peak_normalize,
    resample,
    to_mono,
    trim_silence,
)
from kanitts.prepare.options import PrepareOptions
from kanitts.prepare.sources import Source, SourceItem


class Rejected(Exception):
    """Why an item is left out: ``reason`` is the ``rejected.csv`` category, ``detail`` the measurement."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Clip:
    item: SourceItem
    audio: np.ndarray  # mono float32 at the codec rate
    warnings: list[str] = field(default_factory=list)  # "kind: what was measured"


def load_clip(source: Source, item: SourceItem, options: PrepareOptions, sample_rate: int) -> Clip:
    """Decode and clean one item, or raise Rejected with the reason."""
    if item.problem:
        reason = "missing audio" if "not found" in item.problem or "empty path" in item.problem else "malformed"
        raise Rejected(reason, item.problem)
    if item.flags:
        raise Rejected("flagged", f"{item.flags} (metadata.csv: clear the flags column to keep the clip)")
    if not item.text:
        raise Rejected("empty text", "the transcript is empty")
    try:
        samples, sr = source.read(item.index)
    except (AudioDecodeError, OSError) as exc:
        raise Rejected("unreadable", str(exc)) from None
    if samples.size == 0 or samples.shape[0] == 0:
        raise Rejected("empty", "the file has no samples")
    audio = to_mono(samples)
    if not np.isfinite(audio).all():
        raise Rejected("unreadable", "the audio contains NaN or infinite samples")
    warnings = level_warnings(samples, options)
    peak = peak_dbfs(audio)
    if peak < options.silence_dbfs:
        raise Rejected("silent", f"peak {peak:.1f} dBFS is below {options.silence_dbfs:g} dBFS")
    audio = resample(audio, sr, sample_rate)
    if options.trim_silence:
        audio = trim_silence(audio, sample_rate, top_db=options.trim_top_db)
    duration = len(audio) / sample_rate
    if duration < options.min_duration:
        raise Rejected("too short", f"{duration:.2f} s < {options.min_duration:g} s")
    if duration > options.max_duration:
        raise Rejected("too long", f"{duration:.2f} s > {options.max_duration:g} s")
    warnings += text_rate_warnings(item.text, duration, options)
    if warnings and options.suspect_clips == "reject":
        raise Rejected(warnings[0].split(":", 1)[0], "; ".join(warnings))
    if options.normalize == "peak":
        audio = peak_normalize(audio, options.peak_dbfs)
    elif options.normalize == "loudness":
        audio = loudness_normalize(audio, sample_rate, options.loudness_lufs, peak_limit_dbfs=options.peak_dbfs)
    np.clip(audio, -1.0, 1.0, out=audio)
    return Clip(item, np.ascontiguousarray(audio, dtype=np.float32), warnings)


def level_warnings(samples: np.ndarray, options: PrepareOptions) -> list[str]:
    """Over full scale (float samples past ±1) or clipped (too many samples at full scale),
    measured on the decoded channels before downmixing and resampling, which would hide both."""
    magnitude = np.abs(samples)
    peak = float(magnitude.max())
    if peak > 1.0:
        level = f"peak {peak:.3g} ({20 * math.log10(peak):+.1f} dBFS)"
        return [f"over full scale: {level}, cut to ±1 unless --normalize lowers it"]
    at_full_scale = np.count_nonzero(magnitude >= options.clip_level) / magnitude.size
    if at_full_scale > options.max_clipped_fraction:
        return [f"clipped: {100 * at_full_scale:.2f}% of the samples at full scale (|x| >= {options.clip_level:g})"]
    return []


def text_rate_warnings(text: str, duration: float, options: PrepareOptions) -> list[str]:
    """A transcript implausibly long or short for the audio: likely paired with the wrong clip,
    or cut. Characters are counted with runs of whitespace as one."""
    if duration <= 0:
        return []
    chars = len(" ".join(text.split()))
    rate = chars / duration
    if rate > options.max_chars_per_second:
        limit = f"{rate:.1f}/s > {options.max_chars_per_second:g}/s"
        return [f"text too long: {chars} characters in {duration:.2f} s ({limit})"]
    if rate < options.min_chars_per_second:
        limit = f"{rate:.1f}/s < {options.min_chars_per_second:g}/s"
        return [f"text too short: {chars} characters in {duration:.2f} s ({limit})"]
    return []


def safe_load(source: Source, item: SourceItem, options: PrepareOptions, sample_rate: int) -> Clip | Rejected:
    try:
        return load_clip(source, item, options, sample_rate)
    except Rejected as rej:
        return rej
    except Exception as exc:  # a decoder crash on one file must not end the run
        return Rejected("unreadable", f"{type(exc).__name__}: {exc}")
