"""The codecs that exist, by name, and what each declares before any weights load.

Kept free of torch and of the implementations, so that validating ``codec.kind`` in
model_config.yaml and naming a codec's dataset columns cost nothing: the registry is the one list
of implemented kinds, and a new codec is one entry here (or one :func:`register_codec` call).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kanitts.errors import UserError

if TYPE_CHECKING:
    from kanitts.codecs.base import Codec


@dataclass(frozen=True)
class CodecEntry:
    """One implemented codec: where its class is, how its dataset names codebooks, its weights."""

    target: str  # "module:Class", imported on first use
    column_prefix: str  # codebook i (from 0) is the dataset column f"{column_prefix}{i + 1}"
    default_weights: str | None = None
    # The token-space facts of the default weights (model_config.yaml codec keys a user may leave
    # out): sample_rate, fps, num_codebooks, codebook_size.
    facts: tuple[tuple[str, float | int], ...] = ()
    # The dataset column holding one global (speaker) embedding per clip, for codecs that have one.
    embedding_column: str | None = None

    def code_columns(self, num_codebooks: int) -> list[str]:
        return [f"{self.column_prefix}{i + 1}" for i in range(num_codebooks)]


_REGISTRY: dict[str, CodecEntry] = {
    # The reference KaniTTS datasets' column names, which configs written for it use as keys.
    "nanocodec": CodecEntry(
        "kanitts.codecs.nanocodec:NanoCodec",
        column_prefix="nano_layer_",
        default_weights="nineninesix/nemo-nano-codec-22khz-0.6kbps-12.5fps-pytorch",
        facts=(("sample_rate", 22050), ("fps", 12.5), ("num_codebooks", 4), ("codebook_size", 4032)),
    ),
    # One book of 12,800 content tokens and a global embedding per clip that carries the voice.
    "kanade": CodecEntry(
        "kanitts.codecs.kanade:KanadeCodec",
        column_prefix="kanade_tokens_",
        default_weights="frothywater/kanade-12.5hz",
        facts=(("sample_rate", 24000), ("fps", 12.5), ("num_codebooks", 1), ("codebook_size", 12800)),
        embedding_column="global_embedding",
    ),
}


def register_codec(
    kind: str,
    target: str | type[Codec],
    *,
    column_prefix: str = "codebook_",
    default_weights: str | None = None,
    facts: dict[str, float | int] | None = None,
    embedding_column: str | None = None,
) -> None:
    """Register a codec class (or its ``"module:Class"`` path) under ``kind``."""
    if isinstance(target, type):
        target = f"{target.__module__}:{target.__qualname__}"
    _REGISTRY[kind] = CodecEntry(
        target, column_prefix=column_prefix, default_weights=default_weights,
        facts=tuple((facts or {}).items()), embedding_column=embedding_column,
    )


def available_codecs() -> list[str]:
    return sorted(_REGISTRY)


def codec_entry(kind: str) -> CodecEntry:
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise UserError(f"unknown codec {kind!r}; implemented: {', '.join(available_codecs())}") from None


def code_columns(kind: str, num_codebooks: int) -> list[str]:
    """The dataset column of each codebook of codec ``kind``, in codebook order."""
    return codec_entry(kind).code_columns(num_codebooks)
