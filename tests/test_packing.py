"""Packed LFM2 batches train exactly like their sequences one by one (fp32, hybrid conv + attention)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kanitts.data.collate import IGNORE_INDEX, PackingCollator
from kanitts.training.packing import (
    PACKED_SDPA,
    disable_exact_packing,
    enable_exact_packing,
    positions_in_sequence,
    segment_causal_conv1d,
)

VOCAB = 300
START_OF_AI = 290
LENGTHS = (23, 17, 5, 2, 31)


@pytest.fixture(scope="module")
def hybrid_lfm2(tmp_path_factory):
    from kanitts.tiny import build_lfm2

    model = build_lfm2(
        tmp_path_factory.mktemp("lfm2_pack"), vocab_size=VOCAB, hidden_size=64,
        layer_types=("conv", "full_attention", "conv", "full_attention"),
    )
    return model.float().eval()


@pytest.fixture(scope="module")
def sequences():
    generator = torch.Generator().manual_seed(1)
    out = []
    for n in LENGTHS:
        ids = torch.randint(3, START_OF_AI, (n,), generator=generator).tolist()
        ids[n // 2] = START_OF_AI
        out.append(ids)
    return out


def unpacked_token_losses(model, sequences) -> list[torch.Tensor]:
    losses = []
    for ids in sequences:
        batch = torch.tensor([ids])
        logits = model(input_ids=batch, use_cache=False).logits[0]
        losses.append(F.cross_entropy(logits[:-1], batch[0, 1:], reduction="none"))
    return losses


def packed_token_losses(model, sequences) -> torch.Tensor:
    """Losses of the positions that have a target, in sequence order."""
    batch = PackingCollator(start_of_ai=START_OF_AI)([{"input_ids": s} for s in sequences])
    labels = batch.pop("labels")[0]
    logits = model(**batch, use_cache=False).logits[0]
    losses = F.cross_entropy(logits[:-1], labels[1:], reduction="none", ignore_index=IGNORE_INDEX)
    return losses[labels[1:] != IGNORE_INDEX]


def test_stock_lfm2_leaks_across_packed_sequences(hybrid_lfm2, sequences):
    """Why the patch exists: without it the packed losses are not the unpacked ones."""
    with torch.no_grad():
        expected = torch.cat(unpacked_token_losses(hybrid_lfm2, sequences))
        batch = PackingCollator(start_of_ai=START_OF_AI)([{"input_ids": s} for s in sequences])
        labels = batch["labels"][0]
        logits = hybrid_lfm2(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits[0]
        losses = F.cross_entropy(logits[:-1], labels[1:], reduction="none", ignore_index=IGNORE_INDEX)
    assert (losses[labels[1:] != IGNORE_INDEX] - expected).abs().max() > 1e-4


def test_packed_losses_equal_unpacked_per_token(hybrid_lfm2, sequences):
    with torch.no_grad():
        expected = torch.cat(unpacked_token_losses(hybrid_lfm2, sequences))
        assert enable_exact_packing(hybrid_lfm2) == PACKED_SDPA
        try:
            packed = packed_token_losses(hybrid_lfm2, sequences)
            # padded batches keep working on a patched model (the stock path)
            again = torch.cat(unpacked_token_losses(hybrid_lfm2, sequences))
        finally:
            disable_exact_packing(hybrid_lfm2)
    assert packed.shape == expected.shape == (sum(LENGTHS) - len(LENGTHS),)
    torch.testing.assert_close(packed, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(again, expected, atol=1e-6, rtol=0)
    assert hybrid_lfm2.config._attn_implementation == "sdpa"


def test_packed_gradients_equal_unpacked(hybrid_lfm2, sequences):
    """Training on a pack moves the weights exactly as training on the sequences one by one."""
    model = hybrid_lfm2
    model.zero_grad()
    sum(loss.sum() for loss in unpacked_token_losses(model, sequences)).backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    enable_exact_packing(model)
    try:
        packed_token_losses(model, sequences).sum().backward()
    finally:
        disable_exact_packing(model)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], atol=1e-4, rtol=1e-4, msg=name)
    model.zero_grad()


def test_segment_conv_equals_each_sequence_alone():
    generator = torch.Generator().manual_seed(0)
    lengths = [4, 1, 6, 2]
    channels, kernel = 5, 3
    x = torch.randn(1, channels, sum(lengths), generator=generator)
    weight = torch.randn(channels, kernel, generator=generator)
    bias = torch.randn(channels, generator=generator)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    positions = positions_in_sequence(cu, sum(lengths))
    assert positions.tolist() == [0, 1, 2, 3, 0, 0, 1, 2, 3, 4, 5, 0, 1]
    out = segment_causal_conv1d(x, weight, bias, positions)
    pieces = []
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
        piece = x[..., start:end]
        alone = F.conv1d(piece, weight[:, None, :], bias, padding=kernel - 1, groups=channels)
        pieces.append(alone[..., : end - start])
    torch.testing.assert_close(out, torch.cat(pieces, dim=-1), atol=1e-6, rtol=0)
