"""Held-out rows: the split, the validation loss and metrics while training, early stopping."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sweep_project import build_base, experiment, write_project

from kanitts.config import load_configs
from kanitts.errors import UserError
from kanitts.evaluation.results import loss_history
from kanitts.sequences import build_training_dataset, load_validation
from kanitts.sequences.cache import VALIDATION_SOURCES_FILE, load_validation_sources
from kanitts.sequences.validation import split_validation
from kanitts.training.experiments import METRICS_FILE, run_experiments


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_base(tmp_path_factory.mktemp("validation_base"))


@pytest.fixture(scope="module")
def project(tmp_path_factory, base):
    """(configs, train rows, held-out rows): 12 rows of alice and 6 of bob, a quarter held out."""
    from transformers import AutoTokenizer

    config_dir = write_project(tmp_path_factory.mktemp("validation_project"), base, [experiment("e")])
    configs = load_configs(config_dir, kinds=("dataset", "model", "experiments", "eval"))
    train, report = build_training_dataset(configs.dataset, configs.model, AutoTokenizer.from_pretrained(str(base[0])))
    return configs, train, load_validation(report), report


def test_the_split_is_disjoint_stratified_and_seeded():
    kept = np.arange(40)
    speakers = np.array(["a"] * 30 + ["b"] * 8 + ["c"] * 2)
    train, held = split_validation(kept, speakers, fraction=0.25, rows=None, seed=3, dataset="d")
    assert not set(train) & set(held) and sorted([*train, *held]) == list(kept)
    assert [int((speakers[held] == s).sum()) for s in "abc"] == [8, 2, 1]  # c: one of two, one left to train
    again = split_validation(kept, speakers, fraction=0.25, rows=None, seed=3, dataset="d")
    assert list(again[1]) == list(held)
    assert list(split_validation(kept, speakers, fraction=0.25, rows=None, seed=4, dataset="d")[1]) != list(held)
    _, by_count = split_validation(kept, speakers, fraction=None, rows=10, seed=3, dataset="d")
    assert [int((speakers[by_count] == s).sum()) for s in "abc"] == [7, 2, 1]
    with pytest.raises(UserError, match=r"dataset d: validation_rows 38 leaves no training rows: 40 rows"):
        split_validation(kept, speakers, fraction=None, rows=38, seed=3, dataset="d")


def test_the_data_step_caches_held_out_rows_beside_the_training_ones(project):
    configs, train, held, report = project
    assert (len(train), len(held)) == (13, 5)
    assert sorted(held["speaker"]) == ["alice"] * 3 + ["bob"] * 2
    as_rows = lambda d: {tuple(ids) for ids in d["input_ids"]}  # noqa: E731
    assert not as_rows(train) & as_rows(held)
    assert report.validation_rows == 5 and "held out of" in report.format() and "alice 3, bob 2" in report.format()
    # the cache gives back the same split
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(configs.experiments.base_model))
    _, cached = build_training_dataset(configs.dataset, configs.model, tokenizer)
    assert cached.from_cache and load_validation(cached)["input_ids"] == held["input_ids"]


def test_held_out_rows_record_where_they_came_from_and_an_older_cache_is_rebuilt(project, tmp_path):
    from transformers import AutoTokenizer

    configs, _, held, report = project
    sources = load_validation_sources(report)
    assert [s.speaker for s in sources] == held["speaker"]
    tokenizer = AutoTokenizer.from_pretrained(str(configs.experiments.base_model))
    for row, ids in zip(sources, held["input_ids"], strict=True):  # each entry is the row beside it
        assert row.text == f"{row.speaker} says sentence {row.row if row.speaker == 'alice' else row.row - 12}."
        assert row.text in tokenizer.decode(ids) and row.source is None and row.dataset_index == 0
    # A cache written before the sources were recorded is rebuilt in place (same key, same rows).
    old = tmp_path / "cache"
    shutil.copytree(report.cache_path, old / Path(report.cache_path).name)
    (old / Path(report.cache_path).name / VALIDATION_SOURCES_FILE).unlink()
    _, again = build_training_dataset(configs.dataset, configs.model, tokenizer, cache_dir=old)
    assert not again.from_cache and again.fingerprint == report.fingerprint
    assert load_validation_sources(again) == sources


def test_every_experiment_reports_validation_loss_and_codebook_metrics(project, tmp_path):
    configs, train, held, _ = project
    configs.experiments = configs.experiments.model_validate({
        "base_model": configs.experiments.base_model,
        "experiments": [experiment("padded"), experiment("packed", packing=True, max_tokens_per_batch=256)],
    })
    results = run_experiments(configs, checkpoints_dir=tmp_path, train_dataset=train, eval_dataset=held)
    assert [r.status for r in results] == ["done", "done"]
    for result in results:
        metrics = json.loads((tmp_path / result.model_id / METRICS_FILE).read_text())
        assert [p["step"] for p in metrics["eval_loss_history"]] == [1, 2, 3]
        assert metrics["eval"]["step"] == 3 and result.eval_loss == pytest.approx(metrics["eval"]["eval_loss"])
        for key in ("eval_audio_loss", "eval_audio_accuracy", "eval_codebook1_loss", "eval_codebook4_accuracy"):
            assert key in metrics["eval"], key
        assert 0 <= metrics["eval"]["eval_audio_accuracy"] <= 1
        assert metrics["best_eval"]["metric"] == "eval_loss"
        # eval_results.json carries the curve beside the training one
        assert loss_history(tmp_path / result.model_id, "eval_loss_history") == [
            {"step": float(p["step"]), "loss": pytest.approx(p["loss"])} for p in metrics["eval_loss_history"]]
        assert metrics["best_eval"]["value"] == min(p["loss"] for p in metrics["eval_loss_history"])


def test_early_stopping_stops_and_the_best_model_is_kept(project, tmp_path):
    configs, train, held, _ = project
    stopper = experiment("stops", steps=8, early_stopping_patience=1, early_stopping_threshold=100.0,
                         trainer={"load_best_model_at_end": True, "save_steps": 1, "save_strategy": "steps"})
    configs.experiments = configs.experiments.model_validate(
        {"base_model": configs.experiments.base_model, "experiments": [stopper]})
    [result] = run_experiments(configs, checkpoints_dir=tmp_path, train_dataset=train, eval_dataset=held)
    assert result.status == "done", result.error
    metrics = json.loads((tmp_path / "stops" / METRICS_FILE).read_text())
    # no evaluation improves by 100: the second one uses up the patience of 1
    assert metrics["global_step"] == 2 and metrics["stopped_early"] is True
    assert metrics["eval"]["step"] == metrics["best_eval"]["step"]


def test_evaluating_without_held_out_rows_is_refused_with_the_fix(project, tmp_path):
    configs, train, _, _ = project
    configs.experiments = configs.experiments.model_validate({
        "base_model": configs.experiments.base_model,
        "experiments": [experiment("no-data", early_stopping_patience=2, trainer={"eval_strategy": "steps"})],
    })
    [result] = run_experiments(configs, checkpoints_dir=tmp_path, train_dataset=train)
    assert result.status == "failed"
    assert result.error.startswith(
        "experiments.yaml: no-data: trainer_args.eval_strategy, training.early_stopping_patience needs held-out rows"
    )
    assert "validation_fraction or validation_rows" in result.error and not (tmp_path / "no-data").exists()
