"""Speaker similarity: does the fine-tuned model sound like the speaker it was trained on?

An embedder maps a recording to a fixed-size, L2-normalised vector; similarity is the cosine
between a generated sample and the mean embedding of the speaker's reference recordings
(``eval_config.yaml`` ``speaker_similarity.references``). Embedders are picked by name:

- ``mfcc-stats`` (default): mean and standard deviation of 20 MFCCs over the voiced frames,
  computed with NumPy/SciPy. It needs no weights and no network, so it runs in CI and on the
  offline demo, and it separates voices with different timbre or pitch range. It is a coarse
  proxy: it also reacts to recording conditions and to what is said, and it is not a trained
  speaker-verification model, so compare its values between experiments, not with published
  speaker-similarity figures.
- ``kanade:<folder or Hub id>``: the global (speaker) embedding of the Kanade speech tokenizer
  (``kanade_tokenizer``), a learned utterance-level voice representation trained to carry what
  the content tokens do not. Closer to a real speaker embedding; needs its weights.

``register_embedder`` adds others (a WavLM or ECAPA speaker model, say) without touching this
module's callers.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

from kanitts.audio import AudioDecodeError, load_audio, resample, to_mono
from kanitts.errors import UserError


class SpeakerEmbedder(Protocol):
    name: str
    sample_rate: int

    def embed(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Mono float audio recorded at ``sample_rate`` -> 1-D unit-norm embedding.

        Each embedder resamples to its own ``sample_rate`` the way its model expects.
        """


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return (vector / norm if norm > 0 else vector).astype(np.float32)


@lru_cache(maxsize=4)
def _mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """HTK triangular filters, shape (n_mels, n_fft // 2 + 1): the tokenizer's own definition."""
    from kanade_tokenizer.modules.mel import mel_filterbank

    return mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate, fmin, fmax).numpy().T.astype(np.float64)


class MfccStatsEmbedder:
    """Mean and std of MFCC 1..19 over voiced 25 ms frames (10 ms hop) at 16 kHz."""

    name = "mfcc-stats"
    sample_rate = 16000
    n_fft = 512
    win = 400
    hop = 160
    n_mels = 40
    n_mfcc = 20
    voiced_below_peak_db = 35.0

    def embed(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        from scipy.fft import dct  # scipy.fft loads in a fraction of a second: only this embedder pays

        audio = resample(np.asarray(audio, dtype=np.float32).reshape(-1), sample_rate, self.sample_rate)
        audio = audio.astype(np.float64)
        if len(audio) < self.win:
            audio = np.pad(audio, (0, self.win - len(audio)))
        emphasised = np.append(audio[0], audio[1:] - 0.97 * audio[:-1])
        count = 1 + (len(emphasised) - self.win) // self.hop
        index = np.arange(self.win)[None, :] + self.hop * np.arange(count)[:, None]
        frames = emphasised[index] * np.hamming(self.win)[None, :]
        power = np.abs(np.fft.rfft(frames, n=self.n_fft)) ** 2
        energy_db = 10.0 * np.log10(power.sum(axis=1) + 1e-12)
        voiced = energy_db > energy_db.max() - self.voiced_below_peak_db
        mel = power[voiced] @ _mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, 20.0, 7600.0).T
        mfcc = dct(np.log(mel + 1e-10), type=2, axis=1, norm="ortho")[:, 1: self.n_mfcc]
        return _unit(np.concatenate([mfcc.mean(axis=0), mfcc.std(axis=0)]))


class KanadeGlobalEmbedder:
    """The Kanade tokenizer's global embedding of an utterance."""

    def __init__(self, weights: str):
        try:
            from kanade_tokenizer import KanadeModel
        except ImportError as exc:
            raise UserError(f"speaker embedder 'kanade' needs the kanade_tokenizer package: {exc}") from None
        try:
            self.model = KanadeModel.from_pretrained(weights).eval()
        except (OSError, ValueError, RuntimeError) as exc:
            raise UserError(f"cannot load the Kanade tokenizer {weights!r} for speaker similarity: {exc}") from None
        self.name = f"kanade:{weights}"
        self.sample_rate = int(self.model.sample_rate)

    def embed(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Resampled with the tokenizer's own resampler, as its checkpoints were trained."""
        import torch

        from kanade_tokenizer.audio import resample

        samples = torch.from_numpy(np.asarray(audio, dtype=np.float32).reshape(-1))
        wave = resample(samples, sample_rate, self.sample_rate)
        features = self.model.encode(wave, return_content=False, return_global=True)
        return _unit(features.global_embedding.detach().float().cpu().numpy().reshape(-1))


_EMBEDDERS: dict[str, Callable[[str], SpeakerEmbedder]] = {
    "mfcc-stats": lambda _arg: MfccStatsEmbedder(),
    "kanade": KanadeGlobalEmbedder,
}


def register_embedder(name: str, factory: Callable[[str], SpeakerEmbedder]) -> None:
    """Make ``name`` (or ``name:<argument>``) usable in ``speaker_similarity.embedder``."""
    _EMBEDDERS[name] = factory


def load_embedder(spec: str) -> SpeakerEmbedder:
    """``"mfcc-stats"`` or ``"kanade:<weights>"`` -> an embedder."""
    name, _, argument = spec.partition(":")
    if name not in _EMBEDDERS:
        raise UserError(f"unknown speaker embedder {name!r}; available: {', '.join(sorted(_EMBEDDERS))}")
    if name == "kanade" and not argument:
        raise UserError("speaker embedder 'kanade' needs its weights: write kanade:<folder or Hub id>")
    return _EMBEDDERS[name](argument)


class SpeakerSimilarity:
    """Cosine similarity of samples to each speaker's reference recordings."""

    def __init__(self, embedder: SpeakerEmbedder, references: dict[str, list[str]]):
        self.embedder = embedder
        self.centroids: dict[str, np.ndarray] = {}
        for speaker, paths in references.items():
            vectors = []
            for path in paths:
                if not Path(path).is_file():
                    raise UserError(f"speaker_similarity.references.{speaker}: file not found: {path}")
                try:
                    samples, rate = load_audio(path)
                except AudioDecodeError as exc:
                    raise UserError(f"speaker_similarity.references.{speaker}: cannot read {path}: {exc}") from None
                vectors.append(embedder.embed(to_mono(samples), rate))
            if vectors:
                self.centroids[speaker.lower()] = _unit(np.mean(vectors, axis=0))

    def score(self, audio: np.ndarray, sample_rate: int, speaker: str | None) -> float | None:
        """Similarity in [-1, 1] to ``speaker``'s references; None when it has none or audio is empty."""
        centroid = self.centroids.get((speaker or "").lower())
        if centroid is None or len(audio) == 0:
            return None
        vector = self.embedder.embed(np.asarray(audio, dtype=np.float32), sample_rate)
        return round(float(np.dot(vector, centroid)), 4)
