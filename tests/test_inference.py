"""KaniTTS inference: batched generation, the prompt, and decoding of every kind of bad stream."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from kanitts.audio import write_wav
from kanitts.config import InferenceConfig
from kanitts.errors import UserError
from kanitts.inference import KaniTTS, LayoutConstraint
from kanitts.tiny import tiny_model_config

SPF = 1764  # samples per NanoCodec frame


def _inference_cfg(**generation) -> InferenceConfig:
    settings = {"max_new_tokens": 30, "constrained_decoding": True, "batch_size": 4, **generation}
    return InferenceConfig.model_validate({"model": {"torch_dtype": "float32"}, "generation": settings})


@pytest.fixture(scope="module")
def tts(tiny_tts, tiny_codec):
    folder, cfg = tiny_tts
    return KaniTTS.from_pretrained(
        folder, codec=tiny_codec, model_cfg=cfg, inference_cfg=_inference_cfg(), device="cpu"
    )


class ScriptedStreams:
    """Logits processor that makes row r of the batch write exactly ``scripts[r]``, then padding."""

    def __init__(self, scripts: list[list[int]], prompt_width: int, pad: int):
        self.scripts, self.width, self.pad = scripts, prompt_width, pad

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.width
        forced = torch.full_like(scores, float("-inf"))
        for row, script in enumerate(self.scripts):
            forced[row, script[step] if step < len(script) else self.pad] = 0.0
        return forced


def _frames_ids(layout, codes: np.ndarray) -> list[int]:
    return layout.frames_to_ids(codes, dedup=False).tolist()


def _stream(layout, codes: np.ndarray, end: bool = True) -> list[int]:
    ids = [layout.start_of_ai, layout.start_of_speech, *_frames_ids(layout, codes)]
    return ids + [layout.end_of_speech] if end else ids


def test_prompt_is_the_reference_prompt(tts, tiny_tokenizer, tiny_layout):
    ids = tts.prompt_ids("Hello there.", speaker="Alice")
    text_ids = tiny_tokenizer("alice: Hello there.").input_ids
    assert text_ids[0] == tiny_layout.start_of_text
    assert ids == [tiny_layout.start_of_human, *text_ids, tiny_layout.end_of_text, tiny_layout.end_of_human]


def test_a_speaker_the_model_never_trained_as_a_prefix_is_left_out_and_said(tts, monkeypatch):
    """A checkpoint's config.json record of its training prefixes decides the prompt; a speaker
    outside it changes nothing for a model without voices, which the result says."""
    from kanitts.inference import PROMPT_PREFIXES

    def recorded(record, **upstream):
        for key, value in {PROMPT_PREFIXES: record, **upstream}.items():
            monkeypatch.setattr(tts.model.config, key, value, raising=False)
        return KaniTTS(tts.model, tts.tokenizer, tts.codec, tts.layout, tts.generation, "ckpt")

    model = recorded({"speakers": ["alice"], "language_tags": ["en"]})
    assert model.prompt_ids("Hello.", "Alice") == tts.prompt_ids("Hello.", "alice")
    assert model.prompt_text("Hello.", "EN") == "en: Hello."  # a language tag is a trained prefix too
    [result] = model.synthesize(["Hello."], speaker="bob", max_new_tokens=6)
    assert result.text == "Hello." and result.voice == ""
    assert ("speaker 'bob' changes nothing: no 'bob:' prompt prefix (the model trained only with the prefixes "
            "alice, en), and it takes no voice embedding") in result.problems
    # the base model's own speakers (kani-tts's speaker_settings) are prefixes it still knows
    based = recorded({"speakers": [], "language_tags": []},
                     speaker_settings={"status": "singlspeaker", "speaker_list": ["Carol"]})
    assert based.prompt_text("Hi", "carol") == "carol: Hi" and based.prompt_text("Hi", "bob") == "Hi"
    with pytest.raises(UserError, match=rf"model 'ckpt': config.json {PROMPT_PREFIXES} must map speakers"):
        recorded({"speakers": "alice"})


def test_batched_generation_matches_one_prompt_at_a_time(tts):
    texts = ["Hi.", "The quick brown fox jumps over the lazy dog.", "alice: Please call Stella."]
    prompts = [tts.prompt_ids(t) for t in texts]
    greedy = {"do_sample": False, "max_new_tokens": 18}
    batched = tts.generate_ids(prompts, **greedy)
    alone = [tts.generate_ids([p], **greedy)[0] for p in prompts]
    for together, single in zip(batched, alone):
        np.testing.assert_array_equal(together, single)


def test_constrained_streams_always_decode_to_whole_frames(tts):
    results = tts.synthesize(["Hello.", "The birch canoe slid on the smooth planks."], speaker="alice")
    assert [r.text for r in results] == ["alice: Hello.", "alice: The birch canoe slid on the smooth planks."]
    for r in results:
        assert r.num_frames > 0
        assert len(r.audio) == r.num_frames * SPF and r.audio.dtype == np.float32
        assert all("codebook" not in p and "partial" not in p for p in r.problems)
        assert r.sample_rate == 22050


def test_layout_constraint_allows_only_the_expected_token(tiny_layout):
    c = LayoutConstraint(tiny_layout, prompt_width=5)
    lay = tiny_layout
    assert c.allowed(0) == [(lay.start_of_ai, lay.start_of_ai + 1)]
    assert c.allowed(1) == [(lay.start_of_speech, lay.start_of_speech + 1)]
    first = int(lay.codebook_offsets[0])
    assert c.allowed(2) == [(first, first + lay.codebook_size)]  # no empty utterance
    second = int(lay.codebook_offsets[1])
    assert c.allowed(3) == [(second, second + lay.codebook_size)]
    assert (lay.end_of_speech, lay.end_of_speech + 1) in c.allowed(2 + lay.num_codebooks)


def test_scripted_batch_stops_at_end_of_speech_per_row(tts, tiny_layout):
    rng = np.random.default_rng(0)
    codes = [rng.integers(0, 4032, size=(4, n)) for n in (2, 5)]
    texts = ["one", "two words", "three words here"]
    prompts = [tts.prompt_ids(t) for t in texts]
    width = max(map(len, prompts))
    scripts = [_stream(tiny_layout, codes[0]), _stream(tiny_layout, codes[1]), [tiny_layout.start_of_ai] * 40]
    processor = ScriptedStreams(scripts, width, tts.pad_token_id)
    generated = tts.generate_ids(prompts, do_sample=False, max_new_tokens=26, logits_processor=[processor])
    results = tts.decode_ids(texts, generated)

    assert [r.num_frames for r in results] == [2, 5, 0]
    assert [r.truncated for r in results] == [False, False, True]
    assert results[0].num_generated_tokens == len(scripts[0])
    assert len(results[1].audio) == 5 * SPF
    assert results[2].audio.size == 0 and any("no end_of_speech" in p for p in results[2].problems)
    # The same codes decoded alone give the same audio: batching and padding change nothing.
    alone = tts.decode_ids(["two words"], [np.array(scripts[1])])[0]
    np.testing.assert_allclose(results[1].audio, alone.audio, atol=1e-5)


def test_every_decoding_failure_keeps_the_valid_part_and_spares_the_batch(tts, tiny_layout):
    lay = tiny_layout
    rng = np.random.default_rng(1)
    good = rng.integers(0, 4032, size=(4, 3))
    wrong_codebook = _stream(lay, good, end=False)
    wrong_codebook[2 + 4 * 1 + 1] = int(lay.codebook_offsets[0]) + 5  # frame 1, slot 1: a codebook-0 token
    partial = _stream(lay, good, end=False) + [int(lay.codebook_offsets[0]) + 1, lay.end_of_speech]
    no_end = _stream(lay, good, end=False)
    out_of_range = _stream(lay, good, end=False) + [lay.audio_tokens_end + 3, lay.end_of_speech]
    text_tokens = [lay.start_of_ai, lay.start_of_speech, 5, 6, 7, 8, lay.end_of_speech]
    streams = [_stream(lay, good), wrong_codebook, partial, no_end, out_of_range, text_tokens, []]
    results = tts.decode_ids([f"s{i}" for i in range(len(streams))], [np.array(s, dtype=np.int64) for s in streams])

    ok, wrong, part, unfinished, beyond, text, empty = results
    assert ok.num_frames == 3 and not ok.truncated and ok.problems == []
    assert wrong.num_frames == 2 and wrong.dropped_frames == 1 and any("codebook-1" in p for p in wrong.problems)
    assert part.num_frames == 3 and part.truncated and any("partial last frame" in p for p in part.problems)
    assert unfinished.num_frames == 3 and unfinished.truncated
    assert beyond.num_frames == 3 and not beyond.truncated and beyond.dropped_frames == 0
    assert any(f"token {lay.audio_tokens_end + 3}" in p for p in beyond.problems)
    assert text.num_frames == 0 and text.audio.size == 0 and "no audio frames generated" in text.problems
    assert empty.num_frames == 0 and empty.problems
    for r in (part, unfinished, beyond):
        np.testing.assert_allclose(r.audio[: 2 * SPF], ok.audio[: 2 * SPF], atol=1e-5)
    # only the broken frame is missing: the audio of frames 0 and 2
    without = tts.decode_ids(["0 and 2"], [np.array(_stream(lay, good[:, [0, 2]]))])[0]
    np.testing.assert_allclose(wrong.audio, without.audio, atol=1e-5)


def test_a_codec_failure_on_one_sample_spares_the_others(tts, tiny_layout, monkeypatch):
    real_decode = tts.codec.decode

    def picky_decode(codes, lengths):
        if bool((codes == 4031).any()):
            raise RuntimeError("simulated decoder failure")
        return real_decode(codes, lengths)

    monkeypatch.setattr(tts.codec, "decode", picky_decode)
    fine = np.full((4, 2), 7)
    poison = np.full((4, 2), 4031)
    streams = [np.array(_stream(tiny_layout, c)) for c in (fine, poison, fine)]
    results = tts.decode_ids(["a", "b", "c"], streams)
    assert [r.num_frames for r in results] == [2, 0, 2]
    assert "codec decoding failed" in results[1].problems[-1]


def test_several_takes_per_text_come_text_major(tts):
    results = tts.synthesize(["one", "two"], num_return_sequences=2, max_new_tokens=10)
    assert [r.text for r in results] == ["one", "one", "two", "two"]


def test_layout_that_does_not_fit_the_model_is_refused(tiny_tts, tiny_codec):
    folder, _ = tiny_tts
    with pytest.raises(UserError, match="token embeddings"):
        KaniTTS.from_pretrained(folder, codec=tiny_codec, model_cfg=tiny_model_config(64400), device="cpu")


def test_missing_model_folder_is_named(tmp_path, tiny_tts, tiny_codec):
    with pytest.raises(UserError, match="model folder not found"):
        KaniTTS.from_pretrained(tmp_path / "nope", codec=tiny_codec, model_cfg=tiny_tts[1], device="cpu")


def test_write_wav_is_16_bit_pcm(tmp_path):
    path = write_wav(tmp_path / "a" / "x.wav", np.array([0.0, 0.5, -2.0], dtype=np.float32), 22050)
    info = sf.info(str(path))
    assert (info.samplerate, info.subtype, info.frames) == (22050, "PCM_16", 3)
    assert [p.name for p in path.parent.iterdir()] == ["x.wav"]  # no temporary file left


def test_cli_synthesize_writes_a_wav(tmp_path, tiny_tts, tiny_codec_dir):
    from kanitts.cli import main

    folder, cfg = tiny_tts
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    model_cfg = cfg.model_dump()
    model_cfg["codec"]["weights"] = str(tiny_codec_dir)
    (config_dir / "model_config.yaml").write_text(yaml.safe_dump(model_cfg))
    (config_dir / "inference_config.yaml").write_text(
        yaml.safe_dump({"model": {"torch_dtype": "float32"},
                        "generation": {"max_new_tokens": 14, "constrained_decoding": True}})
    )
    out = tmp_path / "out.wav"
    code = main(["synthesize", "Hello there.", "--model", str(folder), "--speaker", "alice",
                 "--config-dir", str(config_dir), "-o", str(out)])
    assert code == 0
    data, sr = sf.read(str(out))
    assert sr == 22050 and len(data) == 3 * SPF  # 14 tokens = 2 markers + 3 frames
    # --seed: the same seed samples the same audio again, another seed other audio
    seeded = {}
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        seeded[name] = tmp_path / f"{name}.wav"
        assert main(["synthesize", "Hello there.", "--model", str(folder), "--seed", seed,
                     "--config-dir", str(config_dir), "-o", str(seeded[name])]) == 0
    audio = {name: sf.read(str(path))[0] for name, path in seeded.items()}
    np.testing.assert_array_equal(audio["a"], audio["b"])
    assert not np.array_equal(audio["a"], audio["c"])


@pytest.mark.parametrize("seed", ["-1", "1.5", "seven", str(2**64)])
def test_cli_synthesize_refuses_a_seed_that_is_not_a_whole_number(seed, capsys):
    from kanitts.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["synthesize", "Hello.", "--model", "m", "--seed", seed])
    assert exit_info.value.code == 2
    assert f"argument --seed: {seed!r} is not a whole number from 0 to 2**64 - 1" in capsys.readouterr().err


def test_unsupported_device_is_named():
    from kanitts.runtime import resolve_device

    assert resolve_device("cpu") == "cpu"
    with pytest.raises(UserError, match="balanced"):
        resolve_device("balanced")


@pytest.mark.parametrize("name", ["bf16", "bfloat16", "fp16"])
def test_torch_dtype_takes_both_spellings_and_the_cpu_runs_fp32(tiny_tts, tiny_codec, name):
    import torch

    folder, cfg = tiny_tts
    inference_cfg = InferenceConfig.model_validate({"model": {"torch_dtype": name}})
    tts = KaniTTS.from_pretrained(folder, codec=tiny_codec, model_cfg=cfg, inference_cfg=inference_cfg, device="cpu")
    assert tts.model.dtype == torch.float32  # half precision is the GPU's: the CPU computes in fp32


def test_an_unknown_torch_dtype_lists_both_spellings():
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        InferenceConfig.model_validate({"model": {"torch_dtype": "half"}})
    assert "'bf16'" in str(err.value) and "'bfloat16'" in str(err.value)
