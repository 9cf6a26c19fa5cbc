"""The Trainer one experiment runs in: our batching, token counting, and a clean Ctrl-C.

On top of transformers' Trainer:

- packed batches come from :class:`~kanitts.training.batching.PackedBatchSampler` (one pack per
  step; the Trainer's own samplers only know fixed batch sizes);
- the tokens actually trained on are counted (padding excluded), for tokens/s;
- the loss is computed chunk by chunk from the decoder's hidden states
  (:mod:`kanitts.training.loss`, ``chunked_loss``), so no (tokens x vocab) logits are held;
- evaluation on the held-out rows adds the audio tokens' loss and accuracy, overall and per
  codebook, to ``eval_loss`` (:mod:`kanitts.training.validation`), batch by batch;
- the first Ctrl-C finishes the current optimizer step, saves a checkpoint and stops, so the
  next run resumes there; a second Ctrl-C stops at once;
- with a :class:`~kanitts.conditioning.SpeakerConditioning`, each batch's ``speaker_embeddings``
  go to the speaker slots of its sequences (and each sequence is one token longer in a pack).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback

from kanitts.tokens import TokenLayout
from kanitts.training.batching import PackedBatchSampler
from kanitts.training.loss import model_loss
from kanitts.training.validation import batch_scores, score_metrics


class ExperimentTrainer(Trainer):
    """Trainer with packed batching (when ``max_tokens_per_batch`` is set), a token counter,
    with ``chunked_loss`` the loss computed without materialising the logits, and with a
    ``layout`` the per-codebook validation metrics."""

    def __init__(
        self,
        *args: Any,
        max_tokens_per_batch: int | None = None,
        chunked_loss: bool = True,
        loss_chunk_tokens: int | None = None,
        speaker_conditioning: Any = None,
        lr_ratios: dict[str, float] | None = None,
        layout: TokenLayout | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.lr_ratios = dict(lr_ratios or {})
        self.speaker_conditioning = speaker_conditioning
        self.layout = layout
        self._eval_sums: torch.Tensor | None = None
        self.max_tokens_per_batch = max_tokens_per_batch
        self.chunked_loss = chunked_loss
        self.loss_chunk_tokens = loss_chunk_tokens
        self.tokens_trained = 0
        self._pack_order = PackOrderEpoch()
        self.add_callback(self._pack_order)

    def get_train_dataloader(self) -> DataLoader:
        if self.max_tokens_per_batch is None:
            return super().get_train_dataloader()
        lengths = self.train_dataset["length"]
        if self.speaker_conditioning is not None:  # the collator adds the slot to every sequence
            lengths = [n + 1 for n in lengths]
        sampler = PackedBatchSampler(lengths, self.max_tokens_per_batch, seed=self.args.seed)
        self._pack_order.sampler = sampler
        loader = DataLoader(
            self.train_dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)

    def get_decay_parameter_names(self, model) -> list[str]:
        """The stock list without the parameters of ``lr_ratios`` (KaniTTS-2's RoPE scales take no
        weight decay: it would pull every layer's factor towards the middle of its range)."""
        names = super().get_decay_parameter_names(model)
        return [n for n in names if not any(pattern in n for pattern in self.lr_ratios)]

    def create_optimizer(self, *args: Any, **kwargs: Any):
        """The stock optimizer, with each parameter named in ``lr_ratios`` moved to a group of its
        own at that multiple of the learning rate (before the scheduler, which scales every group)."""
        optimizer = super().create_optimizer(*args, **kwargs)
        if not self.lr_ratios or getattr(self, "_kanitts_groups_split", False):
            return optimizer
        names = {id(p): n for n, p in self.model.named_parameters() if p.requires_grad}
        for pattern, ratio in self.lr_ratios.items():
            moved = []
            for group in optimizer.param_groups:
                keep = [p for p in group["params"] if pattern not in names.get(id(p), "")]
                moved += [p for p in group["params"] if pattern in names.get(id(p), "")]
                group["params"] = keep
            if moved:
                base = optimizer.param_groups[0]
                optimizer.add_param_group({**{k: v for k, v in base.items() if k != "params"}, "params": moved,
                                           "lr": base["lr"] * ratio, "weight_decay": 0.0})
        optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
        self._kanitts_groups_split = True
        return optimizer

    def training_step(self, model, inputs, num_items_in_batch=None):
        mask = inputs.get("attention_mask")
        self.tokens_trained += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The stock loss, from hidden states chunk by chunk when ``chunked_loss`` is on.

        Evaluation that wants the logits back, label smoothing, a custom ``compute_loss_func`` and
        sequence parallelism (which computes its own loss) keep the stock path. The token count and
        the cross-device scaling are the stock ones: ``num_items_in_batch`` divides the summed loss
        only where the stock model would get it.
        """
        embeddings = inputs.pop("speaker_embeddings", None)
        if self.speaker_conditioning is not None:
            with self.speaker_conditioning.conditioned(embeddings):
                return self._compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return self._compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if (
            not self.chunked_loss
            or return_outputs
            or "labels" not in inputs
            or self.label_smoother is not None
            or self.compute_loss_func is not None
            or getattr(getattr(self.accelerator, "parallelism_config", None), "sp_enabled", False)
        ):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        items = num_items_in_batch if self.model_accepts_loss_kwargs else None
        loss = model_loss(model, inputs, items, self.loss_chunk_tokens, unwrapped=self.accelerator.unwrap_model(model))
        if self.args.average_tokens_across_devices and items is not None:
            # the stock rescaling: the count covers every process, the gradients are averaged over them
            processes = self.accelerator.num_processes // self.get_tp_size()
            loss = loss * (processes if self.args.n_gpu <= 1 else self.args.n_gpu)
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The batch's loss, its per-codebook sums kept for :meth:`evaluation_loop`; no logits."""
        if self.layout is None or not prediction_loss_only or "labels" not in inputs:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        embeddings = inputs.pop("speaker_embeddings", None)
        conditioned = (self.speaker_conditioning.conditioned(embeddings) if self.speaker_conditioning is not None
                       else contextlib.nullcontext())
        with torch.no_grad(), self.compute_loss_context_manager(), conditioned:
            loss, sums = batch_scores(
                model, inputs, self.layout, self.loss_chunk_tokens, unwrapped=self.accelerator.unwrap_model(model)
            )
        self._eval_sums = sums if self._eval_sums is None else self._eval_sums + sums
        return loss.detach(), None, None

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        self._eval_sums = None
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self._eval_sums is not None:
            sums = self.accelerator.reduce(self._eval_sums, reduction="sum")
            output.metrics.update(score_metrics(sums, metric_key_prefix))
            self._eval_sums = None
        return output

    def total_tokens_trained(self) -> int:
        """Tokens trained on by all processes together."""
        count = torch.tensor(self.tokens_trained, device=self.args.device)
        return int(self.accelerator.reduce(count, reduction="sum"))


class PackOrderEpoch(TrainerCallback):
    """Gives the pack sampler the epoch about to run, from the trainer's own state.

    transformers and accelerate pass ``set_epoch`` down their data-loader wrappers, but not in
    every nesting: on several processes a resumed epoch's loader holds the sampler inside
    accelerate's ``BatchSamplerShard`` inside its ``SkipBatchSampler``, the epoch stops at the
    shard, and the sampler would replay epoch 0's pack order instead of the one it had trained.
    ``state.epoch`` (whole epochs done plus the fraction of this one) is right in every case.
    """

    def __init__(self) -> None:
        self.sampler: PackedBatchSampler | None = None

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.sampler is not None:
            self.sampler.set_epoch(int(state.epoch or 0))


class GracefulInterrupt(TrainerCallback):
    """First SIGINT: save a checkpoint after the current optimizer step and stop. Second: stop now."""

    def __init__(self) -> None:
        self.interrupted = False
        self._previous_handler: Any = None

    def _on_sigint(self, signum, frame) -> None:
        self.interrupted = True
        signal.signal(signal.SIGINT, self._previous_handler or signal.default_int_handler)
        print("\nInterrupted: saving a checkpoint after this step (Ctrl-C again to stop at once)", flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)

    def on_step_end(self, args, state, control, **kwargs):
        if self.interrupted:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous_handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None
