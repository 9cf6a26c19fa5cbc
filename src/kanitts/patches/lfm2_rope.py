"""A learnable RoPE frequency scale per attention layer of transformers' LFM2 (KaniTTS-2).

KaniTTS-2 multiplies the rotary frequencies of each attention layer by its own trained factor
``alpha`` (kanitts-reference §2.6). Stock LFM2 computes one ``(cos, sin)`` pair in
``Lfm2Model.rotary_emb`` and hands the same pair to every layer, so the scaled pair has to be
made per layer: :func:`install_rope_scales` puts a forward pre-hook on each scaled attention
block that replaces the ``position_embeddings`` keyword with the pair for its own factor. The
model's modules stay transformers' own; nothing of their forward is copied.

Relies on (checked before anything changes, tested with transformers 5.24.0):

- ``model.rotary_emb`` with an ``inv_freq`` tensor, a float ``attention_scaling`` and
  ``rope_type == "default"`` (the plain RoPE that KaniTTS-2 scales), computing
  ``cos/sin(position * inv_freq)`` over the two halves: compared with our pair at patch time;
- ``model.layers[i].self_attn`` called with the keywords ``position_embeddings`` and
  ``position_ids`` (found by name in the call; a missing one raises instead of scaling nothing).

:func:`named_arguments` finds, by name, what ``forward`` and ``prepare_inputs_for_generation``
were called with, for a model that computes its own position ids.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
from torch import nn

from kanitts.patches import unsupported

TESTED = ("5.24.0",)


def _unsupported(what_changed: str):
    return unsupported("transformers", what_changed, TESTED)


def rotary_pair(rotary: nn.Module, positions: torch.Tensor, alpha: torch.Tensor | float, dtype: torch.dtype):
    """``(cos, sin)`` of plain RoPE with the frequencies times ``alpha``, in float32 then ``dtype``.

    Positions may be fractional (KaniTTS-2's ``audio_step`` below 1); ``alpha`` may carry a
    gradient, which reaches it through cos and sin.
    """
    inv_freq = rotary.inv_freq.to(device=positions.device, dtype=torch.float32)
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.to(device=positions.device, dtype=torch.float32)
    freqs = positions[..., None].to(torch.float32) * (inv_freq * alpha)
    angles = torch.cat((freqs, freqs), dim=-1)
    scaling = rotary.attention_scaling
    return (angles.cos() * scaling).to(dtype), (angles.sin() * scaling).to(dtype)


def _check_rotary(model: nn.Module) -> nn.Module:
    rotary = getattr(model, "rotary_emb", None)
    if rotary is None:
        raise _unsupported(f"{type(model).__name__} has no rotary_emb module")
    inv_freq = getattr(rotary, "inv_freq", None)
    if not isinstance(inv_freq, torch.Tensor) or not isinstance(getattr(rotary, "attention_scaling", None), float):
        raise _unsupported(f"{type(rotary).__name__} has no inv_freq tensor or float attention_scaling")
    if getattr(rotary, "rope_type", None) != "default":
        raise _unsupported(
            f"a learnable RoPE scale needs plain RoPE; this model's rope_type is {getattr(rotary, 'rope_type', None)!r}"
        )
    if inv_freq.device.type != "meta":
        positions = torch.arange(7, dtype=torch.float32, device=inv_freq.device)[None]
        probe = torch.zeros(1, dtype=torch.float32, device=inv_freq.device)
        stock = rotary(probe, positions)
        ours = rotary_pair(rotary, positions, 1.0, torch.float32)
        if any(a.shape != b.shape or not torch.allclose(a.float(), b, atol=1e-5) for a, b in zip(stock, ours)):
            raise _unsupported(f"{type(rotary).__name__} no longer computes plain cos/sin(position * inv_freq)")
    return rotary


def _scaled_position_embeddings(rotary: nn.Module, alpha: Callable[[], torch.Tensor], module, args, kwargs):
    pair, positions = kwargs.get("position_embeddings"), kwargs.get("position_ids")
    if pair is None or positions is None:
        raise _unsupported(
            f"{type(module).__name__} is no longer called with the keywords position_embeddings and position_ids"
        )
    kwargs["position_embeddings"] = rotary_pair(rotary, positions, alpha(), pair[0].dtype)
    return args, kwargs


def install_rope_scales(model: nn.Module, scales: Mapping[int, Callable[[], torch.Tensor]]) -> None:
    """Scales the rotary frequencies of layer ``i``'s attention by ``scales[i]()`` at every forward.

    ``model`` is the decoder (``Lfm2Model``); each scale is called per forward so a trained
    parameter is read as it is now. Raises :class:`kanitts.patches.UnsupportedVersion` on a
    transformers whose LFM2 does not look as described in the module docstring.
    """
    rotary = _check_rotary(model)
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise _unsupported(f"{type(model).__name__} has no layers list")
    blocks = {}
    for index in scales:
        block = getattr(layers[index], "self_attn", None)
        if block is None or "position_embeddings" not in inspect.signature(block.forward).parameters:
            raise _unsupported(f"layer {index} has no self_attn taking position_embeddings")
        blocks[index] = block
    for index, block in blocks.items():
        if "_kanitts_rope_hook" in vars(block):
            block._kanitts_rope_hook.remove()
        hook = partial(_scaled_position_embeddings, rotary, scales[index])
        block._kanitts_rope_hook = block.register_forward_pre_hook(hook, with_kwargs=True)


def named_arguments(function: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
    """What a call of ``function(*args, **kwargs)`` receives, by parameter name.

    Keyword arguments collected by its ``**kwargs`` are merged in, so ``attention_mask`` or
    ``position_ids`` are found wherever the installed signature puts them.
    """
    signature = inspect.signature(function)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        name = getattr(function, "__qualname__", function)
        raise _unsupported(f"{name} no longer accepts these arguments ({exc})") from None
    named = dict(bound.arguments)
    for name, parameter in signature.parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            named.update(named.pop(name, {}))
        elif parameter.kind is inspect.Parameter.VAR_POSITIONAL and named.get(name):
            raise _unsupported(f"{getattr(function, '__qualname__', function)} takes extra positional arguments")
    return named


def adopt_signature(function: Callable, parent: Callable, keyword: str | None = None) -> Callable:
    """Gives ``function`` (an override taking ``*args, **kwargs``) the signature of ``parent``,
    read from the installed transformers, plus a keyword-only ``keyword`` (default None).

    transformers' ``generate`` accepts a keyword only when a parameter of that literal name is
    in ``forward``'s signature, so an override that passes its arguments through must show the
    parent's names to be callable from ``generate`` at all.
    """
    signature = inspect.signature(parent)
    parameters = list(signature.parameters.values())
    if keyword is not None and keyword not in signature.parameters:
        extra = inspect.Parameter(keyword, inspect.Parameter.KEYWORD_ONLY, default=None)
        at = next((i for i, p in enumerate(parameters) if p.kind is inspect.Parameter.VAR_KEYWORD), len(parameters))
        parameters.insert(at, extra)
    function.__signature__ = signature.replace(parameters=parameters)
    return function
