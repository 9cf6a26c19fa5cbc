"""KanadeModel: released key sets, configs, length formulas, loading, encode/decode."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from kanade_tokenizer import KanadeFeatures, KanadeModel, KanadeModelConfig
from kanade_tokenizer.configuration import KanadeConfigError, read_config
from kanade_tokenizer.pretrained import KanadeWeightsError
from kanade_tokenizer.testing import build_tiny_model, synthetic_speech, tiny_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "config" / "kanade" / "model"
# Parameter names and shapes of the released checkpoints (one `name<TAB>(shape)` a line).
KEYS = ROOT / "tests" / "data" / "kanade_keys"

RELEASED = [
    ("12hz", "keys_12.5hz.txt", 119_947_157),
    ("25hz", "keys_25hz.txt", 117_718_933),
    ("25hz_clean", "keys_25hz_clean.txt", 140_670_021),
]


def _read_keys(path: Path) -> dict[str, tuple[int, ...]]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            key, shape = line.split("\t")
            out[key] = tuple(int(x) for x in shape.strip("()").split(",") if x.strip())
    return out


def _build_meta(name: str) -> KanadeModel:
    with torch.device("meta"):
        return KanadeModel.from_config(CONFIGS / f"{name}.yaml", load_ssl_weights=False)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_model(seed=0)


# --- released architecture ---------------------------------------------------------------------


@pytest.mark.parametrize("name,keys_file,n_params", RELEASED)
def test_full_config_matches_released_keys_and_shapes(name, keys_file, n_params):
    model = _build_meta(name)
    expected = _read_keys(KEYS / keys_file)
    got = {k: tuple(v.shape) for k, v in model.weights_to_save().items()}
    assert sorted(set(expected) - set(got)) == []
    assert sorted(set(got) - set(expected)) == []
    assert {k: s for k, s in got.items() if expected[k] != s} == {}
    assert sum(v.numel() for v in model.weights_to_save().values()) == n_params


def test_full_config_without_key_lists_has_expected_counts():
    # the released checkpoints' parameter counts (docs/kanade.md)
    for name, _, n_params in RELEASED:
        weights = _build_meta(name).weights_to_save()
        assert sum(v.numel() for v in weights.values()) == n_params
        assert len(weights) == (280 if name == "25hz_clean" else 282)


def test_feature_decoder_is_optional_and_exported_only_on_request():
    with torch.device("meta"):
        model = KanadeModel.from_config(CONFIGS / "12hz.yaml", load_ssl_weights=False, build_feature_decoder=True)
    assert model.feature_decoder is not None and model.conv_upsample is not None
    assert not any(k.startswith(("feature_decoder.", "conv_upsample.")) for k in model.weights_to_save())
    keys = model.weights_to_save(["feature_decoder", "conv_upsample"])
    assert "feature_decoder.layers.5.attention.wq.weight" in keys and "conv_upsample.weight" in keys
    assert _build_meta("12hz").feature_decoder is None


def test_original_class_paths_and_layout_are_accepted(tmp_path):
    text = (CONFIGS / "25hz.yaml").read_text().replace("kanade_tokenizer.modules.", "kanade_tokenizer.module.")
    text = text.replace("kanade_tokenizer.module.ssl.SSLFeatureExtractor",
                        "kanade_tokenizer.module.ssl_extractor.SSLFeatureExtractor")
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with torch.device("meta"):
        model = KanadeModel.from_config(path, load_ssl_weights=False)
    assert model.config.downsample_factor == 2 and model.token_rate == 25.0
    assert model.mel_prenet.window_size == 65


def test_config_values():
    cfg12 = read_config(CONFIGS / "12hz.yaml")["config"]
    assert cfg12["downsample_factor"] == 4 and cfg12["mel_upsample_factor"] == 8
    clean = KanadeModelConfig.from_dict(read_config(CONFIGS / "25hz_clean.yaml")["config"])
    assert clean.global_ssl_layers == (1, 2, 3, 4) and clean.vocoder_name == "hift"
    assert clean.n_mels == 80 and clean.padding == "same" and clean.bigvgan_style_mel


def test_released_configs_resolve_by_name_from_the_package():
    from importlib import resources

    from kanade_tokenizer.configuration import released_config, released_config_names

    assert released_config_names() == ["12hz", "25hz", "25hz_clean"]
    packaged = resources.files("kanade_tokenizer") / "configs" / "12hz.yaml"
    assert packaged.is_file() and released_config("12hz").read_bytes() == packaged.read_bytes()
    # config/kanade/model/ is the same folder, seen from the repository
    assert (CONFIGS / "12hz.yaml").read_bytes() == packaged.read_bytes()
    assert read_config("25hz")["config"]["downsample_factor"] == 2
    with torch.device("meta"):
        model = KanadeModel.from_config("12hz", load_ssl_weights=False)
    assert model.config.downsample_factor == 4
    with pytest.raises(KanadeConfigError, match=r"no released Kanade config named '6hz'.*12hz"):
        released_config("6hz")
    with pytest.raises(FileNotFoundError, match="not a released config"):
        KanadeModel.from_pretrained("6hz")


def test_config_padding_must_be_one_the_mel_knows():
    cfg = tiny_config()
    cfg["model"]["init_args"]["config"]["padding"] = "valid"
    with pytest.raises(KanadeConfigError, match=r"config\.padding.*'valid'"):
        KanadeModel.from_config(cfg)


def test_config_errors_name_the_key(tmp_path):
    cfg = tiny_config()
    cfg["model"]["init_args"]["config"]["downsample_factr"] = 2
    with pytest.raises(KanadeConfigError, match="downsample_factr"):
        KanadeModel.from_config(cfg)
    cfg = tiny_config()
    cfg["model"]["init_args"]["mel_prenet"]["init_args"]["dimm"] = 3
    with pytest.raises(KanadeConfigError, match="mel_prenet"):
        KanadeModel.from_config(cfg)
    cfg = tiny_config()
    del cfg["model"]["init_args"]["global_encoder"]
    with pytest.raises(KanadeConfigError, match="global_encoder"):
        KanadeModel.from_config(cfg)
    cfg = tiny_config()
    cfg["model"]["init_args"]["mel_postnet"]["class_path"] = "os.system"
    with pytest.raises(KanadeConfigError, match="class_path"):
        KanadeModel.from_config(cfg)


# --- length arithmetic (docs/kanade.md) -----------------------------------------------------------


@pytest.mark.parametrize(
    "name,L,pad,tokens,mel,estimate",
    [
        ("12hz", 24000, 60, 12, 94, 23160),
        ("25hz", 24000, 60, 25, 94, 24120),
        ("25hz_clean", 24000, 60, 25, 50, 24120),
        ("12hz", 72123, 239, 37, 282, None),
        ("25hz", 72123, 239, 75, 282, None),
        ("25hz_clean", 72123, 239, 75, 150, None),
        ("12hz", 138240, 60, 72, 541, None),
        ("25hz_clean", 138240, 60, 144, 288, None),
    ],
)
def test_length_formulas(name, L, pad, tokens, mel, estimate):
    model = _build_meta(name)
    assert model.waveform_padding(L) == pad
    assert model.num_tokens(L) == tokens
    assert model.mel_length(L) == mel
    if estimate is not None:
        assert model.estimated_audio_length(tokens) == estimate


#: Lengths under 30 s at 24 kHz where the original's floating-point E = ceil(L / 24000 * 16000 / 320)
#: is one more than ceil(L / 480): L / 24000 * 16000 rounds to just above a multiple of 320.
FLOAT_FRAME_LENGTHS = [193440, 195360, 386400, 386880, 390240, 390720]


def _original_padding(L: int) -> int:
    """The original's waveform-padding arithmetic (its `_calculate_waveform_padding`), in
    its floating-point order: n16 = L / 24000 * 16000; E = ceil(n16 / 320);
    req16 = get_minimum_input_length(E) = 320·E + 80 for WavLM's conv stack;
    req24 = req16 / 16000 * 24000; p = ceil((req24 - L) / 2)."""
    n16 = L / 24000 * 16000
    E = math.ceil(n16 / 320)
    req16 = 320 * E + 80
    req24 = req16 / 16000 * 24000
    return math.ceil((req24 - L) / 2)


def test_padding_matches_the_original_arithmetic(tiny):
    lengths = list(range(1, 5 * 24000)) + FLOAT_FRAME_LENGTHS
    lengths += torch.randint(5 * 24000, 30 * 24000, (20000,), generator=torch.Generator().manual_seed(0)).tolist()
    mismatches = [L for L in lengths if tiny.waveform_padding(L) != _original_padding(L)]
    assert mismatches == []
    # the float arithmetic gives one sample more than exact integers for a few % of lengths ...
    exact = [math.ceil((480 * -(-L // 480) + 120 - L) / 2) for L in range(1, 5 * 24000)]
    more = sum(_original_padding(L) != e for L, e in zip(range(1, 5 * 24000), exact))
    assert 0.02 < more / len(exact) < 0.04
    # ... and a whole extra WavLM frame (one more token at 25 Hz) for these lengths
    for L in FLOAT_FRAME_LENGTHS:
        assert tiny.num_tokens(L) == (-(-L // 480) + 1) // 2


def test_padding_gives_exactly_the_expected_frames(tiny):
    ssl = tiny.ssl_feature_extractor
    for L in [1, 100, 479, 480, 481, 24000, 24001, 72123, *FLOAT_FRAME_LENGTHS]:
        p = tiny.waveform_padding(L)
        assert 60 <= p <= 301 or L < 480  # 301: the extra frame of FLOAT_FRAME_LENGTHS
        n16 = ssl.resampler.output_length(L + 2 * p)
        assert ssl.num_frames(n16) == tiny.ssl_frames(L)
    wave = synthetic_speech(FLOAT_FRAME_LENGTHS[0] / 24000)
    assert tiny.encode(wave).content_token_indices.numel() == tiny.num_tokens(wave.numel()) == 202


def test_min_audio_length_is_one_token(tiny):
    n = tiny.min_audio_length()
    assert (n, tiny.num_tokens(n - 1), tiny.num_tokens(n)) == (481, 0, 1)
    assert _build_meta("12hz").min_audio_length() == 1441


# --- encode / decode ------------------------------------------------------------------------------


def test_encode_decode_shapes_and_dtypes(tiny):
    wave = synthetic_speech(1.0)
    feats = tiny.encode(wave)
    assert isinstance(feats, KanadeFeatures)
    assert feats.content_token_indices.shape == (25,) and feats.content_token_indices.dtype == torch.int64
    assert feats.content_token_indices.min() >= 0 and feats.content_token_indices.max() < 12800
    assert feats.content_embedding.shape == (25, 32) and feats.content_embedding.dtype == torch.float32
    assert feats.global_embedding.shape == (16,) and feats.global_embedding.dtype == torch.float32
    mel = tiny.decode(feats.global_embedding, content_token_indices=feats.content_token_indices)
    assert mel.shape == (16, 24120 // 256 + 1) and torch.isfinite(mel).all()
    mel2 = tiny.decode(feats.global_embedding, content_embedding=feats.content_embedding, target_audio_length=24000)
    assert mel2.shape == (16, 94)
    # tokens and embeddings describe the same content
    torch.testing.assert_close(tiny.decode_token_indices(feats.content_token_indices), feats.content_embedding)
    # the original API accepts a (1, L) waveform too, and partial outputs
    only_global = tiny.encode(wave[None], return_content=False)
    assert only_global.content_token_indices is None
    torch.testing.assert_close(only_global.global_embedding, feats.global_embedding)


def test_encode_is_deterministic_in_eval_mode(tiny):
    wave = synthetic_speech(0.8, seed=3)
    a, b = tiny.encode(wave), tiny.encode(wave)
    assert torch.equal(a.content_token_indices, b.content_token_indices)
    assert torch.equal(a.global_embedding, b.global_embedding)
    m1 = tiny.decode(a.global_embedding, content_token_indices=a.content_token_indices)
    m2 = tiny.decode(a.global_embedding, content_token_indices=a.content_token_indices)
    assert torch.equal(m1, m2)


def test_encode_does_not_run_the_feature_decoder():
    model = build_tiny_model(seed=1, build_feature_decoder=True)
    calls = []
    model.feature_decoder.register_forward_hook(lambda *a: calls.append(1))
    model.encode(synthetic_speech(0.5))
    assert calls == []


def test_ssl_reconstruction_without_conv_upsample_interpolates():
    """With ``use_conv_downsample: false`` the SSL reconstruction is stretched back to the SSL
    frame rate with ``local_interpolation_mode`` (there is no conv_upsample to do it)."""
    cfg = tiny_config()
    cfg["model"]["init_args"]["config"].update(use_conv_downsample=False, local_interpolation_mode="nearest")
    torch.manual_seed(0)
    model = KanadeModel.from_config(cfg, build_feature_decoder=True).eval()
    assert model.conv_downsample is None and model.conv_upsample is None
    wave = synthetic_speech(0.5)
    p = model.waveform_padding(wave.numel())
    local, _, _ = model.forward_ssl_features(torch.nn.functional.pad(wave, (p, p))[None])
    content, _, _ = model.forward_content(local)
    with torch.no_grad():
        recon = model.forward_ssl_reconstruction(content, local.size(1))
        stretched = torch.nn.functional.interpolate(content.transpose(1, 2), size=local.size(1), mode="nearest")
        expected = model.feature_decoder(stretched.transpose(1, 2))
    assert content.size(1) < local.size(1) and recon.shape[:2] == local.shape[:2]
    torch.testing.assert_close(recon, expected)
    with pytest.raises(RuntimeError, match="no feature_decoder"):
        build_tiny_model().forward_ssl_reconstruction(content, local.size(1))


def test_voice_conversion(tiny):
    source, reference = synthetic_speech(1.2, seed=1), synthetic_speech(0.7, seed=2)
    mel = tiny.voice_conversion(source, reference)
    assert mel.shape == (16, source.numel() // 256 + 1)
    own = tiny.decode(tiny.encode(source).global_embedding, content_embedding=tiny.encode(source).content_embedding,
                      target_audio_length=source.numel())
    assert not torch.allclose(mel, own)  # the voice (global embedding) changed the mel


def test_mixed_precision_follows_device(tiny):
    assert tiny._autocast_dtype(torch.device("cpu")) is None
    assert tiny._autocast_dtype(torch.device("cuda")) == torch.bfloat16
    model = build_tiny_model(seed=0, mixed_precision="bf16")
    assert model._autocast_dtype(torch.device("cpu")) == torch.bfloat16
    feats = model.encode(synthetic_speech(0.5))
    assert feats.content_embedding.dtype == torch.float32 and feats.global_embedding.dtype == torch.float32
    mel = model.decode(feats.global_embedding, content_token_indices=feats.content_token_indices)
    assert mel.dtype == torch.float32 and torch.isfinite(mel).all()
    model.mixed_precision = "fp32"
    assert model._autocast_dtype(torch.device("cuda")) is None


def test_audio_shorter_than_one_token(tiny):
    feats = tiny.encode(torch.randn(100))  # one SSL frame, downsample factor 2
    assert feats.content_token_indices.shape == (0,) and feats.content_embedding.shape == (0, 32)
    assert torch.isfinite(feats.global_embedding).all()
    with pytest.raises(ValueError, match="empty"):
        tiny.decode(feats.global_embedding, content_token_indices=feats.content_token_indices)
    batch = tiny.encode_batch([torch.randn(100), synthetic_speech(0.3)], max_padding=None)
    assert batch[0].content_token_indices.numel() == 0 and batch[1].content_token_indices.numel() == 7


def test_rejects_batched_input_in_single_encode(tiny):
    with pytest.raises(ValueError, match="encode_batch"):
        tiny.encode(torch.zeros(2, 1000))


# --- saving and loading ----------------------------------------------------------------------------


def test_save_and_from_pretrained_round_trip(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "model.safetensors"]
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["model"]["class_path"] == "kanade_tokenizer.model.KanadeModel"
    assert set(saved["model"]["init_args"]) >= {"config", "local_encoder", "mel_postnet"}
    loaded = KanadeModel.from_pretrained(tmp_path)
    assert not loaded.training and not any(m.training for m in loaded.modules())
    wave = synthetic_speech(1.0, seed=5)
    a, b = tiny.encode(wave), loaded.encode(wave)
    assert torch.equal(a.content_token_indices, b.content_token_indices)
    assert torch.equal(a.content_embedding, b.content_embedding)
    assert torch.equal(a.global_embedding, b.global_embedding)
    ma = tiny.decode(a.global_embedding, content_token_indices=a.content_token_indices)
    mb = loaded.decode(b.global_embedding, content_token_indices=b.content_token_indices)
    assert torch.equal(ma, mb)
    # the original's call style: config path + weights path
    again = KanadeModel.from_pretrained(tmp_path / "config.yaml", weights_path=tmp_path / "model.safetensors")
    assert torch.equal(again.encode(wave).global_embedding, a.global_embedding)
    again = KanadeModel.from_pretrained(
        config_path=tmp_path / "config.yaml", weights_path=tmp_path / "model.safetensors"
    )
    assert torch.equal(again.encode(wave).content_token_indices, a.content_token_indices)


def test_from_pretrained_repo_id_goes_through_the_hub(tiny, tmp_path, monkeypatch):
    import huggingface_hub

    tiny.save_pretrained(tmp_path)
    requested = []

    def fake_download(repo_id, filename, revision=None, cache_dir=None, token=None):
        requested.append((repo_id, filename, revision))
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    model = KanadeModel.from_pretrained("someone/kanade-tiny", revision="v1")
    assert requested == [
        ("someone/kanade-tiny", "config.yaml", "v1"), ("someone/kanade-tiny", "model.safetensors", "v1")
    ]
    assert not model.training


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        KanadeModel.from_pretrained(tmp_path / "nope" / "config.yaml")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_config()))
    with pytest.raises(ValueError, match="weights_path"):
        KanadeModel.from_pretrained(tmp_path / "c.yaml")
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "config.yaml").write_text(yaml.safe_dump(tiny_config()))
        KanadeModel.from_pretrained(tmp_path / "d")


def _export(model, folder, edit):
    from safetensors.torch import load_file, save_file

    model.save_pretrained(folder)
    weights = load_file(str(folder / "model.safetensors"))
    edit(weights)
    save_file(weights, str(folder / "model.safetensors"))


def test_strict_loading_names_missing_key(tiny, tmp_path):
    _export(tiny, tmp_path, lambda w: w.pop("mel_decoder.layers.1.attention.wq.weight"))
    with pytest.raises(KanadeWeightsError, match=r"missing keys \(1\): mel_decoder\.layers\.1\.attention\.wq\.weight"):
        KanadeModel.from_pretrained(tmp_path)
    model = KanadeModel.from_pretrained(tmp_path, strict=False)  # non-strict: warns and goes on
    assert not model.training


def test_strict_loading_names_unexpected_and_mismatched_keys(tiny, tmp_path):
    def edit(w):
        w["local_encoder.layers.9.attention.wq.weight"] = torch.zeros(2, 2)
        w["global_encoder.pooling.proj.bias"] = torch.zeros(3)

    _export(tiny, tmp_path, edit)
    with pytest.raises(KanadeWeightsError) as info:
        KanadeModel.from_pretrained(tmp_path)
    message = str(info.value)
    assert "unexpected keys (1): local_encoder.layers.9.attention.wq.weight" in message
    assert "global_encoder.pooling.proj.bias (checkpoint (3,), model (16,))" in message


def test_exports_without_ssl_or_feature_decoder_load_strictly(tiny, tmp_path):
    # a released-style export: no SSL weights, no feature decoder; the SSL model comes from elsewhere
    tiny.save_pretrained(tmp_path, include_ssl=False)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert not any(k.startswith("ssl_feature_extractor.") for k in f.keys())  # noqa: SIM118 - not a dict
    ssl_model = tiny.ssl_feature_extractor.model
    model = KanadeModel.from_pretrained(tmp_path, ssl_model=ssl_model, build_feature_decoder=True)
    wave = synthetic_speech(0.6, seed=9)
    assert torch.equal(model.encode(wave).content_token_indices, tiny.encode(wave).content_token_indices)
    # a checkpoint that carries feature-decoder keys loads into an inference model (ignored)
    trained = build_tiny_model(seed=0, build_feature_decoder=True)
    trained.save_pretrained(tmp_path / "with_fd")
    report_model = KanadeModel.from_pretrained(tmp_path / "with_fd")
    assert report_model.feature_decoder is None


def test_injected_ssl_model_survives_save(tmp_path, monkeypatch):
    from transformers import WavLMConfig, WavLMModel

    from kanade_tokenizer.testing import TINY_WAVLM

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(3)
    ssl_model = WavLMModel(WavLMConfig(**TINY_WAVLM)).eval()
    cfg = tiny_config()
    cfg["model"]["init_args"]["ssl_feature_extractor"]["init_args"]["pretrained"] = True  # would download
    model = KanadeModel.from_config(cfg, ssl_model=ssl_model).eval()
    model.save_pretrained(tmp_path)
    loaded = KanadeModel.from_pretrained(tmp_path)  # no download: the folder has the SSL weights
    wave = synthetic_speech(0.5)
    assert torch.equal(loaded.encode(wave).global_embedding, model.encode(wave).global_embedding)


def test_torchaudio_layout_ssl_keys_are_ignored_with_a_warning(tiny, tmp_path, caplog):
    def edit(w):
        key = "ssl_feature_extractor.model.encoder.transformer.layers.0.attention.attention.in_proj_weight"
        w[key] = torch.zeros(3)

    tiny.save_pretrained(tmp_path, include_ssl=False)
    from safetensors.torch import load_file, save_file

    weights = load_file(str(tmp_path / "model.safetensors"))
    edit(weights)
    save_file(weights, str(tmp_path / "model.safetensors"))
    with caplog.at_level("WARNING"):
        model = KanadeModel.from_pretrained(tmp_path, ssl_model=tiny.ssl_feature_extractor.model)
    assert "transformers WavLM layout" in caplog.text
    wave = synthetic_speech(0.4)
    assert torch.equal(model.encode(wave).content_token_indices, tiny.encode(wave).content_token_indices)


def test_ssl_config_injection_builds_a_random_wavlm_of_that_shape():
    from transformers import WavLMConfig

    from kanade_tokenizer.testing import TINY_WAVLM

    cfg = tiny_config()
    cfg["model"]["init_args"]["ssl_feature_extractor"]["init_args"].update(pretrained=True, model_config=None)
    for ssl_config in (WavLMConfig(**TINY_WAVLM), dict(TINY_WAVLM)):
        model = KanadeModel.from_config(cfg, ssl_config=ssl_config)
        assert model.ssl_feature_extractor.feature_dim == 32
        assert len(model.ssl_feature_extractor.model.encoder.layers) == 2


# --- parity with the original implementation ---------------------------------------------------


def _deterministic_(model):
    """Fill every parameter from a fixed formula (independent of RNGs and init code)."""
    import math

    with torch.no_grad():
        for i, (name, p) in enumerate(sorted(model.named_parameters())):
            n = p.numel()
            base = torch.sin(torch.arange(n, dtype=torch.float64) * 0.7311 + i * 1.37).reshape(p.shape)
            if p.dim() == 1 and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * base)
            elif p.dim() == 1:
                p.copy_(0.05 * base)
            else:
                p.copy_(base * (1.5 / math.sqrt(n // p.shape[0])))


def _golden_wave(n=24000):
    import math

    t = torch.arange(n, dtype=torch.float64) / 24000
    x = 0.5 * torch.sin(2 * math.pi * 220 * t) * (1 + torch.sin(2 * math.pi * 3 * t)) / 2
    return (x + 0.2 * torch.sin(2 * math.pi * 1234 * t + 1)).float()


def test_matches_the_original_implementation():
    """Golden values from the original kanade-tokenizer code (@8e17729, attention dropout off, the
    same SSL features), run on the tiny config with the deterministic weights above."""
    model = KanadeModel.from_config(tiny_config()).eval()
    _deterministic_(model)
    feats = model.encode(_golden_wave())
    assert feats.content_token_indices.tolist() == [
        6428, 6428, 6428, 6428, 6428, 6428, 6940, 6940, 6372, 6372, 6372, 6372, 6372,
        6364, 6940, 6940, 6364, 6428, 6940, 6428, 6877, 6941, 6940, 6428, 6428,
    ]
    torch.testing.assert_close(
        feats.global_embedding[:6],
        torch.tensor([0.2976573407649994, 0.3148139715194702, -0.6800735592842102,
                      1.6954758167266846, -1.4828850030899048, 0.9038488268852234]),
        atol=1e-4, rtol=1e-4,
    )
    mel = model.decode(feats.global_embedding, content_token_indices=feats.content_token_indices,
                       target_audio_length=24000)
    assert mel.shape == (16, 94)
    torch.testing.assert_close(
        mel[:4, 10],
        torch.tensor([-0.3527580499649048, -0.8127003908157349, -0.3403719663619995, -0.9674484729766846]),
        atol=1e-4, rtol=1e-4,
    )
    assert mel.mean().item() == pytest.approx(0.022884145379066467, abs=1e-4)
    assert mel.abs().mean().item() == pytest.approx(1.2080929279327393, rel=1e-4)
