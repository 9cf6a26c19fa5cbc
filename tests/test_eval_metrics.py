"""`kanitts eval`'s MOS predictor, the references' ceiling column and the per-sample score cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from kanitts.audio import write_wav
from kanitts.errors import UserError
from kanitts.evaluation.metrics import METRIC_LABELS
from kanitts.evaluation.naturalness import NaturalnessPredictor
from kanitts.evaluation.runner import run_eval

from eval_project import SR, eval_configs, voice


@pytest.fixture(scope="module")
def mos_folder(tmp_path_factory) -> Path:
    from kanitts.tiny import build_tiny_mos

    return build_tiny_mos(tmp_path_factory.mktemp("mos") / "tiny-mos")


def _configure(config_dir: Path, **sections) -> None:
    path = config_dir / "eval_config.yaml"
    config = yaml.safe_load(path.read_text())
    config.update(sections)
    path.write_text(yaml.safe_dump(config))


def test_mos_model_loads_offline_from_a_folder_and_batches_exactly(mos_folder, tmp_path, monkeypatch):
    from kanitts.tiny import build_tiny_mos

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clips = [(voice(110 + 40 * i, 0.3 + 0.4 * i, i, 0.8), SR) for i in range(3)] + [(np.zeros(0, np.float32), SR)]
    for folder in (mos_folder, build_tiny_mos(tmp_path / "group", norm="group")):
        predictor = NaturalnessPredictor(str(folder), batch_size=3)
        assert predictor.pads_exactly == (folder == mos_folder)  # group norm: one clip at a time
        batched = predictor.predict(clips)
        assert batched[3] is None and all(isinstance(v, float) for v in batched[:3])
        assert len(set(batched[:3])) == 3
        assert batched[:3] == pytest.approx([predictor.predict([c])[0] for c in clips[:3]], abs=1e-3)


def test_mos_models_that_cannot_be_right_are_refused_with_the_reason(tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification, Wav2Vec2Model

    small = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                 conv_dim=(8,), conv_stride=(5,), conv_kernel=(10,), num_conv_pos_embeddings=4,
                 num_conv_pos_embedding_groups=2, feat_extract_norm="layer")
    classifier, encoder = tmp_path / "classifier", tmp_path / "encoder"
    Wav2Vec2ForSequenceClassification(Wav2Vec2Config(**small, num_labels=3)).save_pretrained(classifier)
    Wav2Vec2Model(Wav2Vec2Config(**small, num_labels=1)).save_pretrained(encoder)
    Wav2Vec2FeatureExtractor().save_pretrained(encoder)
    with pytest.raises(UserError, match=r"missing: no such folder"):
        NaturalnessPredictor(str(tmp_path / "missing"))
    with pytest.raises(UserError, match=r"classifier.*has 3 outputs.*num_labels: 1"):
        NaturalnessPredictor(str(classifier))
    with pytest.raises(UserError, match=r"encoder: its regression head is not in the weights"):
        NaturalnessPredictor(str(encoder))


def test_mos_is_scored_for_every_sample_and_reference_and_ranked(project_copy, mos_folder):
    _configure(project_copy, naturalness={"model": str(mos_folder), "batch_size": 4})
    summary = run_eval(eval_configs(project_copy))
    assert all(isinstance(r["mos"], float) for r in summary.rows)
    results = json.loads(summary.results_json.read_text(), parse_constant=pytest.fail)
    assert results["naturalness"] == {"model": str(mos_folder), "label": NaturalnessPredictor.label, "note": None}
    assert all(isinstance(r["mos"], float) for r in results["references"])
    assert results["ranking"]["models"][0]["metrics"]["mos"]["n"] == 3
    assert "mos" in results["ranking"]["composite_metrics"]
    assert "mos" in summary.csv_path.read_text().splitlines()[0].split(",")
    assert "MOS not measured" not in summary.describe()


def test_without_naturalness_mos_says_not_measured_everywhere(project_copy):
    summary = run_eval(eval_configs(project_copy))
    assert all(r["mos"] is None for r in summary.rows)
    results = json.loads(summary.results_json.read_text())
    assert results["naturalness"]["note"] == "MOS not measured: eval_config.yaml has no naturalness section"
    assert results["ranking"]["models"][0]["metrics"]["mos"] == {"not_measured": True}
    assert all(r["mos"] is None for r in results["references"])
    text = summary.describe()
    assert text.count("MOS not measured") == 3 + 2  # three models, two kinds of reference
    assert "MOS" not in summary.ranking_text.splitlines()[1]  # no column of dashes for it


def test_a_wrong_mos_model_is_named_before_any_generation_unless_skipped(project_copy, tmp_path):
    before = Path("audio samples/base/prompt_1.wav").read_bytes()
    _configure(project_copy, naturalness={"model": "no-such-owner/no-such-mos"})
    with pytest.raises(UserError, match=r"eval_config.yaml: naturalness.model: cannot load the MOS model "
                                        r"'no-such-owner/no-such-mos' from the Hugging Face Hub"):
        run_eval(eval_configs(project_copy), force=True)
    assert Path("audio samples/base/prompt_1.wav").read_bytes() == before
    _configure(project_copy, naturalness={"model": str(tmp_path / "gone"), "if_unavailable": "skip"})
    summary = run_eval(eval_configs(project_copy))
    assert all(r["mos"] is None for r in summary.rows)
    note = json.loads(summary.results_json.read_text())["naturalness"]["note"]
    assert note.startswith("MOS not measured: MOS model ")
    assert note.endswith("gone: no such folder (nor a Hub id owner/name)")


def test_references_and_their_codec_round_trips_follow_the_contract(project_copy):
    # A metadata.csv beside the references gives their texts (alice_1 is not listed: unknown).
    Path("refs/metadata.csv").write_text("alice_0|Hello there, this is Alice.\n")
    summary = run_eval(eval_configs(project_copy))
    results = json.loads(summary.results_json.read_text(), parse_constant=pytest.fail)
    refs = results["references"]
    keys = {"kind", "speaker", "origin", "source", "audio", "sample_rate", "text", "transcript", *METRIC_LABELS}
    assert [set(r) for r in refs] == [keys] * 4
    assert {(r["origin"], r["source"]) for r in refs} == {("configured", None)}
    assert [(r["kind"], r["speaker"], r["audio"]) for r in refs] == [
        ("recording", "alice", "references/alice/alice_0.wav"),
        ("codec", "alice", "references/alice/alice_0.codec.wav"),
        ("recording", "alice", "references/alice/alice_1.wav"),
        ("codec", "alice", "references/alice/alice_1.codec.wav"),
    ]
    audio_dir = Path("audio samples")
    for r in refs:
        assert (audio_dir / r["audio"]).is_file()
        assert r["sample_rate"] == SR and r["truncated"] is False and r["mos"] is None and r["wer"] is None
        # Leave-one-out: each is compared with the other reference, so neither scores itself (1.0).
        assert isinstance(r["speaker_similarity"], float) and r["speaker_similarity"] < 0.9999
    assert refs[0]["text"] == "Hello there, this is Alice." and refs[0]["chars_per_sec"] > 0
    assert refs[2]["text"] is None and refs[2]["chars_per_sec"] is None
    ceiling = results["ranking"]["ceiling"]
    assert [(c["name"], c["n_clips"]) for c in ceiling] == [("real speaker", 2),
                                                            ("real speaker (codec)", 2)]
    assert ceiling[0]["metrics"]["speaker_similarity"]["n"] == 2 and ceiling[0]["metrics"]["mos"] == {
        "not_measured": True}
    assert "real speaker" in summary.ranking_text and "not ranked" in summary.ranking_text
    assert "real speaker (ceiling, not ranked): 2 clips" in summary.describe()
    assert "references: alice: 2 configured" in summary.describe()


def test_scores_are_cached_per_audio_content_so_a_new_experiment_costs_only_its_samples(
        project_copy, mos_folder, monkeypatch):
    _configure(project_copy, naturalness={"model": str(mos_folder)})
    scored: list[int] = []
    original = NaturalnessPredictor.predict
    monkeypatch.setattr(NaturalnessPredictor, "predict", lambda self, clips: scored.append(len(clips))
                        or original(self, clips))
    first = run_eval(eval_configs(project_copy), only=["base", "exp-a"])
    # exp-a's checkpoint has the base model's weights: the same audio, scored once.
    assert scored == [3, 4]  # base's samples, then 2 references and their 2 round trips
    # exp-b is "trained" (its audio differs) after that run: only its samples are new.
    for i, wav in enumerate(sorted(Path("audio samples/exp-b").glob("*.wav"))):
        write_wav(wav, voice(150 + 20 * i, 0.5, i, 0.7), SR)
    scored.clear()
    second = run_eval(eval_configs(project_copy))
    assert scored == [3]
    by_audio = {r["audio"]: r["mos"] for r in second.rows}
    assert all(by_audio[r["audio"]] == r["mos"] for r in first.rows)
    # New content under an old name is scored again; nothing else is.
    scored.clear()
    write_wav(Path("audio samples/exp-a/prompt_1.wav"), voice(300, 0.4, 9, 0.5), SR)
    run_eval(eval_configs(project_copy))
    assert scored == [1]
    assert json.loads(Path("audio samples/eval_scores_cache.json").read_text())["version"] == 1


def test_the_ranking_is_also_a_csv_with_intervals_verdicts_and_the_ceiling(evaluated_project):
    import csv

    root, summary = evaluated_project
    results = json.loads((root / summary.results_json).read_text())
    with open(root / "audio samples" / "eval_ranking.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    ranked = [r for r in rows if r["group"] == "all" and r["rank"]]
    assert [r["model"] for r in ranked] == [m["model"] for m in results["ranking"]["models"]]
    assert [r["rank"] for r in ranked] == ["1", "2", "3"]
    best = results["ranking"]["models"][0]
    assert float(ranked[0]["composite"]) == pytest.approx(best["composite"])
    similarity = best["metrics"]["speaker_similarity"]
    assert float(ranked[0]["speaker_similarity_mean"]) == pytest.approx(similarity["mean"])
    assert ranked[0]["speaker_similarity_n"] == str(similarity["n"])
    cells = (ranked[0]["speaker_similarity_low"], ranked[0]["speaker_similarity_high"])
    for cell, bound in zip(cells, similarity["ci"], strict=True):
        assert (cell == "") if bound is None else float(cell) == pytest.approx(bound)
    assert ranked[0]["wer_mean"] == "" and ranked[0]["mos_n"] == ""  # not measured: empty
    verdicts = {r["verdict"] for r in ranked}
    assert verdicts <= {"winner", "tie", ""} and (results["ranking"]["winner"] is None) == ("winner" not in verdicts)
    ceiling = [r for r in rows if r["verdict"] == "not ranked (ceiling)"]
    assert [(r["model"], r["rank"]) for r in ceiling] == [("real speaker", ""),
                                                          ("real speaker (codec)", "")]


def test_a_codec_round_trip_that_fails_is_reported_and_the_recordings_are_kept(project_copy, monkeypatch):
    import kanitts.evaluation.runner as runner

    for made in Path("audio samples/references").rglob("*.codec.*"):
        made.unlink()

    def refuse(*_args, **_kwargs):
        raise UserError("codec weights missing")

    monkeypatch.setattr(runner, "load_codec", refuse)
    summary = run_eval(eval_configs(project_copy))  # every sample is reused: only the round trips need it
    assert summary.failures == [f"references / alice / alice_{i}.wav: codec round trip failed: codec weights missing"
                                for i in range(2)]
    results = json.loads(summary.results_json.read_text())
    assert [r["kind"] for r in results["references"]] == ["recording", "recording"]
    assert len(results["rows"]) == 9
