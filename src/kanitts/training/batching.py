"""Turning training sequences into batches: padded rows, or padding-free packs.

Two ways to batch the ``input_ids`` / ``labels`` rows that :mod:`kanitts.sequences` builds:

- :class:`PaddingCollator`: ``per_device_train_batch_size`` rows, right-padded, with an
  attention mask. The reference pipeline had no collator at all, so any batch size above 1
  failed on ragged lists.
- :class:`PackingCollator` with :class:`PackedBatchSampler`: several whole sequences laid end to
  end in one row of at most ``max_tokens_per_batch`` tokens, with ``position_ids`` restarting at 0
  and the ``cu_seq_lens`` boundaries that padding-free attention kernels read. No token is spent
  on padding. :func:`kanitts.training.packing.enable_exact_packing` makes LFM2 honour the
  boundaries, so a pack trains exactly like its sequences one by one.

Which positions carry a loss (``loss_on``) is decided in one place, :func:`loss_labels`.

With ``speaker_slot`` set (``training.speaker_conditioning: embedding``) both collators insert
the speaker slot after each sequence's start_of_human (:func:`kanitts.conditioning.insert_slot`)
and add ``speaker_embeddings`` (one row per sequence, in sequence order) for
:class:`kanitts.conditioning.SpeakerConditioning` to put there.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from kanitts.conditioning import example_embedding, insert_slot

IGNORE_INDEX = -100

LossOn = Literal["all", "audio"]


def loss_labels(example: dict[str, Any], loss_on: LossOn, start_of_ai: int) -> list[int]:
    """The labels of one sequence, with the prompt masked out when ``loss_on == "audio"``.

    ``all`` keeps the dataset's labels (the reference trains on every token). ``audio`` gives no
    loss to the prompt the model reads (start_of_human, the text, end_of_text, end_of_human):
    everything before the first start_of_ai, which it writes itself at inference and so still
    learns, like the speech after it.
    """
    labels = list(example.get("labels", example["input_ids"]))
    if loss_on == "all":
        return labels
    input_ids = example["input_ids"]
    try:
        prompt_length = list(input_ids).index(start_of_ai)
    except ValueError:
        raise ValueError(
            f"a training sequence of {len(input_ids)} tokens has no start_of_ai token ({start_of_ai}), "
            "so `loss_on: audio` cannot tell the prompt from the speech; rebuild the training data "
            "with the model_config.yaml used for this model"
        ) from None
    labels[:prompt_length] = [IGNORE_INDEX] * prompt_length
    return labels


@dataclass(frozen=True)
class SpeakerSlot:
    """Where a speaker-conditioned sequence takes its slot: after start_of_human, id ``slot``."""

    start_of_human: int
    slot: int

    def apply(self, example: dict[str, Any], labels: list[int]) -> tuple[list[int], list[int]]:
        return insert_slot(example["input_ids"], labels, self.start_of_human, self.slot)

    @staticmethod
    def embeddings(examples: Sequence[dict[str, Any]]) -> torch.Tensor:
        return torch.tensor([example_embedding(e) for e in examples], dtype=torch.float32)


@dataclass(frozen=True)
class PaddingCollator:
    """Right-pads a list of sequences into ``input_ids``, ``labels``, ``attention_mask``.

    Padding gets label -100 and attention mask 0; LFM2's short convolution also zeroes padded
    positions with that mask, and being causal it never lets right padding reach a real token.
    """

    pad_token_id: int
    start_of_ai: int
    loss_on: LossOn = "all"
    speaker_slot: SpeakerSlot | None = None

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences = [_sequence(e, self.loss_on, self.start_of_ai, self.speaker_slot) for e in examples]
        width = max(len(ids) for ids, _ in sequences)
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, (ids, sequence_labels) in enumerate(sequences):
            n = len(ids)
            input_ids[row, :n] = torch.as_tensor(ids, dtype=torch.long)
            labels[row, :n] = torch.as_tensor(sequence_labels, dtype=torch.long)
            attention_mask[row, :n] = 1
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        if self.speaker_slot is not None:
            batch["speaker_embeddings"] = SpeakerSlot.embeddings(examples)
        return batch


def _sequence(
    example: dict[str, Any], loss_on: LossOn, start_of_ai: int, slot: SpeakerSlot | None
) -> tuple[list[int], list[int]]:
    """One example's ids and labels as trained: ``loss_on`` applied, the speaker slot inserted."""
    labels = loss_labels(example, loss_on, start_of_ai)
    if slot is None:
        return list(example["input_ids"]), labels
    return slot.apply(example, labels)


@dataclass(frozen=True)
class PackingCollator:
    """Lays sequences end to end in one row of shape (1, total tokens), with no padding.

    Emits ``position_ids`` restarting at 0 for every sequence, and ``cu_seq_lens_q/k`` (the
    cumulative boundaries, int32) with ``max_length_q/k``, the names transformers' attention
    functions read for variable-length batches. The first label of every sequence is -100: in a
    row the previous sequence's last token would otherwise be trained to predict it, a target
    that does not exist when the sequences are trained one by one.
    """

    start_of_ai: int
    loss_on: LossOn = "all"
    speaker_slot: SpeakerSlot | None = None

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        boundaries = [0]
        for example in examples:
            sequence, sequence_labels = _sequence(example, self.loss_on, self.start_of_ai, self.speaker_slot)
            sequence_labels[0] = IGNORE_INDEX
            ids.extend(sequence)
            labels.extend(sequence_labels)
            positions.extend(range(len(sequence)))
            boundaries.append(boundaries[-1] + len(sequence))
        cu_seq_lens = torch.tensor(boundaries, dtype=torch.int32)
        longest = int(max(np.diff(boundaries)))
        extra = {} if self.speaker_slot is None else {"speaker_embeddings": SpeakerSlot.embeddings(examples)}
        return {
            **extra,
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
            "cu_seq_lens_q": cu_seq_lens,
            "cu_seq_lens_k": cu_seq_lens,
            "max_length_q": longest,
            "max_length_k": longest,
        }


def pack_by_length(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Groups sequence indices into packs of at most ``max_tokens`` tokens (best-fit decreasing).

    Longest first, each into the fullest pack that still has room, which leaves little of the
    budget unused. A sequence longer than the budget gets a pack of its own rather than being cut,
    since a cut sequence would train on a truncated utterance.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    packs: list[list[int]] = []
    # (room left, pack number), kept sorted so the best fit is one bisect away
    rooms: list[tuple[int, int]] = []
    for index in order:
        length = int(lengths[index])
        slot = bisect.bisect_left(rooms, (length, -1))
        if slot < len(rooms):
            room, pack = rooms.pop(slot)
            packs[pack].append(index)
            bisect.insort(rooms, (room - length, pack))
        else:
            packs.append([index])
            if max_tokens > length:
                bisect.insort(rooms, (max_tokens - length, len(packs) - 1))
    return packs


class PackedBatchSampler:
    """Yields packs of dataset indices, one pack per batch, in a new random order every epoch.

    The packs are fixed once (so an epoch always has the same number of steps, which the
    Trainer's schedule and resume rely on); only their order changes with ``set_epoch``, seeded,
    so a resumed run sees the same order and skips exactly the batches it had trained. On several
    processes every rank iterates this same order and accelerate's ``BatchSamplerShard`` deals the
    packs out in turn; :class:`kanitts.training.trainer.PackOrderEpoch` sets the epoch, since the
    wrappers do not always pass it down.
    """

    def __init__(self, lengths: Sequence[int], max_tokens: int, seed: int = 0):
        self.packs = pack_by_length(lengths, max_tokens)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.packs)

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng(self.seed + self.epoch).permutation(len(self.packs))
        for pack in order:
            yield self.packs[int(pack)]
