"""Whose voice the samples are compared with: each speaker's reference recordings, and where from.

Per speaker of eval_set.yaml, one origin:

- ``configured``: ``eval_config.yaml`` ``speaker_similarity.references.<speaker>``. They win.
- ``held-out``: for a speaker without configured references, up to
  ``speaker_similarity.auto_references`` (default 5) recordings of its rows that the training
  data step held out of training (dataset_config.yaml's ``validation_fraction`` /
  ``validation_rows``; see :mod:`kanitts.sequences.validation`), which no experiment trained on.
  The recording of a row is its ``source`` clip (``kanitts prepare`` writes the column),
  resolved against the input folder or manifest that ``kanitts_prepare.json`` names. The choice
  is deterministic: the speaker's held-out rows in dataset order (the split itself is a seeded
  draw), the first ones whose recording is on disk.

A held-out row whose recording is gone (or a dataset without ``source``, or not written by
``kanitts prepare``) is skipped and the notes say so. Its codec tokens are not decoded to stand
in for it: that is the codec's rendering of the voice, not the voice, so as the real speaker's
column it would hide what the codec loses, and as a similarity target it would favour samples
made by the same codec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kanitts.config import ConfigSet
from kanitts.config import SpeakerSimilarity as SimilaritySettings
from kanitts.errors import UserError

if TYPE_CHECKING:  # the sequences import `datasets` (a second): only a run that reads held-out rows pays
    from kanitts.sequences.cache import HeldOutRow

CONFIGURED = "configured"
HELD_OUT = "held-out"
# How each origin is named beside a reference (console summary, report, model card).
ORIGIN_LABELS = {CONFIGURED: "configured", HELD_OUT: "held out of training (automatic)"}
HOW_TO_GET_REFERENCES = (
    "configure speaker_similarity.references in eval_config.yaml, or hold rows out of training with "
    "validation_fraction or validation_rows in dataset_config.yaml (eval then takes up to "
    "speaker_similarity.auto_references of each speaker's held-out recordings)"
)


@dataclass(frozen=True)
class ReferenceClip:
    """One reference recording of a speaker."""

    speaker: str
    path: Path
    origin: str  # CONFIGURED or HELD_OUT
    text: str | None = None  # what it says, where the dataset row tells (held-out rows)
    source: str | None = None  # held-out: which dataset row it is the recording of


@dataclass
class References:
    """Every speaker's reference clips, and what there is to say about the ones that are missing."""

    clips: list[ReferenceClip] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def paths(self) -> dict[str, list[str]]:
        """``{speaker: [recording, ...]}``, as :class:`kanitts.evaluation.speaker.SpeakerSimilarity` takes them."""
        out: dict[str, list[str]] = {}
        for clip in self.clips:
            out.setdefault(clip.speaker, []).append(str(clip.path))
        return out

    def origins(self) -> dict[str, dict[str, Any]]:
        """``{speaker: {"origin": ..., "clips": n}}`` for eval_results.json."""
        out: dict[str, dict[str, Any]] = {}
        for clip in self.clips:
            entry = out.setdefault(clip.speaker, {"origin": clip.origin, "clips": 0})
            entry["clips"] += 1
        return out

    def describe(self) -> str:
        """``alice: 2 held out of training (automatic); bob: 2 configured``."""
        return "; ".join(f"{speaker}: {o['clips']} {ORIGIN_LABELS[o['origin']]}"
                         for speaker, o in self.origins().items())


def collect_references(configs: ConfigSet) -> References:
    """The configured references, and held-out recordings for the eval speakers that have none."""
    settings = configs.eval.speaker_similarity or SimilaritySettings()
    found = References(clips=[ReferenceClip(speaker, Path(path), CONFIGURED)
                              for speaker, paths in settings.references.items() for path in paths])
    configured = {speaker.lower() for speaker, paths in settings.references.items() if paths}
    wanted = list(dict.fromkeys(s.speaker.lower() for s in configs.eval_set.sentences if s.speaker))
    missing = [speaker for speaker in wanted if speaker not in configured]
    if not missing:
        return found
    if settings.auto_references == 0:
        found.notes.append(f"no reference recordings for {', '.join(missing)} (speaker_similarity.auto_references "
                           "is 0): speaker similarity not measured for them")
        return found
    rows, why_none = held_out_rows(configs)
    if rows is None:
        found.notes.append(f"no reference recordings for {', '.join(missing)} ({why_none}): speaker similarity "
                           f"not measured for them; {HOW_TO_GET_REFERENCES}")
        return found
    for speaker in missing:
        clips, note = _held_out_recordings(configs, speaker, [r for r in rows if r.speaker.lower() == speaker],
                                           settings.auto_references)
        found.clips += clips
        if note:
            found.notes.append(note)
    return found


def held_out_rows(configs: ConfigSet) -> tuple[list[HeldOutRow] | None, str]:
    """The rows the training data step holds out, or None and why there are none.

    The data step is the training one (:func:`kanitts.sequences.build_training_dataset`, with
    the base model's tokenizer): its cache is read, or built as training builds it.
    """
    from kanitts.sequences import build_training_dataset
    from kanitts.sequences.cache import load_validation_sources

    dataset_cfg = configs.dataset
    if dataset_cfg is None:
        return None, "no dataset_config.yaml"
    if all(e.validation_fraction is None and e.validation_rows is None for e in dataset_cfg.hf_datasets):
        return None, "dataset_config.yaml holds no rows out of training"
    from transformers import AutoTokenizer

    base = configs.experiments.base_model
    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
    except (OSError, ValueError) as exc:
        return None, f"the base model's tokenizer {base!r} did not load, so the held-out rows are unknown: {exc}"
    try:
        _, report = build_training_dataset(dataset_cfg, configs.model, tokenizer)
    except UserError as exc:
        return None, f"the held-out rows could not be read: {exc}"
    try:
        return load_validation_sources(report) or [], ""
    except (OSError, ValueError, KeyError, TypeError) as exc:  # a damaged cache file: only references lost
        return None, (f"the held-out rows' sources in {report.cache_path} do not read ({type(exc).__name__}: "
                      f"{exc}); `kanitts data --rebuild` writes them again")


def _held_out_recordings(configs: ConfigSet, speaker: str, rows: list[HeldOutRow],
                         cap: int) -> tuple[list[ReferenceClip], str | None]:
    """Up to ``cap`` recordings of ``speaker``'s held-out rows, in order, and a note on what was not found."""
    from kanitts.prepare.assembly import source_root

    if not rows:
        return [], (f"{speaker}: no reference recordings and no held-out rows of this speaker in the training "
                    f"data: speaker similarity not measured for {speaker}; {HOW_TO_GET_REFERENCES}")
    entries = configs.dataset.hf_datasets
    roots: dict[int, Path | None] = {}
    clips, skipped = [], []
    for row in rows:
        if len(clips) == cap:
            break
        if row.dataset_index not in roots:
            folder = Path(entries[row.dataset_index].reponame).expanduser()
            roots[row.dataset_index] = source_root(folder) if folder.is_dir() else None
        path, why = _recording(row, roots[row.dataset_index])
        if path is None:
            skipped.append(why)
            continue
        clips.append(ReferenceClip(speaker, path, HELD_OUT, text=row.text,
                                   source=f"dataset {row.dataset}, row {row.row}"))
    if not skipped:
        return clips, None
    lost = f"{len(skipped)} held-out row(s) of {speaker} skipped: no recording ({skipped[0]}" + (
        ", ...)" if len(skipped) > 1 else ")")
    if clips:
        return clips, f"{speaker}: {lost}; {len(clips)} used"
    return clips, (f"{speaker}: {lost}: speaker similarity not measured for {speaker}; configure "
                   f"speaker_similarity.references.{speaker} in eval_config.yaml, or keep the recordings")


def _recording(row: HeldOutRow, root: Path | None) -> tuple[Path | None, str]:
    """The recording a held-out row was encoded from, or None and why it is not at hand."""
    where = f"dataset {row.dataset}, row {row.row}"
    if row.source is None:
        return None, f"{where} has no source column"
    path = Path(row.source)
    if not path.is_absolute():
        if root is None:
            return None, f"{where}: not a kanitts prepare folder, so its source {row.source!r} leads nowhere"
        path = root / path
    if not path.is_file():
        return None, f"{where}: {path} is not on disk"
    return path, ""
