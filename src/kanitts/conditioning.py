"""Speaker conditioning: a voice embedding read by the language model through one input slot.

KaniTTS-2's layout (kanitts-reference §2.6): a bias-free ``Linear(embedding_dim -> hidden)``
projects the speaker embedding, and the result is the input embedding of one extra position
right after ``start_of_human``, whose label is -100 (nothing is predicted from the token
before it, and the slot itself is never a target). Here the embedding is Kanade's 128-d global
embedding of a clip, so a model trained on it speaks in the voice of any reference clip.

How the slot is built, so that padding, packing and generation need nothing special:

- **The slot is a token.** Sequences carry a placeholder id (:attr:`TokenLayout.speaker_slot`)
  at the slot, inserted by the collators (:func:`insert_slot`). Positions, attention masks,
  ``cu_seq_lens`` and generation's left padding then treat it as any other token; a pack holds
  each sequence's slot at its own place, with positions restarting per sequence as always.
- **A hook replaces its embedding.** :class:`SpeakerConditioning` hooks the model's input
  embedding module: wherever the placeholder id appears, the output row becomes the projected
  embedding. The k-th slot of a batch (row-major order, which is the order of the sequences in
  a padded batch and in a pack) takes the k-th embedding of :meth:`SpeakerConditioning.conditioned`.
  A forward without slots (generation steps after the prompt) is untouched.
- **The projection is a module of the model** (``speaker_emb_projection``, KaniTTS-2's name), so
  LoRA trains it as a ``modules_to_save`` module: in the optimizer, in resumable checkpoints,
  merged with the rest. Saved beside the merged weights as ``speaker_projection.safetensors``
  (:meth:`save`), never inside ``model.safetensors``, so the checkpoint still loads as a plain LFM2.

Per-speaker mean embeddings (:func:`speaker_means`) are saved with every checkpoint trained on
data that has embeddings (``speaker_embeddings.safetensors``): a model speaks in a training
speaker's voice with ``--speaker`` and no reference clip, and the Kanade decoder gets that voice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kanitts.errors import UserError

PROJECTION = "speaker_emb_projection"
PROJECTION_FILE = "speaker_projection.safetensors"
SPEAKERS_FILE = "speaker_embeddings.safetensors"
#: the key of the mean over all training clips in SPEAKERS_FILE (speakers are "speaker:<name>")
MEAN_KEY = "mean"
IGNORE_INDEX = -100


def insert_slot(ids: Sequence[int], labels: Sequence[int], start_of_human: int, slot: int) -> tuple[list, list]:
    """One sequence with the slot after its first token (start_of_human), the slot's label -100."""
    ids, labels = list(ids), list(labels)
    if not ids or ids[0] != start_of_human:
        raise ValueError(
            f"a speaker-conditioned training sequence must start with start_of_human ({start_of_human}), "
            f"this one starts with {ids[:1]}; rebuild the training data with this model_config.yaml"
        )
    return [ids[0], slot, *ids[1:]], [labels[0], IGNORE_INDEX, *labels[1:]]


def example_embedding(example: dict[str, Any]) -> list[float]:
    """The speaker embedding of one training example, or a ValueError saying where it should come from."""
    embedding = example.get("speaker_embedding")
    if embedding is None or len(embedding) == 0:
        raise ValueError(
            "training.speaker_conditioning: embedding needs a global embedding per clip (the "
            "speaker_embedding column of Kanade training data); this sequence has none: prepare the "
            "data with codec.kind: kanade"
        )
    return list(embedding)


class SpeakerConditioning:
    """The speaker slot of one causal LM: its projection and the hook that fills the slot."""

    def __init__(self, model: nn.Module, slot: int):
        self.model = model
        self.slot = int(slot)
        self._current: torch.Tensor | None = None
        embeddings = model.get_input_embeddings()
        if self.slot >= embeddings.num_embeddings:
            raise UserError(
                f"the speaker slot id {self.slot} (special_tokens.speaker_embedding, default: pad_token + 1) "
                f"is outside the model's {embeddings.num_embeddings} token embeddings"
            )
        self._handle = embeddings.register_forward_hook(self._fill_slots)
        model._kanitts_speaker_conditioning = self  # found again after LoRA merges (see :meth:`of`)

    @staticmethod
    def of(model: nn.Module) -> SpeakerConditioning | None:
        """The conditioning attached to ``model`` (also once LoRA is merged into it), or None."""
        return getattr(model, "_kanitts_speaker_conditioning", None)

    # --- building -------------------------------------------------------------------------------

    @classmethod
    def attach(cls, model: nn.Module, embedding_dim: int, slot: int, seed: int = 0) -> SpeakerConditioning:
        """Give ``model`` a new projection and the slot hook (before LoRA wraps it).

        The projection starts small: each output has about the spread of one coordinate of the
        model's token embeddings for unit-scale inputs, so the new slot looks like a token to the
        model from the first step instead of a vector a hundred times larger.
        """
        weight = model.get_input_embeddings().weight
        hidden = weight.shape[1]
        projection = nn.Linear(int(embedding_dim), hidden, bias=False, dtype=weight.dtype, device=weight.device)
        generator = torch.Generator().manual_seed(seed)
        scale = float(weight.detach().float().std()) / float(embedding_dim) ** 0.5
        with torch.no_grad():
            projection.weight.copy_(torch.randn(projection.weight.shape, generator=generator) * scale)
        setattr(model, PROJECTION, projection)
        return cls(model, slot)

    @classmethod
    def load(cls, model: nn.Module, folder: str | Path, slot: int) -> SpeakerConditioning:
        """The projection saved by :meth:`save` in a checkpoint ``folder``, attached to ``model``;
        ``slot`` is the layout's (model_config.yaml), which must be the one it was trained with."""
        from safetensors import safe_open

        path = Path(folder) / PROJECTION_FILE
        try:
            with safe_open(str(path), framework="pt") as f:
                weight, metadata = f.get_tensor("weight"), f.metadata() or {}
        except Exception as exc:  # unreadable or truncated file: the user's to replace
            raise UserError(f"{path}: cannot read the speaker projection ({type(exc).__name__}: {exc})") from None
        hidden = model.get_input_embeddings().weight
        if weight.ndim != 2 or weight.shape[0] != hidden.shape[1]:
            raise UserError(
                f"{path}: the speaker projection is {tuple(weight.shape)}, the model's hidden size is {hidden.shape[1]}"
            )
        projection = nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=hidden.dtype, device=hidden.device)
        with torch.no_grad():
            projection.weight.copy_(weight)
        trained = metadata.get("slot")
        if trained is not None and int(trained) != int(slot):
            raise UserError(
                f"{path}: the model was trained with its speaker slot at id {trained}, but model_config.yaml "
                f"puts it at {slot} (special_tokens.speaker_embedding); use the model_config.yaml it was trained with"
            )
        setattr(model, PROJECTION, projection)
        return cls(model, slot)

    def save(self, model: nn.Module, folder: str | Path) -> None:
        """Write the (merged) model's projection to ``folder`` and take it off the model, so that
        ``model.save_pretrained`` writes a plain LFM2."""
        from safetensors.torch import save_file

        projection = getattr(model, PROJECTION)
        weight = projection.weight.detach().to("cpu", torch.float32).contiguous()
        metadata = {"slot": str(self.slot), "embedding_dim": str(weight.shape[1]), "format": "pt"}
        save_file({"weight": weight}, str(Path(folder) / PROJECTION_FILE), metadata=metadata)
        delattr(model, PROJECTION)
        del model._kanitts_speaker_conditioning
        self._handle.remove()

    @property
    def embedding_dim(self) -> int:
        """The size of the speaker embeddings the projection takes."""
        return int(next(self._projection().parameters()).shape[1])

    def _projection(self) -> nn.Module:
        # under LoRA the attribute is peft's modules_to_save wrapper around the trained copy
        return getattr(self.model, PROJECTION)

    # --- using ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def conditioned(self, embeddings: torch.Tensor | None) -> Iterator[None]:
        """Inside the block, the k-th slot of each forward takes ``embeddings[k]`` ((n, dim))."""
        previous, self._current = self._current, embeddings
        try:
            yield
        finally:
            self._current = previous

    def _fill_slots(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        ids = args[0] if args else None
        if ids is None:
            return None
        at = ids == self.slot
        count = int(at.sum())
        if count == 0:
            return None
        current = self._current
        if current is None:
            raise RuntimeError(f"{count} speaker slot(s) in the input but no speaker embedding was given")
        if current.shape[0] != count and count % current.shape[0] == 0:
            current = current.repeat_interleave(count // current.shape[0], dim=0)  # num_return_sequences
        if current.shape[0] != count:
            raise RuntimeError(f"{count} speaker slot(s) in the input but {current.shape[0]} speaker embedding(s)")
        projection = self._projection()
        weight = next(projection.parameters())
        projected = projection(current.to(weight.device, weight.dtype)).to(output.dtype)
        filled = output.clone()
        filled[at] = projected
        return filled


def speaker_means(dataset: Any) -> dict[str, torch.Tensor]:
    """Mean global embedding of each speaker of a training-sequence dataset, and of all clips
    (:data:`MEAN_KEY`); empty when the sequences carry no embeddings."""
    import pyarrow.compute as pc

    if dataset is None or "speaker_embedding" not in getattr(dataset, "column_names", []):
        return {}
    table = dataset.with_format("arrow")[:]
    column = table.column("speaker_embedding")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if not len(lengths) or lengths.min() == 0 or (lengths != lengths[0]).any():
        sizes = sorted(set(lengths.tolist()))
        raise UserError(
            f"the training data's speaker embeddings have different sizes {sizes[:5]}; re-prepare it with one codec"
        )
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float64).reshape(len(lengths), -1)
    speakers = np.asarray(table.column("speaker").to_pylist(), dtype=object)
    means = {MEAN_KEY: torch.from_numpy(values.mean(0)).float()}
    for name in dict.fromkeys(speakers.tolist()):
        if name:
            means[f"speaker:{name}"] = torch.from_numpy(values[speakers == name].mean(0)).float()
    return means


def save_speaker_means(means: dict[str, torch.Tensor], folder: str | Path) -> None:
    from safetensors.torch import save_file

    if means:
        save_file({k: v.contiguous() for k, v in means.items()}, str(Path(folder) / SPEAKERS_FILE))


def load_speaker_means(folder: str | Path) -> dict[str, torch.Tensor]:
    """The means :func:`save_speaker_means` wrote in a checkpoint folder (empty when it has none)."""
    from safetensors.torch import load_file

    path = Path(folder) / SPEAKERS_FILE
    if not path.is_file():
        return {}
    try:
        return load_file(str(path))
    except Exception as exc:  # unreadable or truncated file: the user's to replace
        raise UserError(f"{path}: cannot read the speaker embeddings ({type(exc).__name__}: {exc})") from None
