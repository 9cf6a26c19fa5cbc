"""`kanade encode / decode / convert` in-process on a tiny random KanadeModel saved to a folder.

The model comes from kanade_tokenizer.testing (random weights, tiny WavLM, 16 mel bins); the
vocoder is a small random Vocos with 16 mel bins saved in the Hub layout. Everything is offline.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from kanade_tokenizer.cli import main
from kanade_tokenizer.commands import load_tokens
from kanade_tokenizer.vocoders.vocos import Vocos, VocosConfig

SR = 24000


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from kanade_tokenizer.testing import build_tiny_model

    root = tmp_path_factory.mktemp("kanade_cli_model")
    model = build_tiny_model(seed=0)
    model_dir = model.save_pretrained(root / "model")
    torch.manual_seed(0)
    vocoder_dir = Vocos(VocosConfig(n_mels=model.config.n_mels, dim=16, intermediate_dim=32, num_layers=1)).save_pretrained(
        root / "vocoder"
    )
    return model, model_dir, vocoder_dir


def speech(path, seconds, sr=SR, seed=0):
    from kanade_tokenizer.testing import synthetic_speech

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, synthetic_speech(seconds, sr, seed=seed).numpy(), sr)
    return path


def common(saved):
    _, model_dir, vocoder_dir = saved
    return ["--model", str(model_dir), "--vocoder", str(vocoder_dir), "--device", "cpu"]


def test_encode_matches_model_encode(tmp_path, saved):
    model, model_dir, _ = saved
    a = speech(tmp_path / "in" / "a.wav", 1.0, seed=1)
    b = speech(tmp_path / "in" / "sub" / "b.wav", 0.6, sr=16000, seed=2)
    out = tmp_path / "tok"
    assert main(["encode", str(tmp_path / "in"), "-o", str(out), "--batch-size", "2",
                 "--model", str(model_dir), "--device", "cpu"]) == 0
    from kanade_tokenizer import load_audio

    for src, rel in ((a, "a.safetensors"), (b, "sub/b.safetensors")):
        tok = load_tokens(out / rel)
        wave = load_audio(src, sample_rate=SR)
        ref = model.encode(wave)
        assert tok.num_samples == wave.numel()
        assert torch.equal(tok.content_token_indices, ref.content_token_indices.cpu())
        torch.testing.assert_close(tok.global_embedding, ref.global_embedding.float().cpu(), atol=1e-4, rtol=1e-4)
        assert tok.content_token_indices.numel() == model.num_tokens(wave.numel())


def test_decode_and_convert(tmp_path, saved):
    a = speech(tmp_path / "a.wav", 0.8, seed=3)
    ref = speech(tmp_path / "ref.wav", 0.5, seed=4)
    assert main(["encode", str(a), "-o", str(tmp_path / "tok"), "--model", str(saved[1]), "--device", "cpu"]) == 0
    out = tmp_path / "a_resynth.wav"
    assert main(["decode", str(tmp_path / "tok" / "a.safetensors"), "-o", str(out), *common(saved)]) == 0
    audio, sr = sf.read(out)
    assert sr == SR and audio.shape == (int(0.8 * SR),) and np.isfinite(audio).all()

    out2 = tmp_path / "voice" / "a_as_ref.wav"
    assert main(["decode", str(tmp_path / "tok" / "a.safetensors"), "-o", str(out2), "--reference", str(ref),
                 *common(saved)]) == 0
    assert sf.read(out2)[0].shape == (int(0.8 * SR),)

    out3 = tmp_path / "vc.wav"
    assert main(["convert", "--source", str(a), "--reference", str(ref), "-o", str(out3), *common(saved)]) == 0
    converted, sr = sf.read(out3)
    assert sr == SR and converted.shape == (int(0.8 * SR),)


def test_vocoder_with_wrong_mel_bins_is_refused(tmp_path, saved, capsys):
    a = speech(tmp_path / "a.wav", 0.3)
    default_vocos = Vocos(VocosConfig(dim=8, intermediate_dim=8, num_layers=1)).save_pretrained(tmp_path / "v100")
    assert main(["convert", "--source", str(a), "--reference", str(a), "-o", str(tmp_path / "o.wav"),
                 "--model", str(saved[1]), "--vocoder", str(default_vocos), "--device", "cpu"]) == 1
    assert "100-bin" in capsys.readouterr().err


def test_model_config_plus_weights(tmp_path, saved):
    _, model_dir, vocoder_dir = saved
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text((model_dir / "config.yaml").read_text())
    a = speech(tmp_path / "a.wav", 0.4)
    assert main(["encode", str(a), "-o", str(tmp_path / "t"), "--model", str(cfg),
                 "--weights", str(model_dir / "model.safetensors"), "--device", "cpu"]) == 0
    assert (tmp_path / "t" / "a.safetensors").is_file()
