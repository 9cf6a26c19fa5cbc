"""Speaker references taken automatically from the rows the training data step holds out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from kanitts.audio import load_audio, write_wav
from kanitts.errors import ConfigError
from kanitts.evaluation.html_report import build_report, report_data
from kanitts.evaluation.references import HOW_TO_GET_REFERENCES
from kanitts.evaluation.runner import run_eval
from kanitts.hub import build_model_card
from kanitts.recipes.eval import load_eval_configs
from kanitts.sequences import build_training_dataset
from kanitts.sequences.cache import VALIDATION_SOURCES_FILE, load_validation_sources

from eval_project import SR, build_project, voice

SENTENCES = [{"alice_hi": "alice: Hello there."}, {"bob_hi": "bob: Hello there."}, {"plain": "Plain text."}]


def _edit(config_dir: Path, name: str, **sections) -> None:
    path = config_dir / name
    data = yaml.safe_load(path.read_text())
    data.update(sections)
    path.write_text(yaml.safe_dump(data))


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_tts, tiny_codec_dir):
    """An eval project whose training data is a `kanitts prepare` dataset of alice (6 clips) and
    bob (4), half of each held out; no configured references, at most two automatic ones."""
    from kanitts.prepare.options import CodecSpec, PrepareOptions
    from kanitts.prepare.pipeline import prepare_dataset

    root = tmp_path_factory.mktemp("auto_references")
    config = build_project(root, tiny_tts[0], tiny_tts[1], tiny_codec_dir)
    clips = root / "clips"
    lines = ["path,text,speaker"]
    for speaker, count, f0 in (("alice", 6, 110), ("bob", 4, 190)):
        for i in range(count):
            write_wav(clips / f"{speaker}_{i}.wav", voice(f0 + 7 * i, 0.6, f0 + i, 0.8), SR)
            lines.append(f"{speaker}_{i}.wav,{speaker.title()} reads line number {i}.,{speaker}")
    (clips / "manifest.csv").write_text("\n".join(lines) + "\n")
    prepare_dataset(PrepareOptions(input=str(clips / "manifest.csv"), output=str(root / "data"), progress=False,
                                   num_workers=1), CodecSpec(kind="nanocodec", weights=str(tiny_codec_dir)))
    (config / "dataset_config.yaml").write_text(yaml.safe_dump({
        "cache_dir": str(root / "cache"), "num_proc": 1,
        "hf_datasets": [{"reponame": str(root / "data"), "validation_fraction": 0.5}],
    }))
    (config / "eval_set.yaml").write_text(yaml.safe_dump({"eval_set": SENTENCES}))
    _edit(config, "eval_config.yaml", speaker_similarity={"embedder": "mfcc-stats", "auto_references": 2})
    return root


@pytest.fixture
def here(project, monkeypatch):
    monkeypatch.chdir(project)
    return project


def _held_out(configs):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(configs.experiments.base_model)
    train, report = build_training_dataset(configs.dataset, configs.model, tokenizer)
    trained = " ".join(tokenizer.decode(ids) for ids in train["input_ids"])
    return load_validation_sources(report), trained


def _recordings(results):
    return [r for r in results["references"] if r["kind"] == "recording"]


def test_speakers_without_references_get_recordings_of_their_held_out_rows(here):
    configs = load_eval_configs("config")
    summary = run_eval(configs, only=["base", "exp-a"])
    results = json.loads(summary.results_json.read_text(), parse_constant=pytest.fail)
    held, trained = _held_out(configs)
    assert [h.speaker for h in held].count("alice") == 3 and [h.speaker for h in held].count("bob") == 2
    # The first two held-out rows of each speaker, in dataset order; each one the recording itself.
    chosen = [h for s in ("alice", "bob") for h in [h for h in held if h.speaker == s][:2]]
    refs = _recordings(results)
    assert [(r["speaker"], r["origin"], r["source"], r["text"]) for r in refs] == [
        (h.speaker, "held-out", f"dataset {h.dataset}, row {h.row}", h.text) for h in chosen]
    for ref, row in zip(refs, chosen, strict=True):
        assert row.text not in trained  # never trained on
        copy, _ = load_audio(Path("audio samples") / ref["audio"])
        source, _ = load_audio(here / "clips" / row.source)
        assert np.allclose(copy.reshape(-1), source.reshape(-1), atol=1e-4)
    assert [r["origin"] for r in results["references"] if r["kind"] == "codec"] == ["held-out"] * 4
    sims = {r["sentence_id"]: r["speaker_similarity"] for r in summary.rows}
    assert isinstance(sims["alice_hi"], float) and isinstance(sims["bob_hi"], float) and sims["plain"] is None
    assert results["speaker_similarity"]["references"] == {"alice": {"origin": "held-out", "clips": 2},
                                                           "bob": {"origin": "held-out", "clips": 2}}
    assert results["speaker_similarity"]["reference_notes"] == []
    assert ("references: alice: 2 held out of training (automatic); bob: 2 held out of training (automatic)"
            in summary.describe())
    assert {r["origin"] for r in report_data(results, "t")["references"]} == {"held-out"}
    page = build_report(summary.results_json, here / "report").read_text()
    assert "Speaker similarity references: alice: 2 held out of training (automatic); bob: 2" in page
    card = build_model_card(here / "ckpt" / "exp-a", "me/exp-a", eval_rows=results["rows"],
                            references=results["references"])
    assert ("Speaker similarity references: alice: 2 recording(s) held out of the training data and taken "
            "automatically (never trained on); bob: 2 recording(s)") in card
    # The same choice again: deterministic.
    again = json.loads(run_eval(load_eval_configs("config"), only=["base", "exp-a"]).results_json.read_text())
    assert again["references"] == results["references"]


def test_configured_references_win_and_the_cap_holds(here):
    _edit(Path("config"), "eval_config.yaml", speaker_similarity={
        "embedder": "mfcc-stats", "auto_references": 1, "references": {"bob": ["clips/bob_0.wav"]}})
    try:
        summary = run_eval(load_eval_configs("config"), only=["base"])
    finally:
        _edit(Path("config"), "eval_config.yaml", speaker_similarity={"embedder": "mfcc-stats", "auto_references": 2})
    results = json.loads(summary.results_json.read_text())
    assert [(r["speaker"], r["origin"], r["source"]) for r in _recordings(results)] == [
        ("bob", "configured", None), ("alice", "held-out", _recordings(results)[1]["source"])]
    assert results["speaker_similarity"]["references"] == {"bob": {"origin": "configured", "clips": 1},
                                                           "alice": {"origin": "held-out", "clips": 1}}
    assert "references: bob: 1 configured; alice: 1 held out of training (automatic)" in summary.describe()


def test_a_held_out_row_whose_recording_is_gone_is_skipped_and_named(here):
    configs = load_eval_configs("config")
    held, _ = _held_out(configs)
    alice = [here / "clips" / h.source for h in held if h.speaker == "alice"]
    aside = here / "aside"
    aside.mkdir(exist_ok=True)
    try:
        alice[0].rename(aside / alice[0].name)
        summary = run_eval(load_eval_configs("config"), only=["base"])
        results = json.loads(summary.results_json.read_text())
        used = [r["text"] for r in _recordings(results) if r["speaker"] == "alice"]
        assert used == [h.text for h in held if h.speaker == "alice"][1:]  # the next ones, still two
        [note] = results["speaker_similarity"]["reference_notes"]
        assert note.startswith("alice: 1 held-out row(s) of alice skipped: no recording (dataset ")
        assert f"{alice[0]} is not on disk); 2 used" in note and f"note: {note}" in summary.describe()
        for path in alice[1:]:
            path.rename(aside / path.name)
        summary = run_eval(load_eval_configs("config"), only=["base"])
        results = json.loads(summary.results_json.read_text())
        assert {r["speaker"] for r in results["references"]} == {"bob"}
        [note] = results["speaker_similarity"]["reference_notes"]
        assert note.startswith("alice: 3 held-out row(s) of alice skipped") and "not measured for alice" in note
        assert next(r for r in summary.rows if r["sentence_id"] == "alice_hi")["speaker_similarity"] is None
    finally:
        for path in alice:
            if (aside / path.name).exists():
                (aside / path.name).rename(path)


def test_a_damaged_sources_file_costs_the_references_only(here):
    [sources] = (here / "cache").glob(f"*/{VALIDATION_SOURCES_FILE}")
    kept = sources.read_bytes()
    sources.write_text('{"version": 1, "rows": [{"dataset"')
    try:
        summary = run_eval(load_eval_configs("config"), only=["base"])
    finally:
        sources.write_bytes(kept)
    assert summary.rows and json.loads(summary.results_json.read_text())["references"] == []
    assert f"the held-out rows' sources in {sources.parent} do not read (JSONDecodeError" in summary.describe()
    assert "`kanitts data --rebuild` writes them again" in summary.describe()


def test_without_references_or_held_out_rows_the_note_says_how_to_get_them(project_copy):
    _edit(project_copy, "eval_config.yaml", speaker_similarity={"embedder": "mfcc-stats"})
    summary = run_eval(load_eval_configs(project_copy))  # its dataset_config.yaml holds nothing out
    results = json.loads(summary.results_json.read_text())
    assert results["references"] == [] and all(r["speaker_similarity"] is None for r in summary.rows)
    assert results["speaker_similarity"]["embedder"] is None
    assert results["speaker_similarity"]["note"] == f"not measured: no reference recordings; {HOW_TO_GET_REFERENCES}"
    assert results["speaker_similarity"]["reference_notes"] == [
        ("no reference recordings for alice (dataset_config.yaml holds no rows out of training): speaker "
         f"similarity not measured for them; {HOW_TO_GET_REFERENCES}")]
    assert "validation_fraction or validation_rows in dataset_config.yaml" in summary.describe()


@pytest.mark.parametrize(("value", "expected"), [
    (-1, "expected an integer >= 0, got -1"), (2.5, "expected an integer, got 2.5"),
    (True, "expected an integer, got True"), ("5", "expected an integer, got '5'"),
])
def test_a_cap_that_is_no_count_is_refused_naming_the_file_and_key(project_copy, value, expected):
    _edit(project_copy, "eval_config.yaml", speaker_similarity={"auto_references": value})
    with pytest.raises(ConfigError) as caught:
        load_eval_configs(project_copy)
    assert f"eval_config.yaml: speaker_similarity.auto_references: {expected}" in str(caught.value)
