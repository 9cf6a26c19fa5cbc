"""KanadeCodec: the Kanade tokenizer behind the Codec interface (tiny random model, offline)."""

from __future__ import annotations

import pytest
import torch

from kanade_tokenizer.testing import synthetic_speech
from kanade_tokenizer.vocoders import mel_to_audio
from kanitts.codecs import load_codec
from kanitts.config import CodecSection, ModelConfig
from kanitts.errors import UserError


def _batch(*seconds):
    waves = [synthetic_speech(s, seed=i) for i, s in enumerate(seconds)]
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    return waves, batch, lengths


def test_model_config_kind_kanade_fills_the_codec_facts():
    codec = ModelConfig.model_validate({"codec": {"kind": "kanade"}}).codec
    assert (codec.num_codebooks, codec.codebook_size, codec.sample_rate, codec.fps) == (1, 12800, 24000, 12.5)
    assert codec.weights == "frothywater/kanade-12.5hz"
    assert ModelConfig.model_validate({"codec": {"kind": "kanade"}}).codec_layers == ["kanade_tokens_1"]
    # what a file says wins; the NanoCodec defaults are unchanged
    assert CodecSection(kind="kanade", fps=25).fps == 25
    assert CodecSection().num_codebooks == 4


def test_round_trip_shapes_and_batch_equals_single(tiny_kanade):
    codec = tiny_kanade
    waves, batch, lengths = _batch(1.3, 0.7)
    codes, frames, embeddings = codec.encode_with_embeddings(batch, lengths)
    assert codes.shape == (2, 1, int(frames.max())) and embeddings.shape == (2, 128)
    assert frames.tolist() == [codec.num_frames(n) for n in lengths.tolist()] == [16, 8]
    assert codec.frame_rate == 12.5 and codec.samples_per_frame == 1920
    assert int(codes[1, 0, 8:].abs().sum()) == 0  # padding frames are zero
    for i, wave in enumerate(waves):
        one_codes, one_frames, one_embedding = codec.encode_with_embeddings(wave[None])
        assert torch.equal(one_codes[0, 0, : one_frames[0]], codes[i, 0, : frames[i]])
        torch.testing.assert_close(one_embedding[0], embeddings[i], rtol=1e-4, atol=1e-5)

    audio, sample_lengths = codec.decode(codes, frames, embeddings)
    assert audio.shape == (2, 16 * 1920) and sample_lengths.tolist() == [16 * 1920, 8 * 1920]
    assert float(audio[1, 8 * 1920:].abs().sum()) == 0.0
    one, _ = codec.decode(codes[1:, :, :8], frames[1:], embeddings[1:])
    torch.testing.assert_close(one[0], audio[1, : 8 * 1920], rtol=1e-4, atol=1e-5)


def test_equals_kanade_model_used_directly(tiny_kanade):
    codec, model = tiny_kanade, tiny_kanade.model
    wave = synthetic_speech(1.1, seed=3)
    codes, frames, embedding = codec.encode_with_embeddings(wave[None])
    feats = model.encode(wave)
    assert torch.equal(codes[0, 0, : frames[0]], feats.content_token_indices)
    torch.testing.assert_close(embedding[0], feats.global_embedding)
    audio, lengths = codec.decode(codes, frames, embedding)
    n = int(lengths[0])
    mel = model.decode(feats.global_embedding, content_token_indices=feats.content_token_indices,
                       target_audio_length=n)
    torch.testing.assert_close(audio[0], mel_to_audio(codec.vocoder, mel, n))


def test_the_voice_changes_the_audio_and_is_required(tiny_kanade):
    codec = tiny_kanade
    codes, frames, embeddings = codec.encode_with_embeddings(synthetic_speech(0.8)[None])
    with pytest.raises(ValueError, match="needs a voice"):
        codec.decode(codes, frames)
    other = codec.embed(synthetic_speech(1.0, seed=7))
    a, _ = codec.decode(codes, frames, embeddings)
    b, _ = codec.decode(codes, frames, other[None])
    assert not torch.allclose(a, b)
    codec.voice = other
    try:
        c, _ = codec.decode(codes, frames)
    finally:
        codec.voice = None
    torch.testing.assert_close(b, c)


def test_dataset_rows_carry_tokens_and_the_embedding(tiny_kanade):
    _, batch, lengths = _batch(0.9, 0.5)
    frames, rows = tiny_kanade.encode_rows(batch, lengths)
    assert [len(r["kanade_tokens_1"]) for r in rows] == [r["encoded_len"] for r in rows] == frames.tolist()
    assert all(len(r["global_embedding"]) == 128 for r in rows)
    assert set(tiny_kanade.dataset_features()) == {"kanade_tokens_1", "encoded_len", "global_embedding"}


def test_loading_errors_name_the_folder(tmp_path):
    with pytest.raises(UserError, match=f"cannot load the Kanade codec '{tmp_path}'.*config.yaml"):
        load_codec("kanade", tmp_path, device="cpu")
    with pytest.raises(UserError, match="cannot load the Kanade codec 'no/such-thing-here'"):
        load_codec("kanade", "no/such-thing-here", device="cpu")
