"""kanade_tokenizer.audio: load_audio on files made with soundfile in tmp_path."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from kanade_tokenizer.audio import AudioLoadError, load_audio, save_audio


def tone(sr: int, seconds: float, freq: float = 440.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_mono_same_rate_is_peak_normalised(tmp_path):
    x = tone(24000, 0.5)
    sf.write(tmp_path / "a.wav", x, 24000, subtype="FLOAT")
    y = load_audio(tmp_path / "a.wav", sample_rate=24000)
    assert y.dtype == torch.float32 and y.shape == (12000,)
    expected = x / (np.abs(x).max() + 1e-8)
    np.testing.assert_allclose(y.numpy(), expected, rtol=0, atol=1e-6)
    assert abs(float(y.abs().max()) - 1.0) < 1e-6


def test_stereo_is_averaged_before_normalising(tmp_path):
    left, right = tone(24000, 0.25, 300, 0.8), tone(24000, 0.25, 500, 0.2)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 24000, subtype="FLOAT")
    y = load_audio(str(tmp_path / "s.wav"), 24000)
    mono = (left + right) / 2
    np.testing.assert_allclose(y.numpy(), mono / (np.abs(mono).max() + 1e-8), atol=1e-6)


def test_8khz_int16_is_resampled(tmp_path):
    x = tone(8000, 1.0, 440, 0.5)
    sf.write(tmp_path / "n.wav", (x * 32767).astype(np.int16), 8000, subtype="PCM_16")
    assert sf.info(tmp_path / "n.wav").subtype == "PCM_16"
    y = load_audio(tmp_path / "n.wav", sample_rate=24000)
    assert y.shape == (24000,)
    # still a 440 Hz tone: compare with the ideal resampled tone away from the edges
    ideal = tone(24000, 1.0, 440, 1.0)
    np.testing.assert_allclose(y.numpy()[2000:-2000], ideal[2000:-2000], atol=5e-3)
    assert float(y.abs().max()) == pytest.approx(1.0, abs=1e-5)
    # and to 16 kHz
    assert load_audio(tmp_path / "n.wav", sample_rate=16000).shape == (16000,)


def test_flac_and_no_normalisation(tmp_path):
    x = tone(16000, 0.3, amp=0.25)
    sf.write(tmp_path / "f.flac", x, 16000)
    y = load_audio(tmp_path / "f.flac", 16000, normalize=False)
    assert float(y.abs().max()) == pytest.approx(0.25, abs=1e-3)


def test_silence_stays_finite(tmp_path):
    sf.write(tmp_path / "z.wav", np.zeros(1000, dtype=np.float32), 24000)
    y = load_audio(tmp_path / "z.wav")
    assert torch.isfinite(y).all() and float(y.abs().max()) == 0.0


def test_clear_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.wav"):
        load_audio(tmp_path / "nope.wav")
    (tmp_path / "junk.wav").write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AudioLoadError, match=r"junk\.wav"):
        load_audio(tmp_path / "junk.wav")
    sf.write(tmp_path / "empty.wav", np.zeros((0,), dtype=np.float32), 24000)
    with pytest.raises(AudioLoadError, match=r"empty\.wav.*no audio"):
        load_audio(tmp_path / "empty.wav")
    with pytest.raises(AudioLoadError, match="folder"):
        load_audio(tmp_path)


def test_save_audio_round_trip(tmp_path):
    x = torch.from_numpy(tone(24000, 0.2, amp=0.5))
    out = save_audio(tmp_path / "sub" / "o.wav", x, 24000)
    assert out.is_file() and not list(out.parent.glob(".*partial"))
    back, sr = sf.read(out, dtype="float32")
    assert sr == 24000 and back.shape == (4800,)
    np.testing.assert_allclose(back, x.numpy(), atol=1e-4)  # PCM_16 quantisation


@pytest.mark.parametrize("sr,channels", [(16000, 1), (44100, 2), (22050, 1), (8000, 3)])
def test_resampling_is_the_original_windowed_sinc(tmp_path, sr, channels):
    """load_audio resamples with the module resampler (torchaudio's Resample defaults, as the
    original), bit for bit; the training data reads through the same function."""
    from kanade_tokenizer.modules.resample import Resampler
    from kanade_tokenizer.training.data import AudioDataConfig, ChunkedAudioDataset

    rng = np.random.default_rng(sr)
    data = (0.3 * rng.standard_normal((int(0.7 * sr), channels))).astype(np.float32)
    sf.write(tmp_path / "x.wav", data, sr, subtype="FLOAT")
    mono = torch.from_numpy(data.T.copy()).mean(dim=0)
    expected = Resampler(sr, 24000)(mono[None])[0]
    assert torch.equal(load_audio(tmp_path / "x.wav", 24000, normalize=False), expected)
    assert torch.equal(load_audio(tmp_path / "x.wav", 24000), expected / (expected.abs().max() + 1e-8))

    (tmp_path / "x.csv").write_text(f"audio_id,path,length,sample_rate\nx,x.wav,{len(data)},{sr}\n")
    config = AudioDataConfig(
        csv_path=str(tmp_path / "x.csv"), audio_root=str(tmp_path), chunk_size=24000, normalize=False
    )
    wave, _ = ChunkedAudioDataset(config)[0]
    n = expected.numel()
    assert torch.equal(wave[:n], expected) and not wave[n:].any()
