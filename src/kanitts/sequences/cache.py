"""Where built sequences are kept: a folder per fingerprint of everything that decides them.

The next run with the same inputs loads the sequences in seconds instead of building them. The
key covers the dataset configs and source fingerprints, the codebook columns, the token layout,
the tokenizer, the seed and PROCESSING_VERSION, and nothing else (not `num_proc`, not the cache
path), so two machines or two process counts share one cache. A folder holds sequences.arrow,
summary.json and lengths.png, and with a validation split validation.arrow and
validation_sources.json (where each held-out row came from); it is written under a temporary
name and renamed, so a crash never leaves a cache that looks complete.

A folder built before validation_sources.json existed has validation.arrow without it: it is
not complete, and is rebuilt under the same key (the rows, and so the fingerprint that
checkpoints record, are the same), so eval can always say which recordings were never trained on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from kanitts.config import DatasetConfig, ModelConfig
from kanitts.sequences.summary import TrainingDataReport
from kanitts.tokens import TokenLayout

# Bump when a change to the steps changes the sequences they build: old caches stop matching.
PROCESSING_VERSION = 4

SEQUENCES_FILE = "sequences.arrow"
SUMMARY_FILE = "summary.json"
HISTOGRAM_FILE = "lengths.png"
# The held-out rows (validation_fraction / validation_rows), when any dataset holds some out.
VALIDATION_FILE = "validation.arrow"
# Where each held-out row came from (its dataset, source row, speaker, text and `source` clip),
# in validation.arrow's order: eval takes the speakers' reference recordings from them.
VALIDATION_SOURCES_FILE = "validation_sources.json"
VALIDATION_SOURCES_VERSION = 1
_VALIDATION_KEYS = ("validation_fraction", "validation_rows")


def cache_key(
    dataset_cfg: DatasetConfig, model_cfg: ModelConfig, tokenizer: Any, sources: list[datasets.Dataset]
) -> str:
    """A digest of everything the sequences depend on, and nothing else (not num_proc, not paths of the cache)."""
    payload = {
        "processing_version": PROCESSING_VERSION,
        "datasets": [
            {
                # a validation key left unset keeps the key of the caches built before it existed
                **entry.model_dump(exclude={
                    "codebook_columns", *entry.column_renames(),
                    *(k for k in _VALIDATION_KEYS if getattr(entry, k) is None),
                }),
                "layer_columns": entry.layer_columns(model_cfg.codec_layers),
                "source_fingerprint": getattr(source, "_fingerprint", None),
                "rows": len(source),
            }
            for entry, source in zip(dataset_cfg.hf_datasets, sources)
        ],
        "max_duration_sec": dataset_cfg.max_duration_sec,
        "seed": dataset_cfg.seed,
        "dedup_frames": dataset_cfg.dedup_frames,
        "layout": dataclasses.asdict(TokenLayout.from_config(model_cfg)),
        "fps": model_cfg.codec.fps,
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A digest of what decides the tokenizer's ids: its full definition, or its vocabulary and specials."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps([type(tokenizer).__name__, tokenizer.special_tokens_map], sort_keys=True, default=str)
    return hashlib.sha256((definition + extra).encode()).hexdigest()


def is_complete(folder: Path) -> bool:
    """Every file is there; held-out rows without their sources (an older cache) are not complete."""
    if (folder / VALIDATION_FILE).is_file() and not (folder / VALIDATION_SOURCES_FILE).is_file():
        return False
    return (folder / SUMMARY_FILE).is_file() and (folder / SEQUENCES_FILE).is_file()


@dataclass(frozen=True)
class HeldOutRow:
    """One row held out of training: which dataset entry and source row, whose, what it says.

    ``source`` is the row's ``source`` column (the clip ``kanitts prepare`` read, relative to its
    input folder or manifest), None when the dataset has none.
    """

    dataset: str  # the dataset's name in the report
    dataset_index: int  # its entry in dataset_config.yaml's hf_datasets
    row: int  # the row of the source dataset as loaded
    speaker: str
    text: str | None
    source: str | None


def write_validation_sources(path: Path, rows: list[HeldOutRow]) -> None:
    payload = {"version": VALIDATION_SOURCES_VERSION, "rows": [dataclasses.asdict(r) for r in rows]}
    path.write_text(json.dumps(payload), encoding="utf-8")


def load_validation_sources(report: TrainingDataReport) -> list[HeldOutRow] | None:
    """Where each held-out row came from (in validation.arrow's order); None when nothing is held out."""
    if not report.validation_rows or report.cache_path is None:
        return None
    data = json.loads((Path(report.cache_path) / VALIDATION_SOURCES_FILE).read_text(encoding="utf-8"))
    return [HeldOutRow(**row) for row in data["rows"]]


def load_validation(report: TrainingDataReport) -> datasets.Dataset | None:
    """The held-out rows of the sequences `report` describes, or None when nothing is held out."""
    if not report.validation_rows or report.cache_path is None:
        return None
    return datasets.Dataset.from_file(str(Path(report.cache_path) / VALIDATION_FILE))


def load_cached(folder: Path) -> tuple[datasets.Dataset, TrainingDataReport]:
    report = TrainingDataReport.from_json((folder / SUMMARY_FILE).read_text(encoding="utf-8"))
    report.from_cache = True
    report.cache_path = str(folder)
    return datasets.Dataset.from_file(str(folder / SEQUENCES_FILE)), report
