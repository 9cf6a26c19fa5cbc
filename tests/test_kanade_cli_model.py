"""`kanade encode / decode / convert` in-process on a tiny random KanadeModel saved to a folder.

The model comes from kanade_tokenizer.testing (random weights, tiny WavLM, 16 mel bins); the
vocoder is a small random Vocos with 16 mel bins saved in the Hub layout. Everything is offline.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf
import torch

from kanade_tokenizer.cli import main
from kanade_tokenizer.tokens import load_tokens
from kanade_tokenizer.vocoders.vocos import Vocos, VocosConfig

SR = 24000


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from kanade_tokenizer.testing import build_tiny_model

    root = tmp_path_factory.mktemp("kanade_cli_model")
    model = build_tiny_model(seed=0)
    model_dir = model.save_pretrained(root / "model")
    torch.manual_seed(0)
    vocoder = Vocos(VocosConfig(n_mels=model.config.n_mels, dim=16, intermediate_dim=32, num_layers=1))
    vocoder_dir = vocoder.save_pretrained(root / "vocoder")
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
    _, model_dir, _vocoder_dir = saved
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text((model_dir / "config.yaml").read_text())
    a = speech(tmp_path / "a.wav", 0.4)
    assert main(["encode", str(a), "-o", str(tmp_path / "t"), "--model", str(cfg),
                 "--weights", str(model_dir / "model.safetensors"), "--device", "cpu"]) == 0
    assert (tmp_path / "t" / "a.safetensors").is_file()


# --- inputs a user can get wrong --------------------------------------------------------------


def test_clip_shorter_than_one_token_is_refused_before_encoding(tmp_path, saved, capsys):
    ok = speech(tmp_path / "in" / "ok.wav", 0.5)
    speech(tmp_path / "in" / "blip.wav", 0.015)
    out = tmp_path / "tok"
    main(["encode", str(ok), "-o", str(out), "--model", str(saved[1]), "--device", "cpu"])
    before = (out / "ok.safetensors").read_bytes()
    assert main(["encode", str(tmp_path / "in"), "-o", str(out), "--model", str(saved[1]), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "blip.wav: 0.015 s (360 samples at 24000 Hz)" in err
    assert "needs at least 481 samples (20.0 ms)" in err and len(err.strip().splitlines()) == 1
    assert (out / "ok.safetensors").read_bytes() == before and not (out / "blip.safetensors").exists()
    # voice conversion of such a clip, too (as a reference voice it is fine)
    argv = ["convert", "--reference", str(ok), "-o", str(tmp_path / "vc.wav"), *common(saved)]
    assert main([*argv, "--source", str(tmp_path / "in" / "blip.wav")]) == 1
    assert "blip.wav: 0.015 s (360 samples at 24000 Hz)" in capsys.readouterr().err
    assert not (tmp_path / "vc.wav").exists()


def test_truncated_wav_is_named_before_the_model_loads(tmp_path, capsys, monkeypatch):
    from kanade_tokenizer.recipes import common

    whole = speech(tmp_path / "whole.wav", 1.0).read_bytes()
    (tmp_path / "cut.wav").write_bytes(whole[: len(whole) // 2])
    monkeypatch.setattr(common, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["encode", str(tmp_path / "cut.wav"), "-o", str(tmp_path / "tok")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'cut.wav'}: truncated: the data chunk declares 48000 bytes but the file holds 23978" in err
    from kanade_tokenizer.audio import AudioLoadError, load_audio

    with pytest.raises(AudioLoadError, match=r"cut\.wav: truncated: the data chunk declares"):
        load_audio(tmp_path / "cut.wav")


def test_weights_that_are_a_torch_pickle_say_how_to_convert(tmp_path, saved, capsys):
    model, model_dir, _ = saved
    pickle = tmp_path / "model.safetensors"
    torch.save(model.state_dict(), pickle)
    a = speech(tmp_path / "a.wav", 0.4)
    argv = ["encode", str(a), "-o", str(tmp_path / "t"), "--model", str(model_dir / "config.yaml"), "--device", "cpu"]
    assert main([*argv, "--weights", str(pickle)]) == 1
    err = capsys.readouterr().err
    converted = tmp_path / "model-converted.safetensors"
    assert f"{pickle} is a PyTorch checkpoint (torch.save zip archive), not safetensors" in err
    assert f"python -m kanade_tokenizer.scripts.export_safetensors {pickle} -o {converted}" in err
    # the suggested command works and its output loads
    from kanade_tokenizer.scripts.export_safetensors import main as export

    assert export([str(pickle), "-o", str(converted), "--quiet"]) == 0
    assert main([*argv, "--weights", str(converted)]) == 0
    (tmp_path / "lfs.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n")
    assert main([*argv, "--weights", str(tmp_path / "lfs.safetensors")]) == 1
    assert "is a Git LFS pointer, not the weights (fetch them with `git lfs pull`)" in capsys.readouterr().err


@pytest.fixture(scope="module")
def saved_12hz(tmp_path_factory):
    """A tiny model at 12.5 tokens/s (downsample factor 4) next to the 25 Hz one."""
    from kanade_tokenizer import KanadeModel
    from kanade_tokenizer.testing import tiny_config

    cfg = tiny_config()
    cfg["model"]["init_args"]["config"]["downsample_factor"] = 4
    torch.manual_seed(1)
    model = KanadeModel.from_config(cfg).eval()
    assert model.token_rate == 12.5
    return model.save_pretrained(tmp_path_factory.mktemp("kanade_12hz") / "model")


def test_token_files_record_their_model_and_refuse_another(tmp_path, saved, saved_12hz, capsys):
    _model, model_dir, vocoder_dir = saved
    a = speech(tmp_path / "a.wav", 0.6)
    assert main(["encode", str(a), "-o", str(tmp_path / "tok"), "--model", str(model_dir), "--device", "cpu"]) == 0
    tok = tmp_path / "tok" / "a.safetensors"
    meta = load_tokens(tok).metadata
    assert (meta["model"], meta["token_rate"], meta["codebook_size"], meta["global_embedding_dim"]) == (
        str(model_dir), "25", "12800", "16")
    assert meta["kanade_tokenizer_version"] and meta["format"] == "kanade-tokens/1"

    argv = ["decode", str(tok), "-o", str(tmp_path / "x.wav"), "--vocoder", str(vocoder_dir), "--device", "cpu"]
    assert main([*argv, "--model", str(saved_12hz)]) == 1
    err = capsys.readouterr().err
    assert f"{tok}: made by {model_dir} at 25 tokens/s, but the model {saved_12hz} works at 12.5 tokens/s" in err
    assert not (tmp_path / "x.wav").exists()
    # a reference voice from the other model is refused the same way
    assert main(["encode", str(a), "-o", str(tmp_path / "tok12"), "--model", str(saved_12hz), "--device", "cpu"]) == 0
    assert main([*argv, "--model", str(model_dir), "--reference", str(tmp_path / "tok12" / "a.safetensors")]) == 1
    assert f"a.safetensors: made by {saved_12hz} at 12.5 tokens/s, but the model {model_dir}" in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()


def test_token_ids_outside_the_vocabulary_are_named(tmp_path, saved, capsys):
    from safetensors.torch import save_file

    _, model_dir, vocoder_dir = saved
    a = speech(tmp_path / "a.wav", 0.6)
    main(["encode", str(a), "-o", str(tmp_path / "tok"), "--model", str(model_dir), "--device", "cpu"])
    tokens = load_tokens(tmp_path / "tok" / "a.safetensors")
    ids = tokens.content_token_indices.clone()
    ids[5], ids[9] = 12800, 40000
    bad = tmp_path / "bad.safetensors"
    save_file(
        {"content_token_indices": ids, "global_embedding": tokens.global_embedding}, str(bad), metadata=tokens.metadata
    )
    argv = ["decode", str(bad), "-o", str(tmp_path / "x.wav"), "--model", str(model_dir), "--vocoder", str(vocoder_dir)]
    assert main(argv) == 1
    assert (f"{bad}: content_token_indices[5] = 12800 is outside the vocabulary (valid ids: 0 ... 12799; "
            "2 bad id(s) in the file)") in capsys.readouterr().err
    # a file that does not say its vocabulary is checked against the model's
    old = {k: v for k, v in tokens.metadata.items() if k != "codebook_size"}
    save_file({"content_token_indices": ids, "global_embedding": tokens.global_embedding}, str(bad), metadata=old)
    assert main([*argv, "--device", "cpu"]) == 1
    assert (
        f"content_token_indices[5] = 12800 is outside the vocabulary of the model {model_dir}"
        in capsys.readouterr().err
    )
    save_file({"content_token_indices": ids[:0], "global_embedding": tokens.global_embedding}, str(bad))
    assert main(argv) == 1
    assert "holds no content tokens" in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()


def test_written_files_are_readable_by_others(tmp_path, saved):
    """save_pretrained, token files, exports and dumps get 0666 less the umask, like any file
    (safetensors itself creates 0600 files)."""
    from kanade_tokenizer.scripts.dump_dataset import main as dump
    from kanade_tokenizer.scripts.export_safetensors import export_safetensors

    model, _model_dir, _ = saved
    old = os.umask(0o022)
    try:
        folder = model.save_pretrained(tmp_path / "m")
        a = speech(tmp_path / "audio" / "a.wav", 0.4)
        main(["encode", str(a), "-o", str(tmp_path / "tok"), "--model", str(folder), "--device", "cpu"])
        torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "run.ckpt")
        exported, _ = export_safetensors(tmp_path / "run.ckpt")
        dump([str(tmp_path / "audio"), "-o", str(tmp_path / "data.csv")])
        files = [folder / "config.yaml", folder / "model.safetensors", tmp_path / "tok" / "a.safetensors",
                 exported, tmp_path / "data.csv"]
        assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {f.name: "0o644" for f in files}
        os.umask(0o007)  # a group-shared setup: the mode follows the umask
        folder = model.save_pretrained(tmp_path / "shared")
        assert oct((folder / "model.safetensors").stat().st_mode & 0o777) == "0o660"
    finally:
        os.umask(old)
