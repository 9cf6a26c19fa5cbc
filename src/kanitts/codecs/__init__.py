"""Codecs: the :class:`Codec` interface and a registry of implementations picked by name.

>>> from kanitts.codecs import load_codec
>>> codec = load_codec("nanocodec", "nineninesix/nemo-nano-codec-22khz-0.6kbps-12.5fps-pytorch")

Implementations are imported on first use, so ``import kanitts.codecs`` stays cheap.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from kanitts.codecs.base import Codec
from kanitts.errors import UserError

# name -> "module:Class"; a new codec (e.g. "kanade") is one line here.
_REGISTRY: dict[str, str] = {
    "nanocodec": "kanitts.codecs.nanocodec:NanoCodec",
}

# The weights each codec loads when none are named.
DEFAULT_MODELS: dict[str, str] = {
    "nanocodec": "nineninesix/nemo-nano-codec-22khz-0.6kbps-12.5fps-pytorch",
}


def register_codec(kind: str, target: str | type[Codec]) -> None:
    """Register a codec class (or its ``"module:Class"`` path) under ``kind``."""
    if isinstance(target, type):
        target = f"{target.__module__}:{target.__qualname__}"
    _REGISTRY[kind] = target


def available_codecs() -> list[str]:
    return sorted(_REGISTRY)


def codec_class(kind: str) -> type[Codec]:
    try:
        target = _REGISTRY[kind]
    except KeyError:
        raise UserError(
            f"unknown codec {kind!r}; available: {', '.join(available_codecs())}"
        ) from None
    module_name, _, attr = target.partition(":")
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
        name_or_path = DEFAULT_MODELS.get(kind)
        if name_or_path is None:
            raise UserError(f"codec {kind!r} has no default weights; name a Hub id or a folder")
    return cls.from_pretrained(name_or_path, device=device, dtype=dtype, **kwargs)


__all__ = ["Codec", "DEFAULT_MODELS", "available_codecs", "codec_class", "load_codec", "register_codec"]
