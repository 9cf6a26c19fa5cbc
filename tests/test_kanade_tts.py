"""Kanade as the TTS codec: datasets, one-codebook sequences, the speaker slot, voice cloning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kanitts.config import DatasetConfig


@pytest.fixture(scope="module")
def kanade_sequences(kanade_project, tmp_path_factory):
    from transformers import AutoTokenizer

    from kanitts.sequences import build_training_dataset

    cfg = DatasetConfig.model_validate({
        "hf_datasets": [{"reponame": str(kanade_project.data)}], "dedup_frames": False,
        "cache_dir": str(tmp_path_factory.mktemp("kanade_cache")),
    })
    tokenizer = AutoTokenizer.from_pretrained(str(kanade_project.base))
    return build_training_dataset(cfg, kanade_project.model_cfg, tokenizer, num_proc=1)


def test_prepare_writes_tokens_embedding_and_lengths(kanade_project, tiny_kanade):
    from datasets import load_from_disk

    ds = load_from_disk(str(kanade_project.data))
    assert {"kanade_tokens_1", "encoded_len", "global_embedding", "speaker", "text"} <= set(ds.column_names)
    assert len(ds) == 6
    for row in ds:
        assert len(row["kanade_tokens_1"]) == row["encoded_len"] == tiny_kanade.num_frames(round(row["duration_sec"] * 24000))
        assert len(row["global_embedding"]) == 128
        assert 0 <= min(row["kanade_tokens_1"]) and max(row["kanade_tokens_1"]) < 12800


def test_sequences_for_one_codebook(kanade_project, kanade_sequences):
    from datasets import load_from_disk

    from kanitts.tokens import TokenLayout

    sequences, report = kanade_sequences
    layout = TokenLayout.from_config(kanade_project.model_cfg)
    source = load_from_disk(str(kanade_project.data))
    by_text = {(r["speaker"], r["text"]): r for r in source}
    assert "speaker_embedding" in sequences.column_names
    for row in sequences:
        ids = row["input_ids"]
        audio = ids[ids.index(layout.start_of_speech) + 1: ids.index(layout.end_of_speech)]
        matches = [r for r in by_text.values() if len(r["kanade_tokens_1"]) == len(audio)
                   and [layout.audio_tokens_start + c for c in r["kanade_tokens_1"]] == audio]
        assert len(matches) == 1  # one token per frame, ids after the specials
        np.testing.assert_allclose(row["speaker_embedding"], matches[0]["global_embedding"], rtol=1e-6)
    text = report.format()
    seconds = sum(source["duration_sec"])
    assert f"{report.tokens / (report.audio_hours * 3600):.1f} training tokens per audio second" in text
    assert report.audio_hours * 3600 == pytest.approx(seconds, rel=0.1)


# --- the speaker slot ---------------------------------------------------------------------------

VOCAB, SOH, SOA, SLOT, PAD = 300, 280, 290, 295, 296


@pytest.fixture(scope="module")
def slot_examples():
    generator = torch.Generator().manual_seed(3)
    examples = []
    for n in (9, 14, 4):
        ids = torch.randint(3, 270, (n,), generator=generator).tolist()
        ids[0], ids[n // 2] = SOH, SOA
        examples.append({"input_ids": ids, "labels": ids, "speaker_embedding": torch.randn(8, generator=generator).tolist()})
    return examples


@pytest.fixture(scope="module")
def conditioned_lfm2(tmp_path_factory):
    from kanitts.conditioning import SpeakerConditioning
    from kanitts.tiny import build_lfm2

    model = build_lfm2(tmp_path_factory.mktemp("lfm2_slot"), vocab_size=VOCAB).float().eval()
    return model, SpeakerConditioning.attach(model, 8, SLOT)


def test_collators_put_the_slot_after_start_of_human(slot_examples):
    from kanitts.training.batching import IGNORE_INDEX, PackingCollator, PaddingCollator, SpeakerSlot

    slot = SpeakerSlot(start_of_human=SOH, slot=SLOT)
    padded = PaddingCollator(pad_token_id=PAD, start_of_ai=SOA, loss_on="audio", speaker_slot=slot)(slot_examples)
    packed = PackingCollator(start_of_ai=SOA, speaker_slot=slot)(slot_examples)
    for row, example in enumerate(slot_examples):
        n = len(example["input_ids"]) + 1
        assert padded["input_ids"][row, :2].tolist() == [SOH, SLOT]
        assert padded["input_ids"][row, 2:n].tolist() == example["input_ids"][1:]
        assert padded["labels"][row, 1] == IGNORE_INDEX and padded["attention_mask"][row, :n].all()
        # loss_on audio still starts at start_of_ai, one later
        soa = example["input_ids"].index(SOA) + 1
        assert (padded["labels"][row, :soa] == IGNORE_INDEX).all() and padded["labels"][row, soa] == SOA
    starts = packed["cu_seq_lens_q"][:-1].tolist()
    ids, labels, positions = packed["input_ids"][0], packed["labels"][0], packed["position_ids"][0]
    assert ids[starts].tolist() == [SOH] * 3 and ids[[s + 1 for s in starts]].tolist() == [SLOT] * 3
    assert labels[[s + 1 for s in starts]].tolist() == [IGNORE_INDEX] * 3
    assert positions[[s + 1 for s in starts]].tolist() == [1, 1, 1]
    assert packed["cu_seq_lens_q"][-1] == sum(len(e["input_ids"]) + 1 for e in slot_examples)
    torch.testing.assert_close(packed["speaker_embeddings"], padded["speaker_embeddings"])
    with pytest.raises(ValueError, match="needs a global embedding per clip.*codec.kind: kanade"):
        PackingCollator(start_of_ai=SOA, speaker_slot=slot)([{"input_ids": [SOH, 5, SOA]}])


def _losses(model, batch, labels):
    logits = model(**batch, use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="none", ignore_index=-100)


def test_packed_conditioned_losses_equal_unpacked(conditioned_lfm2, slot_examples):
    from kanitts.training.batching import PackingCollator, PaddingCollator, SpeakerSlot
    from kanitts.training.packing import disable_exact_packing, enable_exact_packing

    model, conditioning = conditioned_lfm2
    slot = SpeakerSlot(start_of_human=SOH, slot=SLOT)
    expected = []
    with torch.no_grad():
        for example in slot_examples:
            batch = PaddingCollator(pad_token_id=PAD, start_of_ai=SOA, speaker_slot=slot)([example])
            labels, embeddings = batch.pop("labels"), batch.pop("speaker_embeddings")
            with conditioning.conditioned(embeddings):
                losses = _losses(model, batch, labels)
            expected.append(losses[labels[0, 1:] != -100])
        # the embedding matters: another voice, another loss
        with conditioning.conditioned(-embeddings):
            assert not torch.allclose(_losses(model, batch, labels)[labels[0, 1:] != -100], expected[-1])
        batch = PackingCollator(start_of_ai=SOA, speaker_slot=slot)(slot_examples)
        labels, embeddings = batch.pop("labels"), batch.pop("speaker_embeddings")
        enable_exact_packing(model)
        try:
            with conditioning.conditioned(embeddings):
                packed = _losses(model, batch, labels)
        finally:
            disable_exact_packing(model)
    torch.testing.assert_close(packed[labels[0, 1:] != -100], torch.cat(expected), atol=1e-5, rtol=0)
    with pytest.raises(RuntimeError, match="3 speaker slot\\(s\\) in the input but no speaker embedding"):
        model(**batch, use_cache=False)
