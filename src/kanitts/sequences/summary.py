"""What the dataset step kept and dropped, and why: statistics, the printed summary, a histogram.

Users lose hours of GPU time when a filter silently removes half a speaker or a column holds
garbage, so every row that does not become a training sequence is counted under one reason, with
the index of an example row to look at. The report is saved as JSON next to the cached sequences
and read back on a cache hit, so the second run prints the same summary in seconds.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

import numpy as np


class RowStatus(IntEnum):
    """Why a source row is not a training sequence; checked in this order, first match wins.

    The order is the reference pipeline's (categorical filter, then duration), then the bad-data
    checks, so the counts say which step removed a row.
    """

    KEPT = 0
    CATEGORICAL_FILTER = 1
    TOO_LONG = 2
    LAYER_LENGTHS_DIFFER = 3
    ENCODED_LEN_MISMATCH = 4
    CODE_OUT_OF_RANGE = 5
    EMPTY_TEXT = 6
    NO_AUDIO = 7
    OVER_MAX_LEN = 8
    BAD_EMBEDDING = 9

    @property
    def key(self) -> str:
        return self.name.lower()

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    RowStatus.KEPT: "kept",
    RowStatus.CATEGORICAL_FILTER: "does not match categorical_filter",
    RowStatus.TOO_LONG: "longer than max_duration_sec",
    RowStatus.LAYER_LENGTHS_DIFFER: "codec layers differ in length (bad data)",
    RowStatus.ENCODED_LEN_MISMATCH: "encoded_len more than one frame off the layers (bad data)",
    RowStatus.CODE_OUT_OF_RANGE: "codes outside [0, codebook_size) (bad data)",
    RowStatus.EMPTY_TEXT: "empty text",
    RowStatus.NO_AUDIO: "no audio frames",
    RowStatus.OVER_MAX_LEN: "beyond max_len (seeded sample)",
    RowStatus.BAD_EMBEDDING: "global embedding missing, empty or not finite (bad data)",
}

# Which configured step a status belongs to, for "filtering emptied the dataset" errors.
BAD_DATA = (
    RowStatus.LAYER_LENGTHS_DIFFER,
    RowStatus.ENCODED_LEN_MISMATCH,
    RowStatus.CODE_OUT_OF_RANGE,
    RowStatus.BAD_EMBEDDING,
)

PERCENTILES = (5, 50, 95, 99)


@dataclass
class DropCount:
    count: int
    example_row: int  # index of one such row in the source dataset as loaded


@dataclass
class LengthStats:
    """Training sequence lengths in tokens."""

    min: int = 0
    max: int = 0
    percentiles: dict[str, int] = field(default_factory=dict)  # "p50" -> tokens

    @classmethod
    def of(cls, lengths: np.ndarray) -> LengthStats:
        if not len(lengths):
            return cls()
        values = np.percentile(lengths, PERCENTILES, method="nearest")
        return cls(
            min=int(lengths.min()),
            max=int(lengths.max()),
            percentiles={f"p{p}": int(v) for p, v in zip(PERCENTILES, values)},
        )


@dataclass
class GroupSummary:
    """One dataset, or one speaker in it."""

    name: str
    rows_in: int = 0
    rows_kept: int = 0
    dropped: dict[str, DropCount] = field(default_factory=dict)  # RowStatus.key -> count
    audio_hours: float = 0.0
    tokens: int = 0
    lengths: LengthStats = field(default_factory=LengthStats)
    # of the kept rows, those held out for validation (never trained on)
    validation_rows: int = 0

    @classmethod
    def of(
        cls,
        name: str,
        status: np.ndarray,
        rows: np.ndarray,
        frames: np.ndarray,
        lengths: np.ndarray,
        fps: float,
    ) -> GroupSummary:
        """Statistics of rows with final `status`; `frames` and `lengths` are given for kept rows only."""
        dropped = {}
        for reason in RowStatus:
            if reason is RowStatus.KEPT:
                continue
            where = np.flatnonzero(status == reason)
            if len(where):
                dropped[reason.key] = DropCount(count=len(where), example_row=int(rows[where[0]]))
        return cls(
            name=name,
            rows_in=len(status),
            rows_kept=int(np.count_nonzero(status == RowStatus.KEPT)),
            dropped=dropped,
            audio_hours=float(frames.sum()) / fps / 3600,
            tokens=int(lengths.sum()),
            lengths=LengthStats.of(lengths),
        )


@dataclass
class DatasetSummary(GroupSummary):
    speakers: list[GroupSummary] = field(default_factory=list)
    frames_removed_as_repeats: int = 0
    notes: list[str] = field(default_factory=list)
    # kept rows whose encoded_len is one frame off their layers (trained on the layers)
    encoded_len_off_by_one: DropCount | None = None


@dataclass
class TrainingDataReport:
    """The whole dataset step: one summary per configured dataset, in config order."""

    datasets: list[DatasetSummary]
    fingerprint: str  # the cache key: same inputs, same sequences
    cache_path: str | None = None
    from_cache: bool = False

    @property
    def rows(self) -> int:
        return sum(d.rows_kept for d in self.datasets)

    @property
    def validation_rows(self) -> int:
        return sum(d.validation_rows for d in self.datasets)

    @property
    def tokens(self) -> int:
        return sum(d.tokens for d in self.datasets)

    @property
    def audio_hours(self) -> float:
        return sum(d.audio_hours for d in self.datasets)

    @property
    def tokens_per_audio_second(self) -> float:
        """Training tokens (text, specials and audio) per second of audio: what a codec costs the LM."""
        seconds = self.audio_hours * 3600
        return self.tokens / seconds if seconds else 0.0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainingDataReport:
        raw = json.loads(text)
        return cls(
            datasets=[_dataset_from_dict(d) for d in raw["datasets"]],
            fingerprint=raw["fingerprint"],
            cache_path=raw.get("cache_path"),
            from_cache=raw.get("from_cache", False),
        )

    def format(self) -> str:
        """The summary table printed after the dataset step."""
        header = (
            f"{'dataset / speaker':<40} {'rows in':>9} {'kept':>9} {'hours':>8} {'tokens':>12}"
            "   length p5/p50/p95/max"
        )
        lines = [header, "-" * len(header)]
        for d in self.datasets:
            lines.append(_format_row(d.name, d))
            if len(d.speakers) > 1 or (d.speakers and d.speakers[0].name != ""):
                for s in d.speakers:
                    lines.append(_format_row("  " + (s.name or "(no speaker)"), s))
        lines.append("-" * len(header))
        lines.append(
            f"{'total':<40} {sum(d.rows_in for d in self.datasets):>9,} {self.rows:>9,} "
            f"{self.audio_hours:>8.2f} {self.tokens:>12,}"
        )
        for d in self.datasets:
            for key, drop in d.dropped.items():
                lines.append(
                    f"dropped from {d.name}: {drop.count:,} row(s): {RowStatus[key.upper()].description} "
                    f"(e.g. row {drop.example_row})"
                )
            if len(d.speakers) > 1:
                for speaker in d.speakers:
                    if speaker.dropped:
                        counts = ", ".join(f"{drop.count:,} {key}" for key, drop in speaker.dropped.items())
                        lines.append(f"  of which speaker {speaker.name or '(none)'}: {counts}")
            if d.encoded_len_off_by_one:
                off = d.encoded_len_off_by_one
                lines.append(
                    f"{d.name}: {off.count:,} kept row(s) with encoded_len one frame off the layers, "
                    f"trained on the layers as the reference does (e.g. row {off.example_row})"
                )
            if d.frames_removed_as_repeats:
                lines.append(f"{d.name}: {d.frames_removed_as_repeats:,} repeated frame(s) removed (dedup_frames)")
            if d.validation_rows:
                per_speaker = ", ".join(f"{s.name or '(none)'} {s.validation_rows:,}" for s in d.speakers)
                lines.append(
                    f"held out of {d.name} for validation (never trained on): {d.validation_rows:,} of the kept "
                    f"row(s) ({per_speaker})"
                )
            lines.extend(f"note: {d.name}: {n}" for n in d.notes)
        if self.audio_hours:
            lines.append(f"{self.tokens_per_audio_second:.1f} training tokens per audio second (text and audio)")
        where = f" (cached in {self.cache_path})" if self.cache_path else ""
        lines.append(("reused training sequences" if self.from_cache else "built training sequences") + where)
        return "\n".join(lines)


def _format_row(name: str, g: GroupSummary) -> str:
    p = g.lengths.percentiles
    spread = f"{p.get('p5', 0)}/{p.get('p50', 0)}/{p.get('p95', 0)}/{g.lengths.max}" if g.rows_kept else "-"
    label = name if len(name) <= 40 else "..." + name[-37:]
    return f"{label:<40} {g.rows_in:>9,} {g.rows_kept:>9,} {g.audio_hours:>8.2f} {g.tokens:>12,}   {spread}"


def _group_from_dict(raw: dict) -> dict:
    raw = dict(raw)
    raw["dropped"] = {k: DropCount(**v) for k, v in raw["dropped"].items()}
    raw["lengths"] = LengthStats(**raw["lengths"])
    return raw


def _dataset_from_dict(raw: dict) -> DatasetSummary:
    fields = _group_from_dict(raw)
    fields["speakers"] = [GroupSummary(**_group_from_dict(s)) for s in raw["speakers"]]
    if fields.get("encoded_len_off_by_one"):
        fields["encoded_len_off_by_one"] = DropCount(**fields["encoded_len_off_by_one"])
    return DatasetSummary(**fields)


def import_plotting() -> None:
    """Load the plotting modules (about a second), so a caller can do it in the background."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    from matplotlib.figure import Figure  # noqa: F401


def save_length_histogram(lengths_by_dataset: dict[str, np.ndarray], path: Path, bins: int = 50) -> None:
    """A stacked histogram of sequence lengths per dataset: shows outliers and what packing faces.

    Drawn on a bare Agg figure (no pyplot, no GUI backend), so it works headless and quickly.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100, layout="none")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    everything = np.concatenate([np.asarray(v) for v in lengths_by_dataset.values()] or [np.zeros(0)])
    if len(everything):
        edges = np.histogram_bin_edges(everything, bins=bins)
        below = np.zeros(bins)
        for name, lengths in lengths_by_dataset.items():
            counts = np.histogram(lengths, bins=edges)[0] + below
            ax.stairs(counts, edges, baseline=below, fill=True, label=name)
            below = counts
        ax.legend(fontsize="small", loc="upper right")
    ax.set_xlabel("training sequence length (tokens)")
    ax.set_ylabel("rows")
    ax.set_title("Training sequence lengths")
    fig.subplots_adjust(left=0.09, right=0.97, bottom=0.12, top=0.92)
    fig.savefig(path)
