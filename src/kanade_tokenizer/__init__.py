"""Kanade speech tokenizer: speech -> content tokens + global (speaker) embedding -> mel.

Public API (the same names as the original package)::

    from kanade_tokenizer import KanadeModel, load_audio, load_vocoder, vocode

    model = KanadeModel.from_pretrained("frothywater/kanade-12.5hz")   # eval mode
    features = model.encode(load_audio("speech.wav", sample_rate=model.sample_rate))
    mel = model.decode(features.global_embedding, content_token_indices=features.content_token_indices)
    waveform = vocode(load_vocoder(), mel.unsqueeze(0))
"""

from .model import (
    KanadeConfigError,
    KanadeFeatures,
    KanadeModel,
    KanadeModelConfig,
    KanadeWeightsError,
)

__all__ = [
    "KanadeModel",
    "KanadeModelConfig",
    "KanadeFeatures",
    "KanadeConfigError",
    "KanadeWeightsError",
    "load_audio",
    "load_vocoder",
    "vocode",
]


def __getattr__(name: str):
    # audio I/O and vocoders are imported on first use, so the model works without them
    if name == "load_audio":
        from .audio import load_audio

        return load_audio
    if name in ("load_vocoder", "vocode"):
        from . import vocoders

        return getattr(vocoders, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
