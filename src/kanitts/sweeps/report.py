"""What a study holds, for people: the trials table, the best settings, and the plots.

Read from the study's database alone, so the report of a study that other processes or
machines ran (or that is still running) is the same command. The folder
(``sweeps/<name>/``) is self-contained: index.html, the PNG plots beside it, trials.csv and
best.json. Plots are Optuna's own matplotlib ones (optimisation history, intermediate values,
parameter importances), drawn only once there are enough finished trials for each. The page
links the listening report (`kanitts report`) by a relative path when there is one.
"""

from __future__ import annotations

import csv
import html
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kanitts.atomic import atomic_file
from kanitts.config.schemas.sweep import EVAL_SET_OBJECTIVES
from kanitts.evaluation.html_report import relative_link
from kanitts.sweeps.checkpoints import CHECKPOINT_ATTR

TRIALS_FILE = "trials.csv"
BEST_FILE = "best.json"
INDEX_FILE = "index.html"
# The listening report's link sits between these, so `kanitts report` can set it in a page
# written before the listening report existed.
LINK_START, LINK_END = "<!-- listening report -->", "<!-- /listening report -->"


@dataclass
class SweepReport:
    name: str
    objective: str
    direction: str
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    folder: Path
    plots: list[str] = field(default_factory=list)
    plot_notes: list[str] = field(default_factory=list)
    listening_report: Path | None = None


def _trial_rows(study, objective: str) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        seconds = t.user_attrs.get("seconds")
        if seconds is None and t.datetime_start and t.datetime_complete:
            seconds = round((t.datetime_complete - t.datetime_start).total_seconds(), 1)
        checkpoint = t.user_attrs.get(CHECKPOINT_ATTR)
        rows.append({
            "trial": t.number,
            "model_id": t.user_attrs.get("model_id", ""),
            "state": t.state.name.lower(),
            objective: t.value,
            "seconds": seconds,
            "checkpoint": checkpoint if checkpoint and Path(checkpoint).is_dir() else "",
            "retry_of": (t.system_attrs.get("retry_history") or [None])[-1],
            **{f"param {k}": v for k, v in t.params.items()},
        })
    return rows


def write_report(study, objective: str, folder: Path, listening_report: Path | None = None) -> SweepReport:
    """The study's report into ``folder`` (made if need be); returns what it holds.

    ``listening_report`` (the listening report's index.html) is linked when it exists.
    """
    from optuna.trial import TrialState

    folder.mkdir(parents=True, exist_ok=True)
    rows = _trial_rows(study, objective)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = None
    if complete:
        trial = study.best_trial
        best = {"trial": trial.number, "model_id": trial.user_attrs.get("model_id"), objective: trial.value,
                "params": trial.params, "checkpoint": trial.user_attrs.get(CHECKPOINT_ATTR)}
    report = SweepReport(study.study_name, objective, study.direction.name.lower(), rows, best, folder,
                         listening_report=listening_report if listening_report and listening_report.is_file() else None)
    _write_csv(rows, folder / TRIALS_FILE)
    _write_text(folder / BEST_FILE, json.dumps(best, indent=2) + "\n")
    _draw(study, objective, report)
    _write_text(folder / INDEX_FILE, _html(report))
    return report


def link_listening_report(page: Path, listening_report: Path) -> bool:
    """Sets the link to ``listening_report`` in a sweep report's ``page``; whether it changed.

    Rewritten in place, between the page's own markers, rather than by rendering the page
    again: that needs the study's database, which `kanitts report` does not open (it may be
    another machine's). A page without the markers (from an older version) is left as it is.
    """
    text = page.read_text(encoding="utf-8")
    start, end = text.find(LINK_START), text.find(LINK_END)
    if start < 0 or end < start:
        return False
    linked = text[:start] + _listening_link(listening_report, page.parent) + text[end:]
    if linked == text:
        return False
    _write_text(page, linked)
    return True


def _listening_link(listening_report: Path | None, folder: Path) -> str:
    link = ""
    if listening_report is not None:
        href = html.escape(relative_link(listening_report, folder), quote=True)
        link = f"<p><a href='{href}'>Listening report</a> (the eval set spoken by the evaluated models)</p>"
    return f"{LINK_START}{link}"


def _write_text(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_file(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _draw(study, objective: str, report: SweepReport) -> None:
    """Optuna's matplotlib plots, each as a PNG; one that cannot be drawn yet says why."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as plots
    from optuna.trial import TrialState

    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    wanted = [
        ("history.png", "optimisation history", plots.plot_optimization_history, 1),
        ("intermediate.png", f"{objective} at each evaluation (pruned trials stop early)",
         plots.plot_intermediate_values, 1),
        ("importance.png", "parameter importance", plots.plot_param_importances, 2),
    ]
    for filename, title, draw, needs in wanted:
        if len(finished) < needs:
            report.plot_notes.append(f"{title}: needs {needs} finished trial(s), the study has {len(finished)}")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = draw(study, target_name=objective) if draw is not plots.plot_intermediate_values else draw(study)
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.set_size_inches(8, 4.5)
            figure.tight_layout()
            figure.savefig(report.folder / filename, dpi=100)
            plt.close(figure)
            report.plots.append(filename)
        except (ValueError, RuntimeError) as exc:  # e.g. importance with one value tried per parameter
            report.plot_notes.append(f"{title}: not drawn ({exc})")


def _html(report: SweepReport) -> str:
    e = html.escape
    columns = list(dict.fromkeys(k for row in report.rows for k in row))

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return e("" if value is None else str(value))

    table = "".join(
        f"<tr class='{e(row['state'])}'>" + "".join(f"<td>{cell(row.get(c))}</td>" for c in columns) + "</tr>"
        for row in report.rows
    )
    best = "<p>No finished trial yet.</p>"
    if report.best:
        params = "".join(f"<li><code>{e(k)}</code>: {cell(v)}</li>" for k, v in report.best["params"].items())
        best = (f"<p>Trial {report.best['trial']} (<code>{e(str(report.best['model_id']))}</code>): "
                f"{e(report.objective)} {cell(report.best[report.objective])}</p><ul>{params}</ul>")
    images = "".join(f"<figure><img src='{e(p)}' alt='{e(p)}'></figure>" for p in report.plots)
    notes = "".join(f"<li>{e(n)}</li>" for n in report.plot_notes)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sweep {e(report.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; }}
tr.pruned {{ color: #996; }} tr.fail {{ color: #b00; }} tr.running, tr.waiting {{ color: #669; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>Sweep {e(report.name)}</h1>
{_listening_link(report.listening_report, report.folder)}{LINK_END}
<p>Objective: {e(report.direction)} {e(report.objective)} ({e(_objective_note(report.objective))}).
{len(report.rows)} trial(s); the study's database opens in
<code>optuna-dashboard</code> as it is.</p>
<h2>Best settings</h2>{best}
<h2>Trials</h2>
<table><tr>{"".join(f"<th>{e(c)}</th>" for c in columns)}</tr>{table}</table>
<p><a href="{TRIALS_FILE}">trials.csv</a> · <a href="{BEST_FILE}">best.json</a></p>
<h2>Plots</h2>{images}<ul>{notes}</ul>
</body></html>
"""


def _objective_note(objective: str) -> str:
    if objective in EVAL_SET_OBJECTIVES:
        return "the mean over the eval set spoken by each trained trial, scored as kanitts eval scores"
    return "best over each trial's evaluations on the held-out rows"


def trials_table(report: SweepReport):
    """The trials as a rich table for the terminal: number, model_id, state, objective, time, params."""
    from rich.table import Table

    colours = {"complete": "green", "pruned": "yellow", "fail": "red", "running": "cyan", "waiting": "dim"}
    params = list(dict.fromkeys(k for row in report.rows for k in row if k.startswith("param ")))
    table = Table(title=f"Sweep {report.name}: {report.direction} {report.objective}")
    for column in ("trial", "model_id", "state", report.objective, "time", *[p[6:] for p in params], "checkpoint"):
        table.add_column(column)
    for row in report.rows:
        value = row[report.objective]
        table.add_row(
            str(row["trial"]),
            row["model_id"],
            f"[{colours.get(row['state'], 'white')}]{row['state']}[/]",
            f"{value:.4f}" if value is not None else "-",
            f"{row['seconds']:.0f}s" if row["seconds"] is not None else "-",
            *[_short(row.get(p)) for p in params],
            "kept" if row["checkpoint"] else "-",
        )
    return table


def _short(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)
