"""AdaLN-Zero conditioning (DiT): a LayerNorm whose shift/scale(/gate) come from a condition."""

from __future__ import annotations

from torch import Tensor, nn


class AdaLNZero(nn.Module):
    """LayerNorm without affine parameters, modulated by a condition vector.

    ``condition_proj`` is ``SiLU -> Linear(condition_dim, k * dim)`` with k = 3 (shift, scale,
    gate) when ``return_gate`` is true, else k = 2 (shift, scale). The Linear starts at zero, so
    the module starts as a plain LayerNorm with a zero gate. Output: ``LN(x) * (1 + scale) +
    shift`` and, with ``return_gate``, the gate that multiplies the residual branch.
    """

    def __init__(self, dim: int, condition_dim: int, eps: float = 1e-5, return_gate: bool = True):
        super().__init__()
        self.dim = dim
        self.return_gate = return_gate
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        n_chunks = 3 if return_gate else 2
        self.condition_proj = nn.Sequential(nn.SiLU(), nn.Linear(condition_dim, n_chunks * dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.condition_proj[1].weight)
        nn.init.zeros_(self.condition_proj[1].bias)

    def forward(self, x: Tensor, condition: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """x: (B, T, dim); condition: (B, 1, condition_dim) (broadcast over time)."""
        params = self.condition_proj(condition)
        if self.return_gate:
            shift, scale, gate = params.chunk(3, dim=-1)
        else:
            shift, scale = params.chunk(2, dim=-1)
        out = self.norm(x) * (1 + scale) + shift
        if self.return_gate:
            return out, gate
        return out
