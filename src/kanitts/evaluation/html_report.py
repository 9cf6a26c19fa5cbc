"""The listening report: one folder that opens from disk, no server and no network.

``index.html`` carries the eval results as JSON inside the page, and ``report.js`` (plain
script, written here because the page must work from ``file://`` with nothing fetched) renders
from them: a grid of sentences x models with compact players that fits 20 models on a screen,
model selection and sorting by any metric, a blind mode with the real speaker's recording as a
hidden anchor, a 0-100 rating and a "best" pick per sample (kept in the browser, exported and
merged across listeners), the ranking, the loss curves of every model on one chart, and
sortable metric tables. Without JavaScript the page still shows the summary, the problems and
the experiment settings (rendered here); the rest needs the script.

The audio (samples and the real speaker's references) is copied into ``audio/``; the style and
the script are files next to the page: the folder can be zipped, mailed or served as is. The
project's sweep reports, when there are any, are linked by relative paths (they stay where
`kanitts sweep` writes them, beside the report folder: those links work from the project's
folder on disk, the rest of the page anywhere).
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import quote

from kanitts.atomic import write_atomically
from kanitts.config import EvalSentence
from kanitts.errors import UserError
from kanitts.evaluation.metrics import METRIC_LABELS
from kanitts.evaluation.references import ORIGIN_LABELS
from kanitts.evaluation.results import REFERENCE_LABELS, RESULTS_JSON, read_results
from kanitts.redact import redact_secrets

ASSETS = ("report.css", "report.js")
DATA_ELEMENT_ID = "report-data"
# Pseudo-model ids of the real speaker's columns; "@" cannot start an experiment's model_id.
REFERENCE_COLUMNS = {kind: (f"@{kind}", label) for kind, label in REFERENCE_LABELS.items()}


def build_report(results_json: Path, report_dir: Path, sweep_reports: Sequence[Path] = ()) -> Path:
    """Write the report folder for an ``eval_results.json``; returns the path of index.html.

    ``sweep_reports`` are the index.html pages of sweep reports to link. The folder is built
    beside ``report_dir`` and swapped in whole: a failure leaves the previous report as it was.
    """
    results = read_results(results_json)
    audio_dir = Path(results_json).parent  # row["audio"] paths are relative to it
    sweeps = _sweep_links(Path(report_dir), sweep_reports)
    write_atomically(Path(report_dir), lambda folder: _write_report(results, audio_dir, folder, sweeps))
    return Path(report_dir) / "index.html"


def relative_link(page: Path, from_folder: Path) -> str:
    """The href of ``page`` in a page of ``from_folder``: relative, so it works from ``file://``
    wherever the project folder sits."""
    return quote(Path(os.path.relpath(Path(page).resolve(), Path(from_folder).resolve())).as_posix())


def _sweep_links(report_dir: Path, pages: Sequence[Path]) -> str:
    if not pages:
        return ""
    links = " · ".join(f"<a href='{_e(relative_link(p, report_dir))}'>{_e(Path(p).parent.name)}</a>" for p in pages)
    return f"<p class='sweeps'>Sweeps (trials, best settings, plots): {links}</p>"


def _write_report(results: dict[str, Any], audio_dir: Path, folder: Path, sweeps: str) -> None:
    (folder / "audio").mkdir(parents=True)
    listed = audio_dir / RESULTS_JSON
    for row in results["rows"]:
        what = f"the audio of {row['experiment_id']} / {row['sentence_id']}"
        _copy_audio(audio_dir, row["audio"], folder, f"{what} listed in {listed}")
    for i, ref in enumerate(results.get("references") or []):
        what = f"the real speaker's {ref.get('kind')} clip (references[{i}]) listed in {listed}"
        _copy_audio(audio_dir, ref["audio"], folder, what)
    templates = resources.files("kanitts.evaluation") / "templates"
    for name in ASSETS:
        (folder / name).write_text((templates / name).read_text(encoding="utf-8"), encoding="utf-8")
    title = "KaniTTS evaluation"
    page = Template((templates / "report.html").read_text(encoding="utf-8")).substitute(
        title=title,
        summary=_summary(results),
        sweeps=sweeps,
        settings=_settings(results["models"]),
        failures=_failures(results["failures"]),
        data_id=DATA_ELEMENT_ID,
        data=embed_json(report_data(results, title)),
    )
    (folder / "index.html").write_text(page, encoding="utf-8")


def _copy_audio(audio_dir: Path, relative: str, folder: Path, what: str) -> None:
    source = audio_dir / relative
    target = folder / "audio" / relative
    if not target.resolve().is_relative_to((folder / "audio").resolve()):
        raise UserError(f"{what}: {relative!r} points outside {audio_dir}; run `make eval` again to rewrite it")
    if not source.is_file():
        raise UserError(f"{source}: {what} is missing; run `make eval` again to regenerate it")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


# --- the data the page's script renders ------------------------------------------------------


def embed_json(data: Any) -> str:
    """JSON that is safe inside ``<script type="application/json">``.

    ``<``, ``>`` and ``&`` become ``\\u003c``-style escapes (which JSON.parse reads back as the
    same characters), so no sentence or model name can close the element or open a comment;
    U+2028/U+2029 are escaped for the older parsers that end a line on them.
    """
    text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text


def report_data(results: dict[str, Any], title: str) -> dict[str, Any]:
    """What the page shows, without what it must not: no training configurations (the settings
    table is rendered from their redacted copies), nothing the script does not use."""
    metrics = [{"key": key, "label": label} for key, label in METRIC_LABELS.items()]
    references = [_reference(ref) for ref in results.get("references") or []]
    sentences = [
        {"id": s["sentence_id"], "text": s["sentence"],
         "speaker": EvalSentence(s["sentence_id"], s["sentence"]).speaker}
        for s in results["sentences"]
    ]
    for sentence in sentences:
        sentence["anchors"] = _anchors(sentence, references)
    return {
        "title": title,
        "metrics": metrics,
        "models": [
            {
                "id": m["experiment_id"],
                "description": _description(m),
                "error": m.get("error"),
                "loss": _history(m.get("loss_history")),
                "eval_loss": _history(m.get("eval_loss_history")),
            }
            for m in results["models"]
        ],
        "reference_columns": [
            {"id": column, "label": label, "kind": kind}
            for kind, (column, label) in REFERENCE_COLUMNS.items()
            if any(r["kind"] == kind for r in references)
        ],
        "sentences": sentences,
        "rows": [
            {
                "model": r["experiment_id"],
                "sentence": r["sentence_id"],
                "take": r["take"],
                "audio": "audio/" + r["audio"] if r["duration_sec"] > 0 else None,
                "problems": r.get("problems") or "",
                "voice": r.get("voice") or "",
                "transcript": r.get("transcript"),
                "values": {key: _finite(r.get(key)) for key in METRIC_LABELS},
            }
            for r in results["rows"]
        ],
        "references": references,
        "ranking": results.get("ranking"),
    }


def _reference(ref: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": ref["kind"],
        "speaker": ref.get("speaker"),
        # configured, or held out of training and taken automatically (older results: unknown)
        "origin": ref.get("origin"),
        "source": ref.get("source"),
        "audio": "audio/" + ref["audio"],
        "text": ref.get("text"),
        "transcript": ref.get("transcript"),
        "values": {key: _finite(ref.get(key)) for key in METRIC_LABELS},
    }


def _anchors(sentence: dict[str, Any], references: list[dict[str, Any]]) -> dict[str, int]:
    """Index into ``references`` of the clip heard in each real-speaker column for a sentence.

    A recording of the sentence's speaker (one of the same text when there is one, else the
    speaker's clips in turn, so sentences do not all share one clip); a sentence with no speaker
    prefix takes any speaker's recordings, and a speaker with none gets no anchor (never someone
    else's voice). The codec column plays that clip's round trip: eval lists a speaker's codec
    clips in the order of the recordings, so the k-th of each pair up.
    """
    def of_speaker(kind: str, speaker: str | None) -> list[int]:
        return [i for i, r in enumerate(references) if r["kind"] == kind
                and (speaker is None or (r["speaker"] or "").lower() == speaker.lower())]

    recordings = of_speaker("recording", sentence["speaker"])
    if not recordings:
        return {}
    spoken = EvalSentence(sentence["id"], sentence["text"]).spoken_text
    same_text = [i for i in recordings if (references[i]["text"] or "").strip() == spoken]
    chosen = same_text[0] if same_text else recordings[sum(map(ord, sentence["id"])) % len(recordings)]
    anchors = {"@recording": chosen}
    speaker = references[chosen]["speaker"]
    own_recordings, own_codecs = of_speaker("recording", speaker), of_speaker("codec", speaker)
    if len(own_codecs) == len(own_recordings):
        anchors["@codec"] = own_codecs[own_recordings.index(chosen)]
    return anchors


def _history(points: Any) -> list[list[float]]:
    """``[{step, loss}]`` as ``[[step, loss]]``, dropping points that are not two finite numbers."""
    out = []
    for p in points or []:
        if isinstance(p, dict):
            step, loss = _finite(p.get("step")), _finite(p.get("loss"))
            if isinstance(step, (int, float)) and isinstance(loss, (int, float)):
                out.append([step, loss])
    return out


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: they are "not measured" here."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


# --- the parts rendered without the script -----------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _summary(results: dict[str, Any]) -> str:
    g = results["generation"]
    unloaded = [m for m in results["models"] if m.get("error")]
    models = len(results["models"])
    sentences = len(results["sentences"])
    sampling = ", ".join(
        f"{k} {g[k]}" for k in ("temperature", "top_p", "repetition_penalty", "max_new_tokens") if k in g
    )
    lines = [
        f"<p>{models} model(s) x {sentences} sentence(s) = {len(results['rows'])} sample(s)"
        + (f"; {len(unloaded)} model(s) could not be loaded (see Problems)" if unloaded else "") + ". "
        f"Sampling: {_e(sampling)}.</p>"
    ]
    lines += [f"<p class='failed'>{_e(m['experiment_id'])}: not evaluated: {_e(m['error'])}</p>" for m in unloaded]
    similarity = results.get("speaker_similarity") or {}  # older results have less, or nothing
    origins = similarity.get("references") or {}
    if origins:
        described = "; ".join(f"{speaker}: {o.get('clips')} {ORIGIN_LABELS.get(o.get('origin'), o.get('origin'))}"
                              for speaker, o in origins.items())
        lines.append(f"<p>Speaker similarity references: {_e(described)}.</p>")
    lines += [f"<p>Note: {_e(note)}</p>" for note in similarity.get("reference_notes") or []]
    return "\n".join(lines)


def _description(model: dict[str, Any]) -> str:
    """The experiment's ``base.desc`` (or the base model's name for the base)."""
    if not model.get("checkpoint_dir"):
        return str(model["train_configuration"].get("base_model", ""))
    flat = flatten(model["train_configuration"])
    return str(next((v for k, v in flat.items() if k.endswith("base.desc") and v), ""))


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """{'lora_args': {'r': 8}} -> {'lora_args.r': 8}; lists stay values."""
    if not isinstance(config, dict):
        return {prefix: config}
    out: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        out.update(flatten(value, path) if isinstance(value, dict) and value else {path: value})
    return out


def differing_settings(configs: dict[str, dict[str, Any]]) -> set[str]:
    """Keys whose value is not the same in every configuration (absent counts as a value)."""
    flat = {name: flatten(c) for name, c in configs.items()}
    keys = set().union(*flat.values()) if flat else set()
    missing = object()
    return {
        k for k in keys
        if len({json.dumps(f.get(k, missing), sort_keys=True, default=str) for f in flat.values()}) > 1
    }


def _settings(models: list[dict[str, Any]]) -> str:
    experiments = {m["experiment_id"]: redact_secrets(m["train_configuration"]) for m in models if m["checkpoint_dir"]}
    if not experiments:
        return "<p>No experiments evaluated.</p>"
    flat = {name: flatten(config) for name, config in experiments.items()}
    differs = differing_settings(experiments) if len(experiments) > 1 else set()
    keys = sorted(set().union(*flat.values()), key=lambda k: (k not in differs, k))
    head = "".join(f"<th scope='col' title='{_e(n)}'>{_e(n)}</th>" for n in flat)
    lines = [
        (f"<p>{len(differs)} setting(s) differ between the {len(flat)} experiment(s); "
         "they are highlighted and listed first. "
         "<label><input type='checkbox' id='only-diff'> show only these</label></p>"),
        f"<table class='settings'><thead><tr><th scope='col'>setting</th>{head}</tr></thead><tbody>",
    ]
    for key in keys:
        cls = " class='differs'" if key in differs else ""
        values = "".join(f"<td>{_e(_value(f.get(key)))}</td>" for f in flat.values())
        lines.append(f"<tr{cls}><th scope='row'>{_e(key)}</th>{values}</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _value(value: Any) -> str:
    if value is None:
        return "—"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _failures(failures: list[str]) -> str:
    if not failures:
        return ""
    items = "".join(f"<li>{_e(f)}</li>" for f in failures)
    return f"<section class='failures'><h2>Problems</h2><ul>{items}</ul></section>"
