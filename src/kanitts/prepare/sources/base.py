"""The one interface every input kind offers: a numbered list of :class:`SourceItem`, each with
a transcript, an optional speaker and audio that :meth:`Source.read` decodes on demand.

A line that cannot be used (malformed, missing audio file) does not stop anything: the item
carries a ``problem`` and ends up in ``rejected.csv``.
"""

from __future__ import annotations

import abc
import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".oga")


@dataclass(frozen=True)
class SourceItem:
    """One recording: where it comes from, what is said, by whom; or why it cannot be used."""

    index: int
    source: str
    text: str | None
    speaker: str | None = None
    problem: str | None = None
    flags: str | None = None  # why a review left it out (metadata.csv's fifth column)


class Source(abc.ABC):
    """A numbered collection of :class:`SourceItem` with decodable audio."""

    kind: str = ""
    description: str = ""
    has_speaker: bool = False
    _items: list[SourceItem]

    def __len__(self) -> int:
        return len(self._items)

    def item(self, index: int) -> SourceItem:
        return self._items[index]

    @abc.abstractmethod
    def read(self, index: int) -> tuple[np.ndarray, int]:
        """``(samples (T, C) float32, sample_rate)``; raises AudioDecodeError or OSError."""

    def fingerprint(self) -> str:
        """Changes when the list of items, their texts/speakers or their audio files change."""
        h = hashlib.sha256(self.kind.encode())
        for it in self._items:
            h.update(repr((it.source, it.text, it.speaker, it.problem)).encode())
            if it.flags:
                h.update(repr(it.flags).encode())
            h.update(repr(self._audio_stamp(it.index)).encode())
        return h.hexdigest()[:16]

    def _audio_stamp(self, index: int) -> Any:
        return None


def clean_text(text: Any) -> str | None:
    if text is None:
        return None
    text = str(text).strip()
    return text or None


def clean_speaker(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN from pandas-made files
        return None
    value = str(value).strip()
    return value or None
