"""The `kanade` command line, run in-process (main([...])).

The plumbing is tested with a small stand-in model that follows KanadeModel's inference API
(encode / encode_batch / decode / voice_conversion / config.sample_rate), so these tests do not
depend on the model code; test_kanade_cli_model.py runs the same commands on a tiny real
KanadeModel. The vocoder is a small random Vocos saved in the Hub layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from kanade_tokenizer.cli import main
from kanade_tokenizer.errors import KanadeInputError
from kanade_tokenizer.recipes import common
from kanade_tokenizer.tokens import load_tokens
from kanade_tokenizer.vocoders.vocos import Vocos, VocosConfig

SR = 24000


@dataclass
class Features:
    content_embedding: torch.Tensor | None
    content_token_indices: torch.Tensor | None
    global_embedding: torch.Tensor | None


@dataclass
class StubConfig:
    sample_rate: int = SR
    hop_length: int = 256
    n_mels: int = 100
    vocoder_name: str = "vocos"


class StubModel(nn.Module):
    """Tokens: one per 960 samples (25 Hz); global embedding: (128,) from the waveform's statistics."""

    def __init__(self):
        super().__init__()
        self.config = StubConfig()
        self.proj = nn.Linear(1, 128)
        self.calls: list[tuple] = []

    def encode(self, waveform):
        return self.encode_batch([waveform])[0]

    def encode_batch(self, waveforms):
        self.calls.append(("encode_batch", len(waveforms)))
        out = []
        for w in waveforms:
            assert w.dim() == 1
            frames = w[: (w.numel() // 960) * 960].reshape(-1, 960)
            idx = (frames.abs().mean(dim=1) * 12799).long().clamp(0, 12799)
            g = self.proj(w.abs().mean().reshape(1, 1))[0]
            out.append(Features(torch.randn(idx.numel(), 768), idx, g))
        return out

    def decode(self, global_embedding, content_token_indices=None, content_embedding=None, target_audio_length=None):
        self.calls.append(("decode", target_audio_length))
        assert global_embedding.shape == (128,)
        t = (content_token_indices if content_token_indices is not None else content_embedding).shape[0]
        length = target_audio_length if target_audio_length is not None else t * 960
        return torch.zeros(100, length // 256 + 1) - 5.0 + global_embedding.mean()

    def voice_conversion(self, source_waveform, reference_waveform):
        self.calls.append(("voice_conversion", source_waveform.numel(), reference_waveform.numel()))
        return torch.zeros(100, source_waveform.numel() // 256 + 1)


@pytest.fixture
def vocoder_dir(tmp_path):
    torch.manual_seed(0)
    return Vocos(VocosConfig(dim=16, intermediate_dim=32, num_layers=1)).save_pretrained(tmp_path / "vocos")


@pytest.fixture
def stub(monkeypatch):
    model = StubModel()
    loaded = {}

    def fake_load_model(name, weights=None, device=None):
        loaded["args"] = (name, weights, device)
        return model

    monkeypatch.setattr(common, "load_model", fake_load_model)
    model.loaded = loaded
    return model


def write_wav(path: Path, seconds: float, sr: int = SR, freq: float = 220.0, channels: int = 1) -> Path:
    t = np.arange(int(seconds * sr)) / sr
    x = (0.4 * np.sin(2 * np.pi * freq * t) * (1 + 0.5 * np.sin(2 * np.pi * 2 * t))).astype(np.float32)
    if channels > 1:
        x = np.stack([x] * channels, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, sr)
    return path


def test_encode_files_and_folders(tmp_path, stub, capsys):
    a = write_wav(tmp_path / "in" / "a.wav", 1.0)
    write_wav(tmp_path / "corpus" / "spk1" / "b.wav", 0.5, sr=16000)
    write_wav(tmp_path / "corpus" / "spk2" / "c.flac", 0.7, channels=2)
    (tmp_path / "corpus" / "notes.txt").write_text("not audio")
    out = tmp_path / "tokens"
    rc = main(["encode", str(a), str(tmp_path / "corpus"), "-o", str(out), "--batch-size", "2",
               "--model", "some/model", "--device", "cpu"])
    assert rc == 0
    assert stub.loaded["args"] == ("some/model", None, "cpu")
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.safetensors"))
    assert files == ["a.safetensors", "spk1/b.safetensors", "spk2/c.safetensors"]
    assert [c for c in stub.calls if c[0] == "encode_batch"] == [("encode_batch", 2), ("encode_batch", 1)]
    tok = load_tokens(out / "a.safetensors")
    assert tok.content_token_indices.dtype == torch.int64 and tok.content_token_indices.shape == (25,)
    assert tok.global_embedding.shape == (128,) and tok.content_embedding is None
    assert tok.metadata["format"] == "kanade-tokens/1"
    assert tok.num_samples == SR and tok.metadata["sample_rate"] == str(SR)
    assert tok.metadata["source"] == str(a) and tok.metadata["model"] == "some/model"
    # the 16 kHz file was resampled to the model's rate
    assert load_tokens(out / "spk1" / "b.safetensors").num_samples == SR // 2
    assert "encoded 3 file(s)" in capsys.readouterr().out


def test_encode_can_keep_content_embedding(tmp_path, stub):
    a = write_wav(tmp_path / "a.wav", 0.5)
    assert main(["encode", str(a), "-o", str(tmp_path / "t"), "--save-content-embedding", "--no-progress"]) == 0
    assert load_tokens(tmp_path / "t" / "a.safetensors").content_embedding.shape == (12, 768)


def test_decode_round_trip_length(tmp_path, stub, vocoder_dir):
    a = write_wav(tmp_path / "a.wav", 1.3)
    main(["encode", str(a), "-o", str(tmp_path / "t")])
    out = tmp_path / "out.wav"
    rc = main(["decode", str(tmp_path / "t" / "a.safetensors"), "-o", str(out), "--vocoder", str(vocoder_dir)])
    assert rc == 0
    audio, sr = sf.read(out)
    assert sr == SR and audio.shape == (int(1.3 * SR),)  # exact source length, from the metadata
    assert ("decode", int(1.3 * SR)) in stub.calls


def test_decode_many_into_folder_with_reference_voice(tmp_path, stub, vocoder_dir):
    for name in ("a", "b"):
        write_wav(tmp_path / "in" / f"{name}.wav", 0.6)
    main(["encode", str(tmp_path / "in"), "-o", str(tmp_path / "t")])
    ref = write_wav(tmp_path / "ref.wav", 0.4, freq=330)
    rc = main(["decode", *map(str, sorted((tmp_path / "t").glob("*.safetensors"))), "-o", str(tmp_path / "wav"),
               "--vocoder", str(vocoder_dir), "--reference", str(ref)])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "wav").iterdir()) == ["a.wav", "b.wav"]


def test_convert(tmp_path, stub, vocoder_dir):
    src = write_wav(tmp_path / "src.wav", 0.9)
    ref = write_wav(tmp_path / "ref.wav", 0.5, sr=22050)
    out = tmp_path / "vc" / "out.wav"
    rc = main(["convert", "--source", str(src), "--reference", str(ref), "-o", str(out), "--vocoder", str(vocoder_dir)])
    assert rc == 0
    audio, sr = sf.read(out)
    assert sr == SR and audio.shape == (int(0.9 * SR),)
    assert ("voice_conversion", int(0.9 * SR), int(0.5 * SR)) in stub.calls


def test_user_errors_are_one_line(tmp_path, stub, vocoder_dir, capsys):
    assert main(["encode", str(tmp_path / "missing.wav"), "-o", str(tmp_path / "t")]) == 1
    assert "missing.wav" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["encode", str(tmp_path / "empty"), "-o", str(tmp_path / "t")]) == 1
    assert "no audio files" in capsys.readouterr().err
    # two inputs that would write the same token file
    write_wav(tmp_path / "x" / "a.wav", 0.2)
    write_wav(tmp_path / "y" / "a.wav", 0.2)
    argv = ["encode", str(tmp_path / "x" / "a.wav"), str(tmp_path / "y" / "a.wav"), "-o", str(tmp_path / "t")]
    assert main(argv) == 1
    assert "both be written" in capsys.readouterr().err
    # an unreadable audio file
    (tmp_path / "bad.wav").write_bytes(b"garbage" * 50)
    assert main(["encode", str(tmp_path / "bad.wav"), "-o", str(tmp_path / "t")]) == 1
    assert "bad.wav" in capsys.readouterr().err
    # a token file that is not one
    (tmp_path / "bad.safetensors").write_bytes(b"nope")
    assert main(["decode", str(tmp_path / "bad.safetensors"), "-o", str(tmp_path / "o.wav")]) == 1
    assert "bad.safetensors" in capsys.readouterr().err
    # a vocoder folder that does not exist
    write_wav(tmp_path / "s.wav", 0.3)
    assert main(["convert", "--source", str(tmp_path / "s.wav"), "--reference", str(tmp_path / "s.wav"),
                 "-o", str(tmp_path / "o.wav"), "--vocoder", str(tmp_path / "no-vocoder")]) == 1
    assert "no-vocoder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["encode", "-o", "x"])  # argparse: inputs are required


def test_load_model_argument_errors(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("model: {}\n")
    with pytest.raises(KanadeInputError, match="--weights needs"):
        common.load_model(tmp_path / "nope.yaml", cfg)
    with pytest.raises(KanadeInputError, match="cannot load the Kanade model"):
        common.load_model(cfg)  # a config without weights beside it
    with pytest.raises(KanadeInputError, match="cannot load"):
        common.load_model(tmp_path / "no" / "such" / "folder")
    with pytest.raises(KanadeInputError, match="no such weights"):
        common.load_model(cfg, tmp_path / "w.safetensors")


def test_demo_notebook_is_valid():
    """notebooks/kanade_demo.ipynb: nbformat 4 JSON whose code cells are valid Python."""
    import ast
    import json

    nb = json.loads((Path(__file__).parents[1] / "notebooks" / "kanade_demo.ipynb").read_text())
    assert nb["nbformat"] == 4 and nb["cells"]
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert len(code) >= 6
    for cell in nb["cells"]:
        assert set(cell) >= {"cell_type", "metadata", "source", "id"}
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and "execution_count" in cell
            ast.parse("".join(cell["source"]))
    text = "".join("".join(c["source"]) for c in code)
    for call in ("model.encode(", "model.decode(", "vocode(", "voice_conversion(", "encode_batch("):
        assert call in text
