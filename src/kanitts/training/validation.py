"""The validation pass: the loss, and per codebook the audio tokens' loss and accuracy.

Not through ``compute_metrics``: the Trainer would first gather the logits (or at least a
prediction per position) of the whole validation set. Here each batch is reduced on the spot
to a few sums per token group, with the LM head run chunk by chunk on the hidden states as in
training (:mod:`kanitts.training.loss`), so evaluating costs one batch's memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kanitts.tokens import TokenLayout
from kanitts.training.batching import IGNORE_INDEX
from kanitts.training.loss import default_chunk_tokens, final_hidden_states

# Columns of the per-group sums: summed loss, tokens predicted right, tokens.
LOSS, CORRECT, COUNT = range(3)


def batch_scores(
    model: nn.Module,
    inputs: dict,
    layout: TokenLayout,
    chunk_tokens: int | None = None,
    unwrapped: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss over the batch's targets, sums) for one batch, without gradients.

    ``sums`` has one row per codebook and a last row for every other target (text and special
    tokens), with the columns LOSS, CORRECT, COUNT. Position t predicts label t+1, labels of -100
    are no target, as in the training loss.
    """
    hidden, head = final_hidden_states(model, inputs, unwrapped)
    targets = F.pad(inputs["labels"], (0, 1), value=IGNORE_INDEX)[..., 1:]
    keep = targets != IGNORE_INDEX
    hidden, targets = hidden[keep], targets[keep]
    if chunk_tokens is None:
        chunk_tokens = default_chunk_tokens(getattr(head, "out_features", None), hidden.device)
    losses = torch.empty(targets.shape[0], dtype=torch.float32, device=hidden.device)
    correct = torch.empty(targets.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, targets.shape[0], chunk_tokens):
        chunk = slice(start, start + chunk_tokens)
        logits = head(hidden[chunk]).float()
        losses[chunk] = F.cross_entropy(logits, targets[chunk], reduction="none")
        correct[chunk] = (logits.argmax(dim=-1) == targets[chunk]).float()
    audio = (targets >= layout.audio_tokens_start) & (targets < layout.audio_tokens_end)
    group = torch.where(
        audio, (targets - layout.audio_tokens_start) // layout.codebook_size, layout.num_codebooks
    )
    sums = torch.zeros(layout.num_codebooks + 1, 3, dtype=torch.float32, device=hidden.device)
    sums[:, LOSS].index_add_(0, group, losses)
    sums[:, CORRECT].index_add_(0, group, correct)
    sums[:, COUNT].index_add_(0, group, torch.ones_like(losses))
    return losses.sum() / max(targets.shape[0], 1), sums


def score_metrics(sums: torch.Tensor, prefix: str) -> dict[str, float]:
    """The sums of a whole evaluation as metrics: audio loss / accuracy overall and per codebook.

    Token-weighted (every audio token counts once), unlike ``eval_loss``, which is the
    Trainer's mean of the batches' losses.
    """
    sums = sums.double().cpu()
    metrics: dict[str, float] = {}
    audio = sums[:-1].sum(0)
    if audio[COUNT] > 0:
        metrics[f"{prefix}_audio_loss"] = float(audio[LOSS] / audio[COUNT])
        metrics[f"{prefix}_audio_accuracy"] = float(audio[CORRECT] / audio[COUNT])
    for index, row in enumerate(sums[:-1]):
        if row[COUNT] > 0:
            metrics[f"{prefix}_codebook{index + 1}_loss"] = float(row[LOSS] / row[COUNT])
            metrics[f"{prefix}_codebook{index + 1}_accuracy"] = float(row[CORRECT] / row[COUNT])
    return metrics
