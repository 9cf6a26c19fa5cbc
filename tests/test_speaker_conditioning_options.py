"""Speaker-conditioning options: which embedding each training and held-out sequence gets
(training.speaker_embedding), the prompt prefixes config.json lists for the upstream packages,
and a KaniTTS-2 model over Kanade tokens.

``speaker_mean`` gives every clip its speaker's mean embedding, for a Kanade-conditioned plain
LFM2 as for a KaniTTS-2 model, and the held-out rows the same training means (the validation
loss then measures the voices the model trains and speaks with). On a model that reads no
embedding the option is an error, never silently ignored. The trainer is stubbed: what matters
is the data it is handed, so no step is taken.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from kanitts.training.experiments import with_speaker_means


def _sequences(rows):
    from datasets import Dataset, Features, List, Value

    features = Features({"input_ids": List(Value("int32")), "speaker": Value("string"),
                         "speaker_embedding": List(Value("float32"))})
    return Dataset.from_dict({
        "input_ids": [[1, 2]] * len(rows), "speaker": [s for s, _ in rows],
        "speaker_embedding": [e for _, e in rows],
    }, features=features)


def test_held_out_rows_take_the_training_means():
    train = _sequences([("alice", [1.0, 0.0]), ("alice", [3.0, 0.0]), ("bob", [0.0, 2.0]), ("", [0.0, 6.0])])
    held = _sequences([("alice", [9.0, 9.0]), ("bob", [7.0, 7.0]), ("carol", [5.0, 5.0])])
    trained, validated = with_speaker_means(train, held)
    np.testing.assert_allclose(trained["speaker_embedding"], [[2, 0], [2, 0], [0, 2], [1, 2]])
    # alice and bob: their training means; carol (never trained on) and speakerless: all clips' mean
    np.testing.assert_allclose(validated["speaker_embedding"], [[2, 0], [0, 2], [1, 2]])
    assert trained.features == train.features and validated.features == held.features
    assert with_speaker_means(train)[1] is None


class _Stop(Exception):
    pass


@pytest.fixture
def handed(monkeypatch):
    """What the (stubbed) trainer is given: train and eval datasets; it stops the run there."""
    import kanitts.training.trainer as trainer_module

    seen = {}

    class Recorder:
        def __init__(self, **kwargs):
            seen.update(kwargs)
            raise _Stop("stopped before training")

    monkeypatch.setattr(trainer_module, "ExperimentTrainer", Recorder)
    return seen


@pytest.fixture(scope="module")
def kanade_rows(kanade_sequences):
    """Four training rows and the rest as held-out rows."""
    sequences, _ = kanade_sequences
    return sequences.select(range(4)), sequences.select(range(4, len(sequences)))


def _run(kanade_project, rows, training, tmp_path):
    from kanitts.config import ConfigSet, ExperimentsConfig
    from kanitts.training.experiments import run_experiments

    experiments = ExperimentsConfig.model_validate({
        "base_model": str(kanade_project.base),
        "experiments": [{"base": {"model_id": "m"}, "lora_args": {"r": 2},
                         "trainer_args": {"max_steps": 1, "report_to": "none", "use_cpu": True},
                         "training": training}],
    })
    configs = ConfigSet(config_dir=tmp_path, experiments=experiments, model=kanade_project.model_cfg)
    [result] = run_experiments(configs, checkpoints_dir=tmp_path / "ckpt", train_dataset=rows[0],
                               eval_dataset=rows[1])
    return result


def test_conditioned_kanade_training_and_validation_use_speaker_means(kanade_project, kanade_rows, handed, tmp_path,
                                                                      capsys):
    from kanitts.conditioning import MEAN_KEY, speaker_means

    result = _run(kanade_project, kanade_rows,
                  {"speaker_conditioning": "embedding", "speaker_embedding": "speaker_mean", "alpha_lr_ratio": 2.0},
                  tmp_path)
    assert result.status == "failed" and "stopped before training" in result.error
    means = speaker_means(kanade_rows[0])
    for name, dataset in (("train", handed["train_dataset"]), ("eval", handed["eval_dataset"])):
        for row in dataset:
            expected = means.get(f"speaker:{row['speaker']}", means[MEAN_KEY])
            np.testing.assert_allclose(row["speaker_embedding"], expected.numpy(), rtol=1e-6, err_msg=name)
    # the held-out clips' own embeddings differ from those means: the policy did change them
    assert not np.allclose(kanade_rows[1]["speaker_embedding"], handed["eval_dataset"]["speaker_embedding"])
    assert "note: training.alpha_lr_ratio 2.0 has no effect: the base model has no learnable RoPE" in (
        capsys.readouterr().out)


def test_speaker_mean_without_a_conditioned_model_is_an_error(kanade_project, kanade_rows, handed, tmp_path):
    result = _run(kanade_project, kanade_rows, {"speaker_embedding": "speaker_mean"}, tmp_path)
    assert result.status == "failed"
    assert "experiment 'm': training.speaker_embedding: speaker_mean" in result.error
    assert "training.speaker_conditioning: embedding" in result.error
    assert handed == {}  # refused before any trainer existed


def test_config_json_lists_the_prompt_prefixes_for_the_upstream_packages():
    from kanitts.config import DatasetConfig
    from kanitts.training.experiments import prompt_prefixes, upstream_prompt_settings

    cfg = DatasetConfig.model_validate({"hf_datasets": [
        {"reponame": "a", "speaker_id": "Alice"}, {"reponame": "b", "speaker_id": "bob"},
        {"reponame": "c", "language_tag": "ES"}]})
    prefixes = prompt_prefixes(cfg)
    assert prefixes == {"language_tags": ["es"], "speakers": ["alice", "bob"]}
    # a KaniTTS-2 base model's own tags are kept beside the trained ones
    config = SimpleNamespace(language_settings={"status": "available_language_tags", "language_tags_list": ["en"]})
    upstream_prompt_settings(config, prefixes, kanitts2=True)
    assert config.language_settings == {"status": "available_language_tags", "language_tags_list": ["en", "es"]}
    assert config.speaker_settings == {"status": "multispeaker", "speaker_list": ["alice", "bob"]}
    # a KaniTTS v1 model with one prefix: kani-tts's single-speaker status, no language keys
    v1 = SimpleNamespace()
    upstream_prompt_settings(v1, prompt_prefixes(DatasetConfig.model_validate(
        {"hf_datasets": [{"reponame": "a", "speaker_id": "alice"}]})), kanitts2=False)
    assert vars(v1) == {"speaker_settings": {"status": "singlspeaker", "speaker_list": ["alice"]}}
    untagged = SimpleNamespace()
    upstream_prompt_settings(untagged, prompt_prefixes(None), kanitts2=True)
    assert vars(untagged) == {"language_settings": {"status": "no_language_tags", "language_tags_list": []}}


def test_a_released_kanitts2_with_kanade_tokens_is_refused_with_the_way_out():
    from kanitts.models.kanitts2 import KaniTTS2Settings, layout_problems
    from kanitts.tiny import tiny_model_config
    from kanitts.tokens import TokenLayout

    layout = TokenLayout.from_config(tiny_model_config(384, kind="kanade"))
    config = SimpleNamespace(audio_tokens_start=layout.audio_tokens_start, speaker_slot_id=layout.speaker_slot)
    [problem] = layout_problems(KaniTTS2Settings.from_config(config), layout, "experiments.yaml: base_model 'k2'")
    assert problem.startswith("experiments.yaml: base_model 'k2': config.json tokens_per_frame is 4, but a frame "
                              "of the codec has 1 tokens")
    assert "use them with codec.kind: nanocodec" in problem and "tokens_per_frame: 1" in problem
    config.tokens_per_frame = 1
    assert layout_problems(KaniTTS2Settings.from_config(config), layout, "here") == []


def test_prepare_refuses_a_speaker_embedder_for_kanade_data(kanade_project, tmp_path, capsys):
    from kanitts.cli import main

    out = tmp_path / "data"
    code = main(["prepare", str(kanade_project.clips / "manifest.csv"), "--output", str(out), "--codec", "kanade",
                 "--codec-model", str(kanade_project.codec_dir), "--speaker-embedder", str(tmp_path / "embedder"),
                 "--config-dir", str(tmp_path)])
    assert code == 1 and not out.exists()  # refused before anything is encoded
    err = capsys.readouterr().err
    assert f"--speaker-embedder {tmp_path / 'embedder'}: the kanade codec writes its own global" in err
    assert "(global_embedding)" in err and "drop --speaker-embedder" in err


def test_data_refuses_a_codec_rate_other_than_the_one_the_data_was_prepared_with(kanade_project, tmp_path):
    from transformers import AutoTokenizer

    from kanitts.config import DatasetConfig, ModelConfig
    from kanitts.errors import UserError
    from kanitts.prepare.shards import SUMMARY_NAME
    from kanitts.sequences import build_training_dataset
    from kanitts.sequences.columns import PREPARE_RECORD

    assert PREPARE_RECORD == SUMMARY_NAME
    dump = kanade_project.model_cfg.model_dump()
    dump["codec"]["fps"] = 25.0  # a 25 Hz Kanade model named, the data encoded at 12.5 Hz
    cfg = DatasetConfig.model_validate({"hf_datasets": [{"reponame": str(kanade_project.data)}],
                                        "cache_dir": str(tmp_path / "cache")})
    tokenizer = AutoTokenizer.from_pretrained(str(kanade_project.base))
    with pytest.raises(UserError) as caught:
        build_training_dataset(cfg, ModelConfig.model_validate(dump), tokenizer, num_proc=1)
    assert str(caught.value) == (
        f"dataset {kanade_project.data}: codec.fps is 25, the data's codec makes 12.5 frames per second "
        f"({kanade_project.data / PREPARE_RECORD}); set model_config.yaml codec to the codec it was prepared with")
    assert not (tmp_path / "cache").exists()  # refused before any row was processed


def test_frame_dedup_on_one_codebook_data_is_warned_about(tmp_path):
    import shutil

    from kanitts.config import load_configs

    from conftest import REPO_ROOT

    shipped = REPO_ROOT / "examples" / "config-kanade"
    assert not [w for w in load_configs(shipped, kinds=("dataset", "model")).warnings if "dedup_frames" in w]
    for name in ("dataset_config.yaml", "model_config.yaml"):
        shutil.copy(shipped / name, tmp_path / name)
    dataset = tmp_path / "dataset_config.yaml"
    dataset.write_text(dataset.read_text().replace("dedup_frames: false", ""))
    [warning] = [w for w in load_configs(tmp_path, kinds=("dataset", "model")).warnings if "dedup_frames" in w]
    assert warning.startswith(f"{dataset}: dedup_frames: true (the default) drops every token equal to the one")
    assert "kanade codec a repeat is a held sound" in warning and "set dedup_frames: false" in warning
