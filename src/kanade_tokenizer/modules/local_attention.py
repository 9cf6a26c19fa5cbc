"""Local-window (banded) self-attention with three interchangeable backends.

Window semantics (shared by every backend): with ``w = window_size // 2``, query ``i`` attends
to keys ``j`` with ``|i - j| <= w``; the window is truncated at the sequence edges. With
``window_size=None`` the attention is global (bidirectional).

Padding: ``lengths`` (B,) marks the valid prefix of every item. Valid queries never attend to
padded keys. A padded query always attends at least to itself, so no row is fully masked (a
fully masked row would give NaN in SDPA and poison later layers through 0 * NaN); the outputs
at padded positions are meaningless and callers discard them.

Backends:

- ``"flash"``: ``flash_attn_func`` / ``flash_attn_varlen_func`` with ``window_size=(w, w)``.
  Needs the ``flash-attn`` package, a CUDA device and fp16/bf16 tensors.
- ``"sdpa_dense"``: ``F.scaled_dot_product_attention`` with a dense (T, T) band mask
  (AND-ed with the key padding mask). O(T^2) memory, the reference semantics.
- ``"sdpa_blocked"``: queries are split into blocks of ``block_size``; each block attends to
  the ``block_size + 2w`` keys around it through SDPA with a small band mask. O(T * (block + 2w))
  memory, so long inputs (minutes of audio) do not need a T x T mask.
- ``"auto"``: flash when usable, else blocked SDPA for long sequences, else dense SDPA.

All backends compute the same function (up to floating-point rounding); the test suite checks
this.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kanitts.runtime import flash_attention_functions, flash_attention_supports

from .utils import lengths_to_mask

BACKENDS = ("auto", "flash", "sdpa", "sdpa_dense", "sdpa_blocked")


def flash_attention_usable(q: Tensor) -> bool:
    """Whether the flash backend can run on this tensor (see ``flash_attention_supports``)."""
    return flash_attention_supports(q.device, q.dtype)


def band_mask(
    length: int, window_size: int | None, device: torch.device | str | None = None
) -> Tensor:
    """(T, T) bool mask, True where query i may attend key j: ``|i - j| <= window_size // 2``."""
    if window_size is None:
        return torch.ones(length, length, dtype=torch.bool, device=device)
    half = window_size // 2
    pos = torch.arange(length, device=device)
    return (pos[None, :] - pos[:, None]).abs() <= half


def _dense_mask(
    length: int, window_size: int | None, lengths: Tensor | None, device: torch.device
) -> Tensor | None:
    """Boolean SDPA mask (B or 1, 1, T, T), or None when nothing is masked."""
    if window_size is None and lengths is None:
        return None
    mask = band_mask(length, window_size, device)[None, None]  # (1, 1, T, T)
    if lengths is not None:
        key_valid = lengths_to_mask(lengths, length)  # (B, T)
        mask = mask & key_valid[:, None, None, :]
        eye = torch.eye(length, dtype=torch.bool, device=device)
        mask = mask | eye  # padded queries keep themselves: no fully-masked row
    return mask


def _sdpa_dense(q, k, v, window_size, lengths, dropout_p, scale):
    # q, k, v: (B, H, T, D)
    mask = _dense_mask(q.size(2), window_size, lengths, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)


def _sdpa_blocked(q, k, v, window_size, lengths, dropout_p, scale, block_size):
    # q, k, v: (B, H, T, D). The blocks become batch items: SDPA's fused CUDA kernels take only
    # 4-D (batch, heads, length, dim) inputs and send anything else to the math kernel, which
    # materialises fp32 scores.
    B, H, T, D = q.shape
    half = window_size // 2
    n_blocks = math.ceil(T / block_size)
    padded = n_blocks * block_size
    span = block_size + 2 * half
    q = F.pad(q, (0, 0, 0, padded - T))
    k = F.pad(k, (0, 0, half, padded - T + half))  # (B, H, padded + 2*half, D)
    v = F.pad(v, (0, 0, half, padded - T + half))
    # (B, H, n_blocks, len, D) -> (B * n_blocks, H, len, D)
    qb = q.view(B, H, n_blocks, block_size, D).transpose(1, 2).reshape(B * n_blocks, H, block_size, D)
    # unfold gives (B, H, n_blocks, D, span); move the key axis before the feature axis
    kb, vb = (
        t.unfold(2, span, block_size).permute(0, 2, 1, 4, 3).reshape(B * n_blocks, H, span, D) for t in (k, v)
    )

    device = q.device
    r = torch.arange(block_size, device=device)[:, None]  # query offset inside the block
    c = torch.arange(span, device=device)[None, :]  # key offset inside the key span
    # query position i = b*block + r, key position j = b*block + c - half
    # |i - j| <= half  <=>  0 <= c - r <= 2*half  (the same for every block)
    rel = c - r
    band = (rel >= 0) & (rel <= 2 * half)  # (block, span)
    diag = rel == half  # key j == query i
    key_pos = (
        torch.arange(n_blocks, device=device)[:, None] * block_size
        + torch.arange(span, device=device)[None, :]
        - half
    )  # (n_blocks, span)
    limit = lengths if lengths is not None else torch.full((B,), T, device=device)
    key_valid = (key_pos[None] >= 0) & (key_pos[None] < limit[:, None, None])  # (B, n_blocks, span)
    mask = band[None, None] & key_valid[:, :, None, :]  # (B, n_blocks, block, span)
    mask = (mask | diag[None, None]).reshape(B * n_blocks, 1, block_size, span)
    out = F.scaled_dot_product_attention(
        qb, kb, vb, attn_mask=mask, dropout_p=dropout_p, scale=scale
    )  # (B * n_blocks, H, block, D)
    out = out.view(B, n_blocks, H, block_size, D).transpose(1, 2)
    return out.reshape(B, H, padded, D)[:, :, :T]


def _flash(q, k, v, window_size, lengths, dropout_p, scale):
    # q, k, v: (B, T, H, D), the flash layout
    flash_attn_func, flash_attn_varlen_func = flash_attention_functions()
    half = -1 if window_size is None else window_size // 2
    B, T, H, D = q.shape
    if lengths is None or bool((lengths == T).all()):
        return flash_attn_func(
            q, k, v, dropout_p=dropout_p, softmax_scale=scale, causal=False, window_size=(half, half)
        )
    valid = lengths_to_mask(lengths, T).reshape(-1)
    index = valid.nonzero(as_tuple=True)[0]
    cu_seqlens = F.pad(lengths.to(torch.int32).cumsum(0, dtype=torch.int32), (1, 0))
    max_len = int(lengths.max())
    q_u, k_u, v_u = (t.reshape(B * T, H, D).index_select(0, index) for t in (q, k, v))
    out_u = flash_attn_varlen_func(
        q_u,
        k_u,
        v_u,
        cu_seqlens,
        cu_seqlens,
        max_len,
        max_len,
        dropout_p=dropout_p,
        softmax_scale=scale,
        causal=False,
        window_size=(half, half),
    )
    out = q.new_zeros(B * T, H, D).index_copy(0, index, out_u.to(q.dtype))
    return out.view(B, T, H, D)


def resolve_backend(backend: str, q: Tensor, length: int, window_size: int | None, block_size: int) -> str:
    """Pick the concrete backend for one call (see module docstring)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    if backend == "flash":
        if not flash_attention_usable(q):
            raise RuntimeError(
                "attention backend 'flash' needs the flash-attn package, a CUDA device and "
                "fp16/bf16 activations (enable bf16 autocast); use 'auto' to fall back to SDPA"
            )
        return "flash"
    if backend == "auto":
        if flash_attention_usable(q):
            return "flash"
        backend = "sdpa"
    if backend == "sdpa":
        if window_size is not None and length > 2 * (block_size + window_size):
            return "sdpa_blocked"
        return "sdpa_dense"
    if backend == "sdpa_blocked" and window_size is None:
        return "sdpa_dense"  # global attention has no band to exploit
    return backend


def default_block_size(window_size: int | None) -> int:
    """Query block for the blocked backend: a multiple of 64 at least as large as the window."""
    if window_size is None:
        return 256
    return max(64, 64 * math.ceil(window_size / 64))


def local_window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window_size: int | None,
    lengths: Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    backend: str = "auto",
    block_size: int | None = None,
) -> Tensor:
    """Banded bidirectional attention.

    Args:
        q, k, v: (B, T, H, D) (the flash layout).
        window_size: odd window (query i sees keys with |i - j| <= window_size // 2), or None.
        lengths: (B,) valid lengths (right padding), or None when nothing is padded.
        dropout_p: attention-probability dropout; pass 0 at inference.
        scale: softmax scale (default D ** -0.5).
        backend: "auto", "flash", "sdpa" (dense or blocked by length), "sdpa_dense", "sdpa_blocked".
        block_size: query block of the blocked backend (default: see ``default_block_size``).

    Returns:
        (B, T, H, D).
    """
    if window_size is not None and window_size % 2 != 1:
        raise ValueError(f"window_size must be odd, got {window_size}")
    T = q.size(1)
    if scale is None:
        scale = q.size(-1) ** -0.5
    if lengths is not None:
        lengths = lengths.to(device=q.device, dtype=torch.long)
        if bool((lengths >= T).all()):
            lengths = None
    block = block_size or default_block_size(window_size)
    chosen = resolve_backend(backend, q, T, window_size, block)
    if chosen == "flash":
        return _flash(q, k, v, window_size, lengths, dropout_p, scale)
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
    if chosen == "sdpa_blocked":
        out = _sdpa_blocked(qh, kh, vh, window_size, lengths, dropout_p, scale, block)
    else:
        out = _sdpa_dense(qh, kh, vh, window_size, lengths, dropout_p, scale)
    return out.transpose(1, 2)
