"""Kanade speech tokenizer: speech -> content tokens + global (speaker) embedding -> mel.

Public API (the same names as the original package)::

    from kanade_tokenizer import KanadeModel, load_audio, load_vocoder, vocode

    model = KanadeModel.from_pretrained("frothywater/kanade-12.5hz")   # eval mode
    features = model.encode(load_audio("speech.wav", sample_rate=model.sample_rate))
    mel = model.decode(features.global_embedding, content_token_indices=features.content_token_indices)
    waveform = vocode(load_vocoder(), mel.unsqueeze(0))
"""

from .audio import load_audio
from .configuration import KanadeConfigError, KanadeModelConfig
from .model import KanadeFeatures, KanadeModel
from .pretrained import KanadeWeightsError
from .vocoders import load_vocoder, vocode

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

