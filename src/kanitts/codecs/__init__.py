"""Codecs: the :class:`Codec` interface and a registry of implementations picked by name.

>>> from kanitts.codecs import load_codec
>>> codec = load_codec("nanocodec", "nineninesix/nemo-nano-codec-22khz-0.6kbps-12.5fps-pytorch")

Implementations are imported on first use, and :class:`Codec` (which needs torch) only when
asked for, so ``import kanitts.codecs`` stays cheap: config validation reads the registry.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kanitts.codecs.registry import available_codecs, code_columns, codec_entry, register_codec
from kanitts.errors import UserError

if TYPE_CHECKING:
    from kanitts.codecs.base import Codec


def __getattr__(name: str) -> Any:
    if name == "Codec":
        from kanitts.codecs.base import Codec

        return Codec
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def codec_class(kind: str) -> type[Codec]:
    module_name, _, attr = codec_entry(kind).target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def load_codec(
    kind: str,
    name_or_path: str | Path | None = None,
    device: Any = None,
    dtype: Any = None,
    **kwargs: Any,
) -> Codec:
    """Load codec ``kind`` from a Hub id or a local folder (its default weights if None)."""
    cls = codec_class(kind)
    if name_or_path is None:
        name_or_path = codec_entry(kind).default_weights
        if name_or_path is None:
            raise UserError(f"codec {kind!r} has no default weights; name a Hub id or a folder")
    return cls.from_pretrained(name_or_path, device=device, dtype=dtype, **kwargs)


__all__ = ["Codec", "available_codecs", "code_columns", "codec_class", "codec_entry", "load_codec", "register_codec"]
