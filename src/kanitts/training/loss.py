"""Causal-LM cross-entropy computed chunk by chunk, so the (tokens x vocab) logits never exist.

A KaniTTS vocabulary is large (80,538 ids on LFM2-350M) and packed rows are long: a 16k-token
pack would need more than 5 GB of fp32 logits, plus as much again for their gradient, and on a
CPU a 4096-token pack's logits already fall out of every cache. The loss here runs the LM head
on a few thousand tokens at a time, and only on the tokens that have a target:

- with a plain ``nn.Linear`` head, :class:`_LinearCrossEntropySum` computes each chunk's loss and,
  in the same pass, its gradients (``softmax - one_hot`` times the head weight for the hidden
  states; the transpose product for a trainable head weight), so nothing of the chunk's logits is
  kept for backward;
- any other head (LoRA on ``lm_head``, a ``modules_to_save`` copy) runs under per-chunk
  activation checkpointing: one chunk's logits at a time, recomputed in backward.

The result is transformers' causal-LM loss: position t is trained to predict label t+1, labels of
-100 are ignored, the sum is divided by ``num_items_in_batch`` when the Trainer counts tokens
across gradient accumulation, else averaged over the batch's targets; the softmax is fp32.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from kanitts.training.batching import IGNORE_INDEX

# Size of one chunk's fp32 logits. On a CPU a chunk that stays in the last-level cache is about
# 1.2x faster than a larger one (measured: 256 tokens x 16,522 ids, 16 MiB, against 1024 or more);
# a GPU wants large matmuls, and 256 MiB (about 800 tokens at 80k ids) is small next to a pack's
# activations.
CPU_LOGITS_CHUNK_BYTES = 16 * 2**20
ACCELERATOR_LOGITS_CHUNK_BYTES = 256 * 2**20
# For a head whose vocabulary size cannot be read.
FALLBACK_CHUNK_TOKENS = 1024


def default_chunk_tokens(vocab_size: int | None, device: torch.device) -> int:
    """Tokens per chunk so that one chunk's fp32 logits take about the budget of ``device``."""
    if not vocab_size:
        return FALLBACK_CHUNK_TOKENS
    budget = CPU_LOGITS_CHUNK_BYTES if device.type == "cpu" else ACCELERATOR_LOGITS_CHUNK_BYTES
    return max(64, budget // (4 * vocab_size) // 64 * 64)


class _LinearCrossEntropySum(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T + bias`` against ``targets``, chunk by chunk.

    The gradients are computed in forward, while each chunk's logits are at hand, and only they
    (the size of the inputs, not of the logits) are kept for backward.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_tokens):
        want_hidden, want_weight, want_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if want_weight else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if want_bias else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_tokens):
            chunk = slice(start, start + chunk_tokens)
            h, t = hidden[chunk], targets[chunk]
            logits = F.linear(h, weight, bias).float()
            target_logits = logits.gather(1, t[:, None]).squeeze(1)
            # log-sum-exp with one exp pass whose result is reused as the softmax
            peak = logits.amax(dim=-1, keepdim=True)
            exp = logits.sub_(peak).exp_()
            norm = exp.sum(dim=-1, keepdim=True)
            total += (norm.log() + peak - target_logits[:, None]).sum()
            if not (want_hidden or want_weight or want_bias):
                continue
            # d(loss)/d(logits) = softmax - one_hot(target), built in place over the logits
            grad_logits = exp.div_(norm)
            grad_logits[torch.arange(t.shape[0], device=t.device), t] -= 1.0
            if want_bias:
                grad_bias += grad_logits.sum(0)
            grad_logits = grad_logits.to(weight.dtype)
            if want_hidden:
                torch.matmul(grad_logits, weight, out=grad_hidden[chunk])
            if want_weight:
                grad_weight += (grad_logits.T @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.weight_dtype = weight.dtype
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        want_hidden, want_weight, want_bias = ctx.needs_input_grad[:3]
        # the scale stays fp32 (1 / tokens is not a bf16 number: rounding it first is up to 0.4 % off)
        return (
            (grad_hidden.float() * grad_total).to(grad_hidden.dtype) if want_hidden else None,
            (grad_weight * grad_total).to(ctx.weight_dtype) if want_weight else None,
            (grad_bias * grad_total).to(ctx.bias_dtype) if want_bias else None,
            None,
            None,
        )


def _head_loss_sum(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def head_cross_entropy_sum(
    hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module, chunk_tokens: int | None = None
) -> torch.Tensor:
    """Summed cross-entropy of ``head(hidden)`` (hidden: (tokens, hidden_size)) against ``targets``.

    ``chunk_tokens`` defaults to :func:`default_chunk_tokens` for the head's vocabulary and device.
    """
    if chunk_tokens is None:
        chunk_tokens = default_chunk_tokens(getattr(head, "out_features", None), hidden.device)
    if type(head) is nn.Linear:
        return _LinearCrossEntropySum.apply(hidden, head.weight, head.bias, targets, chunk_tokens)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk_tokens):
        chunk = slice(start, start + chunk_tokens)
        total = total + checkpoint(_head_loss_sum, head, hidden[chunk], targets[chunk], use_reentrant=False)
    return total


def causal_lm_loss(
    hidden_states: torch.Tensor,
    labels: torch.Tensor,
    head: nn.Module,
    num_items_in_batch: torch.Tensor | int | None = None,
    chunk_tokens: int | None = None,
) -> torch.Tensor:
    """transformers' causal-LM loss from the final hidden states (batch, tokens, hidden) and the head.

    Only positions whose shifted label is not -100 reach the head, so a prompt masked by
    ``loss_on: audio`` or padding costs no head compute at all.
    """
    targets = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    keep = targets != IGNORE_INDEX
    total = head_cross_entropy_sum(hidden_states[keep], targets[keep], head, chunk_tokens)
    if num_items_in_batch is None:
        return total / keep.sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The decoder body (embeddings, layers, final norm) and the LM head of a causal LM.

    Looks through a PEFT wrapper. A model without both is refused clearly: the chunked loss
    needs the hidden states before the head.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if decoder is None or head is None or decoder is base:
        raise ValueError(
            f"chunked_loss needs a causal LM with a decoder body and an LM head; {type(base).__name__} "
            "exposes no get_decoder()/get_output_embeddings(); set `training.chunked_loss: false`"
        )
    return decoder, head


@contextmanager
def captured_output(module: nn.Module) -> Iterator[list]:
    """Collects what ``module`` returns while the block runs (a forward hook, removed after)."""
    outputs: list = []
    handle = module.register_forward_hook(lambda _module, _args, output: outputs.append(output))
    try:
        yield outputs
    finally:
        handle.remove()


def model_loss(
    model: nn.Module,
    inputs: dict,
    num_items_in_batch: torch.Tensor | int | None = None,
    chunk_tokens: int | None = None,
    unwrapped: nn.Module | None = None,
) -> torch.Tensor:
    """The loss ``model(**inputs)`` would return for ``inputs["labels"]``, without its logits.

    The forward still goes through ``model`` itself (so a DistributedDataParallel wrapper sees
    it), asked for logits at no position; the decoder's output is taken from a hook on the body.
    ``unwrapped`` is ``model`` without distributed wrappers, where the body and head are found.
    """
    hidden_states, head = final_hidden_states(model, inputs, unwrapped)
    return causal_lm_loss(hidden_states, inputs["labels"], head, num_items_in_batch, chunk_tokens)


def final_hidden_states(
    model: nn.Module, inputs: dict, unwrapped: nn.Module | None = None
) -> tuple[torch.Tensor, nn.Module]:
    """The decoder body's output for ``inputs`` (labels aside) and the LM head, no logits computed.

    The forward goes through ``model`` itself, asked for logits at no position; the body's output
    is taken from a hook. ``unwrapped`` is ``model`` without distributed wrappers.
    """
    decoder, head = decoder_and_head(unwrapped if unwrapped is not None else model)
    forward_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    no_positions = torch.empty(0, dtype=torch.long, device=inputs["input_ids"].device)
    with captured_output(decoder) as outputs:
        model(**forward_inputs, logits_to_keep=no_positions)
    if len(outputs) != 1:
        raise RuntimeError(f"the decoder body ran {len(outputs)} times in one forward; expected once")
    output = outputs[0]
    return (output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]), head
