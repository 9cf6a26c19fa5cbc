"""The Lightning module that trains a :class:`KanadeModel` (kanade-reference.md §4.1-4.3, §4.5).

Pretraining reconstructs two targets from the content tokens: the normalised local SSL
features (through ``conv_upsample`` and the training-only ``feature_decoder``) and the log-mel
spectrogram of the chunk (through the global embedding and the mel stack). WavLM stays frozen.

Optimisation is manual (one AdamW + OneCycleLR stepped per batch, gradient norm clipped), the
reference's step logic. ``pipeline_config.ckpt_path`` starts from a Lightning ``.ckpt``, a
safetensors export or ``hf:{repo}@{revision}`` (model weights only; optimiser state is fresh).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from ..model import KanadeModel
from ..modules.mel import MelSpectrogramFeature
from ..scripts.export_safetensors import model_state_dict, read_checkpoint
from .data import AudioBatch

logger = logging.getLogger(__name__)

CONTENT_MODULES = ("local_encoder", "local_quantizer", "feature_decoder", "conv_downsample", "conv_upsample")
MEL_MODULES = ("global_encoder", "mel_prenet", "mel_conv_upsample", "mel_decoder", "mel_postnet")


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
    ckpt_path: str | None = None
    skip_loading_modules: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not (self.train_feature or self.train_mel):
            raise ValueError("pipeline_config: train_feature and train_mel are both false; nothing to train")
        if self.anneal_mode not in ("cos", "linear"):
            raise ValueError(f"pipeline_config.anneal_mode must be 'cos' or 'linear', got {self.anneal_mode!r}")
        if not 0.0 < self.warmup_percent < 1.0:
            raise ValueError(f"pipeline_config.warmup_percent must lie in (0, 1), got {self.warmup_percent}")


def codebook_perplexity(indices: Tensor, codebook_size: int) -> Tensor:
    """exp(entropy) of the token histogram: how many codes the batch effectively uses."""
    counts = torch.bincount(indices.reshape(-1), minlength=codebook_size).float()
    probs = counts / counts.sum().clamp_min(1)
    return torch.exp(-(probs * torch.log(probs.clamp_min(1e-10))).sum())


class KanadePipeline(pl.LightningModule):
    """``model_config``: a Kanade config.yaml (e.g. config/kanade/model/12hz.yaml) with a
    ``feature_decoder`` section when ``train_feature`` is on."""

    def __init__(self, model_config: str, pipeline_config: KanadePipelineConfig | None = None):
        super().__init__()
        config = pipeline_config or KanadePipelineConfig()
        # plain values only, so checkpoints open with torch.load(weights_only=True)
        self.save_hyperparameters({"model_config": str(model_config), "pipeline_config": asdict(config)})
        self.config = config
        self.automatic_optimization = False
        self.model = KanadeModel.from_config(model_config, build_feature_decoder=config.train_feature)
        if config.train_feature and self.model.feature_decoder is None:
            raise ValueError(f"{model_config}: train_feature needs a feature_decoder section in the model config")
        self.model.ssl_feature_extractor.requires_grad_(False)
        for names, trained in ((CONTENT_MODULES, config.train_feature), (MEL_MODULES, config.train_mel)):
            if not trained:
                for name in names:
                    module = getattr(self.model, name, None)
                    if module is not None:
                        module.requires_grad_(False)
        self.mel_feature = MelSpectrogramFeature.from_config(self.model.config) if config.train_mel else None
        if config.ckpt_path:
            self.load_initial_weights(config.ckpt_path)

    # --- weights --------------------------------------------------------------------------------

    def load_initial_weights(self, ckpt_path: str) -> None:
        """Model weights from a .ckpt / .safetensors file or ``hf:{repo}@{revision}``."""
        if ckpt_path.startswith("hf:"):
            from huggingface_hub import hf_hub_download

            repo, _, revision = ckpt_path[3:].partition("@")
            path = Path(hf_hub_download(repo, "model.safetensors", revision=revision or None))
        else:
            path = Path(ckpt_path)
        state = model_state_dict(read_checkpoint(path))
        skip = tuple(f"{m}." for m in self.config.skip_loading_modules)
        if skip:
            state = {k: v for k, v in state.items() if not k.startswith(skip)}
        report = self.model.load_weights(state, strict=not skip, source=str(path))
        logger.info("loaded %d tensors from %s (%d optional keys absent)", len(state), path, len(report.optional_missing))

    # --- forward and losses ---------------------------------------------------------------------

    def forward(self, waveform: Tensor) -> dict[str, Tensor]:
        """(B, S) equal-length chunks -> the reconstructions and their targets."""
        model = self.model
        length = waveform.size(-1)
        pad = model._calculate_waveform_padding(length)
        local, global_, _ = model.forward_ssl_features(F.pad(waveform, (pad, pad)))
        out: dict[str, Tensor] = {"local_ssl": local}
        with model._autocast(waveform.device):
            content, indices, _ = model.forward_content(local)
            out["perplexity"] = codebook_perplexity(indices, model.codebook_size)
            if self.config.train_feature:
                x = content
                if model.conv_upsample is not None:
                    x = model.conv_upsample(x.transpose(1, 2)).transpose(1, 2)
                out["ssl_recon"] = model.feature_decoder(x).float()
            if self.config.train_mel:
                embedding = model.forward_global(global_)
                mel_length = model._calculate_target_mel_length(length)
                out["mel_recon"] = model.forward_mel(content, embedding, [mel_length] * waveform.size(0))
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
            target = self.mel_feature(waveform.float())
            recon = out["mel_recon"]
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

    def training_step(self, batch: AudioBatch, batch_idx: int) -> Tensor:
        waveform = batch.waveform[:, 0]
        out = self(waveform)
        losses = self.reconstruction_losses(out, waveform)
        if not torch.isfinite(losses["loss"]):
            raise FloatingPointError(f"non-finite training loss at step {self.global_step}: {losses['loss'].item()}")
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        optimizer.zero_grad()
        self.manual_backward(losses["loss"])
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.gradient_clip_val)
        optimizer.step()
        scheduler.step()
        self._log_losses("train", out, losses, waveform.size(0))
        self.log("train/gen/grad_norm", grad_norm, on_step=True, batch_size=waveform.size(0))
        return losses["loss"].detach()

    def validation_step(self, batch: AudioBatch, batch_idx: int) -> None:
        waveform = batch.waveform[:, 0]
        out = self(waveform)
        self._log_losses("val", out, self.reconstruction_losses(out, waveform), waveform.size(0))

    def test_step(self, batch: AudioBatch, batch_idx: int) -> None:
        waveform = batch.waveform[:, 0]
        out = self(waveform)
        self._log_losses("test", out, self.reconstruction_losses(out, waveform), waveform.size(0))

    def configure_optimizers(self):
        c = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=c.lr, betas=tuple(c.betas), weight_decay=c.weight_decay)
        total_steps = self.trainer.estimated_stepping_batches
        if not isinstance(total_steps, int) or total_steps <= 0 or total_steps == float("inf"):
            raise ValueError("set trainer.max_steps (the learning-rate schedule needs a known length)")
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=c.lr,
            total_steps=int(total_steps),
            pct_start=c.warmup_percent,
            anneal_strategy=c.anneal_mode,
            div_factor=c.lr_div_factor,
            final_div_factor=c.lr_final_div_factor,
        )
        return [optimizer], [{"scheduler": scheduler, "interval": "step"}]
