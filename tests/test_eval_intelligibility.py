"""`kanitts eval` with an ASR model: WER, CER and transcripts per sample, and the ranking."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kanitts.evaluation.runner import run_eval

from eval_project import eval_configs


def _with_asr(project: Path, folder: Path) -> None:
    config = yaml.safe_load((project / "eval_config.yaml").read_text())
    config["intelligibility"] = {"model": str(folder), "language": "en", "batch_size": 4}
    (project / "eval_config.yaml").write_text(yaml.safe_dump(config))


def test_without_intelligibility_wer_cer_and_transcript_are_not_measured(project_copy):
    summary = run_eval(eval_configs(project_copy))
    assert summary.rows and all(r["wer"] is None and r["cer"] is None and r["transcript"] is None
                                for r in summary.rows)
    results = json.loads(summary.results_json.read_text(), parse_constant=pytest.fail)  # no NaN
    assert results["intelligibility"] is None
    assert results["speaker_similarity"] == {"embedder": "proxy (MFCC statistics)", "note": None,
                                             "references": {"alice": {"origin": "configured", "clips": 2}},
                                             "reference_notes": []}
    # Three models, truncation and speaker similarity measured: a ranking, also in the summary.
    ranking = results["ranking"]
    assert {m["model"] for m in ranking["models"]} == {"base", "exp-a", "exp-b"}
    assert ranking["models"][0]["metrics"]["wer"] == {"not_measured": True}
    assert "speaker_similarity" in ranking["composite_metrics"]
    # Resamples of only the sentence without a speaker have no composite: P(best) skips them.
    assert sum(m["p_best"] for m in ranking["models"]) == pytest.approx(1.0)
    assert summary.ranking_text and summary.ranking_text in summary.describe()


def test_intelligibility_scores_every_sample_with_the_configured_asr(project_copy, tmp_path):
    from kanitts.tiny import build_tiny_whisper

    # Two-second windows: the references (1.2 s) are transcribed too.
    _with_asr(project_copy, build_tiny_whisper(tmp_path / "whisper", chunk_seconds=2))
    summary = run_eval(eval_configs(project_copy))
    assert (summary.generated, summary.reused) == (0, 9)  # the audio is reused, only scored again
    for row in summary.rows:
        assert isinstance(row["transcript"], str)
        assert isinstance(row["wer"], float) and row["wer"] >= 0
        assert isinstance(row["cer"], float) and row["cer"] >= 0
    results = json.loads(summary.results_json.read_text())
    assert results["intelligibility"]["model"] == str(tmp_path / "whisper")
    ranking = results["ranking"]
    assert ranking["models"][0]["metrics"]["wer"]["n"] == 3
    csv_header = summary.csv_path.read_text().splitlines()[0].split(",")
    assert {"wer", "cer", "transcript"} <= set(csv_header)
    from datasets import load_from_disk

    ds = load_from_disk(str(summary.dataset_dir))
    assert {"wer", "cer", "transcript"} <= set(ds.column_names)


def test_a_wrong_asr_model_is_named_before_any_generation(project_copy, tmp_path):
    from kanitts.errors import UserError

    _with_asr(project_copy, tmp_path / "missing")
    with pytest.raises(UserError, match=r"intelligibility\.model: ASR model .*missing: no such folder"):
        run_eval(eval_configs(project_copy), force=True)
    assert Path("audio samples/base/prompt_1.wav").is_file()


def test_one_model_only_says_why_there_is_no_ranking(project_copy):
    summary = run_eval(eval_configs(project_copy), only=["base"])
    assert json.loads(summary.results_json.read_text())["ranking"] is None
    assert "ranking: not computed (only 1 model" in summary.describe()
