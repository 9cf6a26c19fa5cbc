"""The Lightning module that trains a :class:`KanadeModel`, with the reference recipe's losses,
optimisers and schedules.

Pretraining reconstructs two targets from the content tokens: the normalised local SSL
features (through ``conv_upsample`` and the training-only ``feature_decoder``) and the log-mel
spectrogram of the chunk (through the global embedding and the mel stack). WavLM stays frozen.

The GAN stage adds a :class:`SpectrogramDiscriminator` on the mel spectrograms (hinge or
least-squares adversarial loss plus feature matching). Optimisation is manual, the reference's
step logic: per batch one forward, then a discriminator step, then a generator step that reuses
the same forward; each optimiser is AdamW with a OneCycleLR stepped per batch and its gradient
norm clipped. Lightning counts every optimiser step in ``global_step``, so with the
discriminator on ``max_steps`` is about twice the number of batches (as in the reference).
``pipeline_config.ckpt_path`` starts from a Lightning ``.ckpt``, a safetensors export or
``hf:{repo}@{revision}`` (model weights only; optimiser state is fresh).

``predict`` encodes whole files and writes, per file, what ``kanade encode`` writes (tokens and
global embedding, decodable with ``kanade decode``) plus the model's mel reconstruction, and with
a vocoder that reconstruction as audio: what a user checks a trained tokenizer with. Where and
with which vocoder are the data module's ``predict_dir`` and ``predict_vocoder``, not pipeline
settings: with ``--ckpt_path`` LightningCLI replaces the model's settings by the checkpoint's.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..files import hub_error
from ..model import KanadeModel
from ..modules.discriminator import SpectrogramDiscriminator
from ..modules.mel import MelSpectrogramFeatures
from ..scripts.export_safetensors import model_state_dict, read_checkpoint
from .data import AudioBatch

logger = logging.getLogger(__name__)

CONTENT_MODULES = ("local_encoder", "local_quantizer", "feature_decoder", "conv_downsample", "conv_upsample")
MEL_MODULES = ("global_encoder", "mel_prenet", "mel_conv_upsample", "mel_decoder", "mel_postnet")


class PipelineConfigError(ValueError):
    """The pipeline settings contradict each other or the model config."""


@dataclass
class KanadePipelineConfig:
    """What to train and how (defaults are the reference's)."""

    train_feature: bool = True
    train_mel: bool = True
    lr: float = 2e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    gradient_clip_val: float = 1.0
    warmup_percent: float = 0.1
    lr_div_factor: float = 10.0
    lr_final_div_factor: float = 1.0
    anneal_mode: str = "cos"
    feature_l1_weight: float = 30.0
    feature_l2_weight: float = 0.0
    mel_l1_weight: float = 30.0
    mel_l2_weight: float = 0.0
    adv_weight: float = 1.0
    feature_matching_weight: float = 10.0
    use_discriminator: bool = False
    adv_loss_type: str = "hinge"
    discriminator_lr: float | None = None  # None: lr
    discriminator_start_step: int = 0  # compared with global_step (optimiser steps)
    discriminator_update_prob: float = 1.0
    ckpt_path: str | None = None
    skip_loading_modules: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not (self.train_feature or self.train_mel):
            raise PipelineConfigError("pipeline_config: train_feature and train_mel are both false; nothing to train")
        if self.anneal_mode not in ("cos", "linear"):
            raise PipelineConfigError(
                f"pipeline_config.anneal_mode must be 'cos' or 'linear', got {self.anneal_mode!r}"
            )
        if not 0.0 < self.warmup_percent < 1.0:
            raise PipelineConfigError(f"pipeline_config.warmup_percent must lie in (0, 1), got {self.warmup_percent}")
        if self.adv_loss_type not in ("hinge", "least_square"):
            raise PipelineConfigError(
                f"pipeline_config.adv_loss_type must be 'hinge' or 'least_square', got {self.adv_loss_type!r}"
            )
        if self.use_discriminator and not self.train_mel:
            raise PipelineConfigError(
                "pipeline_config: use_discriminator needs train_mel (the discriminator judges mels)"
            )


def codebook_perplexity(indices: Tensor, codebook_size: int) -> Tensor:
    """exp(entropy) of the token histogram: how many codes the batch effectively uses."""
    counts = torch.bincount(indices.reshape(-1), minlength=codebook_size).float()
    probs = counts / counts.sum().clamp_min(1)
    return torch.exp(-(probs * torch.log(probs.clamp_min(1e-10))).sum())


class KanadePipeline(pl.LightningModule):
    """``model_config``: a Kanade config.yaml (e.g. config/kanade/model/12hz.yaml) with a
    ``feature_decoder`` section when ``train_feature`` is on. ``discriminator`` is required when
    ``pipeline_config.use_discriminator`` is on."""

    def __init__(
        self,
        model_config: str,
        pipeline_config: KanadePipelineConfig | None = None,
        discriminator: SpectrogramDiscriminator | None = None,
    ):
        super().__init__()
        config = pipeline_config or KanadePipelineConfig()
        if config.use_discriminator and discriminator is None:
            raise PipelineConfigError(
                "pipeline_config.use_discriminator is on but no model.discriminator is configured"
            )
        # plain values only, so checkpoints open with torch.load(weights_only=True)
        self.save_hyperparameters({"model_config": str(model_config), "pipeline_config": asdict(config)})
        self.config = config
        self.automatic_optimization = False
        # no autocast of the model's own: Lightning's `trainer.precision` alone decides (32-true
        # trains in fp32, bf16-mixed in bf16 autocast), on every device
        self.model = KanadeModel.from_config(
            model_config, build_feature_decoder=config.train_feature, mixed_precision="fp32"
        )
        if config.train_feature and self.model.feature_decoder is None:
            raise PipelineConfigError(
                f"{model_config}: train_feature needs a feature_decoder section in the model config"
            )
        self.model.ssl_feature_extractor.requires_grad_(False)
        for names, trained in ((CONTENT_MODULES, config.train_feature), (MEL_MODULES, config.train_mel)):
            if not trained:
                for name in names:
                    module = getattr(self.model, name, None)
                    if module is not None:
                        module.requires_grad_(False)
        self.mel_feature = MelSpectrogramFeatures.from_config(self.model.config) if config.train_mel else None
        self.discriminator = discriminator if config.use_discriminator else None
        self._grad_norm: Tensor | None = None  # of the last optimiser step, for the log
        if config.ckpt_path:
            self.load_initial_weights(config.ckpt_path)

    # --- weights --------------------------------------------------------------------------------

    def load_initial_weights(self, ckpt_path: str) -> None:
        """Model weights from a .ckpt / .safetensors file or ``hf:{repo}@{revision}``."""
        if ckpt_path.startswith("hf:"):
            from huggingface_hub import hf_hub_download

            repo, _, revision = ckpt_path[3:].partition("@")
            try:
                path = Path(hf_hub_download(repo, "model.safetensors", revision=revision or None))
            except OSError as exc:  # offline and not cached, no network, no such repo or revision
                raise hub_error(f"pipeline_config.ckpt_path {ckpt_path}", repo, exc) from None
        else:
            path = Path(ckpt_path)
        state = model_state_dict(read_checkpoint(path))
        skip = tuple(f"{m}." for m in self.config.skip_loading_modules)
        if skip:
            state = {k: v for k, v in state.items() if not k.startswith(skip)}
        report = self.model.load_weights(state, strict=not skip, source=str(path))
        logger.info(
            "loaded %d tensors from %s (%d optional keys absent)", len(state), path, len(report.optional_missing)
        )

    # --- forward and losses ---------------------------------------------------------------------

    def forward(self, waveform: Tensor) -> dict[str, Tensor]:
        """(B, S) equal-length chunks -> the reconstructions and their targets."""
        model = self.model
        length = waveform.size(-1)
        pad = model.waveform_padding(length)
        local, global_, _ = model.forward_ssl_features(F.pad(waveform, (pad, pad)))
        out: dict[str, Tensor] = {"local_ssl": local}
        with model.autocast(waveform.device):
            content, indices, _ = model.forward_content(local)
            out["perplexity"] = codebook_perplexity(indices, model.codebook_size)
            if self.config.train_feature:
                out["ssl_recon"] = model.forward_ssl_reconstruction(content, local.size(1))
            if self.config.train_mel:
                embedding = model.forward_global(global_)
                mel_length = model.mel_length(length)
                out["mel_recon"] = model.forward_mel(content, embedding, [mel_length] * waveform.size(0))
        if self.config.train_mel:
            # the target in fp32 whatever the precision: under bf16 autocast the filterbank
            # matmul alone moves the log-mel by up to 0.02
            with torch.autocast(waveform.device.type, enabled=False):
                out["mel_real"] = self.mel_feature(waveform.float())
        return out

    def reconstruction_losses(self, out: dict[str, Tensor], waveform: Tensor) -> dict[str, Tensor]:
        c = self.config
        losses: dict[str, Tensor] = {}
        total = waveform.new_zeros(())
        if "ssl_recon" in out:
            recon, target = out["ssl_recon"], out["local_ssl"]
            n = min(recon.size(1), target.size(1))  # at 12.5 Hz the recon can be a few frames short
            recon, target = recon[:, :n], target[:, :n]
            losses["ssl_l1"] = F.l1_loss(recon, target)
            losses["ssl_l2"] = F.mse_loss(recon, target)
            losses["feature_loss"] = c.feature_l1_weight * losses["ssl_l1"] + c.feature_l2_weight * losses["ssl_l2"]
            total = total + losses["feature_loss"]
        if "mel_recon" in out:
            recon, target = out["mel_recon"], out["mel_real"]
            losses["mel_l1"] = F.l1_loss(recon, target)
            losses["mel_l2"] = F.mse_loss(recon, target)
            losses["mel_loss"] = c.mel_l1_weight * losses["mel_l1"] + c.mel_l2_weight * losses["mel_l2"]
            total = total + losses["mel_loss"]
        losses["loss"] = total
        return losses

    def _log_losses(self, split: str, out: dict[str, Tensor], losses: dict[str, Tensor], batch_size: int) -> None:
        metrics = {f"{split}/gen/{k}": v.detach() for k, v in losses.items() if k != "loss"}
        metrics[f"{split}/loss"] = losses["loss"].detach()
        metrics[f"{split}/local/perplexity"] = out["perplexity"].detach().float()
        on_step = split == "train"
        self.log_dict(metrics, on_step=on_step, on_epoch=not on_step, batch_size=batch_size, prog_bar=False)

    # --- steps ----------------------------------------------------------------------------------

    def _adversarial(self, logits: Tensor, real: bool) -> Tensor:
        """Critic loss towards ``real`` (hinge: relu(1 ∓ D); least squares: (D - 1)² or D²)."""
        if self.config.adv_loss_type == "hinge":
            return F.relu(1 - logits).mean() if real else F.relu(1 + logits).mean()
        return ((logits - 1) ** 2).mean() if real else (logits**2).mean()

    def _train_discriminator_now(self) -> bool:
        c = self.config
        return (
            self.discriminator is not None
            and self.global_step >= c.discriminator_start_step
            and float(torch.rand(())) < c.discriminator_update_prob
        )

    def training_step(self, batch: AudioBatch, batch_idx: int) -> Tensor:
        c = self.config
        waveform = batch.waveform[:, 0]
        batch_size = waveform.size(0)
        optimizers = self.optimizers()
        schedulers = self.lr_schedulers()
        if self.discriminator is not None:
            (opt_disc, opt_gen), (sched_disc, sched_gen) = optimizers, schedulers
        else:
            opt_gen, sched_gen = optimizers, schedulers
        out = self(waveform)
        losses = self.reconstruction_losses(out, waveform)
        train_disc = self._train_discriminator_now()
        if train_disc:
            real_logits, real_features = self.discriminator(out["mel_real"])
            fake_logits, _ = self.discriminator(out["mel_recon"].detach())
            disc_real, disc_fake = self._adversarial(real_logits, True), self._adversarial(fake_logits, False)
            disc_loss = disc_real + disc_fake
            opt_disc.zero_grad()
            self.manual_backward(disc_loss)
            opt_disc.step()  # clips in on_before_optimizer_step
            self.log_dict(
                {"train/disc/real": disc_real.detach(), "train/disc/fake": disc_fake.detach(),
                 "train/disc/loss": disc_loss.detach(), "train/disc/grad_norm": self._grad_norm},
                on_step=True, batch_size=batch_size,
            )
            # the generator is judged by the discriminator as it is now, against real maps from before
            gen_logits, fake_features = self.discriminator(out["mel_recon"])
            losses["adv_loss"] = self._adversarial(gen_logits, True)
            losses["feature_matching_loss"] = torch.stack(
                [(r.detach() - f).abs().mean() for r, f in zip(real_features, fake_features)]
            ).mean()
            losses["loss"] = (
                losses["loss"] + c.adv_weight * losses["adv_loss"]
                + c.feature_matching_weight * losses["feature_matching_loss"]
            )
        if self.discriminator is not None:
            sched_disc.step()
        if not torch.isfinite(losses["loss"]):
            raise FloatingPointError(f"non-finite training loss at step {self.global_step}: {losses['loss'].item()}")
        opt_gen.zero_grad()
        self.manual_backward(losses["loss"])
        opt_gen.step()  # clips in on_before_optimizer_step
        sched_gen.step()
        self._log_losses("train", out, losses, batch_size)
        self.log("train/gen/grad_norm", self._grad_norm, on_step=True, batch_size=batch_size)
        return losses["loss"].detach()

    def on_before_optimizer_step(self, optimizer) -> None:
        """Clip here, not in ``training_step``: Lightning unscales 16-mixed gradients only inside
        ``optimizer.step()``, just before this hook, so a clip before ``step()`` would measure the
        loss-scaled norm (2**16 times too large) and shrink every update to nothing. The norm is
        logged by ``training_step`` (logging from this hook resets the step's metrics in the
        first batch)."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self._grad_norm = torch.nn.utils.clip_grad_norm_(params, self.config.gradient_clip_val)

    def on_fit_start(self) -> None:
        ddp = self.trainer.strategy.model
        if (
            self.discriminator is not None
            and isinstance(ddp, torch.nn.parallel.DistributedDataParallel)
            and not ddp.find_unused_parameters
        ):
            raise PipelineConfigError(
                "trainer.strategy: the GAN stage runs a discriminator backward that reaches no generator "
                "parameter, which DDP refuses unless it looks for unused parameters; use "
                "`strategy: ddp_find_unused_parameters_true` (as config/kanade/train/12hz_gan.yaml does)"
            )

    def validation_step(self, batch: AudioBatch, batch_idx: int) -> None:
        waveform = batch.waveform[:, 0]
        out = self(waveform)
        self._log_losses("val", out, self.reconstruction_losses(out, waveform), waveform.size(0))

    def test_step(self, batch: AudioBatch, batch_idx: int) -> None:
        waveform = batch.waveform[:, 0]
        out = self(waveform)
        self._log_losses("test", out, self.reconstruction_losses(out, waveform), waveform.size(0))

    # --- predict --------------------------------------------------------------------------------

    def on_predict_start(self) -> None:
        from ..tokens import model_facts
        from ..vocoders import load_vocoder_for

        data = self.trainer.datamodule
        out, vocoder = getattr(data, "predict_dir", None), getattr(data, "predict_vocoder", None)
        self._predict_dir = Path(out or Path(self.trainer.default_root_dir) / "predictions")
        self._vocoder = load_vocoder_for(self.model, vocoder, device=self.device) if vocoder else None
        self._facts = model_facts(self.model)
        self._made_by = str(self.trainer.ckpt_path or self.hparams["model_config"])
        self._predicted = self._skipped = 0

    def predict_step(self, batch: AudioBatch | None, batch_idx: int) -> list[dict]:
        """Encode each whole file, reconstruct its mel, write ``<predict_dir>/<audio_id>.safetensors``
        (the ``kanade encode`` token format plus ``mel``) and, with a vocoder, ``<audio_id>.wav``."""
        from ..audio import save_audio
        from ..tokens import save_tokens
        from ..vocoders import mel_to_audio

        if batch is None:  # every file of the batch was unreadable (each one logged)
            return []
        model, sr = self.model, self.model.config.sample_rate
        items = []
        for i, n in enumerate(batch.lengths.tolist()):
            if n < model.min_audio_length():
                logger.warning("%s: %.3f s is shorter than one token; skipped", batch.paths[i], n / sr)
                self._skipped += 1
                continue
            items.append(i)
        if not items:
            return []
        waves = [batch.waveform[i, 0, : int(batch.lengths[i])] for i in items]
        features = model.encode_batch(waves)
        mels = model.decode_batch(
            [f.global_embedding for f in features],
            content_token_indices=[f.content_token_indices for f in features],
            target_audio_lengths=[w.numel() for w in waves],
        )
        written = []
        for i, wave, feat, mel in zip(items, waves, features, mels):
            target = self._predict_dir / f"{batch.audio_ids[i]}.safetensors"
            save_tokens(target, feat, source=batch.paths[i], num_samples=wave.numel(), sample_rate=sr,
                        model_name=self._made_by, facts=self._facts, extra={"mel": mel})
            if self._vocoder is not None:
                save_audio(target.with_suffix(".wav"), mel_to_audio(self._vocoder, mel, wave.numel()), sr)
            written.append({"audio_id": batch.audio_ids[i], "tokens": int(feat.content_token_indices.numel()),
                            "file": str(target)})
        self._predicted += len(written)
        return written

    def on_predict_end(self) -> None:
        from lightning.pytorch.utilities import rank_zero_info

        audio = " and .wav reconstructions" if self._vocoder is not None else ""
        skipped = f"; {self._skipped} file(s) shorter than one token skipped" if self._skipped else ""
        rank_zero_info(f"predict: wrote {self._predicted} token file(s){audio} to {self._predict_dir}{skipped}")
        self._vocoder = None

    def _optimizer_pair(self, params: list[nn.Parameter], lr: float, total_steps: int):
        c = self.config
        optimizer = torch.optim.AdamW(params, lr=lr, betas=tuple(c.betas), weight_decay=c.weight_decay)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=lr,
            total_steps=total_steps,
            pct_start=c.warmup_percent,
            anneal_strategy=c.anneal_mode,
            div_factor=c.lr_div_factor,
            final_div_factor=c.lr_final_div_factor,
        )
        return optimizer, {"scheduler": scheduler, "interval": "step"}

    def configure_optimizers(self):
        total_steps = self.trainer.estimated_stepping_batches
        if not isinstance(total_steps, int) or total_steps <= 0:
            raise PipelineConfigError("set trainer.max_steps (the learning-rate schedule needs a known length)")
        gen = self._optimizer_pair([p for p in self.model.parameters() if p.requires_grad], self.config.lr, total_steps)
        if self.discriminator is None:
            return [gen[0]], [gen[1]]
        disc_lr = self.config.discriminator_lr or self.config.lr
        disc = self._optimizer_pair(list(self.discriminator.parameters()), disc_lr, total_steps)
        return [disc[0], gen[0]], [disc[1], gen[1]]
