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

    def code_columns(self, num_codebooks: int) -> list[str]:
        return [f"{self.column_prefix}{i + 1}" for i in range(num_codebooks)]


_REGISTRY: dict[str, CodecEntry] = {
    # The reference KaniTTS datasets' column names, which configs written for it use as keys.
    "nanocodec": CodecEntry(
        "kanitts.codecs.nanocodec:NanoCodec",
        column_prefix="nano_layer_",
        default_weights="nineninesix/nemo-nano-codec-22khz-0.6kbps-12.5fps-pytorch",
    ),
}


def register_codec(
    kind: str,
    target: str | type[Codec],
    *,
    column_prefix: str = "codebook_",
    default_weights: str | None = None,
) -> None:
    """Register a codec class (or its ``"module:Class"`` path) under ``kind``."""
    if isinstance(target, type):
        target = f"{target.__module__}:{target.__qualname__}"
    _REGISTRY[kind] = CodecEntry(target, column_prefix=column_prefix, default_weights=default_weights)


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
