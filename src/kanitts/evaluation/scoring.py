"""Every per-sample score of an eval run, computed once per audio file and kept in a cache.

:class:`Scorers` holds the models of one run (ASR, speaker embedder, MOS predictor: each loaded
once, before any generation) and scores batches of clips with them: the plain metrics, the
transcript with WER/CER, speaker similarity and MOS. Each score is stored in
:class:`ScoreCache` under the SHA-256 of the audio file's bytes and the scorer's identity (its
model id or folder with the folder's file sizes and times, its settings, the reference
recordings' contents), so re-running eval after adding one experiment scores only the new
samples, and changing a scorer rescores everything it scored. A score is never reused for
other audio or another scorer.

The cache is a JSON file in the audio folder (:data:`kanitts.evaluation.results.SCORE_CACHE`),
written atomically after each model's samples. It is only a cache: a missing, cut-off or foreign
file is ignored (and rewritten), which costs time, never a wrong number.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kanitts.evaluation.intelligibility import intelligibility
from kanitts.evaluation.metrics import measure
from kanitts.evaluation.naturalness import NaturalnessPredictor, folder_signature
from kanitts.evaluation.results import write_text

CACHE_VERSION = 1


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _key(identity: dict[str, Any]) -> str:
    return digest(json.dumps(identity, sort_keys=True).encode())[:20]


class ScoreCache:
    """``{scorer identity: {item key: score}}`` on disk; see the module docstring."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.scorers: dict[str, Any] = {}
        self.scores: dict[str, dict[str, Any]] = {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            data = None
        if (isinstance(data, dict) and data.get("version") == CACHE_VERSION
                and isinstance(data.get("scores"), dict) and isinstance(data.get("scorers"), dict)):
            self.scorers, self.scores = data["scorers"], data["scores"]

    def lookup(self, identity: dict[str, Any], keys: Sequence[str],
               compute: Callable[[list[int]], list[Any]]) -> list[Any]:
        """The score of each item key; ``compute(indices)`` scores the misses, in one call."""
        name = _key(identity)
        self.scorers[name] = identity
        table = self.scores.setdefault(name, {})
        missing = [i for i, key in enumerate(keys) if key not in table]
        if missing:
            for i, value in zip(missing, compute(missing), strict=True):
                table[keys[i]] = value
        return [table[key] for key in keys]

    def save(self) -> None:
        payload = {"version": CACHE_VERSION, "scorers": self.scorers, "scores": self.scores}
        write_text(self.path, json.dumps(payload, sort_keys=True))


@dataclass
class Clip:
    """One audio file to score, with what its scores depend on besides the audio."""

    audio: np.ndarray
    sample_rate: int
    digest: str  # of the file's bytes
    text: str | None  # what is said (no speaker prefix); None when unknown
    speaker: str | None
    truncated: bool = False
    leave_out: int | None = None  # a reference of the speaker not to compare with (its own index)


class Scorers:
    """The scoring models of one run (any of them may be None: that score is not measured)."""

    def __init__(self, cache: ScoreCache, *, similarity=None, transcriber=None, language: str | None = None,
                 naturalness: NaturalnessPredictor | None = None):
        self.cache = cache
        self.similarity = similarity
        self.transcriber = transcriber
        self.language = language
        self.naturalness = naturalness

    def _similarity_identity(self) -> dict[str, Any]:
        embedder = self.similarity.embedder
        name = embedder.name
        references = {speaker: [digest(Path(p).read_bytes()) for p in paths]
                      for speaker, paths in sorted(self.similarity.references.items())}
        return {"scorer": "speaker_similarity", "embedder": name,
                "files": folder_signature(name.partition(":")[2]), "references": references}

    def score(self, clips: list[Clip]) -> list[dict[str, Any]]:
        """Per clip: the plain metrics, ``speaker_similarity``, ``wer``, ``cer``, ``transcript``, ``mos``."""
        cache = self.cache
        plain = cache.lookup(
            {"scorer": "metrics", "version": 1},
            [f"{c.digest}|{len(c.text or '')}|{c.truncated}" for c in clips],
            lambda idx: [measure(clips[i].audio, clips[i].sample_rate, len(clips[i].text or ""),
                                 clips[i].truncated).as_dict() for i in idx],
        )
        rows = [dict(p) for p in plain]
        for row, clip in zip(rows, clips, strict=True):
            if not clip.text:  # no sentence known: a rate of characters would be made up
                row["chars_per_sec"] = None

        sims: list[Any] = [None] * len(clips)
        if self.similarity is not None:
            sims = cache.lookup(
                self._similarity_identity(),
                [f"{c.digest}|{(c.speaker or '').lower()}|{c.leave_out}" for c in clips],
                lambda idx: self.similarity.score_batch(
                    [(clips[i].audio, clips[i].sample_rate, clips[i].speaker) for i in idx],
                    leave_out=[clips[i].leave_out for i in idx]),
            )
        heard: list[Any] = [None] * len(clips)
        if self.transcriber is not None:
            t = self.transcriber
            heard = cache.lookup(
                {"scorer": "asr", "model": t.name, "language": self.language, "files": folder_signature(t.name)},
                [c.digest for c in clips],
                lambda idx: t.transcribe([(clips[i].audio, clips[i].sample_rate) for i in idx]),
            )
        mos: list[Any] = [None] * len(clips)
        if self.naturalness is not None:
            n = self.naturalness
            mos = cache.lookup(n.identity, [c.digest for c in clips],
                               lambda idx: n.predict([(clips[i].audio, clips[i].sample_rate) for i in idx]))

        for row, clip, sim, transcript, score in zip(rows, clips, sims, heard, mos, strict=True):
            row.update({"speaker_similarity": sim, "wer": None, "cer": None, "transcript": transcript, "mos": score})
            if transcript is not None and clip.text:
                measured = intelligibility(clip.text, transcript, self.language, self.transcriber.spelling)
                row["wer"], row["cer"] = measured["wer"], measured["cer"]
        return rows
