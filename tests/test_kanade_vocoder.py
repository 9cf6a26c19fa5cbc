"""Vocos vocoder and mel features of kanade_tokenizer (pure PyTorch, no torchaudio).

Checks: the mel definitions against an independent numpy formula; the Vocos module tree against
the released checkpoint's key names and shapes (tests/data/vocos_mel_24khz_keys.txt); save and
load round trips in Vocos's Hub layout, offline; output lengths of the ISTFT head.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import torch
import yaml

from kanade_tokenizer.modules.mel import MelSpectrogramFeatures, hz_to_mel, mel_filterbank, mel_to_hz
from kanade_tokenizer.vocoders import DEFAULT_VOCODER, VocoderLoadError, load_vocoder, vocode
from kanade_tokenizer.vocoders.vocos import ISTFT, Vocos, VocosConfig

DATA = Path(__file__).parent / "data"

# The public config.yaml of charactr/vocos-mel-24khz, as published.
RELEASED_CONFIG = """
feature_extractor:
  class_path: vocos.feature_extractors.MelSpectrogramFeatures
  init_args:
    sample_rate: 24000
    n_fft:        1024 # 42.66 msec
    hop_length:    256 # 10.66 msec, 3/4 overlap
    n_mels:        100
    padding:    center

backbone:
  class_path: vocos.models.VocosBackbone
  init_args:
    input_channels: 100
    dim: 512
    intermediate_dim: 1536
    num_layers: 8

head:
  class_path: vocos.heads.ISTFTHead
  init_args:
    dim: 512
    n_fft: 1024
    hop_length: 256
    padding: center
"""


def small_config(**overrides) -> VocosConfig:
    cfg = dict(dim=32, intermediate_dim=48, num_layers=2)
    cfg.update(overrides)
    return VocosConfig(**cfg)


def speechlike(seconds: float = 0.5, sr: int = 24000, seed: int = 0) -> np.ndarray:
    """A harmonic tone with a vibrato plus a little noise: broadband, never silent."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 20 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 30)) + 0.05 * rng.standard_normal(t.size)
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


# --- independent reference (numpy, explicit loops) ----------------------------------------


def ref_mel_edges(n_mels, f_min, f_max, scale):
    if scale == "htk":
        to_mel = lambda f: 2595.0 * math.log10(1.0 + f / 700.0)  # noqa: E731
        to_hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    else:  # Slaney: 3 bins per 200 Hz below 1 kHz, then log steps of ln(6.4)/27
        step = math.log(6.4) / 27.0
        to_mel = lambda f: f * 3.0 / 200.0 if f < 1000 else 15.0 + math.log(f / 1000.0) / step  # noqa: E731
        to_hz = lambda m: m * 200.0 / 3.0 if m < 15 else 1000.0 * math.exp(step * (m - 15.0))  # noqa: E731
    lo, hi = to_mel(f_min), to_mel(f_max)
    return [to_hz(lo + (hi - lo) * i / (n_mels + 1)) for i in range(n_mels + 2)]


def ref_filterbank(sr, n_fft, n_mels, f_min, f_max, scale, area_norm):
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    edges = ref_mel_edges(n_mels, f_min, f_max, scale)
    fb = np.zeros((n_mels, freqs.size))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        for k, f in enumerate(freqs):
            if lo < f < hi:
                fb[m, k] = (f - lo) / (mid - lo) if f <= mid else (hi - f) / (hi - mid)
        if area_norm:
            fb[m] *= 2.0 / (hi - lo)
    return fb


def ref_log_mel(x, sr, n_fft, hop, n_mels, pad, f_min, f_max, scale, area_norm, eps, clip):
    x = np.pad(x.astype(np.float64), (pad, pad), mode="reflect")
    window = scipy.signal.get_window("hann", n_fft, fftbins=True)
    n_frames = 1 + (x.size - n_fft) // hop
    frames = np.stack([x[i * hop : i * hop + n_fft] * window for i in range(n_frames)], axis=1)
    spec = np.fft.rfft(frames, axis=0)
    mag = np.sqrt(spec.real**2 + spec.imag**2 + eps)
    mel = ref_filterbank(sr, n_fft, n_mels, f_min, f_max, scale, area_norm) @ mag
    return np.log(np.maximum(mel, clip))


# --- mel ---------------------------------------------------------------------------------


def test_mel_scales_known_values_and_round_trip():
    assert float(hz_to_mel(torch.tensor(1000.0), "slaney")) == pytest.approx(15.0)
    assert float(hz_to_mel(torch.tensor(700.0), "htk")) == pytest.approx(2595.0 * math.log10(2.0))
    f = torch.tensor([0.0, 100.0, 999.0, 1000.0, 4000.0, 12000.0])
    for scale in ("htk", "slaney"):
        assert torch.allclose(mel_to_hz(hz_to_mel(f, scale), scale), f.double(), atol=1e-6)


@pytest.mark.parametrize(
    "scale,norm,f_max", [("htk", None, None), ("slaney", "slaney", 8000.0), ("htk", None, 8000.0)]
)
def test_filterbank_matches_independent_formula(scale, norm, f_max):
    sr, n_fft, n_mels = 24000, 1024, 100
    fb = mel_filterbank(n_fft // 2 + 1, n_mels, sr, 0.0, f_max, scale, norm)
    ref = ref_filterbank(sr, n_fft, n_mels, 0.0, f_max or sr / 2, scale, norm == "slaney")
    assert fb.shape == (n_fft // 2 + 1, n_mels)
    np.testing.assert_allclose(fb.numpy().T, ref, rtol=1e-5, atol=1e-7)


def test_vocos_mel_matches_independent_formula():
    x = speechlike(0.7)
    mel = MelSpectrogramFeatures(24000, 1024, 256, 100, padding="center")(torch.from_numpy(x))
    ref = ref_log_mel(x, 24000, 1024, 256, 100, pad=512, f_min=0, f_max=12000, scale="htk",
                      area_norm=False, eps=0.0, clip=1e-7)
    assert mel.shape == (100, x.size // 256 + 1) == ref.shape
    np.testing.assert_allclose(mel.numpy(), ref, atol=2e-4)
    assert np.abs(mel.numpy() - ref).mean() < 1e-4


def test_vocos_mel_same_padding_length():
    x = torch.from_numpy(speechlike(0.5))
    feat = MelSpectrogramFeatures(padding="same")
    mel = feat(x)
    assert mel.shape == (100, x.numel() // 256) and feat.num_frames(x.numel()) == mel.shape[-1]
    ref = ref_log_mel(x.numpy(), 24000, 1024, 256, 100, pad=384, f_min=0, f_max=12000, scale="htk",
                      area_norm=False, eps=0.0, clip=1e-7)
    np.testing.assert_allclose(mel.numpy(), ref, atol=2e-4)


def test_bigvgan_mel_matches_independent_formula():
    x = speechlike(0.6, seed=1)
    feat = MelSpectrogramFeatures(24000, 1920, 480, 80, padding="same", fmin=0, fmax=8000, bigvgan_style_mel=True)
    mel = feat(torch.from_numpy(x))
    ref = ref_log_mel(x, 24000, 1920, 480, 80, pad=720, f_min=0, f_max=8000, scale="slaney",
                      area_norm=True, eps=1e-9, clip=1e-5)
    assert mel.shape == (80, x.size // 480) == ref.shape
    np.testing.assert_allclose(mel.numpy(), ref, atol=2e-4)


def test_mel_feature_batch_shapes_and_from_config():
    class Cfg:
        sample_rate, n_fft, hop_length, n_mels, padding = 24000, 1024, 256, 100, "center"
        mel_fmin, mel_fmax, bigvgan_style_mel = 0, None, False

    feat = MelSpectrogramFeatures.from_config(Cfg)
    x = torch.from_numpy(np.stack([speechlike(0.3, seed=s) for s in range(2)]))
    assert feat(x).shape == (2, 100, 7200 // 256 + 1)
    assert feat(x.unsqueeze(1)).shape == (2, 1, 100, 7200 // 256 + 1)
    torch.testing.assert_close(feat(x)[1], feat(x[1]))
    assert list(feat.state_dict()) == []  # window and filterbank are not saved


def test_vocos_feature_extractor_equals_kanade_mel():
    x = torch.from_numpy(speechlike(0.4))
    voc = Vocos(small_config())
    torch.testing.assert_close(voc.feature_extractor(x[None]), MelSpectrogramFeatures()(x[None]))
    # one class; in the vocoder its buffers are saved under the Vocos checkpoint's names
    assert sorted(voc.feature_extractor.state_dict()) == ["mel_spec.mel_scale.fb", "mel_spec.spectrogram.window"]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n_fft=1024, hop_length=256, padding="center"),
        dict(n_fft=1024, hop_length=256, padding="same"),
        dict(n_fft=1920, hop_length=480, n_mels=80, padding="same", fmax=8000, bigvgan_style_mel=True),
        dict(n_fft=1920, hop_length=480, n_mels=80, padding="center", fmax=8000, bigvgan_style_mel=True),
        dict(n_fft=1023, hop_length=256, padding="same"),  # odd n_fft - hop: one frame fewer at multiples of hop
    ],
)
def test_mel_frames_is_what_the_feature_computes(kwargs):
    from kanade_tokenizer.modules.mel import mel_frames

    feat = MelSpectrogramFeatures(**kwargs)
    rule = {k: kwargs.get(k, False) for k in ("hop_length", "n_fft", "padding", "bigvgan_style_mel")}
    for n in (1200, 2048, 2049, 7680, 7681, 9999):
        frames = feat(torch.zeros(n)).shape[-1]
        assert feat.num_frames(n) == mel_frames(n, **rule) == frames, (n, kwargs)


# --- Vocos module tree vs the released checkpoint --------------------------------------------


def read_key_fixture() -> dict[str, tuple[int, ...]]:
    keys = {}
    for line in (DATA / "vocos_mel_24khz_keys.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, shape = line.split()
            keys[name] = tuple(int(s) for s in shape.split(","))
    return keys


def test_released_config_builds_the_released_key_layout():
    cfg = VocosConfig.from_yaml_dict(yaml.safe_load(RELEASED_CONFIG))
    assert cfg == VocosConfig()  # our defaults are the released model
    model = Vocos(cfg)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == read_key_fixture()
    assert sum(p.numel() for p in model.parameters()) == 13_531_650
    # the buffers hold the same window and filterbank a torchaudio MelSpectrogram would
    sd = model.state_dict()
    torch.testing.assert_close(sd["head.istft.window"], torch.hann_window(1024))
    ref_fb = ref_filterbank(24000, 1024, 100, 0.0, 12000.0, "htk", False)
    np.testing.assert_allclose(sd["feature_extractor.mel_spec.mel_scale.fb"].numpy().T, ref_fb, atol=1e-6)


def test_config_yaml_round_trip():
    cfg = small_config(head_padding="same", layer_scale_init_value=0.1)
    assert VocosConfig.from_yaml_dict(cfg.to_yaml_dict()) == cfg
    released = yaml.safe_load(RELEASED_CONFIG)
    assert VocosConfig().to_yaml_dict() == released


def test_unsupported_config_is_refused():
    data = yaml.safe_load(RELEASED_CONFIG)
    data["feature_extractor"]["class_path"] = "vocos.feature_extractors.EncodecFeatures"
    with pytest.raises(VocoderLoadError, match="EncodecFeatures"):
        VocosConfig.from_yaml_dict(data)


# --- save / load in the Hub layout --------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch, tmp_path):
    import huggingface_hub.constants as hfc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path / "hf-cache"


@pytest.mark.parametrize("safe", [False, True])
def test_save_and_load_vocoder_folder_offline(tmp_path, offline, safe):
    torch.manual_seed(0)
    model = Vocos(small_config()).eval()
    folder = model.save_pretrained(tmp_path / "vocos", safe_serialization=safe)
    assert (folder / "config.yaml").is_file()
    assert (folder / ("model.safetensors" if safe else "pytorch_model.bin")).is_file()
    loaded = load_vocoder(str(folder))
    assert not loaded.training
    mel = MelSpectrogramFeatures()(torch.from_numpy(speechlike(0.3)))[None]
    torch.testing.assert_close(vocode(loaded, mel), vocode(model, mel), rtol=0, atol=0)
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def test_load_vocoder_by_repo_id_from_offline_cache(tmp_path, offline):
    """The Hub code path, served from a prepared cache with HF_HUB_OFFLINE=1."""
    torch.manual_seed(1)
    model = Vocos(small_config())
    commit = "0" * 40
    snapshot = offline / "models--charactr--vocos-mel-24khz" / "snapshots" / commit
    model.save_pretrained(snapshot)
    (offline / "models--charactr--vocos-mel-24khz" / "refs").mkdir(parents=True)
    (offline / "models--charactr--vocos-mel-24khz" / "refs" / "main").write_text(commit)
    loaded = load_vocoder()  # default name
    assert DEFAULT_VOCODER == "charactr/vocos-mel-24khz"
    mel = torch.randn(1, 100, 12)
    torch.testing.assert_close(vocode(loaded, mel), vocode(model.eval(), mel), rtol=0, atol=0)
    assert isinstance(load_vocoder("vocos"), Vocos)


def test_load_vocoder_errors(tmp_path, offline):
    with pytest.raises(VocoderLoadError, match="no such folder"):
        load_vocoder(str(tmp_path / "missing" / "dir"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(VocoderLoadError, match=r"config\.yaml"):
        load_vocoder(tmp_path / "empty")
    with pytest.raises(VocoderLoadError, match=r"HiFT.*hift\.pt of FunAudioLLM/CosyVoice2-0\.5B"):
        load_vocoder("hift")  # offline, not cached (tests/test_kanade_hift.py loads it)
    with pytest.raises(VocoderLoadError, match="someone/not-cached"):
        load_vocoder("someone/not-cached")
    # weights that do not match the config: the error names the file
    folder = Vocos(small_config()).save_pretrained(tmp_path / "bad")
    sd = torch.load(folder / "pytorch_model.bin", weights_only=True)
    sd.pop("backbone.embed.weight")
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, folder / "pytorch_model.bin")
    with pytest.raises(VocoderLoadError, match=r"pytorch_model\.bin.*backbone\.embed\.weight"):
        load_vocoder(folder)


def test_checkpoint_without_fixed_buffers_loads(tmp_path):
    model = Vocos(small_config())
    folder = model.save_pretrained(tmp_path / "v")
    sd = torch.load(folder / "pytorch_model.bin", weights_only=True)
    for k in [k for k in sd if k.endswith("window") or k.endswith(".fb")]:
        del sd[k]
    torch.save(sd, folder / "pytorch_model.bin")
    loaded = load_vocoder(folder)
    torch.testing.assert_close(loaded.state_dict()["head.istft.window"], torch.hann_window(1024))


# --- lengths and the ISTFT ----------------------------------------------------------------------


@pytest.mark.parametrize("padding,expected", [("center", lambda t: 256 * (t - 1)), ("same", lambda t: 256 * t)])
def test_vocode_output_length(padding, expected):
    model = Vocos(small_config(head_padding=padding)).eval()
    for frames in (5, 37):
        mel = torch.randn(2, 100, frames)
        audio = vocode(model, mel)
        assert audio.shape == (2, expected(frames)) == (2, model.num_samples(frames))
        assert audio.dtype == torch.float32 and torch.isfinite(audio).all()


def test_vocode_shapes_and_dtypes():
    model = Vocos(small_config()).eval()
    mel = torch.randn(100, 20, dtype=torch.float64)
    one = vocode(model, mel)
    assert one.shape == (256 * 19,) and one.dtype == torch.float32
    torch.testing.assert_close(vocode(model, mel.unsqueeze(0))[0], one)
    assert vocode(model, mel.expand(2, 3, 100, 20)).shape == (2, 3, 256 * 19)
    with pytest.raises(ValueError, match="100"):
        vocode(model, torch.randn(1, 80, 20))


@pytest.mark.parametrize("padding", ["center", "same"])
def test_istft_inverts_the_matching_stft(padding):
    n_fft, hop = 1024, 256
    x = torch.from_numpy(speechlike(0.5, seed=3)).double()[None]
    window = torch.hann_window(n_fft, dtype=torch.float64)
    if padding == "center":
        spec = torch.stft(x, n_fft, hop, window=window, center=True, return_complex=True)
    else:
        pad = (n_fft - hop) // 2
        xp = torch.nn.functional.pad(x[:, None], (pad, pad), mode="reflect")[:, 0]
        spec = torch.stft(xp, n_fft, hop, window=window, center=False, return_complex=True)
    istft = ISTFT(n_fft, hop, padding=padding).double()
    y = istft(spec)
    n = y.shape[-1]
    assert n == istft.num_samples(spec.shape[-1])
    # away from the edges (where "same" padding lacks overlap) the signal comes back exactly
    torch.testing.assert_close(y[:, 1024 : n - 1024], x[:, 1024 : n - 1024], atol=1e-6, rtol=0)


def test_head_turns_log_magnitude_and_phase_into_the_istft_input():
    """With an identity-like output layer the head is ISTFT(exp(m) · e^{ip})."""
    from kanade_tokenizer.vocoders.vocos import ISTFTHead

    head = ISTFTHead(dim=1026, n_fft=1024, hop_length=256, padding="same")
    with torch.no_grad():
        head.out.weight.copy_(torch.eye(1026))
        head.out.bias.zero_()
    x = torch.randn(1, 10, 1026) * 0.5
    m, p = x.transpose(1, 2).chunk(2, dim=1)
    expected = head.istft(torch.exp(m) * torch.exp(1j * p))
    torch.testing.assert_close(head(x), expected)
