"""Kanade token files: what ``kanade encode`` and ``kanade-train predict`` write and
``kanade decode`` reads.

``encode`` writes **one safetensors file per input audio file** (one file a unit keeps runs
resumable, lets tools read a single utterance without loading a whole corpus, and maps one to one
onto ``decode``). Each file holds:

* ``content_token_indices``: int64 ``(T,)``, the content tokens (FSQ indices in [0, 12800)).
* ``global_embedding``: float32 ``(128,)``, the global (speaker) embedding.
* ``content_embedding``: float32 ``(T, 768)``, only with ``save_content_embedding=True``.

and string metadata: ``format`` (``kanade-tokens/1``), ``source`` (the input path),
``sample_rate`` and ``num_samples`` (the length of the audio at the model's rate, so ``decode``
restores the exact length), and what made the tokens: ``model`` (the id or path the model was
loaded from), ``token_rate`` (tokens per second), ``codebook_size``, ``global_embedding_dim`` and
``kanade_tokenizer_version``. ``decode`` refuses a file whose tokens another kind of model made
(other rate, vocabulary or embedding size), and ids outside the vocabulary, naming the file,
the position and the value. Files without these keys (written before they existed) are checked
for what they do say.
"""


from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kanade_tokenizer.errors import KanadeInputError
from kanade_tokenizer.files import atomic_path

TOKEN_FORMAT = "kanade-tokens/1"
TOKEN_SUFFIX = ".safetensors"

#: metadata keys that say what kind of model made a token file, and the model's value for each
MODEL_FACTS = ("sample_rate", "token_rate", "codebook_size", "global_embedding_dim")


def model_facts(model) -> dict[str, str]:
    """What a token file records about the model that made it (the facts the model states)."""
    facts = {"sample_rate": str(int(getattr(getattr(model, "config", None), "sample_rate", 24000)))}
    for key in ("token_rate", "codebook_size", "global_embedding_dim"):
        value = getattr(model, key, None)
        if value is not None:
            facts[key] = f"{float(value):g}" if key == "token_rate" else str(int(value))
    return facts


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kanitts")
    except PackageNotFoundError:
        return "unknown"


def save_tokens(path: str | os.PathLike[str], features: Any, *, source: str = "", num_samples: int | None = None,
                sample_rate: int | None = None, model_name: str = "", save_content_embedding: bool = False,
                facts: dict[str, str] | None = None, extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Write one utterance's KanadeFeatures to ``path`` (safetensors; written to a temporary name first).

    ``facts`` (:func:`model_facts` of the model that encoded it) are stored in the metadata;
    ``extra`` tensors (e.g. ``kanade-train predict``'s ``mel``) are stored beside the tokens."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    if features.content_token_indices is not None:
        tensors["content_token_indices"] = features.content_token_indices.detach().to("cpu", torch.int64)
    if features.global_embedding is not None:
        tensors["global_embedding"] = features.global_embedding.detach().to("cpu", torch.float32)
    if save_content_embedding and getattr(features, "content_embedding", None) is not None:
        tensors["content_embedding"] = features.content_embedding.detach().to("cpu", torch.float32)
    for name, value in (extra or {}).items():
        tensors[name] = value.detach().to("cpu")
    metadata = {"format": TOKEN_FORMAT, "source": str(source), "model": str(model_name)}
    metadata.update(facts or {})
    metadata["kanade_tokenizer_version"] = _version()
    if num_samples is not None:
        metadata["num_samples"] = str(int(num_samples))
    if sample_rate is not None:
        metadata["sample_rate"] = str(int(sample_rate))
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return path


@dataclass
class TokenFile:
    content_token_indices: torch.Tensor | None
    global_embedding: torch.Tensor
    content_embedding: torch.Tensor | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def num_samples(self) -> int | None:
        value = self.metadata.get("num_samples")
        return int(value) if value else None


def load_tokens(path: str | os.PathLike[str]) -> TokenFile:
    """Read a token file written by :func:`save_tokens` (or any safetensors with the same tensor names)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise KanadeInputError(f"{path}: no such token file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - a safetensors handle, not a dict
    except Exception as e:
        raise KanadeInputError(f"{path}: not a readable safetensors file ({e})") from e
    if "global_embedding" not in tensors:
        raise KanadeInputError(f"{path}: has no 'global_embedding' tensor (found {sorted(tensors)})")
    if "content_token_indices" not in tensors and "content_embedding" not in tensors:
        raise KanadeInputError(
            f"{path}: has neither 'content_token_indices' nor 'content_embedding' (found {sorted(tensors)})"
        )
    _check_token_tensors(path, tensors, metadata)
    return TokenFile(
        content_token_indices=tensors.get("content_token_indices"),
        global_embedding=tensors["global_embedding"],
        content_embedding=tensors.get("content_embedding"),
        metadata=metadata,
    )


def _check_token_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Shapes, dtypes and ids a decoder can use, whatever model decodes them."""
    g = tensors["global_embedding"]
    if g.dim() != 1 or not g.is_floating_point():
        raise KanadeInputError(f"{path}: global_embedding must be a 1-D float vector, got {g.dtype} {tuple(g.shape)}")
    ids = tensors.get("content_token_indices")
    if ids is not None:
        if ids.dim() != 1 or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise KanadeInputError(
                f"{path}: content_token_indices must be 1-D integer ids, got {ids.dtype} {tuple(ids.shape)}"
            )
        if ids.numel() == 0:
            raise KanadeInputError(f"{path}: holds no content tokens (its audio was shorter than one token)")
        size = metadata.get("codebook_size")
        check_token_ids(path, ids, int(size) if size and size.isdigit() else None)
    content = tensors.get("content_embedding")
    if content is not None and (content.dim() != 2 or content.size(0) == 0):
        raise KanadeInputError(f"{path}: content_embedding must be (T, C) with T > 0, got {tuple(content.shape)}")


def check_token_ids(
    path: str | os.PathLike[str], ids: torch.Tensor, codebook_size: int | None, model: str = ""
) -> None:
    """Ids must lie in [0, codebook_size) (only >= 0 when the size is unknown); the first one that
    does not is named with its position."""
    bad = ids < 0 if codebook_size is None else (ids < 0) | (ids >= codebook_size)
    if bool(bad.any()):
        pos = int(bad.nonzero()[0, 0])
        valid = "0 or more" if codebook_size is None else f"0 ... {codebook_size - 1}"
        whose = f" of {model}" if model else ""
        raise KanadeInputError(
            f"{path}: content_token_indices[{pos}] = {int(ids[pos])} is outside the vocabulary{whose} "
            f"(valid ids: {valid}; {int(bad.sum())} bad id(s) in the file)"
        )


def _same_number(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:  # not a number: a file edited by hand, compared as written
        return a == b


def check_tokens_match(path: str | os.PathLike[str], tokens: TokenFile, model, model_name: str = "") -> None:
    """Refuse tokens that a different kind of model made, or ids outside this model's vocabulary."""
    have = model_facts(model)
    made_by = tokens.metadata.get("model")
    this = f"the model {model_name}" if model_name else "this model"
    phrases = {"sample_rate": "at {} Hz", "token_rate": "at {} tokens/s", "codebook_size": "with {} codes",
               "global_embedding_dim": "with {}-dim global embeddings"}
    for key in MODEL_FACTS:
        recorded, own = tokens.metadata.get(key), have.get(key)
        if recorded and own and not _same_number(recorded, own):
            hint = f"; decode it with the model that made it (--model {made_by})" if made_by else ""
            raise KanadeInputError(
                f"{path}: made by {made_by or 'another model'} {phrases[key].format(recorded)}, "
                f"but {this} works {phrases[key].format(own)}{hint}"
            )
    g = tokens.global_embedding
    if "global_embedding_dim" in have and g.numel() != int(have["global_embedding_dim"]):
        raise KanadeInputError(
            f"{path}: global_embedding has {g.numel()} values but {this} takes {have['global_embedding_dim']}"
        )
    if tokens.content_token_indices is not None and "codebook_size" in have:
        check_token_ids(path, tokens.content_token_indices, int(have["codebook_size"]), this)
    elif tokens.content_embedding is not None:
        dim = getattr(getattr(model, "local_quantizer", None), "output_dim", None)
        if dim is not None and tokens.content_embedding.size(1) != dim:
            raise KanadeInputError(
                f"{path}: content_embedding has {tokens.content_embedding.size(1)} channels but {this} takes {dim}"
            )


__all__ = [
    "MODEL_FACTS", "TOKEN_FORMAT", "TOKEN_SUFFIX", "TokenFile", "check_token_ids", "check_tokens_match",
    "load_tokens", "model_facts", "save_tokens",
]
