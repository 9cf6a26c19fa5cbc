"""Kanade as the TTS codec: datasets, one-codebook sequences, the speaker slot, voice cloning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kanitts.config import DatasetConfig


def test_prepare_writes_tokens_embedding_and_lengths(kanade_project, tiny_kanade):
    from datasets import load_from_disk

    ds = load_from_disk(str(kanade_project.data))
    assert {"kanade_tokens_1", "encoded_len", "global_embedding", "speaker", "text"} <= set(ds.column_names)
    assert len(ds) == 6
    for row in ds:
        frames = tiny_kanade.num_frames(round(row["duration_sec"] * 24000))
        assert len(row["kanade_tokens_1"]) == row["encoded_len"] == frames
        assert len(row["global_embedding"]) == 128
        assert min(row["kanade_tokens_1"]) >= 0 and max(row["kanade_tokens_1"]) < 12800


def test_sequences_for_one_codebook(kanade_project, kanade_sequences):
    from datasets import load_from_disk

    from kanitts.tokens import TokenLayout

    sequences, report = kanade_sequences
    layout = TokenLayout.from_config(kanade_project.model_cfg)
    source = load_from_disk(str(kanade_project.data))
    by_text = {(r["speaker"], r["text"]): r for r in source}
    assert "speaker_embedding" in sequences.column_names
    for row in sequences:
        ids = row["input_ids"]
        audio = ids[ids.index(layout.start_of_speech) + 1: ids.index(layout.end_of_speech)]
        matches = [r for r in by_text.values() if len(r["kanade_tokens_1"]) == len(audio)
                   and [layout.audio_tokens_start + c for c in r["kanade_tokens_1"]] == audio]
        assert len(matches) == 1  # one token per frame, ids after the specials
        np.testing.assert_allclose(row["speaker_embedding"], matches[0]["global_embedding"], rtol=1e-6)
    text = report.format()
    seconds = sum(source["duration_sec"])
    assert f"{report.tokens / (report.audio_hours * 3600):.1f} training tokens per audio second" in text
    assert report.audio_hours * 3600 == pytest.approx(seconds, rel=0.1)


# --- the speaker slot ---------------------------------------------------------------------------

VOCAB, SOH, SOA, SLOT, PAD = 300, 280, 290, 295, 296


@pytest.fixture(scope="module")
def slot_examples():
    generator = torch.Generator().manual_seed(3)
    examples = []
    for n in (9, 14, 4):
        ids = torch.randint(3, 270, (n,), generator=generator).tolist()
        ids[0], ids[n // 2] = SOH, SOA
        embedding = torch.randn(8, generator=generator).tolist()
        examples.append({"input_ids": ids, "labels": ids, "speaker_embedding": embedding})
    return examples


@pytest.fixture(scope="module")
def conditioned_lfm2(tmp_path_factory):
    from kanitts.conditioning import SpeakerConditioning
    from kanitts.tiny import build_lfm2

    model = build_lfm2(tmp_path_factory.mktemp("lfm2_slot"), vocab_size=VOCAB).float().eval()
    return model, SpeakerConditioning.attach(model, 8, SLOT)


def test_collators_put_the_slot_after_start_of_human(slot_examples):
    from kanitts.training.batching import IGNORE_INDEX, PackingCollator, PaddingCollator, SpeakerSlot

    slot = SpeakerSlot(start_of_human=SOH, slot=SLOT)
    padded = PaddingCollator(pad_token_id=PAD, start_of_ai=SOA, loss_on="audio", speaker_slot=slot)(slot_examples)
    packed = PackingCollator(start_of_ai=SOA, speaker_slot=slot)(slot_examples)
    for row, example in enumerate(slot_examples):
        n = len(example["input_ids"]) + 1
        assert padded["input_ids"][row, :2].tolist() == [SOH, SLOT]
        assert padded["input_ids"][row, 2:n].tolist() == example["input_ids"][1:]
        assert padded["labels"][row, 1] == IGNORE_INDEX and padded["attention_mask"][row, :n].all()
        # loss_on audio still starts at start_of_ai, one later
        soa = example["input_ids"].index(SOA) + 1
        assert (padded["labels"][row, :soa] == IGNORE_INDEX).all() and padded["labels"][row, soa] == SOA
    starts = packed["cu_seq_lens_q"][:-1].tolist()
    ids, labels, positions = packed["input_ids"][0], packed["labels"][0], packed["position_ids"][0]
    assert ids[starts].tolist() == [SOH] * 3 and ids[[s + 1 for s in starts]].tolist() == [SLOT] * 3
    assert labels[[s + 1 for s in starts]].tolist() == [IGNORE_INDEX] * 3
    assert positions[[s + 1 for s in starts]].tolist() == [1, 1, 1]
    assert packed["cu_seq_lens_q"][-1] == sum(len(e["input_ids"]) + 1 for e in slot_examples)
    torch.testing.assert_close(packed["speaker_embeddings"], padded["speaker_embeddings"])
    with pytest.raises(ValueError, match=r"needs a global embedding per clip.*codec\.kind: kanade"):
        PackingCollator(start_of_ai=SOA, speaker_slot=slot)([{"input_ids": [SOH, 5, SOA]}])


def _losses(model, batch, labels):
    logits = model(**batch, use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="none", ignore_index=-100)


def test_packed_conditioned_losses_equal_unpacked(conditioned_lfm2, slot_examples):
    from kanitts.training.batching import PackingCollator, PaddingCollator, SpeakerSlot
    from kanitts.training.packing import disable_exact_packing, enable_exact_packing

    model, conditioning = conditioned_lfm2
    slot = SpeakerSlot(start_of_human=SOH, slot=SLOT)
    expected = []
    with torch.no_grad():
        for example in slot_examples:
            batch = PaddingCollator(pad_token_id=PAD, start_of_ai=SOA, speaker_slot=slot)([example])
            labels, embeddings = batch.pop("labels"), batch.pop("speaker_embeddings")
            with conditioning.conditioned(embeddings):
                losses = _losses(model, batch, labels)
            expected.append(losses[labels[0, 1:] != -100])
        # the embedding matters: another voice, another loss
        with conditioning.conditioned(-embeddings):
            assert not torch.allclose(_losses(model, batch, labels)[labels[0, 1:] != -100], expected[-1])
        batch = PackingCollator(start_of_ai=SOA, speaker_slot=slot)(slot_examples)
        labels, embeddings = batch.pop("labels"), batch.pop("speaker_embeddings")
        enable_exact_packing(model)
        try:
            with conditioning.conditioned(embeddings):
                packed = _losses(model, batch, labels)
        finally:
            disable_exact_packing(model)
    torch.testing.assert_close(packed[labels[0, 1:] != -100], torch.cat(expected), atol=1e-5, rtol=0)
    with pytest.raises(RuntimeError, match="3 speaker slot\\(s\\) in the input but no speaker embedding"):
        model(**batch, use_cache=False)


# --- training with the slot, checkpoint, voice cloning ---------------------------------------------


@pytest.fixture(scope="module")
def conditioned_checkpoint(kanade_project, kanade_sequences, tmp_path_factory):
    """One conditioned, packed experiment (2 steps) on a base model whose vocabulary is too small."""
    from transformers import AutoTokenizer

    from kanitts.config import ConfigSet, ExperimentsConfig
    from kanitts.tiny import build_lfm2
    from kanitts.tokens import TokenLayout
    from kanitts.training.experiments import run_experiments

    layout = TokenLayout.from_config(kanade_project.model_cfg)
    small = tmp_path_factory.mktemp("small_base")
    tokenizer = AutoTokenizer.from_pretrained(str(kanade_project.base))
    build_lfm2(small, vocab_size=layout.audio_tokens_start + 100, tokenizer=tokenizer)
    experiments = ExperimentsConfig.model_validate({
        "base_model": str(small),
        "experiments": [{
            "base": {"model_id": "cond"}, "lora_args": {"r": 4},
            "trainer_args": {"max_steps": 2, "learning_rate": 1e-2, "logging_steps": 1, "report_to": "none",
                             "save_strategy": "no", "use_cpu": True},
            "training": {"speaker_conditioning": "embedding", "packing": True, "max_tokens_per_batch": 512},
        }],
    })
    # the data kanade_sequences was built from: speakers in a column, no speaker_id prefixes
    dataset = DatasetConfig.model_validate({"hf_datasets": [{"reponame": str(kanade_project.data)}]})
    configs = ConfigSet(config_dir=small, experiments=experiments, model=kanade_project.model_cfg, dataset=dataset)
    root = tmp_path_factory.mktemp("ckpt")
    [result] = run_experiments(configs, checkpoints_dir=root, train_dataset=kanade_sequences[0])
    assert result.status == "done", result.error
    return result, layout, small


def test_training_saves_the_projection_and_speaker_means(conditioned_checkpoint, kanade_sequences):
    from safetensors.torch import load_file

    from kanitts.conditioning import PROJECTION_FILE, SPEAKERS_FILE

    result, layout, _ = conditioned_checkpoint
    folder = result.path
    projection = load_file(str(folder / PROJECTION_FILE))["weight"]
    assert projection.shape == (64, 128)
    means = load_file(str(folder / SPEAKERS_FILE))
    assert set(means) == {"mean", "speaker:alice", "speaker:bob"}
    sequences = kanade_sequences[0]
    alice = np.array([r["speaker_embedding"] for r in sequences if r["speaker"] == "alice"]).mean(0)
    np.testing.assert_allclose(means["speaker:alice"].numpy(), alice, rtol=1e-5, atol=1e-6)
    # the merged model is a plain LFM2 with the grown vocabulary
    weights = load_file(str(folder / "model.safetensors"))
    assert not any("speaker" in k for k in weights)
    assert any(n.startswith("vocabulary: the base model has") for n in result.notes)
    embed = next(v for k, v in weights.items() if k.endswith("embed_tokens.weight"))
    assert embed.shape[0] == layout.vocab_size


def test_voice_conditions_the_model_and_the_decoder(conditioned_checkpoint, kanade_project, tiny_kanade, monkeypatch):
    from safetensors.torch import load_file

    from kanitts.codecs import load_codec
    from kanitts.conditioning import PROJECTION, PROJECTION_FILE
    from kanitts.config import InferenceConfig
    from kanitts.inference import KaniTTS

    result = conditioned_checkpoint[0]
    inference = InferenceConfig.model_validate(
        {"model": {"torch_dtype": "float32"}, "generation": {"max_new_tokens": 8, "constrained_decoding": True}})
    codec = load_codec("kanade", kanade_project.codec_dir, device="cpu")  # KaniTTS gives it a default voice
    tts = KaniTTS.from_pretrained(result.path, codec=codec, model_cfg=kanade_project.model_cfg,
                                  inference_cfg=inference, device="cpu")
    torch.testing.assert_close(codec.voice, tts.voices["mean"])
    assert tts.conditioning is not None
    saved = load_file(str(result.path / PROJECTION_FILE))["weight"]
    torch.testing.assert_close(getattr(tts.model, PROJECTION).weight, saved)
    assert tts.prompt_ids("Hi")[:2] == [tts.layout.start_of_human, tts.layout.speaker_slot]

    seen = {"slot": [], "decoder": []}
    fill = tts.conditioning._fill_slots

    def spy_fill(module, args, output):
        if (args[0] == tts.layout.speaker_slot).any():
            seen["slot"].append(tts.conditioning._current.clone())
        return fill(module, args, output)

    decode = tts.codec.decode

    def spy_decode(codes, lengths=None, global_embeddings=None):
        seen["decoder"].append(global_embeddings.clone())
        return decode(codes, lengths, global_embeddings)

    handle = tts.model.get_input_embeddings()._forward_hooks
    key = next(k for k, v in handle.items() if v == fill)
    handle[key] = spy_fill
    monkeypatch.setattr(tts.codec, "decode", spy_decode)
    voices = [kanade_project.clips / "alice_0.wav", kanade_project.clips / "bob_1.wav"]
    for voice in voices:
        [out] = tts.synthesize("Hello there.", voice=voice)
        assert out.ok and out.sample_rate == 24000
    expected = [tiny_kanade.embed(_clip(v)) for v in voices]
    for got_slot, got_decoder, want in zip(seen["slot"], seen["decoder"], expected):
        torch.testing.assert_close(got_slot[0], want)
        torch.testing.assert_close(got_decoder[0], want)
    assert not torch.allclose(expected[0], expected[1])
    # without a clip, a training speaker's mean; then all clips' mean
    torch.testing.assert_close(tts.voice_embedding(speaker="Bob")[0], tts.voices["speaker:bob"])
    assert tts.voice_embedding()[1] == "the mean embedding of the training clips"


def test_speakers_get_the_prompt_prefix_only_where_training_had_it(conditioned_checkpoint, kanade_project,
                                                                  tmp_path, monkeypatch):
    """Trained without speaker prefixes: --speaker picks the mean voice, and the prompt stays
    bare; a prefix-trained checkpoint keeps its prefix; one without the record (older) both."""
    import json
    import shutil

    from kanitts.codecs import load_codec
    from kanitts.config import InferenceConfig
    from kanitts.errors import UserError
    from kanitts.inference import MEAN_VOICE, PROMPT_PREFIXES, KaniTTS

    folder = conditioned_checkpoint[0].path
    config = json.loads((folder / "config.json").read_text())
    assert config[PROMPT_PREFIXES] == {"language_tags": [], "speakers": []}
    inference = InferenceConfig.model_validate(
        {"model": {"torch_dtype": "float32"}, "generation": {"max_new_tokens": 6, "constrained_decoding": True}})
    codec = load_codec("kanade", kanade_project.codec_dir, device="cpu")

    def load(record):
        copy = tmp_path / f"ckpt{len(list(tmp_path.iterdir()))}"
        shutil.copytree(folder, copy)
        edited = {k: v for k, v in config.items() if k != PROMPT_PREFIXES}
        if record is not None:
            edited[PROMPT_PREFIXES] = record
        (copy / "config.json").write_text(json.dumps(edited))
        return KaniTTS.from_pretrained(copy, codec=codec, model_cfg=kanade_project.model_cfg,
                                       inference_cfg=inference, device="cpu")

    def spoken(tts, speaker):
        """What the model read and the slot's embedding, for one synthesize(speaker=...)."""
        seen = []
        generate = tts.generate_ids
        monkeypatch.setattr(tts, "generate_ids", lambda prompts, slots, **kw: seen.append((prompts, slots))
                            or generate(prompts, slots, **kw))
        [result] = tts.synthesize("Hello there.", speaker=speaker)
        [(prompts, slots)] = seen
        assert prompts == [tts.prompt_ids(result.text)]  # the prompt is that of the recorded text
        return result, slots[0]

    bare = KaniTTS.from_pretrained(folder, codec=codec, model_cfg=kanade_project.model_cfg,
                                   inference_cfg=inference, device="cpu")
    assert bare.prompt_ids("Hi", "Alice") == bare.prompt_ids("Hi")
    result, slot = spoken(bare, "Alice")
    assert result.text == "Hello there."
    torch.testing.assert_close(slot, bare.voices["speaker:alice"])
    assert result.voice == ("speaker alice's mean embedding; no 'alice:' prompt prefix "
                            "(the model trained without prompt prefixes)")
    assert not [p for p in result.problems if "speaker" in p]  # the expected case: nothing to warn of
    prefixed = load({"speakers": ["alice", "bob"], "language_tags": []})
    result, slot = spoken(prefixed, "Alice")
    assert result.text == "alice: Hello there." and result.voice == "speaker alice's mean embedding"
    torch.testing.assert_close(slot, prefixed.voices["speaker:alice"])
    assert prefixed.prompt_text("Hi", "carol") == "Hi"  # a name it never read stays out of the prompt
    tagged = load({"speakers": [], "language_tags": ["en"]})  # a language tag is a prefix, not a misspelt speaker
    result, slot = spoken(tagged, "en")
    assert result.text == "en: Hello there." and result.voice == MEAN_VOICE
    torch.testing.assert_close(slot, tagged.voices["mean"])
    assert not [p for p in result.problems if "speaker" in p]
    older = load(None)
    result, slot = spoken(older, "alice")
    assert result.text == "alice: Hello there." and result.voice == "speaker alice's mean embedding"
    torch.testing.assert_close(slot, older.voices["speaker:alice"])
    with pytest.raises(UserError, match=f"config.json {PROMPT_PREFIXES} must map speakers and language_tags"):
        load(["alice"])


def _clip(path):
    from kanade_tokenizer.audio import load_audio

    return load_audio(str(path), 24000)


def test_cli_voice_and_its_errors(conditioned_checkpoint, kanade_project, tiny_tts, tiny_codec_dir, tmp_path, capsys):
    import soundfile as sf
    import yaml

    from kanitts.cli import main

    result = conditioned_checkpoint[0]

    def config_dir(name, model_cfg, weights):
        folder = tmp_path / name
        folder.mkdir()
        dump = model_cfg.model_dump()
        dump["codec"]["weights"] = str(weights)
        (folder / "model_config.yaml").write_text(yaml.safe_dump(dump))
        (folder / "inference_config.yaml").write_text(yaml.safe_dump(
            {"model": {"torch_dtype": "float32"}, "generation": {"max_new_tokens": 8, "constrained_decoding": True}}))
        return folder

    kanade = config_dir("kanade", kanade_project.model_cfg, kanade_project.codec_dir)
    out = tmp_path / "out.wav"
    args = ["synthesize", "Hello.", "--model", str(result.path), "--config-dir", str(kanade), "-o", str(out)]
    assert main([*args, "--voice", str(kanade_project.clips / "bob_0.wav")]) == 0
    data, sr = sf.read(str(out))
    assert sr == 24000 and len(data) == 6 * 1920  # 8 tokens = 2 markers + 6 one-token frames
    said = capsys.readouterr()
    assert f"voice: the voice of {kanade_project.clips / 'bob_0.wav'}" in said.out and "note:" not in said.err
    # a speaker the model never trained on is said, and the voice it fell back to is shown
    assert main([*args, "--speaker", "carol"]) == 0
    said = capsys.readouterr()
    assert ("warning: speaker 'carol' is not one of the model's training speakers (alice, bob): spoke in the "
            "mean embedding of the training clips") in said.err
    assert "voice: the mean embedding of the training clips ('carol' is not one" in said.out
    assert main([*args, "--speaker", "Alice"]) == 0
    said = capsys.readouterr()
    assert ("voice: speaker alice's mean embedding; no 'alice:' prompt prefix (the model trained without "
            "prompt prefixes)") in said.out and "warning: speaker" not in said.err
    # a model without the slot: the voice reaches the decoder only, and the user is told
    assert main(["synthesize", "Hello.", "--model", str(kanade_project.base), "--config-dir", str(kanade),
                 "-o", str(out), "--voice", str(kanade_project.clips / "bob_0.wav")]) == 0
    assert "sets the voice of the codec's decoder only" in capsys.readouterr().err
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....WAVEfmt nonsense")
    assert main([*args, "--voice", str(broken)]) == 1
    assert f"voice clip {broken}: cannot read it as audio" in capsys.readouterr().err
    assert main([*args, "--voice", str(tmp_path / "missing.wav")]) == 1
    assert f"--voice {tmp_path / 'missing.wav'}: no such file" in capsys.readouterr().err
    nano = config_dir("nano", tiny_tts[1], tiny_codec_dir)
    assert main(["synthesize", "Hello.", "--model", str(tiny_tts[0]), "--config-dir", str(nano), "-o", str(out),
                 "--voice", str(kanade_project.clips / "bob_0.wav")]) == 1
    assert "a reference voice needs a codec with a global (speaker) embedding" in capsys.readouterr().err


def test_the_kanade_demo_configs_run_end_to_end(kanade_project, tmp_path):
    """examples/config-kanade as shipped, pointed at the tiny project, one step of training."""
    import shutil

    import yaml

    from kanitts.cli import main

    from conftest import REPO_ROOT

    config = tmp_path / "config"
    shutil.copytree(REPO_ROOT / "examples" / "config-kanade", config)
    work = "examples/work-kanade"
    clip = str(kanade_project.clips / "alice_0.wav")
    replacements = {
        f"{work}/data/alice": str(kanade_project.data), f"{work}/data/bob": str(kanade_project.data),
        f"{work}/base_model": str(kanade_project.base), f"{work}/codec": str(kanade_project.codec_dir),
        f"{work}/recordings/alice/wavs/alice_000.wav": clip, f"{work}/recordings/alice/wavs/alice_001.wav": clip,
        f"{work}/recordings/bob/wavs/bob_000.wav": str(kanade_project.clips / "bob_0.wav"),
        f"{work}/recordings/bob/wavs/bob_001.wav": str(kanade_project.clips / "bob_1.wav"),
        "max_steps: 6": "max_steps: 1", work: str(tmp_path / "work"),
    }
    for path in config.glob("*.yaml"):
        text = path.read_text()
        for old, new in replacements.items():
            text = text.replace(old, new)
        path.write_text(text)
    # scoring without the demo's tiny ASR, x-vector and MOS models (the default embedder stays)
    evaluation = yaml.safe_load((config / "eval_config.yaml").read_text())
    for key in ("intelligibility", "naturalness"):
        evaluation.pop(key, None)
    evaluation["speaker_similarity"].pop("embedder", None)
    (config / "eval_config.yaml").write_text(yaml.safe_dump(evaluation))
    only = "kanade-voice-packed"
    assert main(["data", "--config-dir", str(config)]) == 0
    assert main(["train", "--config-dir", str(config), "--only", only]) == 0
    assert main(["eval", "--config-dir", str(config), "--only", only, "--no-report"]) == 0
    checkpoint = tmp_path / "work" / "checkpoints" / only
    assert (checkpoint / "speaker_projection.safetensors").is_file()
    assert len(list((tmp_path / "work" / "audio_samples" / only).glob("*.wav"))) == 3
    # each sentence in its speaker's voice, said per row in the results
    import csv
    import json

    samples = tmp_path / "work" / "audio_samples"
    rows = json.loads((samples / "eval_results.json").read_text())["rows"]
    voices = {r["sentence_id"]: r["voice"] for r in rows}
    assert voices == {"alice_fox": "speaker alice's mean embedding", "bob_fox": "speaker bob's mean embedding",
                      "alice_new": "speaker alice's mean embedding"}
    with open(samples / "eval_results.csv", newline="") as f:
        assert {r["sentence_id"]: r["voice"] for r in csv.DictReader(f)} == voices


def test_model_card_of_a_kanade_checkpoint_loads_as_it_says(conditioned_checkpoint, kanade_project, tmp_path,
                                                             monkeypatch):
    """The card names the codec's model_config.yaml (the default would load NanoCodec), says how
    --voice and --speaker pick the voice, and its Python usage loads the model as written."""
    import re

    import yaml

    from kanitts.hub import build_model_card

    result = conditioned_checkpoint[0]
    codec = kanade_project.model_cfg.codec
    card = build_model_card(result.path, "me/cond", codec=codec)
    block = yaml.safe_load(re.search(r"```yaml\n(.*?)```", card, re.S).group(1))
    assert block == {"codec": {"kind": "kanade", "weights": codec.weights,
                               "audio_tokens_start": codec.audio_tokens_start}}
    assert 'kanitts synthesize "Hello, this is my new voice." --model me/cond --config-dir config' in card
    assert "--voice ref.wav -o out.wav` speaks in the voice of `ref.wav`" in card
    assert "and to the model's speaker slot" in card and "Training speakers" in card and "alice, bob" in card
    assert "It was trained without prompt prefixes: give the text alone." in card  # alice: is a voice only
    rows = [{"experiment_id": "cond", "sentence": "alice: Hi.", "duration_sec": 1.0, "chars_per_sec": 3.0,
             "truncated": False, "voice": "speaker alice's mean embedding"}]
    assert 'kanitts synthesize "Hello, this' in build_model_card(result.path, "me/cond", eval_rows=rows, codec=codec)
    # the Python usage, up to loading, with the checkpoint folder for the Hub id
    python = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    loading = python.split("result = ")[0].replace('"me/cond"', repr(str(result.path)))
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "model_config.yaml").write_text(yaml.safe_dump(kanade_project.model_cfg.model_dump()))
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(loading, scope)
    assert scope["tts"].codec.kind == "kanade" and scope["tts"].conditioning is not None
    # a NanoCodec model's card stays as it was: no config block, no voice cloning
    plain = build_model_card(result.path, "me/cond")
    assert "```yaml" not in plain and "--config-dir" not in plain and "Voice cloning" not in plain
