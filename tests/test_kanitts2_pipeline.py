"""A tiny KaniTTS-2 through the pipeline: prepare with embeddings, data with a language tag,
train padded and packed, reload with every parameter, synthesize --voice."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kanitts.errors import UserError

DIM = 16


@pytest.fixture(scope="module")
def k2_project(tmp_path_factory, tiny_codec_dir):
    """Base model, speaker embedder, clips of two speakers and their prepared NanoCodec dataset."""
    import csv
    from types import SimpleNamespace

    import soundfile as sf

    from kanade_tokenizer.testing import synthetic_speech
    from kanitts.config import ModelConfig
    from kanitts.prepare.options import CodecSpec, PrepareOptions
    from kanitts.prepare.pipeline import prepare_dataset
    from kanitts.tiny import build_tiny_kanitts2, build_tiny_speaker_embedder

    root = tmp_path_factory.mktemp("k2_project")
    model_cfg = build_tiny_kanitts2(root / "base", speaker_emb_dim=DIM)
    embedder = build_tiny_speaker_embedder(root / "embedder", embd_size=DIM)
    dump = model_cfg.model_dump()
    dump["codec"]["weights"] = str(tiny_codec_dir)
    dump["speaker_embedder"] = {"weights": str(embedder)}
    model_cfg = ModelConfig.model_validate(dump)
    clips = root / "clips"
    clips.mkdir()
    with open(clips / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "text", "speaker"])
        for s, speaker in enumerate(("alice", "bob")):
            for i, text in enumerate(["The quick brown fox.", "Hello there."]):
                name = f"{speaker}_{i}.wav"
                sf.write(clips / name, synthetic_speech(1.0 + 0.3 * i, seed=10 * s + i).numpy(), 24000)
                writer.writerow([name, text, speaker])
    options = PrepareOptions(input=str(clips / "manifest.csv"), output=str(root / "data"), progress=False,
                             num_workers=1, speaker_embedder=str(embedder))
    prepare_dataset(options, CodecSpec(kind="nanocodec", weights=str(tiny_codec_dir)))
    return SimpleNamespace(root=root, base=root / "base", model_cfg=model_cfg, data=root / "data",
                           clips=clips, embedder=embedder, codec_dir=tiny_codec_dir)


@pytest.fixture(scope="module")
def k2_sequences(k2_project, tmp_path_factory):
    from transformers import AutoTokenizer

    from kanitts.config import DatasetConfig
    from kanitts.sequences import build_training_dataset

    cfg = DatasetConfig.model_validate({
        "hf_datasets": [{"reponame": str(k2_project.data), "language_tag": "EN"}], "dedup_frames": False,
        "cache_dir": str(tmp_path_factory.mktemp("k2_cache")),
    })
    tokenizer = AutoTokenizer.from_pretrained(str(k2_project.base))
    dataset, _ = build_training_dataset(cfg, k2_project.model_cfg, tokenizer, num_proc=1)
    return dataset, tokenizer


@pytest.fixture(scope="module")
def k2_checkpoints(k2_project, k2_sequences, tmp_path_factory):
    from kanitts.config import ConfigSet, ExperimentsConfig
    from kanitts.training.experiments import run_experiments

    trainer = {"max_steps": 2, "learning_rate": 1e-2, "logging_steps": 1, "report_to": "none",
               "save_strategy": "no", "use_cpu": True, "weight_decay": 0.1}
    experiments = ExperimentsConfig.model_validate({
        "base_model": str(k2_project.base),
        "experiments": [
            {"base": {"model_id": "padded"}, "lora_args": {"r": 4}, "trainer_args": trainer,
             "training": {"alpha_lr_ratio": 5.0, "speaker_embedding": "speaker_mean"}},
            {"base": {"model_id": "packed"}, "lora_args": {"r": 4}, "trainer_args": trainer,
             "training": {"packing": True, "max_tokens_per_batch": 4096}},
        ],
    })
    from kanitts.config import DatasetConfig

    dataset_cfg = DatasetConfig.model_validate(
        {"hf_datasets": [{"reponame": str(k2_project.data), "language_tag": "EN"}]})
    configs = ConfigSet(config_dir=k2_project.root, experiments=experiments, model=k2_project.model_cfg,
                        dataset=dataset_cfg)
    results = run_experiments(configs, checkpoints_dir=tmp_path_factory.mktemp("k2_ckpt"),
                              train_dataset=k2_sequences[0])
    assert [r.status for r in results] == ["done", "done"], [r.error for r in results]
    k2_project.experiments = experiments  # what eval reads the model ids and the base model from
    return {r.model_id: r for r in results}


def test_prepare_adds_embeddings_and_data_the_language_tag(k2_project, k2_sequences):
    from datasets import load_from_disk

    from kanitts.models.speaker_embedder import KaniSpeakerEmbedder

    ds = load_from_disk(str(k2_project.data))
    assert "speaker_emb" in ds.column_names and len(ds[0]["speaker_emb"]) == DIM
    np.testing.assert_allclose(np.linalg.norm(np.array(ds["speaker_emb"]), axis=1), 1.0, atol=1e-5)
    # the same clip, embedded alone, gives the stored vector (from the audio the codec encoded)
    first = ds[0]
    assert float(np.array(first["speaker_emb"]) @ np.array(ds[1]["speaker_emb"])) < 0.99999
    assert KaniSpeakerEmbedder.load(str(k2_project.embedder)).dim == DIM
    dataset, tokenizer = k2_sequences
    row = dataset[0]
    assert len(row["speaker_embedding"]) == DIM
    prompt = tokenizer.decode(row["input_ids"][1:row["input_ids"].index(2)], skip_special_tokens=True)
    assert prompt.startswith("en: ")  # the tag, lower-cased as KaniTTS-2 does


def test_trained_checkpoints_reload_complete_in_the_upstream_layout(k2_project, k2_checkpoints):
    from safetensors.torch import load_file

    from kanitts.models.kanitts2 import KaniTTS2ForCausalLM

    base = load_file(str(k2_project.base / "model.safetensors"))
    for result in k2_checkpoints.values():
        folder = result.path
        config = json.loads((folder / "config.json").read_text())
        assert config["use_learnable_rope"] is True and config["speaker_emb_dim"] == DIM
        # what kani-tts-2 lists as the model's language tags (lower-cased, as in the prompts)
        assert config["language_settings"] == {"status": "available_language_tags", "language_tags_list": ["en"]}
        assert "speaker_settings" not in config  # no speaker prefixes trained
        assert config["kanitts_prompt_prefixes"] == {"language_tags": ["en"], "speakers": []}  # what inference reads
        files = sorted(p.name for p in folder.glob("*.safetensors"))
        assert files == ["model.safetensors", "speaker_embeddings.safetensors"]
        weights = load_file(str(folder / "model.safetensors"))
        assert set(weights) == set(base)  # the same names: what the upstream loader reads
        # LoRA merged, and the projection and the RoPE scales trained with it
        for key in ("model.speaker_emb_projection.weight", "model.learnable_rope_layers.1.alpha_weight"):
            assert not torch.equal(weights[key], base[key]), key
        model = KaniTTS2ForCausalLM.from_pretrained(folder)  # raises on any parameter not in the file
        assert model.kanitts2.use_learnable_rope
    padded, packed = k2_checkpoints["padded"], k2_checkpoints["packed"]
    moved = {n: (load_file(str(r.path / "model.safetensors"))["model.learnable_rope_layers.1.alpha_weight"]
                 - base["model.learnable_rope_layers.1.alpha_weight"]).abs().item() for n, r in k2_checkpoints.items()}
    assert moved["padded"] > moved["packed"]  # alpha_lr_ratio 5 against 1
    assert json.loads((packed.path / "metrics.json").read_text())["packing"] is True
    assert json.loads((padded.path / "metrics.json").read_text())["packing"] is False


def test_the_data_must_carry_embeddings_of_the_model_size(k2_project, k2_sequences, tmp_path):
    from kanitts.config import ConfigSet, ExperimentsConfig
    from kanitts.training.experiments import run_experiments

    dataset = k2_sequences[0]
    experiments = ExperimentsConfig.model_validate({
        "base_model": str(k2_project.base),
        "experiments": [{"base": {"model_id": "x"}, "trainer_args": {"max_steps": 1, "report_to": "none",
                                                                      "use_cpu": True}}],
    })
    configs = ConfigSet(config_dir=tmp_path, experiments=experiments, model=k2_project.model_cfg)
    without = dataset.remove_columns("speaker_embedding")
    [result] = run_experiments(configs, checkpoints_dir=tmp_path / "a", train_dataset=without)
    assert result.status == "failed"
    assert "is a KaniTTS-2 model, which reads a speaker embedding per clip" in result.error
    short = dataset.map(lambda row: {"speaker_embedding": row["speaker_embedding"][:4]})
    [result] = run_experiments(configs, checkpoints_dir=tmp_path / "b", train_dataset=short)
    assert result.status == "failed" and "have 4 values" in result.error and "reads 16" in result.error
    assert not (tmp_path / "a" / "x").exists() and not (tmp_path / "b" / "x").exists()


def test_synthesize_voice_clones_through_the_embedder(k2_project, k2_checkpoints, tmp_path, capsys):
    import soundfile as sf
    import yaml

    from kanitts.cli import main
    from kanitts.config import InferenceConfig
    from kanitts.inference import KaniTTS

    folder = k2_checkpoints["packed"].path
    config = tmp_path / "config"
    config.mkdir()
    (config / "model_config.yaml").write_text(yaml.safe_dump(k2_project.model_cfg.model_dump()))
    inference = {"model": {"torch_dtype": "float32"},
                 "generation": {"max_new_tokens": 10, "constrained_decoding": True}}
    (config / "inference_config.yaml").write_text(yaml.safe_dump(inference))
    from kanitts.recipes.prepare import configured_speaker_embedder

    assert configured_speaker_embedder(config) == str(k2_project.embedder)  # what prepare embeds with
    assert configured_speaker_embedder(tmp_path) is None
    out = tmp_path / "out.wav"
    voice = k2_project.clips / "bob_1.wav"
    assert main(["synthesize", "Hello.", "--model", str(folder), "--config-dir", str(config), "-o", str(out),
                 "--voice", str(voice)]) == 0, capsys.readouterr().err
    data, rate = sf.read(str(out))
    assert rate == 22050 and len(data) == 2 * 1764  # 10 tokens: 2 markers + 2 four-token frames
    tts = KaniTTS.from_pretrained(folder, model_cfg=k2_project.model_cfg,
                                  inference_cfg=InferenceConfig.model_validate(inference), device="cpu")
    embedding, where = tts.voice_embedding(voice)
    assert where == f"the voice of {voice}" and embedding.shape == (DIM,)
    from kanitts.audio import load_audio

    samples, sr = load_audio(str(voice))
    np.testing.assert_allclose(embedding.numpy(), tts.speaker_embedder.embed(samples, sr))
    assert tts.prompt_ids("Hi")[:2] == [tts.layout.start_of_human, tts.layout.speaker_slot]
    [spoken] = tts.synthesize("Hi there.", voice=voice)
    assert spoken.voice == f"the voice of {voice}"  # what eval records per sample
    [mean] = tts.synthesize("Hi there.")
    assert mean.voice == "the mean embedding of the training clips"
    torch.testing.assert_close(tts.voice_embedding(speaker="alice")[0], tts.voices["speaker:alice"])
    assert main(["synthesize", "Hello.", "--model", str(folder), "--config-dir", str(config), "-o", str(out),
                 "--voice", str(tmp_path / "missing.wav")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_eval_speaks_every_sentence_in_its_speakers_voice_and_records_it(k2_project, k2_checkpoints, tmp_path):
    from kanitts.config import ConfigSet, EvalConfig, EvalSetConfig, InferenceConfig
    from kanitts.evaluation.runner import run_eval

    configs = ConfigSet(
        config_dir=k2_project.root, experiments=k2_project.experiments, model=k2_project.model_cfg,
        inference=InferenceConfig.model_validate({
            "model": {"torch_dtype": "float32", "device_map": "cpu"},
            "generation": {"max_new_tokens": 10, "constrained_decoding": True, "batch_size": 2}}),
        eval=EvalConfig.model_validate({"paths": {
            "audio_output_dir": str(tmp_path / "audio"), "report_dir": str(tmp_path / "report"),
            "checkpoints_dir": str(k2_checkpoints["packed"].path.parent)}}),
        eval_set=EvalSetConfig.model_validate({"eval_set": [
            {"a": "alice: Hello there."}, {"b": "bob: The quick brown fox."}, {"c": "Nobody in particular."}]}),
    )
    summary = run_eval(configs)
    assert not summary.failures, summary.failures
    voices = {(r["experiment_id"], r["sentence_id"]): r["voice"] for r in summary.rows}
    assert {model for model, _ in voices} == {"base", "padded", "packed"}
    # the trained checkpoints hold the speakers' mean embeddings; trained on "en: " prompts, they
    # read no speaker prefix, and the record says so
    for model in ("padded", "packed"):
        unprefixed = "; no '{}:' prompt prefix (the model trained only with the prefixes en)"
        assert voices[(model, "a")] == "speaker alice's mean embedding" + unprefixed.format("alice")
        assert voices[(model, "b")] == "speaker bob's mean embedding" + unprefixed.format("bob")
        assert voices[(model, "c")] == "the mean embedding of the training clips"
    saved = json.loads(summary.results_json.read_text())
    assert [r["voice"] for r in saved["rows"]] == [r["voice"] for r in summary.rows]


def test_a_model_config_that_disagrees_with_the_checkpoint_is_refused(k2_project, k2_checkpoints):
    from kanitts.config import InferenceConfig, ModelConfig
    from kanitts.inference import KaniTTS

    dump = k2_project.model_cfg.model_dump()
    dump["special_tokens"]["speaker_embedding"] = dump["special_tokens"]["pad_token"] + 2
    with pytest.raises(UserError, match=r"the model's speaker slot is id \d+ .*model_config.yaml puts it at"):
        KaniTTS.from_pretrained(k2_checkpoints["packed"].path, model_cfg=ModelConfig.model_validate(dump),
                                inference_cfg=InferenceConfig(), device="cpu")
    dump = k2_project.model_cfg.model_dump()
    dump["codec"] = {"kind": "kanade"}
    with pytest.raises(ValueError, match=r"has its own global \(speaker\) embedding"):
        ModelConfig.model_validate(dump)


def test_model_card_of_a_kanitts2_checkpoint(k2_checkpoints):
    from kanitts.hub import build_model_card

    folder = k2_checkpoints["padded"].path
    rows = [{"experiment_id": "padded", "sentence": "Hi.", "duration_sec": 1.0, "chars_per_sec": 3.0,
             "truncated": False, "voice": "speaker alice's mean embedding"}]
    card = build_model_card(folder, "me/k2", eval_rows=rows)
    assert "- kanitts-2" in card and "--voice ref.wav" in card and "kani-tts-2" in card
    assert "| voice |" in card and "speaker alice's mean embedding" in card


def test_the_kanitts2_demo_configs_run_end_to_end(k2_project, tmp_path, capsys):
    """examples/config-kanitts2 as shipped (`make demo KANITTS2=1`), pointed at the tiny
    project: data, one step of the packed experiment, synthesize --voice."""
    import shutil

    from kanitts.cli import main

    from conftest import REPO_ROOT

    config = tmp_path / "config"
    shutil.copytree(REPO_ROOT / "examples" / "config-kanitts2", config)
    work = "examples/work-kanitts2"
    replacements = {
        f"{work}/data/alice": str(k2_project.data), f"{work}/data/bob": str(k2_project.data),
        f"{work}/base_model": str(k2_project.base), f"{work}/codec": str(k2_project.codec_dir),
        f"{work}/embedder": str(k2_project.embedder), "max_steps: 6": "max_steps: 1", work: str(tmp_path / "work"),
    }
    for path in config.glob("*.yaml"):
        text = path.read_text()
        for old, new in replacements.items():
            text = text.replace(old, new)
        path.write_text(text)
    only = "k2-clip-packed"
    assert main(["data", "--config-dir", str(config)]) == 0
    assert main(["train", "--config-dir", str(config), "--only", only]) == 0
    checkpoint = tmp_path / "work" / "checkpoints" / only
    config_json = json.loads((checkpoint / "config.json").read_text())
    assert config_json["speaker_settings"] == {"status": "multispeaker", "speaker_list": ["alice", "bob"]}
    assert config_json["kanitts_prompt_prefixes"]["speakers"] == ["alice", "bob"]  # their prefixes stay
    capsys.readouterr()
    out = tmp_path / "cloned.wav"
    assert main(["synthesize", "A voice from one reference clip.", "--model", str(checkpoint), "--voice",
                 str(k2_project.clips / "bob_1.wav"), "--config-dir", str(config), "-o", str(out)]) == 0
    assert out.is_file() and f"voice: the voice of {k2_project.clips / 'bob_1.wav'}" in capsys.readouterr().out


def test_a_voice_from_another_embedder_is_refused_by_name(k2_project, k2_checkpoints, tmp_path):
    """An embedder whose vectors are not the size the model's projection reads: a message, not
    a matrix-shape traceback from inside generation."""
    from kanitts.config import InferenceConfig, ModelConfig
    from kanitts.inference import KaniTTS
    from kanitts.tiny import build_tiny_speaker_embedder

    dump = k2_project.model_cfg.model_dump()
    dump["speaker_embedder"] = {"weights": str(build_tiny_speaker_embedder(tmp_path / "emb8", embd_size=8))}
    tts = KaniTTS.from_pretrained(k2_checkpoints["packed"].path, model_cfg=ModelConfig.model_validate(dump),
                                  inference_cfg=InferenceConfig(), device="cpu")
    clip = k2_project.clips / "bob_1.wav"
    with pytest.raises(UserError, match=rf"the voice of {clip}: 8 values, but the model's speaker projection "
                                        rf"reads {DIM} \(config.json speaker_emb_dim"):
        tts.synthesize(["Hello."], voice=clip)
    # a waveform given in Python goes through the same embedder, and the same check
    with pytest.raises(UserError, match=rf"the given clip: 8 values, but the model's speaker projection reads {DIM}"):
        tts.voice_embedding(torch.zeros(16000))
