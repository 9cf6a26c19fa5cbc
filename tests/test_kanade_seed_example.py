"""The usage example of the original Kanade README runs as written, on local weights.

Two edits only: `.cuda()` becomes `.to(DEVICE)` (no GPU here), and the example's `waveform`
(undefined there; it means the loaded audio) is named `audio`. The vocoder comes through the
real Hub code path, `load_vocoder()` with its default repo id, served from a local cache under
HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import soundfile as sf
import torch

from kanade_tokenizer.testing import build_tiny_model, synthetic_speech
from kanade_tokenizer.vocoders.vocos import Vocos, VocosConfig

DEVICE = "cpu"


def _cache_default_vocoder(cache, n_mels: int) -> None:
    repo = cache / "models--charactr--vocos-mel-24khz"
    commit = "1" * 40
    torch.manual_seed(0)
    Vocos(VocosConfig(n_mels=n_mels, dim=32, intermediate_dim=64, num_layers=2)).save_pretrained(
        repo / "snapshots" / commit
    )
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_seed_usage_example(tmp_path, monkeypatch):
    import huggingface_hub.constants as hfc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    tiny = build_tiny_model(seed=0)
    model_dir = tiny.save_pretrained(tmp_path / "weights")
    _cache_default_vocoder(tmp_path / "hf-cache", n_mels=tiny.config.n_mels)
    sf.write(tmp_path / "audio.wav", synthetic_speech(1.2, 24000, seed=1).numpy(), 24000)
    monkeypatch.chdir(tmp_path)

    # --- the example, as written ------------------------------------------------------------
    from kanade_tokenizer import KanadeModel, load_audio, load_vocoder, vocode

    # Load Kanade model
    config_path = f"{model_dir}/config.yaml"
    weights_path = f"{model_dir}/model.safetensors"
    model = KanadeModel.from_pretrained(config_path, weights_path=weights_path)
    model = model.eval().to(DEVICE)

    # Load vocoder
    vocoder = load_vocoder().to(DEVICE)

    # Load audio (samples,)
    audio = load_audio("audio.wav", sample_rate=model.config.sample_rate).to(DEVICE)

    # Extract features
    features = model.encode(audio)

    # Synthesize audio from extracted features
    mel_spectrogram = model.decode(
        content_token_indices=features.content_token_indices,  # (seq_len,)
        global_embedding=features.global_embedding,  # (dim,)
    )  # (n_mels, T)

    # Resynthesize waveform using vocoder
    resynthesized_waveform = vocode(vocoder, mel_spectrogram.unsqueeze(0))  # (1, samples)
    # -------------------------------------------------------------------------------------------

    assert features.content_token_indices.dim() == 1 and features.global_embedding.dim() == 1
    assert mel_spectrogram.shape[0] == model.config.n_mels
    assert resynthesized_waveform.dim() == 2 and resynthesized_waveform.shape[0] == 1
    assert resynthesized_waveform.shape[1] > 0.5 * audio.shape[0]
    assert torch.isfinite(resynthesized_waveform).all()
