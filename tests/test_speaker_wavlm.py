"""The WavLM x-vector speaker embedder, loaded through its real loading code from a tiny local model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kanitts.audio import write_wav
from kanitts.errors import UserError
from kanitts.evaluation.speaker import MfccStatsEmbedder, SpeakerSimilarity, WavLMXVectorEmbedder, load_embedder

from eval_project import SR, voice


def _tiny_wavlm(folder: Path, norm: str = "layer") -> Path:
    """A random 2-layer WavLMForXVector (8-dim x-vector) with its feature extractor, saved as from the Hub."""
    import torch
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    torch.manual_seed(0)
    config = WavLMConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4), feat_extract_norm=norm,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, num_buckets=32, max_bucket_distance=64,
        tdnn_dim=(16, 16, 24), tdnn_kernel=(3, 3, 1), tdnn_dilation=(1, 2, 1), xvector_output_dim=8,
        num_labels=4, initializer_range=0.3,
    )
    WavLMForXVector(config).eval().save_pretrained(folder)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def wavlm_folder(tmp_path_factory) -> Path:
    return _tiny_wavlm(tmp_path_factory.mktemp("wavlm") / "wavlm-sv")


def test_wavlm_xvector_embeds_unit_vectors_and_batches_exactly(wavlm_folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    embedder = load_embedder(f"wavlm-xvector:{wavlm_folder}")
    assert embedder.label == "speaker verification (WavLM x-vector)" and embedder.sample_rate == 16000
    clips = [(voice(110 + 30 * i, 0.4 + 0.3 * i, i, 0.8), SR) for i in range(4)]  # 22.05 kHz, resampled
    single = [embedder.embed(audio, rate) for audio, rate in clips]
    assert all(v.shape == (8,) and np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5) for v in single)
    embedder.batch_size = 3  # two padded batches, lengths mixed across them
    batched = embedder.embed_batch(clips[::-1])[::-1]
    np.testing.assert_allclose(np.stack(batched), np.stack(single), atol=1e-4)
    assert not np.allclose(single[0], single[3], atol=1e-3)  # different clips, different vectors
    # One unpadded clip: the same vector as transformers' own forward gives.
    import torch

    wave = embedder._prepare(*clips[2])
    with torch.no_grad():
        reference = embedder.model(**embedder.features([wave], sampling_rate=16000, return_tensors="pt")).embeddings
    np.testing.assert_allclose(single[2], torch.nn.functional.normalize(reference, dim=-1)[0].numpy(), atol=1e-5)


def test_wavlm_with_group_norm_still_matches_one_at_a_time(tmp_path):
    embedder = WavLMXVectorEmbedder(str(_tiny_wavlm(tmp_path / "group", norm="group")))
    assert not embedder.pads_exactly  # group norm would see the padding: clips run alone
    clips = [(voice(120, 0.3, 0, 0.8), SR), (voice(200, 0.8, 1, 0.6), SR)]
    np.testing.assert_allclose(np.stack(embedder.embed_batch(clips)),
                               np.stack([embedder.embed(a, r) for a, r in clips]), atol=1e-5)


def test_similarity_with_wavlm_uses_batches(wavlm_folder, tmp_path):
    embedder = load_embedder(f"wavlm-xvector:{wavlm_folder}")
    calls = []
    original = embedder.embed_batch
    embedder.embed_batch = lambda clips: calls.append(len(clips)) or original(clips)
    clip = voice(130, 0.6, 2, 0.8)
    refs = [str(write_wav(tmp_path / f"ref{i}.wav", clip, SR)) for i in range(2)]
    similarity = SpeakerSimilarity(embedder, {"Alice": refs})
    assert similarity.label == embedder.label and similarity.note is None
    scores = similarity.score_batch([(clip, SR, "alice"), (clip, SR, "nobody"), (np.zeros(0, np.float32), SR, "alice"),
                                     (voice(220, 0.6, 5, 0.5), SR, "Alice")])
    assert calls == [2, 2]  # the references together, then the two samples that have a speaker and audio
    assert scores[0] == pytest.approx(1.0, abs=1e-3) and scores[1] is None and scores[2] is None
    assert -1 <= scores[3] <= 1
    assert similarity.score(clip, SR, "alice") == scores[0]


def test_wavlm_loading_errors_name_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"missing.* is neither a folder nor a Hub id"):
        load_embedder(f"wavlm-xvector:{tmp_path / 'missing'}")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a model")
    with pytest.raises(UserError, match=r"cannot load folder .*notes .*WavLMForXVector"):
        load_embedder(f"wavlm-xvector:{tmp_path / 'notes'}")
    with pytest.raises(UserError, match=r"cannot load 'nobody/no-such-wavlm' from the Hugging Face Hub"):
        load_embedder("wavlm-xvector:nobody/no-such-wavlm")


def test_wavlm_without_a_trained_head_is_refused(wavlm_folder, tmp_path):
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

    config = WavLMConfig.from_pretrained(wavlm_folder)
    WavLMModel(config).save_pretrained(tmp_path / "plain")
    Wav2Vec2FeatureExtractor.from_pretrained(wavlm_folder).save_pretrained(tmp_path / "plain")
    with pytest.raises(UserError, match="has no trained x-vector head"):
        load_embedder(f"wavlm-xvector:{tmp_path / 'plain'}")


def test_auto_falls_back_to_the_labelled_proxy_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    embedder = load_embedder("auto")
    assert isinstance(embedder, MfccStatsEmbedder) and embedder.label == "proxy (MFCC statistics)"
    assert "MFCC proxy" in embedder.note and "microsoft/wavlm-base-plus-sv" in embedder.note
    assert MfccStatsEmbedder().note is None  # the note belongs to that fallback only
