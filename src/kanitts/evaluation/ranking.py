"""Which model is best, with bootstrap confidence intervals, and how sure the data is.

Every model is scored on the same sentences, so the bootstrap resamples *sentences* (a
sentence is the pair speaker + sentence id) and uses each resample for all models and all
metrics at once: a hard sentence in a resample is hard for every model, and the differences
between models are measured without the between-sentence noise they share.

``scipy.stats.bootstrap`` does the resampling and the percentile intervals. It is given one
sample, the sentence indices, so the design is paired by construction; the statistic maps a
batch of resampled indices to every model's metric means, composite score, share of "best" and
composite difference from the leader, so all of them come from the same resamples.

Composite score (higher is better), over the metrics measured for every model of the group::

    composite(model) = sum_k w_k * s_k * (mean_k(model) - centre_k) / scale_k  /  sum_k w_k

``mean_k`` is the model's mean of metric k over the (resampled) sentences, ``s_k`` is +1 when
higher is better (similarity, MOS) and -1 when lower is better (WER, CER, truncation, and the
duration ratio's ``|log ratio|``), ``centre_k`` and ``scale_k`` are the mean and standard
deviation of metric k over all samples of all models (fixed from the full data, so the
composite is a weighted average of each model's distance from the pool, in standard deviations
of a single sample). Weights ``w_k`` default to 1. A metric whose samples are all equal cannot
separate models and is left out, and so is one that some model did not measure: the composite
then compares all models on the same footing, and the table says which metrics it used.

Ties: the leader is the model with the highest composite on the full data; every model whose
composite difference from the leader has a confidence interval that includes 0 cannot be told
apart from it, and together they are reported as a tie. There is a winner only when nobody ties
with the leader. P(best) is the share of resamples in which a model has the highest composite
(split evenly where several share it).

Ceiling: rows passed as ``ceiling`` (the speakers' reference recordings, and the same through
the codec) get each metric's mean and a percentile bootstrap interval over their own clips,
and are shown beside the models without competing: they are not sentences of the eval set, so
they take no part in the composite, the ranks or P(best).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import stats

from kanitts.errors import UserError

Direction = Literal["lower", "higher", "near_one"]

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
DEFAULT_CONFIDENCE = 0.95
# A clip ten times too long or too short is as wrong as a duration gets; the cap keeps one
# empty or runaway clip from deciding the whole ranking through an unbounded |log ratio|.
MAX_ABS_LOG_DURATION_RATIO = math.log(10.0)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    label: str
    direction: Direction
    weight: float = 1.0


DEFAULT_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("wer", "WER", "lower"),
    MetricSpec("cer", "CER", "lower"),
    MetricSpec("speaker_similarity", "speaker similarity", "higher"),
    MetricSpec("mos", "MOS", "higher"),
    MetricSpec("truncated", "truncation rate", "lower"),
    MetricSpec("duration_ratio", "duration ratio", "near_one"),
)


@dataclass(frozen=True)
class Sample:
    """One generated sample's scores; a metric absent or None was not measured."""

    model: str
    sentence: str
    speaker: str | None
    values: Mapping[str, float | bool | None]


@dataclass
class MetricSummary:
    """A model's mean of one metric over the sentences it has, and its confidence interval.

    For the duration ratio the mean is of the ratio itself (what a reader expects); the
    composite uses the mean ``|log ratio|``.
    """

    measured: bool
    mean: float | None = None
    low: float | None = None
    high: float | None = None
    n: int = 0


@dataclass
class ModelRanking:
    model: str
    metrics: dict[str, MetricSummary]
    composite: float | None
    composite_low: float | None
    composite_high: float | None
    p_best: float | None
    # The leader's composite minus this model's, with its interval (None for the leader).
    gap: float | None = None
    gap_low: float | None = None
    gap_high: float | None = None


@dataclass
class CeilingRow:
    """A non-competing row (the references): per metric mean and interval over its own clips."""

    name: str
    metrics: dict[str, MetricSummary]
    n_clips: int


@dataclass
class Ranking:
    """Models best first; ``winner`` is None when the leader ties with someone (see ``tied``)."""

    speaker: str | None
    models: list[ModelRanking]
    metrics: list[MetricSpec]
    composite_metrics: list[str]
    left_out: dict[str, str]
    winner: str | None
    tied: list[str]
    n_sentences: int
    n_resamples: int
    seed: int
    confidence_level: float
    per_speaker: dict[str, Ranking] = field(default_factory=dict)
    ceiling: list[CeilingRow] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "speaker": self.speaker,
            "winner": self.winner,
            "tied": list(self.tied),
            "n_sentences": self.n_sentences,
            "n_resamples": self.n_resamples,
            "seed": self.seed,
            "confidence_level": self.confidence_level,
            "composite_metrics": list(self.composite_metrics),
            "left_out_of_composite": dict(self.left_out),
            "metrics": [
                {"name": m.name, "label": m.label, "direction": m.direction, "weight": m.weight}
                for m in self.metrics
            ],
            "models": [
                {
                    "model": r.model,
                    "composite": r.composite,
                    "composite_ci": [r.composite_low, r.composite_high],
                    "p_best": r.p_best,
                    "gap_to_leader": r.gap,
                    "gap_to_leader_ci": [r.gap_low, r.gap_high],
                    "metrics": _metrics_dict(r.metrics),
                }
                for r in self.models
            ],
            "per_speaker": {name: sub.as_dict() for name, sub in self.per_speaker.items()},
            "ceiling": [
                {"name": row.name, "n_clips": row.n_clips, "metrics": _metrics_dict(row.metrics)}
                for row in self.ceiling
            ],
        }


def _metrics_dict(summaries: Mapping[str, MetricSummary]) -> dict:
    return {
        name: {"mean": s.mean, "ci": [s.low, s.high], "n": s.n} if s.measured else {"not_measured": True}
        for name, s in summaries.items()
    }


def rank_models(
    samples: Iterable[Sample],
    metrics: Sequence[MetricSpec] = DEFAULT_METRICS,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    confidence_level: float = DEFAULT_CONFIDENCE,
    ceiling: Iterable[Sample] = (),
) -> Ranking:
    """Rank the models over all sentences, and per speaker when there are several.

    ``ceiling`` samples (``model`` names the row, e.g. "real speaker") are summarised
    beside the ranking, overall and per speaker, without competing.
    """
    rows = list(samples)
    if not rows:
        raise UserError("ranking: there are no samples to rank")
    metrics = list(metrics)
    _check_unique(rows)
    options = {"n_resamples": n_resamples, "seed": seed, "confidence_level": confidence_level}
    refs = list(ceiling)
    overall = _rank_group(rows, metrics, None, **options)
    overall.ceiling = _ceiling(refs, metrics, **options)
    speakers = sorted({r.speaker for r in rows if r.speaker is not None})
    if len(speakers) > 1:
        overall.per_speaker = {
            sp: _rank_group([r for r in rows if r.speaker == sp], metrics, sp, **options) for sp in speakers
        }
        for sp, sub in overall.per_speaker.items():
            sub.ceiling = _ceiling([r for r in refs if (r.speaker or "").lower() == sp.lower()], metrics, **options)
    return overall


def _ceiling(rows: list[Sample], metrics: list[MetricSpec], *, n_resamples: int, seed: int,
             confidence_level: float) -> list[CeilingRow]:
    """Per ceiling row: each metric's mean over its clips, with a percentile bootstrap interval."""
    out = []
    for name in dict.fromkeys(r.model for r in rows):
        mine = [r for r in rows if r.model == name]
        summaries = {}
        for spec in metrics:
            values = np.array([v for r in mine if not math.isnan(v := _number(r, spec.name))])
            if not len(values):
                summaries[spec.name] = MetricSummary(measured=False)
                continue
            mean = float(values.mean())
            low = high = None
            if len(values) >= 2 and np.ptp(values) > 0:
                result = stats.bootstrap((values,), np.mean, n_resamples=n_resamples, confidence_level=confidence_level,
                                         method="percentile", rng=np.random.default_rng(seed))
                low, high = _float(result.confidence_interval.low), _float(result.confidence_interval.high)
            elif len(values) >= 2:
                low = high = mean
            summaries[spec.name] = MetricSummary(True, mean, low, high, len(values))
        out.append(CeilingRow(name, summaries, len(mine)))
    return out


def _check_unique(rows: list[Sample]) -> None:
    seen: set[tuple[str, str | None, str]] = set()
    for r in rows:
        key = (r.model, r.speaker, r.sentence)
        if key in seen:
            raise UserError(
                f"ranking: model {r.model!r}, sentence {r.sentence!r}"
                f"{'' if r.speaker is None else f' (speaker {r.speaker!r})'} has more than one sample"
            )
        seen.add(key)


def _number(r: Sample, name: str) -> float:
    value = r.values.get(name)
    if value is None:
        return math.nan
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(
            f"ranking: model {r.model!r}, sentence {r.sentence!r}: {name} is {value!r}, not a finite number"
        )
    return float(value)


def _abs_log_ratio(r: Sample, ratio: float) -> float:
    if math.isnan(ratio):
        return ratio
    if ratio < 0:
        raise UserError(f"ranking: model {r.model!r}, sentence {r.sentence!r}: duration_ratio {ratio} is negative")
    if ratio == 0:
        return MAX_ABS_LOG_DURATION_RATIO
    return min(abs(math.log(ratio)), MAX_ABS_LOG_DURATION_RATIO)


def _rank_group(
    rows: list[Sample],
    metrics: list[MetricSpec],
    speaker: str | None,
    *,
    n_resamples: int,
    seed: int,
    confidence_level: float,
) -> Ranking:
    models = sorted({r.model for r in rows})
    units = sorted({(r.speaker or "", r.sentence) for r in rows})
    unit_index = {u: i for i, u in enumerate(units)}
    model_index = {m: i for i, m in enumerate(models)}
    n_models, n_metrics, n_units = len(models), len(metrics), len(units)

    # shown[m, k, s]: the value as reported; scored[m, k, s]: the value in the composite's terms.
    shown = np.full((n_models, n_metrics, n_units), np.nan)
    scored = np.full((n_models, n_metrics, n_units), np.nan)
    for r in rows:
        mi, si = model_index[r.model], unit_index[(r.speaker or "", r.sentence)]
        for k, spec in enumerate(metrics):
            value = _number(r, spec.name)
            shown[mi, k, si] = value
            scored[mi, k, si] = _abs_log_ratio(r, value) if spec.direction == "near_one" else value

    measured = ~np.all(np.isnan(shown), axis=2)  # (models, metrics)
    in_composite: list[int] = []
    left_out: dict[str, str] = {}
    for k, spec in enumerate(metrics):
        if not measured[:, k].any():
            continue
        if not measured[:, k].all():
            missing = [models[m] for m in range(n_models) if not measured[m, k]]
            left_out[spec.name] = "not measured for " + ", ".join(missing)
        elif np.nanstd(scored[:, k, :]) == 0:
            left_out[spec.name] = "the same for every sample"
        elif spec.weight <= 0:
            left_out[spec.name] = "weight 0"
        else:
            in_composite.append(k)
    centre = np.array([np.nanmean(scored[:, k, :]) for k in in_composite])
    scale = np.array([np.nanstd(scored[:, k, :]) for k in in_composite])
    sign = np.array([1.0 if metrics[k].direction == "higher" else -1.0 for k in in_composite])
    weight = np.array([metrics[k].weight for k in in_composite])

    def means(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Nan-aware means over the resampled sentences: (..., n) indices -> (models, metrics, ...)."""
        picked = values[:, :, idx]
        present = ~np.isnan(picked)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(present, picked, 0.0).sum(axis=-1) / present.sum(axis=-1)

    def composite(idx: np.ndarray) -> np.ndarray:
        if not in_composite:
            return np.full((n_models, *idx.shape[:-1]), np.nan)
        m = means(scored[:, in_composite, :], idx)  # (models, composite metrics, ...)
        shape = (1, len(in_composite)) + (1,) * (m.ndim - 2)
        z = sign.reshape(shape) * (m - centre.reshape(shape)) / scale.reshape(shape)
        return np.tensordot(weight, z, axes=([0], [1])) / weight.sum()

    full = np.arange(n_units)
    point_shown = means(shown, full)
    point_comp = composite(full)
    leader = int(np.nanargmax(point_comp)) if in_composite else None

    def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.intp)
        parts = [means(shown, idx).reshape(n_models * n_metrics, *idx.shape[:-1])]
        if in_composite:
            comp = composite(idx)  # (models, ...)
            top = np.nanmax(comp, axis=0, keepdims=True)
            is_top = comp == top
            parts += [comp, is_top / is_top.sum(axis=0, keepdims=True), comp[leader] - comp]
        return np.concatenate(parts, axis=0)

    low = high = None
    p_best = None
    if n_units >= 2:
        with warnings.catch_warnings():
            # A model missing every drawn sentence of a metric gives a NaN mean in that resample.
            warnings.simplefilter("ignore", RuntimeWarning)
            result = stats.bootstrap(
                (full,),
                statistic,
                n_resamples=n_resamples,
                confidence_level=confidence_level,
                method="percentile",
                vectorized=True,
                rng=np.random.default_rng(seed),
            )
        low, high = result.confidence_interval.low, result.confidence_interval.high
        if in_composite:
            # A resample can hold only sentences where some composite metric has no value (a
            # speaker without references): no model is best there, so it does not count.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                p_best = np.nanmean(result.bootstrap_distribution[n_models * n_metrics + n_models : -n_models], axis=1)

    def ci(block: int, i: int) -> tuple[float | None, float | None]:
        if low is None:
            return None, None
        j = block + i
        return _float(low[j]), _float(high[j])

    base_comp, base_gap = n_models * n_metrics, n_models * n_metrics + 2 * n_models
    rankings: list[ModelRanking] = []
    for mi, model in enumerate(models):
        summaries: dict[str, MetricSummary] = {}
        for k, spec in enumerate(metrics):
            if not measured[mi, k]:
                summaries[spec.name] = MetricSummary(measured=False)
                continue
            lo, hi = ci(0, mi * n_metrics + k)
            n = int((~np.isnan(shown[mi, k])).sum())
            summaries[spec.name] = MetricSummary(True, _float(point_shown[mi, k]), lo, hi, n)
        entry = ModelRanking(model, summaries, None, None, None, None)
        if in_composite:
            entry.composite = _float(point_comp[mi])
            entry.composite_low, entry.composite_high = ci(base_comp, mi)
            entry.p_best = None if p_best is None else _float(p_best[mi])
            if mi != leader:
                entry.gap = _float(point_comp[leader] - point_comp[mi])
                entry.gap_low, entry.gap_high = ci(base_gap, mi)
        rankings.append(entry)

    tied: list[str] = []
    winner = None
    if leader is not None:
        tied = [models[leader]] + [
            r.model
            for r in rankings
            if r.gap is not None and (r.gap_low is None or r.gap_low <= 0.0)
        ]
        if len(tied) == 1:
            winner = tied[0]
        else:
            tied.sort(key=lambda name: -point_comp[model_index[name]])
    rankings.sort(key=lambda r: (-(r.composite if r.composite is not None else -math.inf), r.model))
    return Ranking(
        speaker=speaker,
        models=rankings,
        metrics=list(metrics),
        composite_metrics=[metrics[k].name for k in in_composite],
        left_out=left_out,
        winner=winner,
        tied=tied if len(tied) > 1 else [],
        n_sentences=n_units,
        n_resamples=n_resamples,
        seed=seed,
        confidence_level=confidence_level,
    )


def _float(x: float) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def _interval(mean: float | None, low: float | None, high: float | None, digits: int) -> str:
    if mean is None:
        return "-"
    if low is None or high is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def format_ranking(ranking: Ranking) -> str:
    """The console summary: one table per group, best first, then the verdict in words."""
    blocks = [_format_group(ranking)]
    blocks += [_format_group(sub) for sub in ranking.per_speaker.values()]
    return "\n\n".join(blocks)


def _format_group(ranking: Ranking) -> str:
    shown = [m for m in ranking.metrics
             if any(r.metrics[m.name].measured for r in [*ranking.models, *ranking.ceiling])]
    pct = round(ranking.confidence_level * 100)
    header = ["model", "composite", "P(best)"] + [m.label for m in shown]
    table = [header]
    for r in ranking.models:
        row = [r.model, _interval(r.composite, r.composite_low, r.composite_high, 2)]
        row.append("-" if r.p_best is None else f"{r.p_best:.0%}")
        for m in shown:
            s = r.metrics[m.name]
            row.append(_interval(s.mean, s.low, s.high, 3) if s.measured else "not measured")
        table.append(row)
    for c in ranking.ceiling:
        row = [c.name, "ceiling", "not ranked"]
        for m in shown:
            s = c.metrics[m.name]
            row.append(_interval(s.mean, s.low, s.high, 3) if s.measured else "not measured")
        table.append(row)
    widths = [max(len(line[c]) for line in table) for c in range(len(header))]
    title = (
        f"Ranking{'' if ranking.speaker is None else f' for speaker {ranking.speaker}'}: "
        f"{len(ranking.models)} models, {ranking.n_sentences} sentence{'' if ranking.n_sentences == 1 else 's'}, "
        f"{pct}% bootstrap intervals ({ranking.n_resamples} resamples, seed {ranking.seed})"
    )
    lines = [title]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in table]
    if ranking.composite_metrics:
        labels = {m.name: m.label for m in ranking.metrics}
        lines.append("composite over: " + ", ".join(labels[n] for n in ranking.composite_metrics))
    for name, why in ranking.left_out.items():
        lines.append(f"left out of the composite: {name} ({why})")
    if ranking.winner is not None:
        best = ranking.models[0]
        sure = "" if best.p_best is None else f", best in {best.p_best:.0%} of resamples"
        lines.append(f"suggested winner: {ranking.winner}{sure}")
    elif ranking.tied:
        lines.append(
            f"tie: {', '.join(ranking.tied)} cannot be told apart "
            f"(the {pct}% interval of their composite difference includes 0)"
        )
    else:
        lines.append("no winner: no metric is measured for every model and varies")
    return "\n".join(lines)
