"""`kanitts eval`: files, rows, dataset, resume, failures, metrics and speaker similarity."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from kanitts.audio import write_wav
from kanitts.errors import UserError
from kanitts.evaluation.metrics import measure, silence_edges
from kanitts.evaluation.results import CSV_COLUMNS, slugify
from kanitts.evaluation.runner import BASE_ID, run_eval
from kanitts.evaluation.speaker import MfccStatsEmbedder, SpeakerSimilarity, load_embedder

from eval_project import EXPERIMENTS, SR, eval_configs, voice


def test_slugify_gives_names_safe_on_every_os():
    assert slugify("prompt:1 / alice?") == "prompt_1_alice"
    assert slugify("a*b|c<d>e\"f") == "a_b_c_d_e_f"
    assert slugify("...") == "unnamed"
    assert slugify("con") == "_con" and slugify("NUL.txt") == "_NUL.txt" and slugify("console") == "console"


def test_sentence_ids_that_would_share_a_file_are_refused(project_copy):
    eval_set = {"eval_set": [{"Prompt 1": "alice: One."}, {"prompt:1": "alice: Two."}]}
    (project_copy / "eval_set.yaml").write_text(yaml.safe_dump(eval_set))
    with pytest.raises(UserError, match="same file name"):
        run_eval(eval_configs(project_copy))


def test_eval_writes_files_rows_dataset_and_report(evaluated_project):
    root, summary = evaluated_project
    assert summary.failures == [] and summary.succeeded
    assert summary.generated == 9 and summary.reused == 0
    audio_dir = root / summary.csv_path

    ids = [BASE_ID] + [e[0] for e in EXPERIMENTS]
    assert [r["experiment_id"] for r in summary.rows] == [i for i in ids for _ in range(3)]
    for row in summary.rows:
        wav = audio_dir.parent / row["audio"]
        assert wav.is_file() and wav.with_suffix(".json").is_file()
        assert all(ch.isalnum() or ch in "-_./" for ch in row["audio"])
        assert row["duration_sec"] == pytest.approx(3 * 1764 / SR, abs=1e-3)  # 14 tokens = 2 + 3 frames
        assert row["truncated"] and "end_of_speech" in row["problems"]
        assert json.loads(row["train_configuration"])
    assert {r["audio"] for r in summary.rows if r["experiment_id"] == "exp-a"} == {
        "exp-a/prompt_1.wav", "exp-a/prompt_2.wav", "exp-a/no_speaker.wav"}
    # Speaker similarity only where the speaker has references.
    sims = {r["sentence_id"]: r["speaker_similarity"] for r in summary.rows if r["experiment_id"] == BASE_ID}
    assert sims["no speaker"] is None and -1 <= sims["prompt 1"] <= 1
    config = json.loads(next(r for r in summary.rows if r["experiment_id"] == "exp-b")["train_configuration"])
    assert config["experiment"]["lora_args"]["r"] == 16

    with open(audio_dir, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == CSV_COLUMNS
        assert len(list(reader)) == 9

    from datasets import Audio, load_from_disk

    ds = load_from_disk(str(root / summary.dataset_dir))
    for column in ("experiment_id", "train_configuration", "sentence_id", "sentence", "audio"):
        assert column in ds.column_names
    assert isinstance(ds.features["audio"], Audio) and ds.features["audio"].sampling_rate == SR
    assert (root / summary.report_index).is_file()


def test_eval_dataset_rows_read_back_without_an_audio_backend(evaluated_project):
    """datasets decodes Audio through torchcodec, which is not installed: the column is stored
    undecoded, so `load_from_disk(path)[0]["audio"]` works and holds the WAV file."""
    import io

    import soundfile as sf
    from datasets import load_from_disk

    root, summary = evaluated_project
    row = load_from_disk(str(root / summary.dataset_dir))[0]
    wav = root / summary.csv_path.parent / summary.rows[0]["audio"]
    assert row["audio"] == {"bytes": wav.read_bytes(), "path": "base__prompt_1.wav"}
    audio, rate = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
    assert rate == SR and np.array_equal(audio, sf.read(str(wav), dtype="float32")[0])
    assert row["experiment_id"] == BASE_ID and row["sentence_id"] == "prompt 1"


def test_eval_resumes_and_regenerates_what_changed(project_copy):
    configs = eval_configs(project_copy)
    again = run_eval(configs)
    assert (again.generated, again.reused) == (0, 9)

    eval_set = yaml.safe_load((project_copy / "eval_set.yaml").read_text())
    eval_set["eval_set"][0] = {"prompt 1": "alice: Something else entirely."}
    (project_copy / "eval_set.yaml").write_text(yaml.safe_dump(eval_set))
    wav = Path("audio samples/exp-a/no_speaker.wav")
    stamp = wav.stat().st_mtime_ns
    changed = run_eval(eval_configs(project_copy))
    assert (changed.generated, changed.reused) == (3, 6)
    assert wav.stat().st_mtime_ns == stamp

    forced = run_eval(eval_configs(project_copy), force=True, only=["exp-a"])
    assert (forced.generated, forced.reused) == (3, 0)
    assert {r["experiment_id"] for r in forced.rows} == {"exp-a"}


def test_eval_leaves_the_global_random_state_as_it_was(project_copy):
    """Generation is seeded inside the run; numpy's and torch's global generators are not changed."""
    import random

    import torch

    np.random.seed(7)
    torch.manual_seed(7)
    random.seed(7)
    before = (np.random.get_state()[1].copy(), torch.random.get_rng_state().clone(), random.getstate())
    first = run_eval(eval_configs(project_copy), force=True, only=["base"])
    assert first.generated == 3
    assert np.array_equal(np.random.get_state()[1], before[0])
    assert torch.equal(torch.random.get_rng_state(), before[1]) and random.getstate() == before[2]
    wav = Path("audio samples/base/prompt_1.wav")
    audio = wav.read_bytes()
    torch.manual_seed(99)  # another caller state: the same seeded samples
    run_eval(eval_configs(project_copy), force=True, only=["base"])
    assert wav.read_bytes() == audio


def test_reference_processing_num_proc_loads_with_a_note(project_copy, capsys):
    from kanitts.cli import main
    from kanitts.config import load_configs

    config = yaml.safe_load((project_copy / "eval_config.yaml").read_text())
    config["processing"] = {"num_proc": 4}
    (project_copy / "eval_config.yaml").write_text(yaml.safe_dump(config))
    assert load_configs(project_copy, kinds=("eval",)).eval.processing.notes == [
        "processing.num_proc is ignored (eval needs no process pool); remove it"]
    assert main(["eval", "--config-dir", str(project_copy), "--no-report"]) == 0
    assert (f"warning: {project_copy / 'eval_config.yaml'}: processing.num_proc is ignored"
            in capsys.readouterr().out)
    config["processing"] = {"num_proc": 0}
    (project_copy / "eval_config.yaml").write_text(yaml.safe_dump(config))
    assert main(["eval", "--config-dir", str(project_copy), "--no-report"]) == 1
    assert "eval_config.yaml: processing.num_proc: expected a positive number, got 0" in capsys.readouterr().err


def test_missing_checkpoint_is_named_and_the_rest_goes_on(project_copy):
    shutil.rmtree("ckpt/exp-b")
    summary = run_eval(eval_configs(project_copy))
    assert len(summary.failures) == 1
    assert "exp-b" in summary.failures[0] and "no checkpoint" in summary.failures[0]
    assert {r["experiment_id"] for r in summary.rows} == {BASE_ID, "exp-a"}
    assert not summary.succeeded


def test_a_model_or_sentence_that_fails_is_reported(project_copy):
    from kanitts.inference import KaniTTS

    def flaky_loader(path, **kwargs):
        if str(path).endswith("exp-a"):
            raise OSError("weights are corrupt")
        tts = KaniTTS.from_pretrained(path, **kwargs)
        real = tts.synthesize

        def synthesize(texts, **kw):
            if any("fox" in t for t in texts):
                raise RuntimeError("simulated out of memory")
            return real(texts, **kw)

        tts.synthesize = synthesize
        return tts

    summary = run_eval(eval_configs(project_copy), force=True, only=["base", "exp-a"],
                       load_model=flaky_loader)
    assert any(f.startswith("exp-a: cannot load") for f in summary.failures)
    fox = [f for f in summary.failures if "prompt:2" in f]
    assert len(fox) == 1 and "simulated out of memory" in fox[0]
    assert sorted(r["sentence_id"] for r in summary.rows) == ["no speaker", "prompt 1"]


def test_unknown_only_id_is_a_user_error(project_copy):
    with pytest.raises(UserError, match="unknown id"):
        run_eval(eval_configs(project_copy), only=["nope"])


def test_metrics_of_a_known_signal():
    silence = np.zeros(int(0.5 * SR), dtype=np.float32)
    tone = 0.5 * np.sin(2 * np.pi * 220 * np.arange(SR) / SR).astype(np.float32)
    audio = np.concatenate([silence, tone, silence[: SR // 4]])
    audio[1000 + SR // 2] = 1.0  # one clipped sample
    m = measure(audio, SR, num_chars=35, truncated=False)
    assert m.duration_sec == pytest.approx(1.75, abs=1e-3)
    assert m.chars_per_sec == pytest.approx(20.0, abs=0.01)
    assert m.leading_silence_sec == pytest.approx(0.5, abs=0.021)
    assert m.trailing_silence_sec == pytest.approx(0.25, abs=0.021)
    assert m.clipping_fraction == pytest.approx(1 / len(audio), rel=0.01)
    assert m.peak_dbfs == pytest.approx(0.0, abs=0.01)
    assert silence_edges(np.zeros(SR, dtype=np.float32), SR) == (1.0, 0.0)
    empty = measure(np.zeros(0, dtype=np.float32), SR, num_chars=5, truncated=True)
    assert empty.duration_sec == 0 and empty.chars_per_sec is None and empty.truncated


def test_mfcc_embedder_tells_two_voices_apart(tmp_path):
    low = [write_wav(tmp_path / f"low{i}.wav", voice(100, 1.5, i, 0.85), SR) for i in range(2)]
    similarity = SpeakerSimilarity(MfccStatsEmbedder(), {"Low": [str(p) for p in low]})
    same = similarity.score(voice(104, 1.3, 7, 0.85), SR, "low")
    other = similarity.score(voice(230, 1.3, 7, 0.55), SR, "low")
    assert same > other
    assert similarity.score(voice(100, 1.0, 3, 0.85), SR, "nobody") is None
    vector = MfccStatsEmbedder().embed(voice(100, 1.0, 1, 0.8), SR)
    assert vector.shape == (38,) and np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_embedder_names_are_checked(tmp_path):
    with pytest.raises(UserError, match="unknown speaker embedder"):
        load_embedder("wavlm")
    with pytest.raises(UserError, match="kanade:<folder"):
        load_embedder("kanade")
    with pytest.raises(UserError, match="file not found"):
        SpeakerSimilarity(MfccStatsEmbedder(), {"alice": [str(tmp_path / "missing.wav")]})


def test_kanade_global_embedding_as_speaker_embedder(tmp_path):
    pytest.importorskip("kanade_tokenizer")
    from kanade_tokenizer.testing import build_tiny_model

    folder = build_tiny_model().save_pretrained(tmp_path / "kanade")
    embedder = load_embedder(f"kanade:{folder}")
    assert embedder.sample_rate == 24000
    clip = voice(120, 1.0, 0, 0.8)
    vector = embedder.embed(clip, SR)
    assert vector.ndim == 1 and np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    ref = write_wav(tmp_path / "ref.wav", clip, SR)
    similarity = SpeakerSimilarity(embedder, {"alice": [str(ref)]})
    assert similarity.score(clip, SR, "alice") == pytest.approx(1.0, abs=1e-2)
    with pytest.raises(UserError, match="cannot load the Kanade tokenizer"):
        load_embedder(f"kanade:{tmp_path / 'missing'}")


def test_cli_eval_and_report(project_copy, capsys):
    from kanitts.cli import main

    assert main(["eval", "--config-dir", str(project_copy)]) == 0
    out = capsys.readouterr().out
    assert "9 samples (0 generated, 9 reused)" in out and "report/index.html" in out
    assert "exp-b: 3 samples, 3 truncated, mean 0.24 s, speaker similarity" in out
    shutil.rmtree("report")
    assert main(["report", "--config-dir", str(project_copy)]) == 0
    assert Path("report/index.html").is_file()
    shutil.rmtree("ckpt/exp-a")
    assert main(["eval", "--config-dir", str(project_copy), "--no-report"]) == 1
    assert "exp-a: no checkpoint" in capsys.readouterr().out
    Path("audio samples/eval_results.json").unlink()
    assert main(["report", "--config-dir", str(project_copy)]) == 1
    assert "run `make eval` first" in capsys.readouterr().err
