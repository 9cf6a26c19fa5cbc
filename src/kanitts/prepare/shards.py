"""The resumable middle of a run: ``<output>.partial/`` with ``manifest.json`` and one folder per
finished shard.

The manifest's fingerprint covers the inputs (the items, their texts, speakers and audio files),
the options that change rows, and the codec (weights and compute dtype): ``--resume`` continues
only a run with the same fingerprint, and assembly reads exactly the shards the manifest names,
so nothing from an earlier run can slip in. Each shard is written under a temporary name and
renamed once complete (its ``meta.json`` marks it done).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kanitts import __version__
from kanitts.atomic import atomic_file
from kanitts.codecs import Codec
from kanitts.config.schemas.model import SPEAKER_EMB_COLUMN
from kanitts.prepare.cleaning import Clip
from kanitts.prepare.options import PrepareOptions
from kanitts.prepare.sources import Source

MANIFEST_NAME = "manifest.json"
SUMMARY_NAME = "kanitts_prepare.json"
REJECTED_NAME = "rejected.csv"
FORMAT_VERSION = 1

#: the options that change what a row holds, and so belong to the fingerprint
ROW_OPTIONS = (
    "text_field", "split", "config_name", "audio_column", "text_column", "speaker_column",
    "speaker", "normalize", "peak_dbfs", "loudness_lufs", "trim_silence", "trim_top_db",
    "silence_dbfs", "min_duration", "max_duration", "shard_size", "suspect_clips",
    "clip_level", "max_clipped_fraction", "min_chars_per_second", "max_chars_per_second",
    "speaker_embedder",
)



def differences(old: dict, new: dict) -> str:
    keys = []
    for section in ("input", "options", "codec"):
        a, b = old.get(section, {}), new.get(section, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                keys.append(f"{section}.{key}: {a.get(key)!r} -> {b.get(key)!r}")
    if not keys:
        keys.append("the audio files or transcripts changed")
    return "; ".join(keys[:6]) + (" ..." if len(keys) > 6 else "")


def build_manifest(options: PrepareOptions, source: Source, codec: Codec) -> dict[str, Any]:
    input_part = {
        "kind": source.kind,
        "location": source.description,
        "items": len(source),
        "fingerprint": source.fingerprint(),
    }
    option_part = {key: getattr(options, key) for key in ROW_OPTIONS}
    codec_part = codec.describe()
    blob = json.dumps([input_part, option_part, codec_part], sort_keys=True, default=str)
    return {
        "format": FORMAT_VERSION,
        "kanitts_version": __version__,
        "fingerprint": hashlib.sha256(blob.encode()).hexdigest()[:20],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "num_shards": math.ceil(len(source) / options.shard_size),
        "has_speaker": bool(options.speaker is not None or source.has_speaker),
        "input": input_part,
        "options": option_part,
        "codec": codec_part,
    }


def shard_dir(partial: Path, k: int) -> Path:
    return partial / "shards" / f"shard-{k:05d}"


def shard_done(partial: Path, k: int) -> bool:
    return (shard_dir(partial, k) / "meta.json").is_file()


def _shard_tmp(partial: Path, k: int) -> Path:
    return shard_dir(partial, k).with_name(shard_dir(partial, k).name + ".tmp")


def remove_stale_temporaries(partial: Path, todo: list[int]) -> None:
    for k in todo:
        tmp = _shard_tmp(partial, k)
        if tmp.exists():
            shutil.rmtree(tmp)


def make_row(clip: Clip, cols: dict[str, Any], has_speaker: bool, speaker: str | None, sr: int) -> dict[str, Any]:
    """A dataset row; its columns are those of :func:`_features`, in that order."""
    row: dict[str, Any] = {"text": clip.item.text}
    row.update(cols)
    if has_speaker:
        row["speaker"] = speaker if speaker is not None else clip.item.speaker
    row["duration_sec"] = len(clip.audio) / sr
    row["source"] = clip.item.source
    row["warnings"] = "; ".join(clip.warnings)
    return row


def _features(codec: Codec, has_speaker: bool, has_embedding: bool = False):
    from datasets import Features, List, Value

    spec: dict[str, Any] = {"text": Value("string")}
    spec.update(codec.dataset_features())
    if has_embedding:
        spec[SPEAKER_EMB_COLUMN] = List(Value("float32"))
    if has_speaker:
        spec["speaker"] = Value("string")
    spec["duration_sec"] = Value("float64")
    spec["source"] = Value("string")
    spec["warnings"] = Value("string")
    return Features(spec)


def write_shard(
    partial: Path, k: int, rows: list[dict], rejected: list[dict], warned: list[dict], manifest: dict, codec: Codec
) -> None:
    from datasets import Dataset

    final, tmp = shard_dir(partial, k), _shard_tmp(partial, k)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if rows:
        features = _features(codec, manifest["has_speaker"], manifest["options"].get("speaker_embedder") is not None)
        ds = Dataset.from_list(rows, features=features)
        with quiet_datasets():
            ds.save_to_disk(str(tmp / "data"))
    meta = {
        "shard": k,
        "fingerprint": manifest["fingerprint"],
        "rows": len(rows),
        "audio_seconds": float(sum(r["duration_sec"] for r in rows)),
        "rejected": rejected,
        "warned": warned,
    }
    write_json(tmp / "meta.json", meta)
    if final.exists():  # only an unfinished leftover can be here (no meta.json): replace it
        shutil.rmtree(final)
    tmp.rename(final)


class quiet_datasets:
    """Silence datasets' own progress bars while shards are written."""

    def __enter__(self):
        from datasets.utils import logging as ds_logging

        self._was_enabled = ds_logging.is_progress_bar_enabled()
        ds_logging.disable_progress_bar()

    def __exit__(self, *exc):
        from datasets.utils import logging as ds_logging

        if self._was_enabled:
            ds_logging.enable_progress_bar()


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_json(path: Path, data: dict) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
