"""Packed LFM2 batches train exactly like their sequences one by one (fp32, hybrid conv + attention)."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F

from kanitts.patches.lfm2 import PACKED_SDPA, positions_in_sequence, segment_causal_conv1d
from kanitts.training.batching import IGNORE_INDEX, PackingCollator
from kanitts.training.packing import disable_exact_packing, enable_exact_packing

from conftest import upstream_fixed

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


@pytest.mark.canary
def test_stock_lfm2_leaks_across_packed_sequences(hybrid_lfm2, sequences):
    """Why the patch exists: without it the packed losses are not the unpacked ones.

    A canary: with transformers 5.24 the leak is the short convolution's PyTorch path alone
    (stock SDPA already keeps the sequences apart when position_ids restart), so this fails on
    the first release whose convolution respects packed boundaries."""
    with torch.no_grad():
        expected = torch.cat(unpacked_token_losses(hybrid_lfm2, sequences))
        batch = PackingCollator(start_of_ai=START_OF_AI)([{"input_ids": s} for s in sequences])
        labels = batch["labels"][0]
        logits = hybrid_lfm2(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits[0]
        losses = F.cross_entropy(logits[:-1], labels[1:], reduction="none", ignore_index=IGNORE_INDEX)
    assert (losses[labels[1:] != IGNORE_INDEX] - expected).abs().max() > 1e-4, upstream_fixed(
        "transformers", "LFM2's short convolution leaking across packed sequences", "src/kanitts/patches/lfm2.py"
    )


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


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient-checkpointing"])
def test_packed_gradients_equal_unpacked(hybrid_lfm2, sequences, checkpointing):
    """Training on a pack moves the weights exactly as training on the sequences one by one,
    also when gradient checkpointing recomputes every layer in the backward pass."""
    model = hybrid_lfm2
    model.zero_grad()
    sum(loss.sum() for loss in unpacked_token_losses(model, sequences)).backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    enable_exact_packing(model)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
    try:
        packed_token_losses(model, sequences).sum().backward()
    finally:
        disable_exact_packing(model)
        if checkpointing:
            model.gradient_checkpointing_disable()
            model.eval()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], atol=1e-4, rtol=1e-4, msg=name)
    model.zero_grad()


def test_packed_row_without_boundaries_is_refused(hybrid_lfm2, sequences):
    """Positions restarting at 0 mark a packed row; without cu_seq_lens_q it would leak, so it fails."""
    batch = PackingCollator(start_of_ai=START_OF_AI)([{"input_ids": s} for s in sequences])
    enable_exact_packing(hybrid_lfm2)
    try:
        with torch.no_grad(), pytest.raises(ValueError, match=r"position_ids restarting at 0.*without cu_seq_lens_q"):
            hybrid_lfm2(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    finally:
        disable_exact_packing(hybrid_lfm2)


@pytest.mark.parametrize("pairs", [1, 3])
def test_boundaries_reach_the_host_once_per_forward(tmp_path, sequences, monkeypatch, pairs):
    """The packed attention reads cu_seq_lens on the host once per forward, however many layers."""
    from kanitts.tiny import build_lfm2

    model = build_lfm2(
        tmp_path, vocab_size=VOCAB, hidden_size=32, layer_types=("conv", "full_attention") * pairs
    ).float().eval()
    enable_exact_packing(model)
    batch = PackingCollator(start_of_ai=START_OF_AI)([{"input_ids": s} for s in sequences])
    batch.pop("labels")
    calls = []
    tolist = torch.Tensor.tolist

    def counting_tolist(self):
        calls.append(tuple(self.shape))
        return tolist(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counting_tolist)
    with torch.no_grad():
        model(**batch, use_cache=False)
    assert calls == [(len(LENGTHS) + 1,)]  # the boundaries, once, for every layer together


class _Linear3(torch.nn.Module):
    """Stands in for in_proj/out_proj in the fake blocks below."""

    def __init__(self, width, out):
        super().__init__()
        self.linear = torch.nn.Linear(width, out)

    def forward(self, x):
        return self.linear(x)


def _fake_block(width=8):
    block = torch.nn.Module()
    block.in_proj = _Linear3(width, 3 * width)
    block.conv = torch.nn.Conv1d(width, width, 3, groups=width, padding=2)
    block.out_proj = _Linear3(width, width)
    return block


class RenamedCacheShortConv(torch.nn.Module):
    """A short conv whose cache argument has a name the patch does not know."""

    def __init__(self):
        super().__init__()
        for name, module in _fake_block().named_children():
            self.add_module(name, module)

    def forward(self, hidden_states, state=None, attention_mask=None, **kwargs):
        return hidden_states


class NoConvShortConv(torch.nn.Module):
    """A short conv without the depthwise conv submodule the patch reads."""

    def __init__(self):
        super().__init__()
        self.in_proj = torch.nn.Linear(8, 24)
        self.out_proj = torch.nn.Linear(8, 8)

    def forward(self, hidden_states, cache=None, attention_mask=None, **kwargs):
        return hidden_states


class SwappedGatesShortConv(RenamedCacheShortConv):
    """Same names as LFM2's block, but it gates with the other chunk: the patch would be wrong."""

    def forward(self, hidden_states, cache=None, attention_mask=None, **kwargs):
        x, b_gate, c_gate = self.in_proj(hidden_states).transpose(-1, -2).chunk(3, dim=-2)
        conv = self.conv(b_gate * x)[..., : hidden_states.shape[1]]
        return self.out_proj((c_gate * conv).transpose(-1, -2))


@pytest.mark.parametrize(
    ("block", "what"),
    [
        (
            RenamedCacheShortConv,
            r"RenamedCacheShortConv\.forward\(self, hidden_states, state=None.*has no cache argument",
        ),
        (NoConvShortConv, "NoConvShortConv has no conv submodule"),
        (SwappedGatesShortConv, "no longer computes the gated short convolution"),
    ],
)
def test_patch_refuses_a_short_conv_it_does_not_understand(block, what):
    from kanitts.patches import UnsupportedVersion, installed_version
    from kanitts.patches.lfm2 import patch_short_convs

    model = torch.nn.Sequential(block())
    with pytest.raises(UnsupportedVersion) as caught:
        patch_short_convs(model)
    message = str(caught.value)
    assert message.startswith(f"transformers {installed_version('transformers')} is not supported: ")
    assert re.search(what, message), message
    assert "tested with transformers 5.20.2, 5.23.0, 5.24.0" in message
    assert "training.packing: false" in message
    # nothing was changed on the refused model
    assert "forward" not in vars(model[0]) and not model._forward_pre_hooks
    assert not any(name.startswith("_kanitts") for name in vars(model[0]))


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


@pytest.mark.cuda
def test_packed_training_on_cuda_with_flash_attention_equals_sdpa(hybrid_lfm2, sequences):
    """Three bf16 steps on one pack: flash-attn 2's varlen kernel (it reads the boundaries itself)
    and the per-sequence SDPA train the same."""
    from kanitts.training.model_loading import flash_attention_available

    if not flash_attention_available(torch.bfloat16):
        pytest.skip("flash-attn 2 does not import on this machine")
    batch = PackingCollator(start_of_ai=START_OF_AI)([{"input_ids": s} for s in sequences])
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
    runs = {}
    for implementation in ("flash_attention_2", "sdpa"):
        model = copy.deepcopy(hybrid_lfm2).to("cuda", torch.bfloat16).train()
        model.set_attn_implementation(implementation)
        used = enable_exact_packing(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses = []
        for _ in range(3):
            loss = model(**batch, use_cache=False).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        runs[used] = losses
    print(f"packed bf16 losses: flash {runs.get('flash_attention_2')}, per-sequence sdpa {runs.get(PACKED_SDPA)}")
    assert set(runs) == {"flash_attention_2", PACKED_SDPA}
    assert runs["flash_attention_2"] == pytest.approx(runs[PACKED_SDPA], rel=2e-2)
