"""The listening report: one folder that opens from disk, no server and no network.

``index.html`` shows a grid of sentences x models with audio players (pick the best take per
sentence; picks are kept in the browser and can be downloaded), the experiment settings with the
ones that differ highlighted, each experiment's training loss curve, and sortable metric tables.
The audio is copied into ``audio/``, the curves are PNG files in ``plots/``, the style and the
script are local files next to the page: the folder can be zipped, mailed or served as is.
"""

from __future__ import annotations

import html
import json
import shutil
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kanitts.atomic import write_atomically
from kanitts.errors import UserError
from kanitts.evaluation.metrics import METRIC_LABELS
from kanitts.evaluation.results import RESULTS_JSON, read_results, slugify
from kanitts.redact import redact_secrets

ASSETS = ("report.css", "report.js")


def build_report(results_json: Path, report_dir: Path) -> Path:
    """Write the report folder for an ``eval_results.json``; returns the path of index.html.

    The folder is built beside ``report_dir`` and swapped in whole: a failure leaves the
    previous report as it was.
    """
    results = read_results(results_json)
    audio_dir = Path(results_json).parent  # row["audio"] paths are relative to it
    write_atomically(Path(report_dir), lambda folder: _write_report(results, audio_dir, folder))
    return Path(report_dir) / "index.html"


def _write_report(results: dict[str, Any], audio_dir: Path, folder: Path) -> None:
    (folder / "audio").mkdir(parents=True)
    for row in results["rows"]:
        source = audio_dir / row["audio"]
        if not source.is_file():
            raise UserError(
                f"{source}: the audio of {row['experiment_id']} / {row['sentence_id']} listed in "
                f"{audio_dir / RESULTS_JSON} is missing; run `make eval` again to regenerate it"
            )
        target = folder / "audio" / row["audio"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    curves = _loss_plots(results["models"], folder / "plots")
    templates = resources.files("kanitts.evaluation") / "templates"
    for name in ASSETS:
        (folder / name).write_text((templates / name).read_text(encoding="utf-8"), encoding="utf-8")
    page = Template((templates / "report.html").read_text(encoding="utf-8")).substitute(
        title="KaniTTS evaluation",
        summary=_summary(results),
        grid=_grid(results),
        settings=_settings(results["models"]),
        curves=curves,
        averages=_averages_table(results),
        metrics=_metrics_table(results["rows"]),
        failures=_failures(results["failures"]),
    )
    (folder / "index.html").write_text(page, encoding="utf-8")


# --- pieces of the page --------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _summary(results: dict[str, Any]) -> str:
    g = results["generation"]
    unloaded = sum(1 for m in results["models"] if m.get("error"))
    models = len(results["models"])
    sentences = len(results["sentences"])
    sampling = ", ".join(
        f"{k} {g[k]}" for k in ("temperature", "top_p", "repetition_penalty", "max_new_tokens") if k in g
    )
    return (
        f"<p>{models} model(s) x {sentences} sentence(s) = {len(results['rows'])} sample(s)"
        + (f"; {unloaded} model(s) could not be loaded (see Problems)" if unloaded else "") + ". "
        f"Sampling: {_e(sampling)}.</p>"
    )


def _grid(results: dict[str, Any]) -> str:
    models = [m["experiment_id"] for m in results["models"]]
    by_cell: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in results["rows"]:
        by_cell.setdefault((row["sentence_id"], row["experiment_id"]), []).append(row)
    errors = {m["experiment_id"]: m["error"] for m in results["models"] if m.get("error")}
    head = "".join(
        f"<th scope='col'>{_e(m['experiment_id'])}<span class='desc'>{_e(_description(m))}</span>"
        + (f"<span class='missing failed'>not evaluated: {_e(errors[m['experiment_id']])}</span>"
           if m["experiment_id"] in errors else "")
        + "</th>"
        for m in results["models"]
    )
    lines = [f"<table class='grid'><thead><tr><th scope='col'>sentence</th>{head}</tr></thead><tbody>"]
    for sentence in results["sentences"]:
        sid = sentence["sentence_id"]
        cells = []
        for model in models:
            rows = by_cell.get((sid, model), [])
            empty = "not evaluated" if model in errors else "no sample"
            missing = "" if rows else f"<span class='missing'>{empty}</span>"
            cells.append("<td>" + "".join(_sample(r) for r in rows) + missing + "</td>")
        lines.append(
            f"<tr data-sentence='{_e(sid)}'><th scope='row'><span class='sid'>{_e(sid)}</span>"
            f"<span class='text'>{_e(sentence['sentence'])}</span></th>{''.join(cells)}</tr>"
        )
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _description(model: dict[str, Any]) -> str:
    """The experiment's ``base.desc`` (or the base model's name for the base)."""
    if not model.get("checkpoint_dir"):
        return str(model["train_configuration"].get("base_model", ""))
    flat = flatten(model["train_configuration"])
    return str(next((v for k, v in flat.items() if k.endswith("base.desc") and v), ""))


def _sample(row: dict[str, Any]) -> str:
    badges = [f"{row['duration_sec']:.2f} s"]
    if row.get("speaker_similarity") is not None:
        badges.append(f"sim {row['speaker_similarity']:.2f}")
    warn = (
        "<span class='badge warn' title='{}'>truncated</span>".format(_e(row["problems"])) if row["truncated"] else ""
    )
    value = f"{row['experiment_id']}#{row['take']}"
    player = (
        f"<audio controls preload='metadata' src='audio/{_e(row['audio'])}'></audio>"
        if row["duration_sec"] > 0
        else f"<span class='missing' title='{_e(row['problems'])}'>no audio</span>"
    )
    return (
        "<div class='sample'>"
        f"{player}"
        f"<div class='meta'>{' · '.join(_e(b) for b in badges)} {warn}</div>"
        f"<label class='pick'><input type='radio' name='pick-{_e(row['sentence_id'])}' value='{_e(value)}'"
        f" data-model='{_e(row['experiment_id'])}'> best</label></div>"
    )


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
    head = "".join(f"<th scope='col'>{_e(n)}</th>" for n in flat)
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


def _loss_plots(models: list[dict[str, Any]], plot_dir: Path) -> str:
    """One PNG per experiment with a loss history, plus all of them on one chart.

    Each chart is a ``Figure`` on its own Agg canvas: no pyplot, so no process-wide backend
    switch and no figure registry that a caller's plotting would share.
    """
    histories = {m["experiment_id"]: [(p["step"], p["loss"]) for p in m.get("loss_history", [])] for m in models}
    histories = {k: v for k, v in histories.items() if v}
    if not histories:
        return "<p>No training metrics found (metrics.json in the checkpoints).</p>"
    plot_dir.mkdir(parents=True, exist_ok=True)
    figures = []

    def save(name: str, series: dict[str, list[tuple[float, float]]], title: str) -> None:
        fig = Figure(figsize=(5.5, 3.2), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        for label, points in series.items():
            ax.plot(
                [p[0] for p in points], [p[1] for p in points], label=label, marker="." if len(points) < 40 else None
            )
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(plot_dir / name)
        figures.append(
            f"<figure><img src='plots/{_e(name)}' alt='{_e(title)}'><figcaption>{_e(title)}</figcaption></figure>"
        )

    if len(histories) > 1:
        save("all.png", histories, "all experiments")
    for experiment, points in histories.items():
        save(f"{slugify(experiment)}.png", {experiment: points}, experiment)
    return "<div class='curves'>" + "".join(figures) + "</div>"


def _metric_columns(rows: list[dict[str, Any]]) -> list[str]:
    return [k for k in METRIC_LABELS if any(r.get(k) is not None for r in rows)]


def _sortable(headers: list[str], body_rows: list[list[Any]], css: str) -> str:
    head = "".join(f"<th scope='col' data-sort='{i}'>{_e(h)}</th>" for i, h in enumerate(headers))
    lines = [f"<table class='sortable {css}'><thead><tr>{head}</tr></thead><tbody>"]
    for values in body_rows:
        cells = "".join(
            f"<td data-value='{_e(v if isinstance(v, (int, float)) and not isinstance(v, bool) else _fmt(v))}'>"
            f"{_e(_fmt(v))}</td>"
            for v in values
        )
        lines.append(f"<tr>{cells}</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _metrics_table(rows: list[dict[str, Any]]) -> str:
    columns = _metric_columns(rows)
    headers = ["model", "sentence", "take", *[METRIC_LABELS[c] for c in columns], "problems"]
    body = [
        [r["experiment_id"], r["sentence_id"], r["take"], *[r.get(c) for c in columns], r["problems"]] for r in rows
    ]
    return _sortable(headers, body, "samples")


def _averages_table(results: dict[str, Any]) -> str:
    rows = results["rows"]
    columns = [c for c in _metric_columns(rows) if c != "truncated"]
    headers = ["model", "samples", "truncated", *[f"mean {METRIC_LABELS[c]}" for c in columns]]
    body = []
    for model in results["models"]:
        mine = [r for r in rows if r["experiment_id"] == model["experiment_id"]]
        if not mine:
            continue
        means = []
        for c in columns:
            values = [r[c] for r in mine if r.get(c) is not None]
            means.append(round(sum(values) / len(values), 4) if values else None)
        body.append([model["experiment_id"], len(mine), sum(bool(r["truncated"]) for r in mine), *means])
    return _sortable(headers, body, "averages")


def _failures(failures: list[str]) -> str:
    if not failures:
        return ""
    items = "".join(f"<li>{_e(f)}</li>" for f in failures)
    return f"<section class='failures'><h2>Problems</h2><ul>{items}</ul></section>"
