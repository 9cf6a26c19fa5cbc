"""Kanade building blocks: FSQ, local-window attention, RoPE, resampling, SSL driving, pooling."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch

from kanade_tokenizer.modules import local_attention
from kanade_tokenizer.modules.fsq import FSQ, FiniteScalarQuantizer
from kanade_tokenizer.modules.global_encoder import GlobalEncoder
from kanade_tokenizer.modules.local_attention import band_mask, local_window_attention
from kanade_tokenizer.modules.postnet import PostNet
from kanade_tokenizer.modules.resample import Resampler
from kanade_tokenizer.modules.transformer import Transformer, apply_rope, rope_frequencies
from kanitts import runtime

LEVELS = [8, 8, 8, 5, 5]


# --- FSQ ---------------------------------------------------------------------------------------


def test_fsq_round_trip_all_12800_indices():
    fsq = FSQ(LEVELS)
    assert fsq.codebook_size == 12800
    indices = torch.arange(12800)
    codes = fsq.indices_to_codes(indices)
    assert codes.shape == (12800, 5)
    assert codes.min() >= -1 and codes.max() <= 1
    assert torch.equal(fsq.codes_to_indices(codes), indices)
    # the codes are distinct and each is a fixed point of quantisation
    assert torch.unique(codes, dim=0).shape[0] == 12800
    # a latent that bounds to (nearly) each code quantises back to it
    lo, hi = -fsq._half_l - fsq._offset, fsq._half_l - fsq._offset
    target = torch.maximum(torch.minimum(codes * fsq._half_width, hi - 0.01), lo + 0.01)
    latent = torch.atanh((target + fsq._offset) / fsq._half_l) - fsq._shift
    assert torch.equal(fsq(latent)[1], indices)


def test_fsq_documented_examples():
    fsq = FSQ(LEVELS)
    assert fsq(torch.zeros(5))[1].item() == 6436
    assert torch.allclose(fsq.indices_to_codes(torch.tensor(1)), torch.tensor([-0.75, -1, -1, -1, -1]))
    assert torch.allclose(fsq.indices_to_codes(torch.tensor(12799)), torch.tensor([0.75, 0.75, 0.75, 1, 1]))
    assert fsq._basis.tolist() == [1, 8, 64, 512, 2560]
    # tan (not atanh) in the bound shift, as in the released models
    assert fsq._shift[0].item() == pytest.approx(math.tan(0.5 / (7 * 0.999 / 2)), rel=1e-6)
    # bound ranges: level 8 -> {-4..3}, level 5 -> {-2..2}
    big = fsq.quantize(torch.full((5,), 50.0)) * fsq._half_width
    small = fsq.quantize(torch.full((5,), -50.0)) * fsq._half_width
    assert big.tolist() == [3, 3, 3, 2, 2] and small.tolist() == [-4, -4, -4, -2, -2]


def test_fsq_straight_through_gradient_and_quantizer_shapes():
    q = FiniteScalarQuantizer(16, 12, LEVELS)
    x = torch.randn(2, 7, 16, requires_grad=True)
    emb, indices = q.encode(x)
    assert emb.shape == (2, 7, 12) and indices.shape == (2, 7) and indices.dtype == torch.int64
    emb.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.allclose(q.decode(indices), emb)
    _, info = q(x)
    # Perplexity of 14 tokens lies in [1, 14]; exp(entropy) can land a rounding error above 14
    # when every token gets its own code.
    assert 1 <= info["perplexity"].item() <= 14 * (1 + 1e-5)


# --- local-window attention -------------------------------------------------------------------


def test_band_mask_semantics():
    mask = band_mask(7, 3)
    expected = torch.tensor([[abs(i - j) <= 1 for j in range(7)] for i in range(7)])
    assert torch.equal(mask, expected)
    assert band_mask(200, 125).sum(1).max().item() == 125  # 62 each side + itself
    assert band_mask(5, None).all()


def test_window_limits_what_a_query_sees():
    torch.manual_seed(0)
    B, T, H, D, window = 1, 40, 2, 8, 7
    q, k, v = (torch.randn(B, T, H, D) for _ in range(3))
    for backend in ("sdpa_dense", "sdpa_blocked"):
        out = local_window_attention(q, k, v, window, backend=backend, block_size=8)
        i = 20
        for j, inside in ((23, True), (24, False), (16, False), (17, True)):
            k2, v2 = k.clone(), v.clone()
            k2[:, j] += 3.0
            v2[:, j] += 3.0
            out2 = local_window_attention(q, k2, v2, window, backend=backend, block_size=8)
            changed = not torch.allclose(out[:, i], out2[:, i])
            assert changed == inside, (backend, j)


def _reference_attention(q, k, v, window, lengths):
    """Naive per-item softmax attention over the valid window (valid queries only)."""
    B, T, _H, D = q.shape
    out = torch.zeros_like(q)
    half = window // 2 if window else T
    for b in range(B):
        n = T if lengths is None else int(lengths[b])
        for i in range(n):
            lo, hi = max(0, i - half), min(n, i + half + 1)
            scores = torch.einsum("hd,jhd->hj", q[b, i], k[b, lo:hi]) / math.sqrt(D)
            out[b, i] = torch.einsum("hj,jhd->hd", scores.softmax(-1), v[b, lo:hi])
    return out


@pytest.mark.parametrize("window", [5, 31, None])
@pytest.mark.parametrize("padded", [False, True])
def test_attention_backends_agree(window, padded):
    torch.manual_seed(1)
    B, T, H, D = 3, 90, 2, 16
    q, k, v = (torch.randn(B, T, H, D) for _ in range(3))
    lengths = torch.tensor([90, 61, 7]) if padded else None
    ref = _reference_attention(q, k, v, window, lengths)
    for backend in ("sdpa_dense", "sdpa_blocked", "sdpa", "auto"):
        out = local_window_attention(q, k, v, window, lengths=lengths, backend=backend, block_size=16)
        assert torch.isfinite(out).all()
        for b in range(B):
            n = T if lengths is None else int(lengths[b])
            torch.testing.assert_close(out[b, :n], ref[b, :n], atol=1e-5, rtol=1e-5)


def test_blocked_backend_gives_sdpa_4d_inputs(monkeypatch):
    """SDPA's fused CUDA kernels take (batch, heads, length, dim) only; 5-D goes to the math kernel."""
    torch.manual_seed(4)
    B, T, H, D = 2, 100, 2, 8
    q, k, v = (torch.randn(B, T, H, D) for _ in range(3))
    lengths = torch.tensor([100, 57])
    dense = local_window_attention(q, k, v, 7, lengths=lengths, backend="sdpa_dense")
    shapes = []
    sdpa = local_attention.F.scaled_dot_product_attention

    def recording(q_, k_, v_, attn_mask=None, **kwargs):
        shapes.append((q_.dim(), k_.dim(), v_.dim(), attn_mask.dim()))
        return sdpa(q_, k_, v_, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(local_attention.F, "scaled_dot_product_attention", recording)
    blocked = local_window_attention(q, k, v, 7, lengths=lengths, backend="sdpa_blocked", block_size=16)
    assert shapes == [(4, 4, 4, 4)]
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(blocked[b, :n], dense[b, :n], atol=1e-6, rtol=1e-5)


def test_auto_backend_switches_to_blocked_for_long_inputs():
    q = torch.randn(1, 1000, 1, 8)
    assert local_attention.resolve_backend("sdpa", q, 1000, 125, 128) == "sdpa_blocked"
    assert local_attention.resolve_backend("sdpa", q, 200, 125, 128) == "sdpa_dense"
    assert local_attention.resolve_backend("sdpa_blocked", q, 200, None, 128) == "sdpa_dense"
    with pytest.raises(ValueError):
        local_window_attention(q, q, q, 4)  # even window
    with pytest.raises(RuntimeError, match="flash-attn"):
        local_window_attention(q, q, q, 5, backend="flash")  # CPU / not installed


@pytest.fixture
def fake_flash(monkeypatch):
    """A stand-in ``flash_attn`` with the documented semantics (window_size=(left, right),
    -1 = unlimited), to test the flash wiring (unpadding, cu_seqlens) on CPU."""

    def attend(q, k, v, scale, window):
        T = q.size(0)
        left, right = window
        i = torch.arange(T)[:, None]
        j = torch.arange(T)[None, :]
        allowed = torch.ones(T, T, dtype=torch.bool)
        if left >= 0:
            allowed &= j >= i - left
        if right >= 0:
            allowed &= j <= i + right
        scores = torch.einsum("ihd,jhd->hij", q, k) * scale
        scores = scores.masked_fill(~allowed, float("-inf"))
        return torch.einsum("hij,jhd->ihd", scores.softmax(-1), v)

    calls = []

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1)):
        calls.append("dense")
        assert not causal and dropout_p == 0.0
        return torch.stack([attend(q[b], k[b], v[b], softmax_scale, window_size) for b in range(q.size(0))])

    def flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=None,
                               causal=False, window_size=(-1, -1)):
        calls.append("varlen")
        assert torch.equal(cu_q, cu_k) and cu_q.dtype == torch.int32
        outs = []
        for s, e in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
            outs.append(attend(q[s:e], k[s:e], v[s:e], softmax_scale, window_size))
        return torch.cat(outs)

    module = types.ModuleType("flash_attn")
    module.flash_attn_func = flash_attn_func
    module.flash_attn_varlen_func = flash_attn_varlen_func
    monkeypatch.setitem(sys.modules, "flash_attn", module)
    runtime.flash_attention_functions.cache_clear()
    monkeypatch.setattr(local_attention, "flash_attention_usable", lambda q: True)
    yield calls
    runtime.flash_attention_functions.cache_clear()


@pytest.mark.parametrize("padded", [False, True])
def test_flash_path_matches_sdpa(fake_flash, padded):
    torch.manual_seed(2)
    B, T, H, D = 3, 50, 2, 8
    q, k, v = (torch.randn(B, T, H, D) for _ in range(3))
    lengths = torch.tensor([50, 33, 4]) if padded else None
    flash = local_window_attention(q, k, v, 9, lengths=lengths, backend="auto")
    sdpa = local_window_attention(q, k, v, 9, lengths=lengths, backend="sdpa_dense")
    assert fake_flash == (["varlen"] if padded else ["dense"])
    for b in range(B):
        n = T if lengths is None else int(lengths[b])
        torch.testing.assert_close(flash[b, :n], sdpa[b, :n], atol=1e-5, rtol=1e-5)


# --- RoPE and the Transformer ------------------------------------------------------------------


def test_rope_is_relative_and_interleaved():
    torch.manual_seed(3)
    cos, sin = rope_frequencies(64, 16, 10000.0)
    q = torch.randn(1, 1, 1, 16).expand(1, 64, 1, 16)
    k = torch.randn(1, 1, 1, 16).expand(1, 64, 1, 16)
    rq, rk = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    dots = torch.einsum("btd,bsd->bts", rq[:, :, 0], rk[:, :, 0])[0]
    # the score depends only on the offset t - s
    torch.testing.assert_close(dots[10, 3], dots[40, 33], atol=1e-4, rtol=1e-4)
    # pairs (2k, 2k+1) rotate together by position * theta^(-2k/D): position 1, pair 0 -> angle 1
    x = torch.zeros(1, 2, 1, 16)
    x[0, 1, 0, 0] = 1.0
    y = apply_rope(x, cos[:2], sin[:2])
    assert y[0, 1, 0, 0].item() == pytest.approx(math.cos(1.0), abs=1e-6)
    assert y[0, 1, 0, 1].item() == pytest.approx(math.sin(1.0), abs=1e-6)


def test_transformer_eval_is_deterministic_and_train_uses_dropout():
    torch.manual_seed(4)
    model = Transformer(dim=32, n_layers=2, n_heads=2, window_size=7, rope_theta=10000.0, dropout=0.5)
    x = torch.randn(2, 30, 32)
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_transformer_padding_matches_unpadded():
    torch.manual_seed(5)
    model = Transformer(dim=32, n_layers=2, n_heads=4, window_size=9, rope_theta=10000.0,
                        adanorm_condition_dim=8, use_adaln_zero=True, output_dim=12).eval()
    for p in model.parameters():  # make AdaLN matter
        torch.nn.init.normal_(p, std=0.1) if p.dim() > 1 else None
    x = torch.randn(2, 40, 32)
    cond = torch.randn(2, 1, 8)
    lengths = torch.tensor([40, 23])
    batched = model(x, lengths=lengths, condition=cond)
    alone = model(x[1:, :23], condition=cond[1:])
    torch.testing.assert_close(batched[1, :23], alone[0], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(batched).all()


def test_transformer_shapes_and_names():
    model = Transformer(dim=64, n_layers=1, n_heads=4, output_dim=10, adanorm_condition_dim=8, use_adaln_zero=True)
    names = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert names["layers.0.attention_norm.condition_proj.1.weight"] == (192, 8)
    assert names["norm.condition_proj.1.weight"] == (128, 8)
    assert names["layers.0.feed_forward.w1.weight"] == (256, 64)  # int(2*256/3)=170 -> 256
    assert Transformer(dim=512, n_layers=1, n_heads=8).layers[0].feed_forward.hidden_dim == 1536
    assert Transformer(dim=768, n_layers=1, n_heads=12).layers[0].feed_forward.hidden_dim == 2048


# --- global encoder and postnet ----------------------------------------------------------------


def test_global_pooling_ignores_padding():
    torch.manual_seed(6)
    enc = GlobalEncoder(input_channels=16, output_channels=8, dim=12, intermediate_dim=24,
                        num_layers=2, attention_channels=4).eval()
    x = torch.randn(2, 30, 16)
    x[1, 17:] = 100.0  # garbage in the padding
    batched = enc(x, lengths=torch.tensor([30, 17]))
    alone = enc(x[1:, :17])
    torch.testing.assert_close(batched[1], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[0], enc(x[:1])[0], atol=1e-5, rtol=1e-5)


def test_postnet_dropout_only_in_training():
    torch.manual_seed(7)
    net = PostNet(input_channels=8, channels=16, kernel_size=5, num_layers=3)
    x = torch.randn(1, 8, 20)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    assert not torch.equal(net(x), net(x))


# --- resampling --------------------------------------------------------------------------------


def test_resampler_matches_torchaudio_reference_values():
    # values produced by torchaudio 2.11 transforms.Resample(24000, 16000) (default settings)
    r = Resampler(24000, 16000)
    assert r.kernel.shape == (2, 1, 23) and r.width == 10
    torch.testing.assert_close(
        r.kernel[0, 0, :6],
        torch.tensor([-0.0, -1.6350759324268438e-06, -0.0010764474282041192, 0.005282599478960037,
                      -0.0017229447839781642, -0.021723339334130287]),
        atol=1e-9, rtol=0,
    )
    assert r.kernel.double().sum().item() == pytest.approx(2.0009317666535935, abs=1e-6)
    x = torch.sin(torch.arange(100, dtype=torch.float32) * 0.3)
    y = r(x)
    assert y.shape == (67,)
    torch.testing.assert_close(
        y[:4], torch.tensor([0.029215659946203232, 0.4291295111179352, 0.7858297228813171, 0.974025547504425]),
        atol=1e-6, rtol=0,
    )
    torch.testing.assert_close(
        y[-3:], torch.tensor([-0.477715402841568, -0.8790885210037231, -0.8168202638626099]), atol=1e-6, rtol=0
    )


def test_resampler_batched_right_padding_is_exact():
    r = Resampler(24000, 16000)
    a, b = torch.randn(1000), torch.randn(601)
    batch = torch.zeros(2, 1000)
    batch[0], batch[1, :601] = a, b
    out = r(batch)
    n = r.output_length(601)
    assert n == 401
    torch.testing.assert_close(out[1, :n], r(b), atol=1e-6, rtol=0)
