"""kanade_tokenizer.scripts: export_safetensors on a small fake Lightning checkpoint, dump_dataset."""

from __future__ import annotations

import csv
from dataclasses import dataclass

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from kanade_tokenizer.scripts import dump_dataset
from kanade_tokenizer.scripts.export_safetensors import ExportError, export_safetensors, main


@dataclass
class CustomHparams:  # stands in for a KanadeModelConfig pickled into the checkpoint
    lr: float = 2e-4


def fake_state_dict():
    t = lambda *s: torch.randn(*s)  # noqa: E731
    return {
        "model.local_encoder.layers.0.attention.wq.weight": t(8, 8),
        "model.local_quantizer.proj_in.weight": t(5, 8),
        "model.conv_downsample.weight": t(8, 8, 2),
        "model.conv_upsample.weight": t(8, 8, 2),
        "model.mel_conv_upsample.weight": t(8, 8, 4),
        "model.feature_decoder.layers.0.attention.wq.weight": t(8, 8),
        "model.ssl_feature_extractor.model.encoder.weight": t(4, 4),
        "model._orig_mod.global_encoder.pooling.proj.weight": t(4, 8),  # torch.compile prefix
        "model.mel_decoder.output_proj.weight": t(100, 8),
        "discriminator.stacks.0.0.parametrizations.weight.original0": t(1),
        "mel_spec.mel_spec.spectrogram.window": t(16),  # pipeline-level buffer
    }


EXPECTED = {
    "local_encoder.layers.0.attention.wq.weight",
    "local_quantizer.proj_in.weight",
    "conv_downsample.weight",
    "mel_conv_upsample.weight",
    "global_encoder.pooling.proj.weight",
    "mel_decoder.output_proj.weight",
}


@pytest.fixture
def ckpt(tmp_path):
    sd = fake_state_dict()
    path = tmp_path / "step=100.ckpt"
    torch.save({"state_dict": sd, "epoch": 1, "global_step": 100, "optimizer_states": [{"lr": 1e-4}]}, path)
    return path, sd


def test_default_export_drops_training_modules(ckpt):
    path, sd = ckpt
    out, tensors = export_safetensors(path)
    assert out == path.with_suffix(".safetensors")
    saved = load_file(out)
    assert set(saved) == EXPECTED == set(tensors)
    torch.testing.assert_close(saved["global_encoder.pooling.proj.weight"],
                               sd["model._orig_mod.global_encoder.pooling.proj.weight"])
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))  # no temporary file left


def test_include_modules_and_dtype(ckpt, tmp_path):
    path, _ = ckpt
    out, _ = export_safetensors(path, tmp_path / "w" / "full.safetensors", ["feature_decoder", "conv_upsample"],
                                dtype="bfloat16")
    saved = load_file(out)
    assert set(saved) == EXPECTED | {"feature_decoder.layers.0.attention.wq.weight", "conv_upsample.weight"}
    assert all(v.dtype == torch.bfloat16 for v in saved.values())
    with pytest.raises(ExportError, match="conv_upsample"):
        export_safetensors(path, tmp_path / "x.safetensors", ["feature_decoder"])
    with pytest.raises(ExportError, match="takes"):
        export_safetensors(path, tmp_path / "x.safetensors", ["mel_decoder"])


def test_bare_state_dict_and_safetensors_inputs(tmp_path):
    sd = {k[len("model."):]: v for k, v in fake_state_dict().items() if k.startswith("model.")}
    torch.save(sd, tmp_path / "bare.pt")
    out, tensors = export_safetensors(tmp_path / "bare.pt")
    assert set(tensors) == EXPECTED
    # re-exporting a safetensors file needs a different output name
    with pytest.raises(ExportError, match="overwrite"):
        export_safetensors(out)
    _, again = export_safetensors(out, tmp_path / "again.safetensors")
    assert set(again) == EXPECTED


def test_untrusted_pickle_needs_opt_in(tmp_path, capsys):
    path = tmp_path / "hp.ckpt"
    torch.save({"state_dict": fake_state_dict(), "hyper_parameters": {"config": CustomHparams()}}, path)
    assert main([str(path), "--quiet"]) == 1
    assert "--trust-checkpoint" in capsys.readouterr().err
    assert main([str(path), "--trust-checkpoint", "-o", str(tmp_path / "ok.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "local_encoder.layers.0.attention.wq.weight" in out and "wrote 6 tensors" in out
    assert main([str(tmp_path / "missing.ckpt")]) == 1


def test_dump_dataset(tmp_path, capsys):
    root = tmp_path / "corpus"
    for rel, n, sr in [("a/x.wav", 2400, 24000), ("b/x.wav", 1600, 16000), ("b/y.wav", 800, 16000)]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, np.zeros(n, dtype=np.float32), sr)
    assert dump_dataset.main([str(root), "-o", str(tmp_path / "d.csv"), "-w", "2"]) == 0
    with open(tmp_path / "d.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["audio_id"], r["path"], r["length"], r["sample_rate"]) for r in rows] == [
        ("x", "a/x.wav", "2400", "24000"), ("x_1", "b/x.wav", "1600", "16000"), ("y", "b/y.wav", "800", "16000")]
    assert "3 files" in capsys.readouterr().out
    assert dump_dataset.main([str(root), "-o", str(tmp_path / "e.csv"), "-p", "*.flac"]) == 1
    # a WAV cut short is named (the one audio reader's rule), and the CSV written before is intact
    before = (tmp_path / "d.csv").read_bytes()
    whole = (root / "a" / "x.wav").read_bytes()
    (root / "a" / "cut.wav").write_bytes(whole[: len(whole) // 2])
    capsys.readouterr()
    assert dump_dataset.main([str(root), "-o", str(tmp_path / "d.csv")]) == 1
    assert f"{root / 'a' / 'cut.wav'}: truncated" in capsys.readouterr().err
    assert (tmp_path / "d.csv").read_bytes() == before


def test_export_of_a_pipeline_checkpoint_loads_into_kanade_model(tmp_path):
    """A Lightning-style checkpoint of a tiny KanadeModel (compiled, with a discriminator) exports to
    weights that KanadeModel.from_pretrained loads strictly, giving the same tokens."""
    import yaml

    from kanade_tokenizer.model import KanadeModel
    from kanade_tokenizer.testing import build_tiny_model, synthetic_speech, tiny_config

    model = build_tiny_model(seed=3)
    sd = {f"model._orig_mod.{k}": v for k, v in model.state_dict().items()}
    sd["discriminator.conv_post.weight"] = torch.randn(1, 4, 3, 3)
    torch.save({"state_dict": sd, "global_step": 7}, tmp_path / "last.ckpt")
    out, tensors = export_safetensors(tmp_path / "last.ckpt")
    assert not any(k.startswith(("ssl_feature_extractor.", "discriminator.", "feature_decoder.")) for k in tensors)
    assert set(tensors) == set(model.weights_to_save())
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config()))
    # the tiny config builds a random WavLM: hand the original one over so the tokens can match
    loaded = KanadeModel.from_pretrained(str(cfg), weights_path=str(out),
                                         ssl_model=model.ssl_feature_extractor.model)
    wave = synthetic_speech(0.5, seed=5)
    assert torch.equal(loaded.encode(wave).content_token_indices, model.encode(wave).content_token_indices)
