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
    "experiment_id", "sentence_id", "take", "sentence", "audio", "truncated", "problems", "voice",
    "duration_sec", "chars_per_sec", "leading_silence_sec", "trailing_silence_sec",
    "clipping_fraction", "peak_dbfs", "speaker_similarity", "wer", "cer", "mos", "transcript",
    "train_configuration",
]
# eval_ranking.csv: one row per (group, model), best first; then the non-competing ceiling rows.
# Per ranked metric m: m_mean, m_low, m_high (the bootstrap interval), m_n; empty = not measured.
RANKING_COLUMNS = ["group", "rank", "model", "composite", "composite_low", "composite_high", "p_best", "verdict"]
# The model-level ranking columns every sample row of the eval dataset carries (overall group).
DATASET_RANKING_COLUMNS = ["model_rank", "model_composite", "model_p_best", "model_verdict"]
# The keys of eval_results.json its readers rely on, with their JSON types.
# How the real speaker's reference clips are named wherever they stand beside the models (console
# summary, ranking ceiling rows, report columns), by their ``kind`` in ``references``.
REFERENCE_LABELS = {"recording": "real speaker", "codec": "real speaker (codec)"}
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


def _verdict(ranking: dict[str, Any], model: str) -> str:
    if ranking.get("winner") == model:
        return "winner"
    return "tie" if model in ranking.get("tied", []) else ""


def ranking_rows(ranking: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The ranking (``Ranking.as_dict()``) as the rows of eval_ranking.csv (see RANKING_COLUMNS).

    Group ``all`` first, then one group per speaker; in each, the models best first (``verdict``
    ``winner``, ``tie`` or empty), then the ceiling rows (``verdict`` ``not ranked (ceiling)``).
    """
    if not ranking:
        return []
    names = [m["name"] for m in ranking["metrics"]]
    out = []
    groups = [("all", ranking), *ranking.get("per_speaker", {}).items()]
    for group, block in groups:
        entries = [(i + 1, m, _verdict(block, m["model"])) for i, m in enumerate(block["models"])]
        entries += [(None, {"model": c["name"], "metrics": c["metrics"]}, "not ranked (ceiling)")
                    for c in block.get("ceiling", [])]
        for rank, entry, verdict in entries:
            low, high = entry.get("composite_ci", [None, None])
            row = {"group": group, "rank": rank, "model": entry["model"], "composite": entry.get("composite"),
                   "composite_low": low, "composite_high": high, "p_best": entry.get("p_best"), "verdict": verdict}
            for name in names:
                summary = entry["metrics"].get(name, {})
                measured = bool(summary) and not summary.get("not_measured", False)
                ci = summary.get("ci", [None, None]) if measured else [None, None]
                row.update({f"{name}_mean": summary.get("mean") if measured else None, f"{name}_low": ci[0],
                            f"{name}_high": ci[1], f"{name}_n": summary.get("n") if measured else None})
            out.append(row)
    return out


def ranking_columns(ranking: dict[str, Any] | None) -> list[str]:
    names = [m["name"] for m in ranking["metrics"]] if ranking else []
    return RANKING_COLUMNS + [f"{n}_{part}" for n in names for part in ("mean", "low", "high", "n")]


def model_ranking_columns(ranking: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """{model: its DATASET_RANKING_COLUMNS values} from the overall ranking (empty without one)."""
    if not ranking:
        return {}
    return {
        m["model"]: {"model_rank": i + 1, "model_composite": m.get("composite"), "model_p_best": m.get("p_best"),
                     "model_verdict": _verdict(ranking, m["model"])}
        for i, m in enumerate(ranking["models"])
    }


def write_results(results: dict[str, Any], audio_dir: Path) -> tuple[Path, Path, Path]:
    """``eval_results.json``, ``eval_results.csv``, ``eval_ranking.csv`` and (with rows) the eval dataset.

    Returns their paths (json, csv, dataset folder); the dataset folder exists only with rows.
    ``eval_ranking.csv`` has only its header when there is no ranking (fewer than two models).
    """
    audio_dir.mkdir(parents=True, exist_ok=True)
    json_path = audio_dir / RESULTS_JSON
    write_text(json_path, json.dumps(results, indent=2))
    csv_path = audio_dir / RESULTS_CSV
    with atomic_file(csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(results["rows"])
    ranking = results.get("ranking")
    with atomic_file(audio_dir / RANKING_CSV) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=ranking_columns(ranking))
        writer.writeheader()
        writer.writerows(ranking_rows(ranking))
    dataset_dir = audio_dir / DATASET_DIR
    if results["rows"]:
        save_eval_dataset(results["rows"], audio_dir, dataset_dir, ranking)
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


def loss_history(checkpoint_dir: Path | None, key: str = "loss_history") -> list[dict[str, float]]:
    """The ``[{step, loss}]`` a checkpoint's metrics.json records under ``key`` (empty when it has none).

    ``loss_history`` is the training loss; ``eval_loss_history`` the validation loss.
    """
    if checkpoint_dir is None:
        return []
    try:
        metrics = json.loads((checkpoint_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return []
    history = metrics.get(key) if isinstance(metrics, dict) else None
    return [
        {"step": float(p["step"]), "loss": float(p["loss"])}
        for p in history or []
        if isinstance(p, dict) and isinstance(p.get("step"), (int, float)) and isinstance(p.get("loss"), (int, float))
    ]


def eval_dataset(rows: list[dict[str, Any]], audio_dir: Path, ranking: dict[str, Any] | None = None):
    """The rows as a ``datasets.Dataset`` with the WAV bytes embedded in an ``Audio`` column.

    Each row also carries its model's place in the overall ranking (DATASET_RANKING_COLUMNS:
    rank, composite, P(best), verdict; empty without a ranking), so the Hub viewer can sort and
    filter by it.

    The column is ``Audio(decode=False)``: a row reads back as ``{"bytes", "path"}`` with no audio
    backend. Decoding (``decode=True``) needs torchcodec and FFmpeg's libraries in datasets 4 and
    later, which this project does not install; ``soundfile.read(io.BytesIO(row["audio"]["bytes"]))``
    reads the WAV, and ``cast_column("audio", Audio())`` decodes where torchcodec is installed.
    """
    # datasets (with pyarrow) takes about a second to import: only the commands that write it pay.
    from datasets import Audio, Dataset, Features, Value

    columns = [c for c in CSV_COLUMNS if c != "audio"]
    places = model_ranking_columns(ranking)
    empty = dict.fromkeys(DATASET_RANKING_COLUMNS)
    records = []
    for row in rows:
        record = {c: row[c] for c in columns}
        record.update(places.get(row["experiment_id"], empty))
        # The Audio feature keeps only a file name, so the name carries the experiment too.
        record["audio"] = {"bytes": (audio_dir / row["audio"]).read_bytes(), "path": row["audio"].replace("/", "__")}
        records.append(record)
    # Arrow infers the types; the audio column is stored as the Audio feature's own struct and
    # then cast, which needs no audio backend (encoding through Audio would).
    dataset = Dataset.from_list(records)
    # Columns that are None in every row (not measured) get a real type, not Arrow's null.
    typed = {"model_rank": Value("int64"), "model_composite": Value("float64"), "model_p_best": Value("float64"),
             "model_verdict": Value("string"), "wer": Value("float64"), "cer": Value("float64"),
             "mos": Value("float64"), "speaker_similarity": Value("float64"), "transcript": Value("string"),
             "voice": Value("string")}
    features = Features({**dataset.features, **typed, "audio": {"bytes": Value("binary"), "path": Value("string")}})
    dataset = dataset.cast(features)
    return dataset.cast_column("audio", Audio(sampling_rate=int(rows[0]["sample_rate"]), decode=False))


def save_eval_dataset(rows: list[dict[str, Any]], audio_dir: Path, dataset_dir: Path,
                      ranking: dict[str, Any] | None = None) -> None:
    """save_to_disk into a temporary folder, then swap it in: never a half-written dataset."""
    dataset = eval_dataset(rows, audio_dir, ranking)
    write_atomically(dataset_dir, lambda folder: dataset.save_to_disk(str(folder)))
