"""The model ranking on constructed scores: winners, ties, missing metrics, speakers, seeds, intervals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kanitts.errors import UserError
from kanitts.evaluation.ranking import Sample, format_ranking, rank_models


def _rows(models: dict[str, float], n: int = 40, speakers: tuple[str | None, ...] = (None,), seed: int = 0):
    """Per-sentence difficulty shared by all models plus a per-model offset and a little noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for speaker in speakers:
        for s in range(n):
            hard = rng.uniform(0.0, 0.3)
            for model, offset in models.items():
                rows.append(
                    Sample(
                        model,
                        f"s{s}",
                        speaker,
                        {
                            "wer": hard + offset + rng.normal(0, 0.01),
                            "speaker_similarity": 0.8 - offset + rng.normal(0, 0.01),
                            "duration_ratio": float(np.exp(rng.normal(0, 0.05) + offset)),
                        },
                    )
                )
    return rows


def test_clearly_better_model_wins_with_p_best_near_one():
    ranking = rank_models(_rows({"base": 0.2, "tuned": 0.0}))
    assert ranking.winner == "tuned"
    assert ranking.tied == []
    assert [r.model for r in ranking.models] == ["tuned", "base"]
    best, other = ranking.models
    assert best.p_best > 0.99
    assert other.p_best < 0.01
    assert other.gap_low > 0
    assert "suggested winner: tuned" in format_ranking(ranking)


def test_identical_models_tie():
    rows = _rows({"a": 0.0})
    rows += [Sample("b", r.sentence, r.speaker, r.values) for r in rows]
    ranking = rank_models(rows)
    assert ranking.winner is None
    assert sorted(ranking.tied) == ["a", "b"]
    assert ranking.models[0].composite == pytest.approx(ranking.models[1].composite)
    assert sum(r.p_best for r in ranking.models) == pytest.approx(1.0)
    assert ranking.models[0].p_best == pytest.approx(0.5)
    assert "tie: a, b cannot be told apart" in format_ranking(ranking)


def test_missing_metric_is_not_measured_and_ranking_uses_the_common_ones():
    rows = _rows({"base": 0.2, "tuned": 0.0})
    # Only "base" has a MOS, and a perfect one: it must not buy base the win.
    rows = [
        Sample(r.model, r.sentence, r.speaker, {**r.values, "mos": 5.0 if r.model == "base" else None})
        for r in rows
    ]
    ranking = rank_models(rows)
    assert ranking.winner == "tuned"
    assert "mos" not in ranking.composite_metrics
    assert ranking.left_out["mos"] == "not measured for tuned"
    by_model = {r.model: r for r in ranking.models}
    assert not by_model["tuned"].metrics["mos"].measured
    assert by_model["base"].metrics["mos"].mean == pytest.approx(5.0)
    as_dict = ranking.as_dict()
    json.dumps(as_dict)
    tuned = next(m for m in as_dict["models"] if m["model"] == "tuned")
    assert tuned["metrics"]["mos"] == {"not_measured": True}
    text = format_ranking(ranking)
    assert "not measured" in text
    assert "left out of the composite: mos (not measured for tuned)" in text


def test_per_speaker_ranking():
    rows = _rows({"a": 0.0, "b": 0.2}, speakers=("alice",))
    rows += _rows({"a": 0.2, "b": 0.0}, speakers=("bob",), seed=1)
    ranking = rank_models(rows)
    assert set(ranking.per_speaker) == {"alice", "bob"}
    assert ranking.per_speaker["alice"].winner == "a"
    assert ranking.per_speaker["bob"].winner == "b"
    assert ranking.n_sentences == 80
    assert ranking.per_speaker["alice"].n_sentences == 40
    text = format_ranking(ranking)
    assert "Ranking for speaker alice" in text and "Ranking for speaker bob" in text
    assert rank_models(_rows({"a": 0.0, "b": 0.2}, speakers=("alice",))).per_speaker == {}


def test_same_seed_same_result_other_seed_other_intervals():
    rows = _rows({"a": 0.0, "b": 0.05, "c": 0.1})
    first, again = rank_models(rows, seed=3).as_dict(), rank_models(rows, seed=3).as_dict()
    assert first == again
    other = rank_models(rows, seed=4).as_dict()
    assert other["models"][0]["composite"] == first["models"][0]["composite"]
    assert other["models"][0]["composite_ci"] != first["models"][0]["composite_ci"]


def test_interval_contains_the_true_mean():
    # Noise drawn once and used with both signs: the sample mean is exactly the true mean, so a
    # correct interval must contain it; its width must still reflect the noise (about 2 x 1.96 x
    # 0.05 / sqrt(200) = 0.014).
    noise = np.random.default_rng(7).normal(0, 0.05, size=100)
    true_wer, true_similarity = 0.25, 0.7
    rows = [
        Sample(
            model,
            f"s{s}",
            None,
            {"wer": true_wer + e, "speaker_similarity": true_similarity - e / 2},
        )
        for s, e in enumerate(np.concatenate([noise, -noise]))
        for model in ("a", "b")
    ]
    for model in rank_models(rows).models:
        wer, similarity = model.metrics["wer"], model.metrics["speaker_similarity"]
        assert wer.mean == pytest.approx(true_wer)
        assert wer.low < true_wer < wer.high
        assert 0.007 < wer.high - wer.low < 0.03
        assert similarity.low < true_similarity < similarity.high
        assert wer.n == 200


def test_truncation_rate_and_duration_ratio_directions():
    rows = []
    for s in range(30):
        rows.append(Sample("steady", f"s{s}", None, {"truncated": s % 10 == 0, "duration_ratio": 1.0 + 0.01 * (s % 3)}))
        rows.append(Sample("rushed", f"s{s}", None, {"truncated": s % 2 == 0, "duration_ratio": 0.5 + 0.01 * (s % 3)}))
    ranking = rank_models(rows)
    assert ranking.winner == "steady"
    steady = ranking.models[0]
    assert steady.metrics["truncated"].mean == pytest.approx(0.1)
    assert steady.metrics["duration_ratio"].mean == pytest.approx(1.01)


def test_bad_values_name_the_sample():
    with pytest.raises(UserError, match=r"model 'a', sentence 's1': wer is 'high', not a finite number"):
        rank_models([Sample("a", "s1", None, {"wer": "high"})])
    with pytest.raises(UserError, match=r"model 'a', sentence 's1' \(speaker 'alice'\) has more than one sample"):
        rank_models([Sample("a", "s1", "alice", {"wer": 0.1}), Sample("a", "s1", "alice", {"wer": 0.2})])
    with pytest.raises(UserError, match="no samples"):
        rank_models([])
