"""Kanade voices per row: `kanitts serve` (a request's `voice`) and eval (each sentence's speaker).

The model is the tiny Kanade project's base LFM2 with a random speaker projection and random
speaker means saved beside it (a speaker-conditioned checkpoint without the training).
"""

from __future__ import annotations

import shutil
import threading

import httpx
import pytest
import torch

from kanitts.config import InferenceConfig
from kanitts.errors import ConfigError
from kanitts.serving.server import Server, voice_clip_paths

pytest.importorskip("fastapi")


def _config(**server) -> InferenceConfig:
    return InferenceConfig.model_validate({
        "model": {"torch_dtype": "float32"},
        "generation": {"max_new_tokens": 14, "constrained_decoding": True, "temperature": 0.8},
        "server": {"port": 0, "batch_wait_ms": 0, **server},
    })


@pytest.fixture(scope="module")
def kanade_tts(kanade_project, tmp_path_factory):
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from kanitts.codecs import load_codec
    from kanitts.conditioning import SPEAKERS_FILE, SpeakerConditioning
    from kanitts.inference import KaniTTS
    from kanitts.tokens import TokenLayout

    folder = tmp_path_factory.mktemp("kanade_cond") / "model"
    shutil.copytree(kanade_project.base, folder)
    layout = TokenLayout.from_config(kanade_project.model_cfg)
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    SpeakerConditioning.attach(model, 128, layout.speaker_slot, seed=1).save(model, folder)
    means = {key: torch.randn(128, generator=torch.Generator().manual_seed(i))
             for i, key in enumerate(("mean", "speaker:alice", "speaker:bob"))}
    save_file(means, str(folder / SPEAKERS_FILE))
    codec = load_codec("kanade", kanade_project.codec_dir, device="cpu")
    return KaniTTS.from_pretrained(folder, codec=codec, model_cfg=kanade_project.model_cfg,
                                   inference_cfg=_config(), device="cpu")


@pytest.fixture
def voices_used(kanade_tts, monkeypatch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(slots, decoded): the embeddings each batch of ``kanade_tts`` puts in the speaker slot, and
    those its codec decodes with, one tensor per batch, in order."""
    tts = kanade_tts
    slots, decoded = [], []
    conditioned = tts.conditioning.conditioned
    monkeypatch.setattr(tts.conditioning, "conditioned", lambda e: (slots.append(e.clone()), conditioned(e))[1])
    decode = tts.codec.decode

    def spy_decode(codes, lengths=None, global_embeddings=None):
        decoded.append(global_embeddings.clone())
        return decode(codes, lengths, global_embeddings)

    monkeypatch.setattr(tts.codec, "decode", spy_decode)
    return slots, decoded


def test_a_served_voice_gets_the_prompt_prefix_only_where_the_model_trained_with_it(kanade_tts, monkeypatch):
    from kanitts.inference import PROMPT_PREFIXES, KaniTTS
    from kanitts.serving.engine import model_voices

    base = kanade_tts
    monkeypatch.setattr(base.model.config, PROMPT_PREFIXES, {"speakers": ["bob"], "language_tags": []}, raising=False)
    tts = KaniTTS(base.model, base.tokenizer, base.codec, base.layout, base.generation, "ckpt",
                  base.conditioning, base.voices)
    voices = model_voices(tts, _config().server, {})
    assert voices["alice"].source == ("speaker alice's mean embedding; no 'alice:' prompt prefix "
                                      "(the model trained only with the prefixes bob)")
    assert voices["bob"].source == "speaker bob's mean embedding"
    # what the engine prompts a request's rows with (prompt_ids of the voice's prefix)
    assert tts.prompt_ids("Hi.", voices["alice"].prefix) == tts.prompt_ids("Hi.")
    assert tts.prompt_ids("Hi.", voices["bob"].prefix) == tts.prompt_ids("bob: Hi.")


def _speech(server, **body) -> httpx.Response:
    body = {"model": "tiny", "input": "Hello there.", "response_format": "pcm", "temperature": 0.9, **body}
    return httpx.post(server.url + "/v1/audio/speech", json=body, timeout=60)


def test_voices_per_row_in_one_batch_equal_each_alone(kanade_tts, kanade_project, voices_used):
    tts = kanade_tts
    clips = voice_clip_paths(_config(voice_clips={"narrator": "bob_1.wav"}).server, kanade_project.clips)
    slots, decoded = voices_used
    cfg = _config(max_batch_size=2, batch_wait_ms=10_000, voice_clips={"narrator": "bob_1.wav"})
    voices = ["alice", "narrator"]
    together: dict[str, bytes] = {}
    with Server({"tiny": tts}, cfg.server, cfg.generation, log_level="warning", voice_clips=clips) as server:
        engine = server.engines["tiny"]
        listed = httpx.get(server.url + "/v1/models").json()["data"][0]
        assert listed["voices"] == ["alice", "bob", "narrator"]
        assert listed["voice_sources"]["narrator"] == "the voice of the clip bob_1.wav"
        assert listed["voice_sources"]["alice"] == "speaker alice's mean embedding"

        def ask(voice: str) -> None:
            together[voice] = _speech(server, voice=voice, seed=5).content

        threads = [threading.Thread(target=ask, args=(v,)) for v in voices]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert engine.stats.batch_rows == [2]
    want = {"alice": tts.voices["speaker:alice"], "narrator": engine.voices["narrator"].embedding}
    assert not torch.allclose(want["alice"], want["narrator"])
    # the slot took each row's embedding, and each row's stream decoded with its own
    [batch_slots] = slots
    order = [v for v in voices if torch.allclose(batch_slots[0], want[v])]
    assert len(order) == 1
    order.append(next(v for v in voices if v != order[0]))
    for row, voice in enumerate(order):
        torch.testing.assert_close(batch_slots[row], want[voice])
    decoder_voices = {tuple(d[0].tolist()) for d in decoded}
    assert decoder_voices == {tuple(w.tolist()) for w in want.values()}
    slots.clear()
    with Server({"tiny": tts}, cfg.server.model_copy(update={"batch_wait_ms": 0}), cfg.generation,
                log_level="warning", voice_clips=clips) as server:
        for voice in voices:
            alone = _speech(server, voice=voice, seed=5).content
            assert alone == together[voice] and len(alone) > 0
        assert server.engines["tiny"].stats.batch_rows == [1, 1]
    assert together["alice"] != together["narrator"]
    for got, voice in zip(slots, voices):
        torch.testing.assert_close(got[0], want[voice])


def test_unknown_voice_is_a_400_and_nanocodec_keeps_prefixes(kanade_tts, tiny_tts, tiny_codec):
    from kanitts.inference import KaniTTS

    cfg = _config()
    nano = KaniTTS.from_pretrained(tiny_tts[0], codec=tiny_codec, model_cfg=tiny_tts[1], inference_cfg=cfg,
                                   device="cpu")
    with Server({"tiny": kanade_tts, "nano": nano}, cfg.server, cfg.generation, log_level="warning") as server:
        answer = _speech(server, voice="carol")
        assert answer.status_code == 400
        assert answer.json() == {"error": {
            "message": "voice 'carol' is not one of alice, bob", "type": "invalid_request_error",
            "param": "voice", "code": "invalid_value"}}
        assert _speech(server, voice="../x.wav").status_code == 400
        models = {m["id"]: m for m in httpx.get(server.url + "/v1/models").json()["data"]}
        assert models["nano"]["voices"] == [] and models["nano"]["voice_sources"] == {}
        assert server.engines["nano"].voices == {}
        # NanoCodec: any speaker name is a prefix, as before
        answer = _speech(server, model="nano", voice="carol", max_new_tokens=8)
        assert answer.status_code == 200 and len(answer.content) > 0


def test_voice_clips_config_errors(kanade_project, tmp_path):
    (tmp_path / "broken.wav").write_bytes(b"RIFF....WAVEfmt nonsense")
    shutil.copy(kanade_project.clips / "alice_0.wav", tmp_path / "alice.wav")
    server = _config(voice_clips={"good": "alice.wav", "gone": "missing.wav", "bad": "broken.wav"}).server
    with pytest.raises(ConfigError) as caught:
        voice_clip_paths(server, tmp_path)
    where = f"{tmp_path / 'inference_config.yaml'}: server.voice_clips"
    assert caught.value.problems[0] == f"{where}.gone: {tmp_path / 'missing.wav'}: no such file"
    assert caught.value.problems[1].startswith(f"{where}.bad: {tmp_path / 'broken.wav'}: cannot read it as audio")
    assert len(caught.value.problems) == 2
    assert voice_clip_paths(_config(voice_clips={"good": "alice.wav"}).server, tmp_path) == {
        "good": tmp_path / "alice.wav"}
    with pytest.raises(ValueError, match="'a/b' is not a voice name"):
        _config(voice_clips={"a/b": "alice.wav"})


def test_eval_speaks_each_sentence_in_its_speakers_voice(kanade_tts, voices_used):
    from kanitts.config import EvalSentence
    from kanitts.evaluation.runner import speak_sentences

    tts = kanade_tts
    slots, decoded = voices_used
    batch = [(EvalSentence("a", "alice: Hi there."), "s1"), (EvalSentence("b", "Bob: Hello."), "s2"),
             (EvalSentence("c", "Nobody knows."), "s3")]
    out = list(speak_sentences(tts, batch))
    assert [results[0].voice for _, results, _ in out] == [
        "speaker alice's mean embedding", "speaker bob's mean embedding", "the mean embedding of the training clips"]
    assert all(error is None and results[0].ok for _, results, error in out)
    want = torch.stack([tts.voices["speaker:alice"], tts.voices["speaker:bob"], tts.voices["mean"]])
    [batch_slots] = slots
    torch.testing.assert_close(batch_slots, want)
    torch.testing.assert_close(decoded[0], want)


def test_serve_stops_on_a_missing_clip_before_loading(tiny_tts, tmp_path, capsys):
    import yaml

    from kanitts.cli import main

    (tmp_path / "model_config.yaml").write_text(yaml.safe_dump(tiny_tts[1].model_dump()))
    (tmp_path / "inference_config.yaml").write_text(yaml.safe_dump({"server": {"voice_clips": {"narrator": "n.wav"}}}))
    assert main(["serve", "--model", str(tmp_path / "no_model"), "--config-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    where = f"{tmp_path / 'inference_config.yaml'}: server.voice_clips.narrator"
    assert f"{where}: {tmp_path / 'n.wav'}: no such file" in err
