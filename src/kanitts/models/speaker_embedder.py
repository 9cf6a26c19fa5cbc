"""The speaker embedder KaniTTS-2 was trained with: 128-d voice vectors from 16 kHz speech.

Its architecture (kanitts-reference §1.2; the ``kani-tts-2`` package's default weights
``nineninesix/speaker-emb-tbr``, after Orange/Speaker-wavLM-tbr):

1. the waveform is normalised per utterance to zero mean and unit variance;
2. a WavLM encoder (transformers' ``WavLMModel``) gives frame features;
3. mean and standard deviation over the frames are concatenated (2 x hidden);
4. ``Conv1d(2*hidden -> 512, 1)`` + ReLU + ``BatchNorm1d(affine=False)``, then
   ``Conv1d(512 -> 128, 1)`` + ReLU + ``BatchNorm1d(affine=False)`` (eps 1e-3);
5. L2 normalisation.

The parameter names are those of the Hub checkpoint (``wavlm.*``, ``top_layers.affine1``,
``top_layers.batchnorm1``, ``top_layers.affine2``, ``top_layers.batchnorm2``), and the sizes of
the top layers come from its config.json (``embd_size``, ``top_interm_size``), so the released
weights load as they are, from the Hub or a local folder; :func:`kanitts.tiny.build_tiny_speaker_embedder`
writes a random one in the same layout for tests. Loading checks that every parameter and
batch-norm statistic came from the checkpoint.

The model is written here, not imported from the upstream package, because that package pins
transformers 4.56-4.57 and imports names that transformers 5 removed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import WavLMConfig, WavLMModel, WavLMPreTrainedModel

from kanitts.audio import resample, to_mono
from kanitts.errors import UserError
from kanitts.files import is_hub_id

DEFAULT_SPEAKER_EMBEDDER = "nineninesix/speaker-emb-tbr"
SAMPLE_RATE = 16000
#: the upstream embedder cuts its input here
MAX_SECONDS = 30.0
# One 25 ms window: WavLM's conv encoder yields no frame for less.
SHORTEST = 400


class TopLayers(nn.Module):
    """Statistics pooling output (batch, 2*hidden, 1) -> unit-norm embedding (batch, embd_size)."""

    def __init__(self, in_size: int, interm_size: int, embd_size: int):
        super().__init__()
        self.affine1 = nn.Conv1d(in_size, interm_size, kernel_size=1)
        self.batchnorm1 = nn.BatchNorm1d(interm_size, affine=False, eps=1e-3)
        self.affine2 = nn.Conv1d(interm_size, embd_size, kernel_size=1)
        self.batchnorm2 = nn.BatchNorm1d(embd_size, affine=False, eps=1e-3)

    def forward(self, stats: torch.Tensor) -> torch.Tensor:
        hidden = self.batchnorm1(F.relu(self.affine1(stats)))
        hidden = self.batchnorm2(F.relu(self.affine2(hidden)))
        return F.normalize(hidden[:, :, 0], dim=-1)


class SpeakerEmbeddingModel(WavLMPreTrainedModel):
    """WavLM + statistics pooling + the two projection layers, named as the Hub checkpoint."""

    def __init__(self, config: WavLMConfig):
        super().__init__(config)
        self.wavlm = WavLMModel(config)
        embd = int(getattr(config, "embd_size", 128))
        interm = int(getattr(config, "top_interm_size", 512))
        config.embd_size, config.top_interm_size = embd, interm
        self.top_layers = TopLayers(2 * config.hidden_size, interm, embd)
        self.post_init()

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        """(batch, samples) of equal-length 16 kHz clips -> (batch, embd_size)."""
        normalised = (input_values - input_values.mean(dim=1, keepdim=True)) / (
            input_values.std(dim=1, keepdim=True) + 1e-10
        )
        frames = self.wavlm(input_values=normalised).last_hidden_state
        std = frames.var(dim=1).clamp(min=1e-10).sqrt()
        stats = torch.cat((frames.mean(dim=1), std), dim=1).unsqueeze(2)
        return self.top_layers(stats)


class KaniSpeakerEmbedder:
    """Loads :class:`SpeakerEmbeddingModel` and embeds clips at any sample rate, one at a time
    (the per-utterance normalisation and the pooling would see any padding of a batch)."""

    label = "KaniTTS-2 speaker embedding (WavLM)"
    sample_rate = SAMPLE_RATE

    def __init__(self, model: SpeakerEmbeddingModel, name: str):
        self.model = model.eval()
        self.name = name

    @property
    def dim(self) -> int:
        return int(self.model.config.embd_size)

    @classmethod
    def load(cls, weights: str = DEFAULT_SPEAKER_EMBEDDER, device: str | torch.device = "cpu",
             where: str = "speaker embedder") -> KaniSpeakerEmbedder:
        folder = Path(weights).expanduser()
        if not folder.is_dir() and not is_hub_id(weights):
            raise UserError(f"{where}: {weights!r} is neither a folder nor a Hub id owner/name")
        source = str(folder) if folder.is_dir() else weights
        try:
            model, info = SpeakerEmbeddingModel.from_pretrained(source, output_loading_info=True)
        except Exception as exc:  # offline, not found, not a model folder: the user's to fix
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"{where}: cannot load {source!r} ({detail}); it needs the WavLM speaker embedder's "
                f"config.json and weights, e.g. {DEFAULT_SPEAKER_EMBEDDER} (download it once online, or "
                "pass a local folder)"
            ) from None
        missing = sorted(info.get("missing_keys") or [])
        if missing:
            raise UserError(
                f"{where}: {source!r} is not a complete speaker embedder checkpoint "
                f"(missing {', '.join(missing[:4])}); "
                f"a plain WavLM has no top_layers: use {DEFAULT_SPEAKER_EMBEDDER} or a folder in its layout"
            )
        _check_statistics(model, source, where)
        return cls(model.to(device), f"kanitts2:{weights}")

    def embed(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Mono or multichannel float audio -> unit-norm float32 embedding (embd_size,)."""
        samples = np.asarray(audio, dtype=np.float32)
        if samples.ndim > 1:
            samples = to_mono(samples)
        wave = resample(samples.reshape(-1), int(sample_rate), SAMPLE_RATE)[: int(MAX_SECONDS * SAMPLE_RATE)]
        if not len(wave) or not np.isfinite(wave).all():
            raise ValueError("the clip is empty or holds non-finite samples")
        if len(wave) < SHORTEST:
            wave = np.pad(wave, (0, SHORTEST - len(wave)))
        device = next(self.model.parameters()).device
        with torch.no_grad():
            vector = self.model(torch.from_numpy(np.ascontiguousarray(wave))[None].to(device))
        return vector[0].float().cpu().numpy()


def _check_statistics(model: SpeakerEmbeddingModel, source: str, where: str) -> None:
    """Batch-norm running statistics are buffers, which loading-info does not always list."""
    for name in ("batchnorm1", "batchnorm2"):
        norm = getattr(model.top_layers, name)
        if not (torch.isfinite(norm.running_var).all() and (norm.running_var > 0).all()):
            raise UserError(f"{where}: {source!r} has no usable top_layers.{name} statistics (running_var)")
