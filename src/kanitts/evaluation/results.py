"""The eval results on disk: file names, ``eval_results.json`` / ``.csv``, and the eval dataset.

``kanitts eval`` writes them into ``paths.audio_output_dir``; the listening report, the model
card and the Hub upload read them. This module is the one place that knows their names and
their shape, so a writer and its readers cannot drift apart.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from kanitts.atomic import atomic_file, write_atomically
from kanitts.errors import UserError

RESULTS_JSON = "eval_results.json"
RESULTS_CSV = "eval_results.csv"
DATASET_DIR = "eval_dataset"
RANKING_CSV = "eval_ranking.csv"
SCORE_CACHE = "eval_scores_cache.json"
REFERENCES_DIR = "references"  # the speakers' reference recordings and their codec round trips
CSV_COLUMNS = [
    "experiment_id", "sentence_id", "take", "sentence", "audio", "truncated", "problems",
    "duration_sec", "chars_per_sec", "leading_silence_sec", "trailing_silence_sec",
    "clipping_fraction", "peak_dbfs", "speaker_similarity", "wer", "cer", "mos", "transcript",
    "train_configuration",
]
# The keys of eval_results.json its readers rely on, with their JSON types.
_RESULT_KEYS = {"generation": dict, "models": list, "sentences": list, "rows": list, "failures": list}

_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def slugify(name: str) -> str:
    """A file name that is safe on every OS: letters, digits, '-', '_' and '.' only."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:120] or "unnamed"
    return f"_{slug}" if slug.split(".")[0].upper() in _WINDOWS_RESERVED else slug


def write_text(path: Path, text: str) -> None:
    """A small UTF-8 file written under a temporary name and renamed: never half a sidecar."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_results(results: dict[str, Any], audio_dir: Path) -> tuple[Path, Path, Path]:
    """``eval_results.json``, ``eval_results.csv`` and (when there are rows) the eval dataset.

    Returns their paths (json, csv, dataset folder); the dataset folder exists only with rows.
    """
    audio_dir.mkdir(parents=True, exist_ok=True)
    json_path = audio_dir / RESULTS_JSON
    write_text(json_path, json.dumps(results, indent=2))
    csv_path = audio_dir / RESULTS_CSV
    with atomic_file(csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(results["rows"])
    dataset_dir = audio_dir / DATASET_DIR
    if results["rows"]:
        save_eval_dataset(results["rows"], audio_dir, dataset_dir)
    return json_path, csv_path, dataset_dir


def read_results(results_json: Path) -> dict[str, Any]:
    """``eval_results.json``, or a UserError naming the file when it is cut off or not ours."""
    again = "run `make eval` again to rewrite it (existing audio is reused)"
    try:
        results = json.loads(Path(results_json).read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"{results_json} is not a text file ({exc.reason}); {again}") from None
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{results_json} is truncated or corrupt (line {exc.lineno}, column {exc.colno}: {exc.msg}); {again}"
        ) from None
    if not isinstance(results, dict):
        raise UserError(f"{results_json} holds a {type(results).__name__}, not the eval results; {again}")
    wrong = [key for key, kind in _RESULT_KEYS.items() if not isinstance(results.get(key), kind)]
    if wrong:
        raise UserError(f"{results_json} lacks {', '.join(wrong)} (not written by `kanitts eval`?); {again}")
    return results


def loss_history(checkpoint_dir: Path | None) -> list[dict[str, float]]:
    """The ``[{step, loss}]`` a checkpoint's metrics.json records (empty when it has none)."""
    if checkpoint_dir is None:
        return []
    try:
        metrics = json.loads((checkpoint_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return []
    history = metrics.get("loss_history") if isinstance(metrics, dict) else None
    return [
        {"step": float(p["step"]), "loss": float(p["loss"])}
        for p in history or []
        if isinstance(p, dict) and isinstance(p.get("step"), (int, float)) and isinstance(p.get("loss"), (int, float))
    ]


def eval_dataset(rows: list[dict[str, Any]], audio_dir: Path):
    """The rows as a ``datasets.Dataset`` with the WAV bytes embedded in an ``Audio`` column.

    The column is ``Audio(decode=False)``: a row reads back as ``{"bytes", "path"}`` with no audio
    backend. Decoding (``decode=True``) needs torchcodec and FFmpeg's libraries in datasets 4 and
    later, which this project does not install; ``soundfile.read(io.BytesIO(row["audio"]["bytes"]))``
    reads the WAV, and ``cast_column("audio", Audio())`` decodes where torchcodec is installed.
    """
    # datasets (with pyarrow) takes about a second to import: only the commands that write it pay.
    from datasets import Audio, Dataset, Features, Value

    columns = [c for c in CSV_COLUMNS if c != "audio"]
    records = []
    for row in rows:
        record = {c: row[c] for c in columns}
        # The Audio feature keeps only a file name, so the name carries the experiment too.
        record["audio"] = {"bytes": (audio_dir / row["audio"]).read_bytes(), "path": row["audio"].replace("/", "__")}
        records.append(record)
    # Arrow infers the types; the audio column is stored as the Audio feature's own struct and
    # then cast, which needs no audio backend (encoding through Audio would).
    dataset = Dataset.from_list(records)
    features = Features({**dataset.features, "audio": {"bytes": Value("binary"), "path": Value("string")}})
    dataset = dataset.cast(features)
    return dataset.cast_column("audio", Audio(sampling_rate=int(rows[0]["sample_rate"]), decode=False))


def save_eval_dataset(rows: list[dict[str, Any]], audio_dir: Path, dataset_dir: Path) -> None:
    """save_to_disk into a temporary folder, then swap it in: never a half-written dataset."""
    dataset = eval_dataset(rows, audio_dir)
    write_atomically(dataset_dir, lambda folder: dataset.save_to_disk(str(folder)))
