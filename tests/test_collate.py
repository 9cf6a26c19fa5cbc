"""Padding and packing collators, loss_on masking, and the packing batch sampler."""

from __future__ import annotations

import pytest
import torch

from kanitts.training.batching import (
    IGNORE_INDEX,
    PackedBatchSampler,
    PackingCollator,
    PaddingCollator,
    loss_labels,
    pack_by_length,
)


@pytest.fixture(scope="module")
def examples(tiny_layout, tiny_tokenizer):
    """Three real training sequences of different lengths, built the way the dataset builds them."""
    out = []
    for text, frames in (("hello there", 2), ("a much longer sentence to speak", 5), ("hi", 1)):
        text_ids = tiny_tokenizer(tiny_layout.text_prompt(text, "alice"))["input_ids"]
        codes = torch.arange(frames * tiny_layout.num_codebooks).reshape(tiny_layout.num_codebooks, frames).numpy() + 1
        ids = tiny_layout.training_ids(text_ids, tiny_layout.frames_to_ids(codes, dedup=False))
        # what the model reads: start_of_human, the text, end_of_text, end_of_human
        out.append({"input_ids": ids, "labels": list(ids), "prompt_len": len(tiny_layout.prompt_ids(text_ids))})
    return out


def test_loss_on_audio_masks_exactly_the_prompt(examples, tiny_layout):
    example = examples[1]
    labels = loss_labels(example, "audio", tiny_layout.start_of_ai)
    prompt = example["prompt_len"]
    assert labels[:prompt] == [IGNORE_INDEX] * prompt
    assert labels[prompt:] == example["input_ids"][prompt:]
    assert example["input_ids"][prompt] == tiny_layout.start_of_ai
    assert loss_labels(example, "all", tiny_layout.start_of_ai) == example["input_ids"]


def test_loss_on_audio_without_start_of_ai_is_a_clear_error(tiny_layout):
    with pytest.raises(ValueError, match="no start_of_ai"):
        loss_labels({"input_ids": [1, 2, 3]}, "audio", tiny_layout.start_of_ai)


def test_padding_collator_batches_ragged_rows(examples, tiny_layout):
    collate = PaddingCollator(pad_token_id=tiny_layout.pad, start_of_ai=tiny_layout.start_of_ai, loss_on="audio")
    batch = collate(examples)
    lengths = [len(e["input_ids"]) for e in examples]
    assert batch["input_ids"].shape == batch["labels"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for row, (example, n) in enumerate(zip(examples, lengths)):
        assert batch["input_ids"][row, :n].tolist() == example["input_ids"]
        assert (batch["input_ids"][row, n:] == tiny_layout.pad).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        prompt = example["prompt_len"]
        assert (batch["labels"][row, :prompt] == IGNORE_INDEX).all()
        assert batch["labels"][row, prompt:n].tolist() == example["input_ids"][prompt:]


def test_packing_collator_lays_sequences_end_to_end(examples, tiny_layout):
    batch = PackingCollator(start_of_ai=tiny_layout.start_of_ai)(examples)
    lengths = [len(e["input_ids"]) for e in examples]
    total = sum(lengths)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["position_ids"].shape == (1, total)
    assert batch["input_ids"][0].tolist() == [t for e in examples for t in e["input_ids"]]
    assert batch["cu_seq_lens_q"].tolist() == [0, lengths[0], lengths[0] + lengths[1], total]
    assert batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["max_length_q"] == batch["max_length_k"] == max(lengths)
    assert batch["position_ids"][0].tolist() == [i for n in lengths for i in range(n)]
    starts = batch["cu_seq_lens_q"][:-1].tolist()
    # no sequence's first token is a target of the previous sequence's last one
    assert all(batch["labels"][0, s] == IGNORE_INDEX for s in starts)
    assert "attention_mask" not in batch


def test_pack_by_length_keeps_every_sequence_once_within_budget():
    lengths = [50, 20, 90, 10, 30, 70, 40, 5, 100, 60]
    packs = pack_by_length(lengths, max_tokens=100)
    assert sorted(i for pack in packs for i in pack) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in pack) <= 100 for pack in packs)
    assert len(packs) == 5  # 475 tokens fill five budgets of 100 tightly


def test_a_sequence_longer_than_the_budget_gets_its_own_pack():
    packs = pack_by_length([30, 250, 40], max_tokens=100)
    assert [1] in packs
    assert sorted(i for pack in packs for i in pack) == [0, 1, 2]


def test_packed_batch_sampler_reshuffles_packs_per_epoch_reproducibly():
    lengths = list(range(1, 41))
    sampler = PackedBatchSampler(lengths, max_tokens=60, seed=3)
    first = list(sampler)
    assert len(first) == len(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(map(sorted, first)) == sorted(map(sorted, second))
    assert first != second
    sampler.set_epoch(0)
    assert list(sampler) == first


@pytest.mark.parametrize("rank", [0, 1])
def test_resumed_epoch_on_two_processes_replays_that_epochs_pack_order(tmp_path, monkeypatch, rank):
    """A resume mid-epoch on 2 GPUs, simulated: the loader wrapped as accelerate does for rank
    `rank` of 2, then skipped and given its epoch as the Trainer does; the rank must see its share
    of that epoch's pack order, not epoch 0's."""
    import datasets
    from accelerate.data_loader import prepare_data_loader, skip_first_batches
    from transformers import TrainerState, TrainingArguments

    from kanitts.training.trainer import ExperimentTrainer

    lengths = [7, 30, 12, 25, 9, 18, 40, 3, 22, 15, 11, 27, 5, 33, 19, 8, 41]  # 8 packs of <= 45
    rows = datasets.Dataset.from_dict({"id": list(range(len(lengths))), "length": lengths})
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", seed=7)
    trainer = ExperimentTrainer(
        model=torch.nn.Linear(1, 1), args=args, train_dataset=rows, max_tokens_per_batch=45,
        data_collator=lambda batch: [row["id"] for row in batch],
    )
    monkeypatch.setattr(
        trainer.accelerator, "prepare",
        lambda loader: prepare_data_loader(loader, num_processes=2, process_index=rank, put_on_device=False),
    )
    loader = trainer.get_train_dataloader()
    epoch, done = 2, 1  # resuming in the third epoch, one step already trained on each rank
    state = TrainerState(epoch=epoch + done / len(loader), global_step=epoch * len(loader) + done)

    # what transformers' training loop does for the resumed epoch
    trainer.callback_handler.on_epoch_begin(args, state, trainer.control)
    resumed = skip_first_batches(loader, done)
    resumed.set_epoch(epoch)
    inner = getattr(getattr(resumed, "batch_sampler", None), "batch_sampler", None)
    if hasattr(inner, "set_epoch"):
        inner.set_epoch(epoch)
    seen = list(resumed)

    unsharded = PackedBatchSampler(lengths, max_tokens=45, seed=7)
    unsharded.set_epoch(epoch)
    expected = list(unsharded)[rank::2][done:]
    assert seen == expected and len(expected) >= 2
