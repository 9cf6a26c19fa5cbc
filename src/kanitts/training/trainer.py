"""The Trainer one experiment runs in: our batching, token counting, and a clean Ctrl-C.

On top of transformers' Trainer:

- packed batches come from :class:`~kanitts.training.batching.PackedBatchSampler` (one pack per
  step; the Trainer's own samplers only know fixed batch sizes);
- the tokens actually trained on are counted (padding excluded), for tokens/s;
- the loss is computed chunk by chunk from the decoder's hidden states
  (:mod:`kanitts.training.loss`, ``chunked_loss``), so no (tokens x vocab) logits are held;
- the first Ctrl-C finishes the current optimizer step, saves a checkpoint and stops, so the
  next run resumes there; a second Ctrl-C stops at once;
- with a :class:`~kanitts.conditioning.SpeakerConditioning`, each batch's ``speaker_embeddings``
  go to the speaker slots of its sequences (and each sequence is one token longer in a pack).
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback

from kanitts.training.batching import PackedBatchSampler
from kanitts.training.loss import model_loss


class ExperimentTrainer(Trainer):
    """Trainer with packed batching (when ``max_tokens_per_batch`` is set), a token counter and,
    with ``chunked_loss``, the loss computed without materialising the logits."""

    def __init__(
        self,
        *args: Any,
        max_tokens_per_batch: int | None = None,
        chunked_loss: bool = True,
        loss_chunk_tokens: int | None = None,
        speaker_conditioning: Any = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.speaker_conditioning = speaker_conditioning
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
