"""HiFT vocoder of kanade_tokenizer (the 25 Hz clean model's vocoder, pure PyTorch).

Checks: the module tree at the released size against the key names and shapes of CosyVoice 2's
``hift.pt`` (tests/data/hift_cosyvoice2_keys.txt, built on the meta device); strict loading and
its errors (naming the file and the keys); seeded decoding; output lengths; and a tiny
``25hz_clean``-style Kanade model that finds ``hift.pt`` in its folder and decodes end to end
through ``kanade decode``. Offline throughout.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf
import torch

from kanade_tokenizer.cli import main
from kanade_tokenizer.testing import build_tiny_hift, build_tiny_model, synthetic_speech, tiny_clean_config
from kanade_tokenizer.vocoders import VocoderLoadError, load_vocoder, load_vocoder_for, mel_to_audio, vocode
from kanade_tokenizer.vocoders.hift import DEFAULT_REPO, HiFTConfig, HiFTGenerator, load_hift

KEYS = Path(__file__).parent / "data" / "hift_cosyvoice2_keys.txt"
SR = 24000


def read_keys() -> dict[str, tuple[int, ...]]:
    out = {}
    for line in KEYS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape = line.split("\t")
            out[key] = tuple(int(x) for x in shape.strip("()").split(",") if x.strip())
    return out


@pytest.fixture(scope="module")
def hift():
    return build_tiny_hift(seed=0)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    import huggingface_hub.constants as hfc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path / "hf-cache"


def test_released_size_has_the_released_keys_and_shapes():
    with torch.device("meta"):
        model = HiFTGenerator()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = read_keys()
    assert sorted(set(expected) - set(got)) == []
    assert sorted(set(got) - set(expected)) == []
    assert {k: s for k, s in got.items() if expected[k] != s} == {}
    assert len(got) == 328 and sum(v.numel() for v in model.state_dict().values()) == 20_821_295
    # the shipped 25hz_clean config's mels are what the released HiFT takes
    from kanade_tokenizer.configuration import KanadeModelConfig, read_config

    clean = KanadeModelConfig.from_dict(dict(read_config("25hz_clean")["config"]))
    assert clean.vocoder_name == "hift"
    assert (HiFTConfig().n_mels, HiFTConfig().hop_length, HiFTConfig().sample_rate) == (
        clean.n_mels, clean.hop_length, clean.sample_rate) == (80, 480, 24000)


def test_strict_load_round_trip_and_older_key_names(tmp_path, hift):
    path = hift.save_pretrained(tmp_path / "v")
    assert path.name == "hift.pt" and (tmp_path / "v" / "hift.yaml").is_file()
    loaded = load_vocoder(path)
    assert isinstance(loaded, HiFTGenerator) and not loaded.training
    assert loaded.config == hift.config
    for key, value in hift.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # CosyVoice's training wrapper prefix and the pre-parametrization weight-norm names
    old = {}
    for key, value in hift.state_dict().items():
        key = key.replace("parametrizations.weight.original0", "weight_g")
        key = key.replace("parametrizations.weight.original1", "weight_v")
        old[f"generator.{key}"] = value
    old["discriminator.mpd.0.weight"] = torch.zeros(1)
    torch.save(old, path)
    again = load_vocoder(tmp_path / "v")  # the folder holding hift.pt
    mel = torch.randn(1, 16, 6)
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    torch.testing.assert_close(vocode(again, mel, generator=g()), vocode(hift, mel, generator=g()), rtol=0, atol=0)


def test_seeded_decode_is_deterministic(hift):
    mel = torch.randn(2, 16, 10, generator=torch.Generator().manual_seed(0))
    a = vocode(hift, mel, generator=torch.Generator().manual_seed(1))
    b = vocode(hift, mel, generator=torch.Generator().manual_seed(1))
    c = vocode(hift, mel, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.abs().max() <= 0.99 and a.std() > 0


def test_unseeded_decode_repeats_under_the_seed_synthesize_sets(hift):
    """`kanitts synthesize --seed` seeds torch's global generator for the call (generate takes no
    generator); HiFT's noise, drawn from it when no generator is given, then repeats too."""
    from kanitts.runtime import scoped_seed

    mel = torch.randn(1, 16, 10, generator=torch.Generator().manual_seed(0))
    decoded = []
    for seed in (3, 3, 4):
        with scoped_seed(seed):
            decoded.append(vocode(hift, mel))
    assert torch.equal(decoded[0], decoded[1])
    assert not torch.equal(decoded[0], decoded[2])


@pytest.mark.parametrize("frames", [1, 7])
def test_output_length_is_frames_times_hop(hift, frames):
    audio = vocode(hift, torch.randn(2, 3, 16, frames))
    assert audio.shape == (2, 3, frames * 480) and audio.dtype == torch.float32
    assert hift.num_samples(frames) == frames * 480
    one = mel_to_audio(hift, torch.randn(16, frames), num_samples=frames * 480 - 100)
    assert one.shape == (frames * 480 - 100,)


def test_wrong_checkpoint_names_the_file_and_keys(tmp_path, hift):
    path = hift.save_pretrained(tmp_path / "bad")
    state = torch.load(path, weights_only=True)
    state.pop("conv_post.bias")
    state["extra.weight"] = torch.zeros(1)
    state["m_source.l_linear.weight"] = torch.zeros(1, 4)
    torch.save(state, path)
    with pytest.raises(VocoderLoadError) as err:
        load_vocoder(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "missing keys (1): conv_post.bias" in msg and "unexpected keys (1): extra.weight" in msg
    assert "m_source.l_linear.weight (file (1, 4), model (1, 3))" in msg
    # a tiny file read as the released architecture (no hift.yaml beside it): shapes differ
    lone = tmp_path / "lone.pt"
    torch.save(hift.state_dict(), lone)
    with pytest.raises(VocoderLoadError, match=r"lone\.pt: not a HiFT checkpoint.*conv_pre"):
        load_vocoder(lone)
    (tmp_path / "bad" / "hift.yaml").write_text("n_mels: 16\nchannels: 3\n")
    with pytest.raises(VocoderLoadError, match=r"hift\.yaml: unknown HiFT setting\(s\) \['channels'\]"):
        load_vocoder(path)


def test_missing_hift_names_the_folder_file_and_repo(tmp_path, offline):
    with pytest.raises(VocoderLoadError) as err:
        load_hift(None, model_folder=tmp_path / "model")
    msg = str(err.value)
    assert str(tmp_path / "model" / "hift.pt") in msg and DEFAULT_REPO in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(VocoderLoadError, match=r"empty: no hift\.pt in this folder"):
        load_hift(tmp_path / "empty")


def test_load_hift_from_the_offline_hub_cache(offline, hift):
    commit = "0" * 40
    repo = offline / "models--FunAudioLLM--CosyVoice2-0.5B"
    hift.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    loaded = load_vocoder("hift")
    assert isinstance(loaded, HiFTGenerator) and loaded.config == hift.config


def test_clean_style_model_finds_hift_in_its_folder_and_decodes(tmp_path, hift):
    model = build_tiny_model(seed=0, config=tiny_clean_config())
    folder = model.save_pretrained(tmp_path / "model")
    hift.save_pretrained(folder)
    wav = tmp_path / "a.wav"
    sf.write(wav, synthetic_speech(0.5, SR, seed=3).numpy(), SR)
    args = ["--model", str(folder), "--device", "cpu"]
    assert main(["encode", str(wav), "-o", str(tmp_path / "tok"), *args, "--no-progress"]) == 0
    outs = []
    for name, seed in (("x.wav", 7), ("y.wav", 7)):
        out = tmp_path / name
        assert main(["decode", str(tmp_path / "tok" / "a.safetensors"), "-o", str(out), "--seed", str(seed),
                     *args, "--no-progress"]) == 0
        audio, sr = sf.read(out, dtype="float32")
        assert sr == SR and audio.shape == (int(0.5 * SR),)
        outs.append(audio)
    assert (outs[0] == outs[1]).all() and outs[0].std() > 0
    # the loaded model points the vocoder lookup at its folder; a Vocos-rate model is refused
    from kanade_tokenizer import KanadeModel

    assert isinstance(load_vocoder_for(KanadeModel.from_pretrained(folder)), HiFTGenerator)
    with pytest.raises(VocoderLoadError, match="480 samples per mel frame but the model's mels have a hop of 256"):
        load_vocoder_for(build_tiny_model(seed=0), str(folder / "hift.pt"))


def test_half_precision_vocoder_keeps_the_source_in_float32():
    hift = build_tiny_hift(seed=0)
    mel = torch.randn(1, 16, 8)
    full = vocode(hift, mel, generator=torch.Generator().manual_seed(0))
    half = vocode(hift.to(torch.bfloat16), mel, generator=torch.Generator().manual_seed(0))
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    torch.testing.assert_close(half, full, rtol=0, atol=1e-2)
