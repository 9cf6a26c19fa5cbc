"""Kanade training: the shipped recipes run end to end on a tiny model, and their checkpoints
export to safetensors that load strictly; the data module cuts, pads and skips bad files."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch
import yaml
from safetensors import safe_open

from kanade_tokenizer import KanadeModel
from kanade_tokenizer.scripts.dump_dataset import scan_audio, write_csv
from kanade_tokenizer.scripts.export_safetensors import export_safetensors
from kanade_tokenizer.testing import synthetic_speech, tiny_config

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "config" / "kanade" / "train"
CHUNK = 24000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Three short clips (one at 16 kHz, one stereo), their CSV and a tiny model config."""
    root = tmp_path_factory.mktemp("kanade_train")
    audio = root / "audio"
    (audio / "spk").mkdir(parents=True)
    sf.write(audio / "spk" / "a.wav", synthetic_speech(1.6, 24000, seed=1).numpy(), 24000)
    sf.write(audio / "spk" / "b.wav", synthetic_speech(0.6, 16000, seed=2).numpy(), 16000)
    stereo = torch.stack([synthetic_speech(1.2, 24000, seed=3), synthetic_speech(1.2, 24000, seed=4)], 1)
    sf.write(audio / "c.wav", stereo.numpy(), 24000)
    write_csv(scan_audio(audio), root / "train.csv")
    (root / "tiny.yaml").write_text(yaml.safe_dump(tiny_config()))
    return root


def recipe(name: str, corpus: Path, run_dir: Path, **pipeline_overrides) -> Path:
    """The shipped recipe with the tiny model, the tiny corpus and a 2-step CPU trainer."""
    config = yaml.safe_load((RECIPES / name).read_text())
    config["trainer"].update(
        accelerator="cpu", devices=1, strategy="auto", precision="32-true", max_steps=2, limit_train_batches=2,
        limit_val_batches=1, logger=False, enable_progress_bar=False, default_root_dir=str(run_dir),
    )
    config["trainer"]["callbacks"] = [  # the LR monitor needs a logger
        c for c in config["trainer"]["callbacks"] if not c["class_path"].endswith("LearningRateMonitor")
    ]
    config["model"]["model_config"] = str(corpus / "tiny.yaml")
    config["model"]["pipeline_config"].update(pipeline_overrides)
    if "discriminator" in config["model"]:
        n_mels = tiny_config()["model"]["init_args"]["config"]["n_mels"]
        config["model"]["discriminator"]["init_args"]["frequency_bins"] = n_mels
    for split in ("train_config", "val_config", "test_config"):
        config["data"][split].update(
            csv_path=str(corpus / "train.csv"), audio_root=str(corpus / "audio"), chunk_size=CHUNK,
            batch_size=2, num_workers=0, pin_memory=False,
        )
    config["data"]["train_config"]["chunk_hop_size"] = CHUNK // 2
    path = run_dir / name
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def exported_model(corpus: Path, ckpt: Path) -> tuple[KanadeModel, dict]:
    out, tensors = export_safetensors(ckpt, ckpt.with_suffix(".safetensors"))
    return KanadeModel.from_pretrained(corpus / "tiny.yaml", weights_path=out, strict=True), tensors


def test_pretrain_then_gan_recipes_train_export_and_reload(corpus, tmp_path):
    from kanade_tokenizer.training.cli import run

    torch.manual_seed(0)
    pre = run(["fit", "--config", str(recipe("12hz_pretrain.yaml", corpus, tmp_path / "pre", ckpt_path=None))])
    metrics = pre.trainer.callback_metrics
    assert pre.trainer.global_step == 2
    for key in ("train/loss", "train/gen/ssl_l2", "train/gen/mel_l1", "val/gen/mel_l1"):
        assert math.isfinite(float(metrics[key])), key
    assert float(metrics["train/gen/feature_loss"]) == pytest.approx(30 * float(metrics["train/gen/ssl_l2"]), rel=1e-4)
    last = tmp_path / "pre" / "checkpoints" / "last.ckpt"
    model, tensors = exported_model(corpus, last)
    trained = pre.model.model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in tensors.items())
    assert not any(k.startswith(("feature_decoder.", "ssl_feature_extractor.")) for k in tensors)
    features = model.encode(synthetic_speech(1.0, seed=9))
    assert features.content_token_indices.numel() > 0
    assert torch.isfinite(model.decode(features.global_embedding, features.content_token_indices)).all()

    # fine-tuning starts from a Lightning checkpoint too (opened with weights_only=True)
    from kanade_tokenizer.training.pipeline import KanadePipeline, KanadePipelineConfig

    resumed = KanadePipeline(str(corpus / "tiny.yaml"), KanadePipelineConfig(ckpt_path=str(last)))
    assert all(torch.equal(v, trained[k]) for k, v in resumed.model.state_dict().items())

    # GAN stage from the exported weights: content encoder frozen, discriminator trained
    gan_config = recipe("12hz_gan.yaml", corpus, tmp_path / "gan", ckpt_path=str(last.with_suffix(".safetensors")))
    gan = run(["fit", "--config", str(gan_config)])
    metrics = gan.trainer.callback_metrics
    for key in ("train/loss", "train/gen/adv_loss", "train/gen/feature_matching_loss", "train/disc/loss"):
        assert math.isfinite(float(metrics[key])), key
    after = gan.model.model.state_dict()
    frozen = [k for k in after if k.startswith(("local_encoder.", "local_quantizer.", "conv_downsample."))]
    assert frozen and all(torch.equal(after[k], trained[k]) for k in frozen)
    decoder = [k for k in after if k.startswith("mel_decoder.")]
    assert any(not torch.equal(after[k], trained[k]) for k in decoder)
    _, gan_tensors = exported_model(corpus, tmp_path / "gan" / "checkpoints" / "last.ckpt")
    assert not any(k.startswith("discriminator.") for k in gan_tensors)


def _fit_one_step(corpus: Path, gan: bool = False, accelerator: str = "cpu", max_steps: int = 1, hooks=None,
                  **trainer_kwargs):
    """``max_steps`` optimiser steps of the tiny model's mel training (with the discriminator:
    two per batch); ``hooks(pipeline)`` runs before fitting. Returns the trainer."""
    import lightning.pytorch as pl

    from kanade_tokenizer.modules.discriminator import SpectrogramDiscriminator
    from kanade_tokenizer.training.data import AudioDataConfig, AudioDataModule
    from kanade_tokenizer.training.pipeline import KanadePipeline, KanadePipelineConfig

    torch.manual_seed(0)
    discriminator = SpectrogramDiscriminator(frequency_bins=16, channels=8, dilation=[1, 1, 1]) if gan else None
    config = KanadePipelineConfig(train_feature=False, use_discriminator=gan)
    pipeline = KanadePipeline(str(corpus / "tiny.yaml"), config, discriminator=discriminator)
    if hooks is not None:
        hooks(pipeline)
    data = AudioDataModule(AudioDataConfig(
        csv_path=str(corpus / "train.csv"), audio_root=str(corpus / "audio"), chunk_size=CHUNK, batch_size=2,
    ))
    trainer = pl.Trainer(
        accelerator=accelerator, devices=1, max_steps=max_steps, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **trainer_kwargs,
    )
    trainer.fit(pipeline, data)
    return trainer


def test_precision_is_lightnings_alone_and_16_mixed_clips_the_unscaled_norm(corpus):
    from lightning.pytorch.plugins.precision import MixedPrecision

    from kanade_tokenizer.training.pipeline import KanadePipeline

    # no bf16 autocast of the model's own on CUDA: `precision: 32-true` trains in fp32 there too
    pipeline = KanadePipeline(str(corpus / "tiny.yaml"))
    assert pipeline.model._autocast_dtype(torch.device("cuda")) is None
    # Lightning runs fp16 on a CPU only with an explicit plugin; the scale 2**8 keeps fp16 finite
    fp32 = _fit_one_step(corpus, precision="32-true")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    fp16 = _fit_one_step(corpus, plugins=[MixedPrecision("16-mixed", "cpu", scaler)])
    norm32, norm16 = (float(t.callback_metrics["train/gen/grad_norm"]) for t in (fp32, fp16))
    assert norm16 == pytest.approx(norm32, rel=0.01)  # clipped after unscaling, not 256 times larger


@pytest.mark.cuda
def test_two_gan_steps_on_cuda_in_32_true_and_16_mixed(corpus):
    """On a GPU, `precision: 32-true` computes in fp32 throughout (no bf16 autocast of the model's
    own), and 16-mixed runs fp16 with the gradient norm clipped after unscaling."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    def dtype_recorder(seen: set):
        def install(pipeline):
            def record(_module, _args, output):
                for t in output if isinstance(output, (tuple, list)) else (output,):
                    if torch.is_tensor(t) and t.is_floating_point():
                        seen.add(t.dtype)

            for module in pipeline.modules():
                module.register_forward_hook(record)
        return install

    seen32, seen16 = set(), set()
    fp32 = _fit_one_step(corpus, gan=True, accelerator="cuda", max_steps=4, hooks=dtype_recorder(seen32),
                         precision="32-true")
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**8)
    fp16 = _fit_one_step(corpus, gan=True, accelerator="cuda", max_steps=4, hooks=dtype_recorder(seen16),
                         plugins=[MixedPrecision("16-mixed", "cuda", scaler)])
    metrics32, metrics16 = fp32.callback_metrics, fp16.callback_metrics
    print(f"activation dtypes: 32-true {sorted(map(str, seen32))}, 16-mixed {sorted(map(str, seen16))}; "
          f"gen grad norm {float(metrics32['train/gen/grad_norm']):.3f} / "
          f"{float(metrics16['train/gen/grad_norm']):.3f}")
    assert fp32.global_step == fp16.global_step == 4
    assert seen32 == {torch.float32} and torch.float16 in seen16
    for key in ("train/loss", "train/disc/loss", "train/gen/grad_norm", "train/disc/grad_norm"):
        assert math.isfinite(float(metrics32[key])) and math.isfinite(float(metrics16[key])), key
    assert float(metrics16["train/gen/grad_norm"]) == pytest.approx(float(metrics32["train/gen/grad_norm"]), rel=0.1)


def test_mel_target_is_fp32_under_autocast(corpus):
    from kanade_tokenizer.training.pipeline import KanadePipeline

    pipeline = KanadePipeline(str(corpus / "tiny.yaml")).eval()
    waveform = torch.stack([synthetic_speech(1.0, seed=5), synthetic_speech(1.0, seed=6)])
    expected = pipeline.mel_feature(waveform)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = pipeline(waveform)
    assert out["mel_recon"].dtype == torch.float32 and torch.equal(out["mel_real"], expected)


@pytest.mark.slow
def test_gan_recipe_trains_on_two_ddp_processes(corpus, tmp_path):
    """The shipped GAN recipe on 2 CPU processes (DDP over gloo), as on a 2-GPU machine."""
    config = recipe("12hz_gan.yaml", corpus, tmp_path, ckpt_path=None)
    settings = yaml.safe_load(config.read_text())
    shipped = yaml.safe_load((RECIPES / "12hz_gan.yaml").read_text())["trainer"]
    settings["trainer"].update(
        devices=2, strategy=shipped.get("strategy", "auto"), max_steps=2, limit_val_batches=0,
        enable_checkpointing=False, callbacks=[],
    )
    settings["data"]["val_config"] = settings["data"]["test_config"] = None
    config.write_text(yaml.safe_dump(settings))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "kanade_tokenizer.training.cli", "fit", "--config", str(config)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "`max_steps=2` reached" in done.stderr + done.stdout


def test_gan_stage_refuses_ddp_that_does_not_look_for_unused_parameters(corpus, tmp_path):
    import torch.distributed as dist

    from kanade_tokenizer.training.cli import run
    from kanade_tokenizer.training.pipeline import PipelineConfigError

    config = recipe("12hz_gan.yaml", corpus, tmp_path, ckpt_path=None)
    try:
        with pytest.raises(PipelineConfigError, match=r"trainer\.strategy: .*ddp_find_unused_parameters_true"):
            run(["fit", "--config", str(config), "--trainer.strategy", "ddp"])  # one process
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_chunk_offsets_cover_the_file_with_an_end_aligned_window():
    from kanade_tokenizer.training.data import chunk_offsets

    assert chunk_offsets(30, 40, 10) == [0]
    assert chunk_offsets(100, 40, 30) == [0, 30, 60]
    assert chunk_offsets(110, 40, 30) == [0, 30, 60, 70]


def test_data_module_resamples_pads_and_skips_unreadable_files(corpus, tmp_path, caplog):
    from kanade_tokenizer.training.data import (
        AudioDataConfig,
        AudioDataError,
        AudioDataModule,
        ChunkedAudioDataset,
        collate_audio,
    )

    audio = corpus / "audio"
    (audio / "broken.wav").write_bytes(b"RIFF not really audio")
    rows = [
        "audio_id,path,length,sample_rate",
        "b,spk/b.wav,9600,16000",  # 0.6 s at 16 kHz: one padded 1 s window at 24 kHz
        "broken,broken.wav,24000,24000",
        "c,c.wav,28800,24000",  # 1.2 s stereo: windows at 0 and 4800 (end-aligned)
    ]
    (tmp_path / "mixed.csv").write_text("\n".join(rows) + "\n")
    config = AudioDataConfig(
        csv_path=str(tmp_path / "mixed.csv"), audio_root=str(audio), chunk_size=CHUNK, batch_size=4
    )
    dataset = ChunkedAudioDataset(config)
    assert [(c.record.audio_id, c.offset) for c in dataset.chunks] == [("b", 0), ("broken", 0), ("c", 0), ("c", 4800)]
    wave, _chunk = dataset[0]
    assert wave.shape == (CHUNK,) and wave.abs().max() == pytest.approx(1.0, abs=1e-6)
    assert wave[int(0.6 * 24000) + 50:].abs().max() == 0  # zero padding after the clip
    with caplog.at_level("WARNING"):
        _, replacement = dataset[1]
    assert replacement.record.audio_id == "c" and len(dataset.bad_files) == 1
    assert "row 2" in caplog.text and "broken.wav" in caplog.text
    batch = collate_audio([dataset[i] for i in range(len(dataset))])
    assert batch.waveform.shape == (4, 1, CHUNK) and batch.lengths.tolist() == [CHUNK] * 4

    module = AudioDataModule(train_config=config)
    module.setup("fit")
    assert len(module.train_dataloader()) == 1

    rows[3] = "c,missing/c.wav,28800,24000"
    (tmp_path / "missing.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(AudioDataError, match=r"row 3: .*missing/c\.wav"):
        ChunkedAudioDataset(AudioDataConfig(csv_path=str(tmp_path / "missing.csv"), audio_root=str(audio)))
    (tmp_path / "bad.csv").write_text("audio_id,path,length\nb,spk/b.wav,9600\n")
    with pytest.raises(AudioDataError, match="missing column"):
        ChunkedAudioDataset(AudioDataConfig(csv_path=str(tmp_path / "bad.csv"), audio_root=str(audio)))


def test_batches_pin_through_the_data_loader(monkeypatch):
    """`pin_memory: true` pins the waveforms (pinning itself needs CUDA, so it is stubbed here)."""
    from torch.utils.data._utils.pin_memory import pin_memory

    from kanade_tokenizer.training.data import AudioBatch

    pinned = []

    def fake_pin(tensor, *args, **kwargs):
        pinned.append(tensor)
        return tensor.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    batch = AudioBatch(torch.randn(2, 1, 8), torch.tensor([8, 5]), ["a", "b"], ["a.wav", "b.wav"], [0, 3])
    out = pin_memory(batch)  # what the DataLoader's pinning thread does with every batch
    assert isinstance(out, AudioBatch)
    assert [t.data_ptr() for t in pinned] == [batch.waveform.data_ptr(), batch.lengths.data_ptr()]
    assert out.waveform is not batch.waveform and torch.equal(out.waveform, batch.waveform)
    assert (out.audio_ids, out.paths, out.offsets) == (batch.audio_ids, batch.paths, batch.offsets)


def test_discriminator_bands_intermediates_and_weight_norm_keys():
    from kanade_tokenizer.modules.discriminator import SpectrogramDiscriminator

    disc = SpectrogramDiscriminator(frequency_bins=100, channels=8, dilation=[1, 1, 1])
    assert disc.bands == [(0, 20), (20, 40), (40, 60), (60, 80), (80, 100)]
    assert "stacks.4.4.parametrizations.weight.original1" in disc.state_dict()
    logits, features = disc(torch.randn(2, 100, 40))
    assert len(features) == 25 and features[0].shape == (2, 8, 40, 20)
    assert logits.shape == (2, 1, 20, 50)  # AvgPool2d(4, stride 2, padding 1) halves time and frequency


def test_kanade_train_reports_a_missing_csv_without_a_traceback(corpus, tmp_path, monkeypatch, capsys):
    from kanade_tokenizer.training.cli import main

    config = recipe("12hz_pretrain.yaml", corpus, tmp_path)
    monkeypatch.setattr("sys.argv", ["kanade-train", "fit", "--config", str(config),
                                     "--data.train_config.csv_path", str(tmp_path / "nope.csv")])
    assert main() == 1
    assert f"{tmp_path / 'nope.csv'}: no such CSV" in capsys.readouterr().err


def test_predict_writes_tokens_mels_and_audio_for_whole_files(corpus, tmp_path):
    """`kanade-train predict --ckpt_path`: every file of the test CSV, whole, in the `kanade encode`
    token format plus the mel reconstruction (and audio with a vocoder); the tokens are those of
    the trained model's encode of load_audio(file)."""
    from kanade_tokenizer import load_audio
    from kanade_tokenizer.tokens import load_tokens
    from kanade_tokenizer.training.cli import run
    from kanade_tokenizer.vocoders.vocos import Vocos, VocosConfig

    torch.manual_seed(0)
    config = recipe("12hz_pretrain.yaml", corpus, tmp_path / "run", ckpt_path=None)
    run(["fit", "--config", str(config)])
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    vocoder = Vocos(VocosConfig(n_mels=16, dim=16, intermediate_dim=32, num_layers=1))
    vocoder = vocoder.save_pretrained(tmp_path / "vocos")
    out = tmp_path / "predicted"
    run(["predict", "--config", str(config), "--ckpt_path", str(last),
         "--data.predict_dir", str(out), "--data.predict_vocoder", str(vocoder)])
    assert sorted(p.name for p in out.iterdir()) == [
        "a.safetensors", "a.wav", "b.safetensors", "b.wav", "c.safetensors", "c.wav"
    ]

    from kanade_tokenizer.scripts.export_safetensors import model_state_dict, read_checkpoint

    model = KanadeModel.from_config(corpus / "tiny.yaml")
    model.load_weights(model_state_dict(read_checkpoint(last)))  # with the (random, tiny) WavLM it trained with
    model.eval()
    for name, path in (("a", "spk/a.wav"), ("b", "spk/b.wav"), ("c", "c.wav")):
        wave = load_audio(corpus / "audio" / path, 24000)
        tokens = load_tokens(out / f"{name}.safetensors")
        assert torch.equal(tokens.content_token_indices, model.encode(wave).content_token_indices)
        assert tokens.num_samples == wave.numel() and tokens.metadata["model"] == str(last)
        assert tokens.metadata["token_rate"] == "25" and tokens.metadata["source"] == str(corpus / "audio" / path)
        with safe_open(str(out / f"{name}.safetensors"), framework="pt") as f:
            assert f.get_tensor("mel").shape == (16, wave.numel() // 256 + 1)
        assert sf.info(out / f"{name}.wav").frames == wave.numel()


def test_predict_without_files_to_run_is_one_line(corpus, tmp_path, monkeypatch, capsys):
    from kanade_tokenizer.training.cli import main

    config = recipe("12hz_pretrain.yaml", corpus, tmp_path)
    monkeypatch.setattr("sys.argv", ["kanade-train", "predict", "--config", str(config), "--data.test_config", "null"])
    assert main() == 1
    assert "predict needs the files to run over: set data.predict_config" in capsys.readouterr().err


def test_hub_models_that_cannot_be_fetched_are_one_line(corpus, tmp_path, monkeypatch, capsys):
    """Offline (as in the tests): the recipe's SSL model and an hf: starting point are not cached."""
    from kanade_tokenizer.errors import KanadeInputError
    from kanade_tokenizer.files import KanadeHubError
    from kanade_tokenizer.recipes.common import load_model
    from kanade_tokenizer.training.cli import main
    from kanade_tokenizer.training.pipeline import KanadePipeline, KanadePipelineConfig

    cfg = tiny_config()
    cfg["model"]["init_args"]["ssl_feature_extractor"]["init_args"]["pretrained"] = "nobody/no-such-wavlm"
    (tmp_path / "hub_ssl.yaml").write_text(yaml.safe_dump(cfg))
    config = recipe("12hz_pretrain.yaml", corpus, tmp_path)
    monkeypatch.setattr("sys.argv", ["kanade-train", "fit", "--config", str(config),
                                     "--model.model_config", str(tmp_path / "hub_ssl.yaml")])
    assert main() == 1
    err = capsys.readouterr().err
    assert (
        "error: cannot load the SSL model nobody/no-such-wavlm from the Hugging Face Hub (nobody/no-such-wavlm)" in err
    )
    assert "`hf download nobody/no-such-wavlm`" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    with pytest.raises(
        KanadeHubError, match=r"pipeline_config.ckpt_path hf:nobody/no-such-kanade from the Hugging Face Hub"
    ):
        KanadePipeline(str(corpus / "tiny.yaml"), KanadePipelineConfig(ckpt_path="hf:nobody/no-such-kanade"))
    with pytest.raises(
        KanadeInputError, match=r"^cannot load the Kanade model nobody/no-such-kanade from the Hugging Face Hub"
    ):
        load_model("nobody/no-such-kanade")
