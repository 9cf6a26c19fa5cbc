"""Speech regions -> training clips: where to cut a long recording.

Hand-written, as no maintained library cuts VAD output to a length window with this rule:
the pipelines that do it (Emilia, the F5-TTS and XTTS fine-tuning tools) keep it inside their
applications.

The rule: a clip starts at a speech region and grows region by region. Every pause after a
region that leaves the clip between ``min_duration`` and ``max_duration`` long is a candidate
cut; the winner has the highest ``pause - DISTANCE_COST * |length - target|``, so the longest
pause near the target length wins and a short breath never beats a sentence break a second
away. A pause of ``split_pause`` or more always ends a clip (long silences are not training
material). Cuts are only ever inside pauses: a region longer than ``max_duration`` was already
split by the VAD at its longest inner silence. Each clip keeps ``padding`` seconds of the
surrounding silence on both sides, at most half the pause, so neighbours never overlap.

Where the ASR times its words, :func:`refine` then moves each clip's edges to its first and last
word (padding kept), inside the VAD clip, and tells a clip whose last word runs into the cut.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

#: how many seconds of pause one second away from the target length is worth
DISTANCE_COST = 0.1
#: a last word ending this close to the end of its clip is still being spoken at the cut (two
#: frames of Whisper's 20 ms alignment grid)
WORD_CUT_EDGE = 0.04
#: word times this far past the end of their clip are the alignment's rounding, clamped; further
#: out they are wrong
TIMESTAMP_SLACK = 0.1


@dataclass(frozen=True)
class Segment:
    """One clip of a recording, in seconds of that recording (padding included).

    ``silence_after``: how much of the pause after its last speech the clip keeps, as the VAD
    saw it (less than the padding where the pause was short, 0 where the VAD split speech);
    ``None`` where unknown."""

    start: float
    end: float
    silence_after: float | None = field(default=None, compare=False)

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class Cuts:
    """The clips of one recording and the speech left out, in seconds."""

    segments: list[Segment]
    speech_seconds: float  # all speech the VAD found
    short_seconds: float = 0.0  # speech in stretches that could not make a clip of min_duration
    long_seconds: float = 0.0  # speech in stretches longer than max_duration without a pause


def segment(
    regions: list[tuple[float, float]],
    duration: float,
    *,
    min_duration: float,
    max_duration: float,
    target_duration: float,
    padding: float,
    split_pause: float,
) -> Cuts:
    """Cut ``regions`` (speech, seconds, in order, unpadded) of a ``duration``-second recording
    into clips between ``min_duration`` and ``max_duration`` long, padding included."""
    regions = [(max(0.0, s), min(duration, e)) for s, e in regions if e > s]
    speech = sum(e - s for s, e in regions)
    result = Cuts([], speech)
    n = len(regions)

    def pad_before(i: int) -> float:
        gap = regions[i][0] - (regions[i - 1][1] if i else 0.0)
        return min(padding, gap / 2 if i else gap)

    def pad_after(j: int) -> float:
        gap = (regions[j + 1][0] if j + 1 < n else duration) - regions[j][1]
        return min(padding, gap / 2 if j + 1 < n else gap)

    i = 0
    while i < n:
        start = regions[i][0] - pad_before(i)
        best, best_score, last = None, -float("inf"), i
        for j in range(i, n):
            end = regions[j][1] + pad_after(j)
            length = end - start
            if length > max_duration:
                break
            last = j
            pause = (regions[j + 1][0] - regions[j][1]) if j + 1 < n else split_pause
            if length >= min_duration:
                score = pause - DISTANCE_COST * abs(length - target_duration)
                if score > best_score:
                    best, best_score = j, score
            if pause >= split_pause:
                break
        if best is None:
            # nothing in range: the speech from i to `last` cannot make a clip on its own
            stretch = sum(e - s for s, e in regions[i : last + 1])
            if last == i and regions[i][1] - regions[i][0] > max_duration:
                result.long_seconds += stretch
            else:
                result.short_seconds += stretch
            i = last + 1
            continue
        result.segments.append(Segment(start, regions[best][1] + pad_after(best), pad_after(best)))
        i = best + 1
    return result


def cut_points(segments: list[Segment]) -> list[float]:
    """Where one clip ends and the next begins: the middle of the pause between them."""
    return [(a.end + b.start) / 2 for a, b in zip(segments, segments[1:])]


@dataclass(frozen=True)
class Refined:
    """A clip after checking its edges against its transcript's word times.

    ``trimmed``: the edges moved to the words (``segment`` is the new clip); ``word_cut``: the
    last word is still being spoken where the clip ends and the VAD found no clear pause there
    (the cut is inside a word), a reason to flag the clip; ``note``: why the VAD cut was kept
    although word times were there.
    """

    segment: Segment
    trimmed: bool = False
    word_cut: bool = False
    note: str | None = None


def refine(
    segment: Segment,
    words: Sequence[tuple[float, float]],
    *,
    padding: float,
    min_duration: float,
    max_duration: float,
) -> Refined:
    """Move a VAD clip's edges to its words: ``padding`` seconds before the first word's start
    and after the last word's end, never outside the VAD clip (so neighbours never overlap).

    ``words`` are (start, end) seconds from the clip's start, in order. Hand-written: the rule
    is this project's. Times that cannot be right (not finite, backwards, past the clip's end)
    or a result outside ``min_duration``..``max_duration`` keep the VAD cut, with a ``note``. A
    last word that runs to the clip's end is ``word_cut`` where the VAD kept less than
    ``padding`` of silence after the speech (a short pause, or speech it split), and the cut is
    kept: Whisper's word times leave no gaps between words, so there is no silence to move the
    cut into. Across a clear pause the VAD is believed and the word times are not.
    """
    duration = segment.duration
    if not words:
        return Refined(segment, note="no word times")
    spans = [(float(a), float(b)) for a, b in words]
    for a, b in spans:
        if not (math.isfinite(a) and math.isfinite(b)) or a < 0 or b < a:
            return Refined(segment, note=f"word times out of order ({a:.2f}-{b:.2f} s)")
    if any(later[0] < earlier[0] for earlier, later in zip(spans, spans[1:])):
        return Refined(segment, note="word times out of order")
    first, last = spans[0][0], max(b for _, b in spans)
    if last > duration + TIMESTAMP_SLACK:
        return Refined(segment, note=f"word times past the clip's end ({last:.2f} s of {duration:.2f} s)")
    last = min(last, duration)
    if padding > 0 and duration - last < WORD_CUT_EDGE:  # (without padding every last word ends there)
        if segment.silence_after is not None and segment.silence_after >= padding - 1e-9:
            return Refined(segment, note="the last word runs to the clip's end, across the pause the VAD found there")
        return Refined(segment, word_cut=True)
    start = segment.start + max(0.0, first - padding)
    end = segment.start + min(duration, last + padding)
    if not min_duration <= end - start <= max_duration:
        return Refined(segment, note=f"trimmed to its words it would last {end - start:.2f} s, outside "
                                     f"{min_duration:g}-{max_duration:g} s")
    trimmed = start - segment.start > 1e-3 or segment.end - end > 1e-3
    return Refined(Segment(start, end) if trimmed else segment, trimmed=trimmed)
