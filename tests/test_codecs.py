"""The Codec interface and NanoCodec: loading, saving, lengths, exact batching, decoding."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from kanitts.codecs import available_codecs, codec_class, load_codec
from kanitts.codecs.base import Codec
from kanitts.codecs.nanocodec import NanoCodec
from kanitts.errors import UserError
from kanitts.tiny import TINY_NANOCODEC_CONFIG

SR = 22050
SPF = 1764


def _signals(lengths, seed=0):
    """Speech-like test signals: noise through a moving resonance, with an envelope."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(len(lengths), max(lengths))
    for b, n in enumerate(lengths):
        t = torch.arange(n) / SR
        carrier = torch.sin(2 * math.pi * (150 + 60 * b) * t * (1 + 0.3 * torch.sin(2 * math.pi * 0.7 * t)))
        env = 0.5 * (1 + torch.sin(2 * math.pi * 3 * t + b))
        out[b, :n] = 0.4 * carrier * env + 0.05 * torch.randn(n, generator=g)
    return out, torch.tensor(lengths)


def test_registry_and_numbers(tiny_codec_dir):
    assert "nanocodec" in available_codecs()
    assert codec_class("nanocodec") is NanoCodec
    codec = load_codec("nanocodec", tiny_codec_dir, device="cpu")
    assert isinstance(codec, Codec)
    assert (codec.sample_rate, codec.samples_per_frame, codec.frame_rate) == (SR, SPF, 12.5)
    assert (codec.num_codebooks, codec.codebook_size) == (4, 4032)
    assert codec.code_columns == ["nano_layer_1", "nano_layer_2", "nano_layer_3", "nano_layer_4"]
    assert [codec.num_frames(n) for n in (0, 1, SPF, SPF + 1)] == [0, 1, 1, 2]
    with pytest.raises(UserError, match="unknown codec"):
        load_codec("no-such-codec", tiny_codec_dir)


def test_save_and_load_round_trip(tmp_path, tiny_codec_dir):
    original = NanoCodec.from_config(TINY_NANOCODEC_CONFIG, seed=3, device="cpu")
    folder = original.save_pretrained(tmp_path / "codec")  # an absolute path with "/" in it
    config = json.loads((folder / "config.json").read_text())
    assert config["encoder_config"]["base_channels"] == 4
    assert config["decoder_config"]["base_channels"] == 32
    loaded = NanoCodec.from_pretrained(folder, device="cpu")
    a, b = original.model.state_dict(), loaded.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.fingerprint == original.fingerprint
    assert loaded.fingerprint != load_codec("nanocodec", tiny_codec_dir).fingerprint
    # the safetensors file is in the layout the package's own loader reads (the Hub layout)
    from nanocodec_torch import AudioCodecModel
    from nanocodec_torch.utils import load_safetensors_weights

    ref = AudioCodecModel(
        encoder_config={**loaded.config["encoder_config"]},
        decoder_config={**loaded.config["decoder_config"]},
    )
    load_safetensors_weights(ref, str(folder / "model.safetensors"), verbose=False)
    ref_sd = ref.state_dict()
    assert all(torch.allclose(ref_sd[k], a[k], atol=1e-6) for k in a)
    # a lone weights file next to its config works too
    assert NanoCodec.from_pretrained(folder / "model.safetensors").fingerprint == original.fingerprint


def test_loading_errors_are_user_errors(tmp_path, tiny_codec_dir):
    with pytest.raises(UserError, match="neither a folder nor a file"):
        NanoCodec.from_pretrained(tmp_path / "missing")
    with pytest.raises(UserError, match=r"me/codec\.safetensors is neither a folder nor a file"):
        NanoCodec.from_pretrained("me/codec.safetensors")  # a file name, never asked of the Hub
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no model\.safetensors"):
        NanoCodec.from_pretrained(tmp_path / "empty")
    # weights that do not fit the architecture named in config.json
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((tiny_codec_dir / "model.safetensors").read_bytes())
    (bad / "config.json").write_text(json.dumps({"encoder_config": {"base_channels": 8}}))
    with pytest.raises(UserError):
        NanoCodec.from_pretrained(bad)
    # a Hub id that is not in the (empty) cache, offline
    with pytest.raises(UserError, match="Hugging Face Hub"):
        NanoCodec.from_pretrained("nobody/no-such-codec", cache_dir=tmp_path / "hub", local_files_only=True)


def test_encode_shapes_and_ceil_lengths(tiny_codec):
    lengths = [3 * SPF, 3 * SPF + 1, 1, 2 * SPF - 1]
    waves, lens = _signals(lengths)
    codes, frames = tiny_codec.encode(waves, lens)
    assert frames.tolist() == [3, 4, 1, 2]
    assert codes.dtype == torch.int64 and codes.shape == (4, 4, 4)
    assert int(codes.min()) >= 0 and int(codes.max()) < 4032
    for b, f in enumerate(frames.tolist()):
        assert (codes[b, :, f:] == 0).all()  # padding frames are zero
    empty, zero = tiny_codec.encode(torch.zeros(2, 0), torch.tensor([0, 0]))
    assert empty.shape == (2, 4, 0) and zero.tolist() == [0, 0]
    with pytest.raises(ValueError):
        tiny_codec.encode(waves, torch.tensor([1, 2, 3, 10**9]))


def test_batched_encoding_equals_one_at_a_time(tiny_codec):
    lengths = [5 * SPF + 17, 2 * SPF, SPF + 900, 4 * SPF - 3, 700]
    waves, lens = _signals(lengths, seed=1)
    codes, frames = tiny_codec.encode(waves, lens)
    for b, n in enumerate(lengths):
        alone, alone_frames = tiny_codec.encode(waves[b : b + 1, :n])
        assert alone_frames.item() == frames[b].item()
        assert torch.equal(alone[0], codes[b, :, : frames[b]]), f"item {b} differs when batched"
    # the codes depend on the input (the tiny random codec is not degenerate)
    assert len(torch.unique(codes[0, :, : frames[0]])) > 4


def test_decode_batches_with_different_lengths(tiny_codec):
    waves, lens = _signals([4 * SPF, 2 * SPF + 5, SPF])
    codes, frames = tiny_codec.encode(waves, lens)
    audio, sample_lengths = tiny_codec.decode(codes, frames)
    assert audio.shape == (3, 4 * SPF) and audio.dtype == torch.float32
    assert sample_lengths.tolist() == [f * SPF for f in frames.tolist()]
    for b, f in enumerate(frames.tolist()):
        alone, alone_len = tiny_codec.decode(codes[b : b + 1, :, :f], frames[b : b + 1])
        n = int(alone_len)
        assert torch.allclose(alone[0], audio[b, :n], atol=1e-5)
        assert (audio[b, n:] == 0).all()
    assert audio.abs().max() > 0
    with pytest.raises(ValueError, match="codes must lie in"):
        tiny_codec.decode(torch.full((1, 4, 3), 4032), torch.tensor([3]))
    with pytest.raises(ValueError, match="shape"):
        tiny_codec.decode(torch.zeros(1, 3, 3, dtype=torch.int64))


def test_fast_upsampling_matches_the_package(tiny_codec):
    from nanocodec_torch.models.decoder import CausalConvTranspose1d

    for layer in tiny_codec.model.audio_decoder.up_sample_conv_layers:
        x = torch.randn(2, layer.in_channels, 11)
        with torch.no_grad():
            fast = layer(x)
            slow = CausalConvTranspose1d.forward(layer, x)
        assert fast.shape == slow.shape
        assert torch.allclose(fast, slow, atol=1e-5)


def _fresh_tiny_model():
    """A tiny nanocodec-torch model with none of kanitts' patches installed."""
    from kanitts.codecs.nanocodec import _build_model, _merge_config

    return _build_model(_merge_config(TINY_NANOCODEC_CONFIG))


def _refusal(call) -> str:
    from kanitts.patches import UnsupportedVersion, installed_version

    with pytest.raises(UnsupportedVersion) as caught:
        call()
    message = str(caught.value)
    assert message.startswith(f"nanocodec-torch {installed_version('nanocodec-torch')} is not supported: ")
    assert "kanitts was tested with nanocodec-torch 1.0.0" in message
    return message


def test_fast_upsampling_refuses_layers_it_does_not_understand():
    from nanocodec_torch.models.decoder import CausalConvTranspose1d

    from kanitts.patches.nanocodec import install_fast_upsampling

    decoder = _fresh_tiny_model().audio_decoder
    del decoder.up_sample_conv_layers[1].trim
    message = _refusal(lambda: install_fast_upsampling(decoder))
    assert "audio_decoder.up_sample_conv_layers[1] (CausalConvTranspose1d) has no trim" in message

    class Untrimmed(CausalConvTranspose1d):
        """Same attributes, but an upstream forward that no longer trims: the fast path would differ."""

        def forward(self, x):
            trim, self.trim = self.trim, 0
            try:
                return super().forward(x)
            finally:
                self.trim = trim

    decoder = _fresh_tiny_model().audio_decoder
    for layer in decoder.up_sample_conv_layers:
        layer.__class__ = Untrimmed
    message = _refusal(lambda: install_fast_upsampling(decoder))
    assert "Untrimmed.forward no longer computes the transposed convolution" in message
    assert all("forward" not in vars(layer) for layer in decoder.up_sample_conv_layers)


def test_replicate_fill_refuses_an_encoder_it_does_not_understand():
    from kanitts.patches.nanocodec import ReplicateFill

    encoder = _fresh_tiny_model().audio_encoder
    encoder.extra = torch.nn.Conv1d(4, 4, 3)
    message = _refusal(lambda: ReplicateFill(encoder))
    assert "the encoder has convolutions outside Conv1dNorm (extra)" in message
    assert not any(m._forward_pre_hooks for m in encoder.modules())


def test_dataset_columns(tiny_codec):
    waves, lens = _signals([2 * SPF, SPF + 1, 10])
    codes, frames = tiny_codec.encode(waves, lens)
    rows = tiny_codec.dataset_columns(codes, frames)
    assert [r["encoded_len"] for r in rows] == [2, 2, 1]
    for r in rows:
        assert set(r) == {"nano_layer_1", "nano_layer_2", "nano_layer_3", "nano_layer_4", "encoded_len"}
        assert all(len(r[f"nano_layer_{i}"]) == r["encoded_len"] for i in range(1, 5))
        assert all(isinstance(v, int) for v in r["nano_layer_1"])
    features = tiny_codec.dataset_features()
    assert str(features["nano_layer_1"]) == "List(Value('int64'))"


def test_full_size_config_shapes():
    """The default config is the released architecture: 1764 samples/frame, 4 x 4032 codes."""
    codec = NanoCodec.from_config(seed=0, device="cpu")
    assert codec.samples_per_frame == SPF and codec.codebook_size == 4032
    params = sum(p.numel() for p in codec.model.parameters())
    assert 60e6 < params < 63e6
    codes, frames = codec.encode(torch.from_numpy(np.zeros((1, SPF + 1), np.float32)))
    assert codes.shape == (1, 4, 2) and frames.tolist() == [2]


@pytest.mark.cuda
def test_encode_on_cuda_equals_cpu_codes_for_most_frames(tiny_codec_dir):
    """fp32 NanoCodec on the GPU against the CPU, with TF32 off (pure fp32: only the summation
    order differs) and with PyTorch's default (cuDNN convolutions in TF32)."""
    lengths = [5 * SPF + 17, 2 * SPF, SPF + 900, 4 * SPF - 3, 700, 9 * SPF]
    waves, lens = _signals(lengths, seed=2)
    cpu_codes, frames = load_codec("nanocodec", tiny_codec_dir, device="cpu").encode(waves, lens)
    gpu = load_codec("nanocodec", tiny_codec_dir, device="cuda")
    valid = torch.arange(cpu_codes.shape[-1])[None, :] < frames[:, None]
    shares = {}
    default_tf32 = torch.backends.cudnn.allow_tf32
    for tf32 in (False, True):
        torch.backends.cudnn.allow_tf32 = tf32
        try:
            codes, gpu_frames = gpu.encode(waves, lens)
        finally:
            torch.backends.cudnn.allow_tf32 = default_tf32
        assert torch.equal(gpu_frames.cpu(), frames)
        equal = (codes.cpu() == cpu_codes).all(1) & valid
        shares[tf32] = float(equal.sum()) / float(valid.sum())
    print(f"NanoCodec frames equal on cuda and cpu: {shares[False]:.4f} (TF32 off), {shares[True]:.4f} (TF32 on)")
    assert shares[False] >= 0.98
