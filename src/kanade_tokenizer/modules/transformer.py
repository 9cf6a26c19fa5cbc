"""Llama-style bidirectional Transformer with RoPE, local-window attention and AdaLN-Zero.

One class serves Kanade's local encoder, feature decoder, mel prenet and mel decoder. Parameter
names follow the released checkpoints: ``layers.{i}.attention.{wq,wk,wv,wo}``,
``layers.{i}.feed_forward.{w1,w2,w3}``, ``layers.{i}.{attention_norm,ffn_norm}``, ``norm``,
``output_proj`` (and ``input_proj`` when ``input_dim`` is set).

Block (pre-norm): ``h = x + g_a * Attn(Norm_a(x))``; ``out = h + g_f * FFN(Norm_f(h))``; the gates
are 1 without AdaLN-Zero. Dropout exists only on attention probabilities and only in training
mode (the original's SDPA fallback also applied it in eval mode; that is fixed here).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .adaln_zero import AdaLNZero
from .local_attention import BACKENDS, local_window_attention


def rope_frequencies(seq_len: int, head_dim: int, theta: float, device=None) -> tuple[Tensor, Tensor]:
    """cos/sin tables (T, head_dim // 2) in fp32 for positions 0..T-1 (Meta Llama formula)."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim)
    )
    t = torch.arange(seq_len, device=device, dtype=torch.float32)
    angles = torch.outer(t, inv_freq)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved pairs (2k, 2k+1) of the last dim (GPT-J / Meta layout).

    x: (B, T, H, D); cos, sin: (T, D // 2). Computed in fp32, returned in x's dtype.
    """
    B, T, H, D = x.shape
    xf = x.float().reshape(B, T, H, D // 2, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    c = cos[None, :, None, :]
    s = sin[None, :, None, :]
    out = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1)
    return out.reshape(B, T, H, D).type_as(x)


class Attention(nn.Module):
    def __init__(
        self,
        dim: int,
        n_heads: int,
        qkv_bias: bool = False,
        proj_bias: bool = False,
        window_size: int | None = None,
        dropout: float = 0.1,
        use_flash_attention: bool = False,
    ):
        super().__init__()
        if dim % n_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by n_heads {n_heads}")
        if window_size is not None and window_size % 2 != 1:
            raise ValueError(f"window_size must be odd, got {window_size}")
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        self.window_size = window_size
        self.dropout = dropout
        self.scale = self.head_dim**-0.5
        # "auto" tries flash-attn first; configs with use_flash_attention: false stay on SDPA
        self.backend = "auto" if use_flash_attention else "sdpa"
        self.wq = nn.Linear(dim, n_heads * self.head_dim, bias=qkv_bias)
        self.wk = nn.Linear(dim, n_heads * self.head_dim, bias=qkv_bias)
        self.wv = nn.Linear(dim, n_heads * self.head_dim, bias=qkv_bias)
        self.wo = nn.Linear(n_heads * self.head_dim, dim, bias=proj_bias)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, lengths: Tensor | None) -> Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)
        k = self.wk(x).view(B, T, self.n_heads, self.head_dim)
        v = self.wv(x).view(B, T, self.n_heads, self.head_dim)
        if rope is not None:
            q = apply_rope(q, *rope)
            k = apply_rope(k, *rope)
        out = local_window_attention(
            q,
            k,
            v,
            self.window_size,
            lengths=lengths,
            dropout_p=self.dropout if self.training else 0.0,
            scale=self.scale,
            backend=self.backend,
        )
        return self.wo(out.reshape(B, T, -1))


class FeedForward(nn.Module):
    """SwiGLU without biases: ``w2(SiLU(w1 x) * w3 x)``."""

    def __init__(self, dim: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None):
        super().__init__()
        hidden = int(2 * (4 * dim) / 3)
        if ffn_dim_multiplier is not None:
            hidden = int(ffn_dim_multiplier * hidden)
        hidden = multiple_of * ((hidden + multiple_of - 1) // multiple_of)
        self.hidden_dim = hidden
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        n_heads: int,
        qkv_bias: bool,
        proj_bias: bool,
        window_size: int | None,
        multiple_of: int,
        ffn_dim_multiplier: float | None,
        dropout: float,
        norm_eps: float,
        adanorm_condition_dim: int | None,
        use_adaln_zero: bool,
        use_flash_attention: bool,
    ):
        super().__init__()
        self.attention = Attention(
            dim, n_heads, qkv_bias, proj_bias, window_size, dropout, use_flash_attention
        )
        self.feed_forward = FeedForward(dim, multiple_of, ffn_dim_multiplier)
        self.use_adaln = use_adaln_zero and adanorm_condition_dim is not None
        if self.use_adaln:
            self.attention_norm = AdaLNZero(dim, adanorm_condition_dim, eps=norm_eps, return_gate=True)
            self.ffn_norm = AdaLNZero(dim, adanorm_condition_dim, eps=norm_eps, return_gate=True)
        else:
            self.attention_norm = nn.LayerNorm(dim, eps=norm_eps)
            self.ffn_norm = nn.LayerNorm(dim, eps=norm_eps)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None,
        lengths: Tensor | None,
        condition: Tensor | None,
    ) -> Tensor:
        if self.use_adaln:
            normed, gate = self.attention_norm(x, condition)
            h = x + gate * self.attention(normed, rope, lengths)
            normed, gate = self.ffn_norm(h, condition)
            return h + gate * self.feed_forward(normed)
        h = x + self.attention(self.attention_norm(x), rope, lengths)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """Stack of pre-norm blocks: input_proj -> blocks -> norm -> output_proj.

    Constructor arguments and defaults follow the released configs' ``init_args``.
    ``max_seq_len`` is accepted for config compatibility; RoPE tables are computed for the actual
    length of each call, so there is no length limit.
    """

    def __init__(
        self,
        dim: int = 4096,
        n_layers: int = 32,
        n_heads: int = 32,
        qkv_bias: bool = False,
        proj_bias: bool = False,
        window_size: int | None = None,
        multiple_of: int = 256,
        ffn_dim_multiplier: float | None = None,
        dropout: float = 0.1,
        norm_eps: float = 1e-5,
        use_rope: bool = True,
        rope_theta: float = 500000.0,
        max_seq_len: int = 2048,
        input_dim: int | None = None,
        output_dim: int | None = None,
        adanorm_condition_dim: int | None = None,
        use_flash_attention: bool = False,
        use_adaln_zero: bool = False,
        use_xavier_init: bool = True,
        causal: bool = False,
    ):
        super().__init__()
        if causal:
            raise ValueError(
                "causal: true is unsupported: every Kanade transformer attends both ways within its window"
            )
        self.dim = dim
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        self.window_size = window_size
        self.use_rope = use_rope
        self.rope_theta = rope_theta
        self.max_seq_len = max_seq_len
        self.input_dim = input_dim or dim
        self.output_dim = output_dim or dim
        self.use_adaln = use_adaln_zero and adanorm_condition_dim is not None

        self.input_proj = nn.Linear(input_dim, dim) if input_dim is not None else nn.Identity()
        self.layers = nn.ModuleList(
            TransformerBlock(
                dim,
                n_heads,
                qkv_bias,
                proj_bias,
                window_size,
                multiple_of,
                ffn_dim_multiplier,
                dropout,
                norm_eps,
                adanorm_condition_dim,
                use_adaln_zero,
                use_flash_attention,
            )
            for _ in range(n_layers)
        )
        if self.use_adaln:
            self.norm = AdaLNZero(dim, adanorm_condition_dim, eps=norm_eps, return_gate=False)
        else:
            self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.output_proj = nn.Linear(dim, output_dim) if output_dim is not None else nn.Identity()

        if use_xavier_init:
            self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, AdaLNZero):
                module.reset_parameters()

    def set_attention_backend(self, backend: str) -> None:
        """Force an attention backend for every layer (see ``local_attention.BACKENDS``)."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
        for layer in self.layers:
            layer.attention.backend = backend

    def forward(
        self,
        x: Tensor,
        lengths: Tensor | None = None,
        condition: Tensor | None = None,
    ) -> Tensor:
        """x: (B, T, input_dim); lengths: (B,) valid lengths or None; condition: (B, 1, C) for
        AdaLN-Zero. Returns (B, T, output_dim); positions past ``lengths`` hold garbage."""
        if self.use_adaln and condition is None:
            raise ValueError("this Transformer uses AdaLN-Zero and needs a condition")
        x = self.input_proj(x)
        rope = None
        if self.use_rope:
            rope = rope_frequencies(x.size(1), self.head_dim, self.rope_theta, device=x.device)
        for layer in self.layers:
            x = layer(x, rope, lengths, condition)
        x = self.norm(x, condition) if self.use_adaln else self.norm(x)
        return self.output_proj(x)
