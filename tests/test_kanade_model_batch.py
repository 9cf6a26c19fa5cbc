"""Batched encoding/decoding equals one-at-a-time (padding-aware SSL, attention and pooling)."""

from __future__ import annotations

import pytest
import torch

from kanade_tokenizer.testing import build_tiny_model, synthetic_speech

SECONDS = [1.3, 0.45, 2.2, 0.9, 0.03]


@pytest.fixture(scope="module")
def model():
    return build_tiny_model(seed=0)


@pytest.fixture(scope="module")
def waves():
    return [synthetic_speech(s, seed=i) for i, s in enumerate(SECONDS)]


@pytest.fixture(scope="module")
def singles(model, waves):
    return [model.encode(w) for w in waves]


def _assert_same(batch, singles):
    assert len(batch) == len(singles)
    for b, s in zip(batch, singles):
        assert torch.equal(b.content_token_indices, s.content_token_indices)
        torch.testing.assert_close(b.content_embedding, s.content_embedding, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b.global_embedding, s.global_embedding, atol=1e-4, rtol=1e-4)


def test_encode_batch_list_equals_single(model, waves, singles):
    batch = model.encode_batch(waves, max_padding=None)  # one padded batch
    _assert_same(batch, singles)
    assert [f.content_token_indices.numel() for f in batch] == [model.num_tokens(w.numel()) for w in waves]


def test_encode_batch_padded_tensor_with_lengths(model, waves, singles):
    lengths = torch.tensor([w.numel() for w in waves])
    padded = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        padded[i, : w.numel()] = w
        padded[i, w.numel():] = 0.5  # garbage past the end must not matter
    _assert_same(model.encode_batch(padded, lengths, max_padding=None), singles)
    _assert_same(model.encode_batch(padded, lengths), singles)  # auto grouping on CPU


def test_encode_batch_in_sorted_chunks_keeps_order(model, waves, singles):
    _assert_same(model.encode_batch(waves, batch_size=2, max_padding=None), singles)


def test_bucket_by_length():
    from kanitts.bucketing import bucket_by_length

    lengths = [100, 300, 290, 50, 310, 120]
    assert bucket_by_length(lengths) == [[4, 1, 2, 5, 0, 3]]
    assert bucket_by_length(lengths, max_items=2) == [[4, 1], [2, 5], [0, 3]]
    # padded size <= 1.1 x real size: 310,300,290 fit (930 <= 990); 120 would make 1240 > 1122
    assert bucket_by_length(lengths, max_padding=0.1) == [[4, 1, 2], [5, 0], [3]]
    # padded size (longest x count) <= 700: two items of 310; an item over the budget stands alone
    assert bucket_by_length(lengths, max_padded=700) == [[4, 1], [2, 5], [0, 3]]
    assert bucket_by_length([900, 100, 90], max_padded=500) == [[0], [1, 2]]
    assert bucket_by_length([]) == []


def test_encode_batch_partial_outputs(model, waves, singles):
    only_global = model.encode_batch(waves[:2], return_content=False, max_padding=None)
    assert all(f.content_token_indices is None for f in only_global)
    torch.testing.assert_close(only_global[1].global_embedding, singles[1].global_embedding, atol=1e-4, rtol=1e-4)
    assert model.encode_batch([]) == []


def test_batched_ssl_features_match_single(model, waves):
    batch, lengths = model.pad_waveforms(waves[:3])
    local, global_, frames = model.forward_ssl_features(batch, lengths)
    for i, w in enumerate(waves[:3]):
        b1, _l1 = model.pad_waveforms([w])
        lo, gl, fr = model.forward_ssl_features(b1)
        n = int(fr[0])
        assert int(frames[i]) == n == -(-w.numel() // 480)
        torch.testing.assert_close(local[i, :n], lo[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(global_[i, :n], gl[0], atol=1e-5, rtol=1e-5)


def test_decode_batch_equals_single(model, singles):
    items = [s for s in singles if s.content_token_indices.numel() > 0]
    lengths = [None, 30000, None, 9000, None][: len(items)]
    mels = model.decode_batch(
        [s.global_embedding for s in items],
        content_token_indices=[s.content_token_indices for s in items],
        target_audio_lengths=[
            n if n is not None else model.estimated_audio_length(s.content_token_indices.numel())
            for n, s in zip(lengths, items)
        ],
    )
    for mel, s, n in zip(mels, items, lengths):
        one = model.decode(s.global_embedding, content_token_indices=s.content_token_indices, target_audio_length=n)
        assert mel.shape == one.shape
        torch.testing.assert_close(mel, one, atol=1e-4, rtol=1e-4)


def test_long_input_uses_blocked_attention_and_matches_dense(model):
    wave = synthetic_speech(9.0, seed=11)  # 450 SSL frames > 2 * (block + window) for the tiny encoder
    auto = model.encode(wave)
    model.set_attention_backend("sdpa_dense")
    try:
        dense = model.encode(wave)
    finally:
        model.set_attention_backend("auto")
    assert torch.equal(auto.content_token_indices, dense.content_token_indices)
    torch.testing.assert_close(auto.global_embedding, dense.global_embedding)


@pytest.mark.cuda
def test_encode_batch_on_cuda_flash_equals_dense_sdpa(waves):
    """bf16 on a GPU (the released models' setting): the flash-attn windows (varlen for the
    padded items) give the tokens dense-mask SDPA gives."""
    from kanade_tokenizer.modules.local_attention import flash_attention_supports

    if not flash_attention_supports("cuda", torch.bfloat16):
        pytest.skip("flash-attn 2 does not import on this machine")
    model = build_tiny_model(seed=0).cuda()
    model.set_attention_backend("flash")
    flash = model.encode_batch(waves, max_padding=None)
    model.set_attention_backend("sdpa_dense")
    dense = model.encode_batch(waves, max_padding=None)
    same = sum(int((f.content_token_indices == d.content_token_indices).sum()) for f, d in zip(flash, dense))
    total = sum(d.content_token_indices.numel() for d in dense)
    print(f"flash vs dense SDPA on cuda, bf16: {same} of {total} tokens equal")
    assert same >= 0.95 * total
    for f, d in zip(flash, dense):
        torch.testing.assert_close(f.global_embedding, d.global_embedding, atol=0.05, rtol=0.05)


@pytest.mark.cuda
def test_blocked_attention_runs_a_fused_cuda_kernel():
    """With the math kernel forbidden, blocked SDPA still runs (4-D inputs reach a fused kernel)
    and matches the dense mask in bf16."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from kanade_tokenizer.modules.local_attention import local_window_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 700, 4, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    lengths = torch.tensor([700, 431], device="cuda")
    fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    with sdpa_kernel(fused):
        blocked = local_window_attention(q, k, v, 125, lengths=lengths, backend="sdpa_blocked")
    dense = local_window_attention(q, k, v, 125, lengths=lengths, backend="sdpa_dense")
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(blocked[b, :n].float(), dense[b, :n].float(), atol=2e-2, rtol=2e-2)
