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
- ``wavlm-xvector[:<folder or Hub id>]``: the x-vector of a WavLM model fine-tuned for speaker
  verification (transformers' ``WavLMForXVector``, by default ``microsoft/wavlm-base-plus-sv``).
  This is the one whose cosine means "same speaker or not"; use it for real comparisons.
- ``auto``: ``wavlm-xvector`` when the default weights are already in the local Hugging Face
  cache, otherwise ``mfcc-stats``, with :attr:`note` saying that the proxy was used. It never
  downloads, so it is safe offline.

Each embedder has a ``label`` saying what kind of measure it is, for reports.
``register_embedder`` adds others (an ECAPA model, say) without touching this module's callers.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

from kanitts.audio import AudioDecodeError, load_audio, resample, to_mono
from kanitts.errors import UserError
from kanitts.files import is_hub_id

DEFAULT_WAVLM_XVECTOR = "microsoft/wavlm-base-plus-sv"


class SpeakerEmbedder(Protocol):
    name: str
    label: str
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
    label = "proxy (MFCC statistics)"
    note: str | None = None
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

    label = "Kanade global embedding"

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


class WavLMXVectorEmbedder:
    """The speaker-verification x-vector of a ``WavLMForXVector`` model at 16 kHz."""

    label = "speaker verification (WavLM x-vector)"
    sample_rate = 16000
    batch_size = 8

    def __init__(self, weights: str = "", *, local_files_only: bool = False):
        weights = weights or DEFAULT_WAVLM_XVECTOR
        folder = Path(weights).expanduser()
        if not folder.is_dir() and not is_hub_id(weights):
            raise UserError(f"speaker embedder 'wavlm-xvector': {weights} is neither a folder nor a Hub id owner/name")
        from transformers import AutoConfig, AutoFeatureExtractor, WavLMForXVector

        source = str(folder) if folder.is_dir() else weights
        where = f"folder {folder}" if folder.is_dir() else f"{weights!r} from the Hugging Face Hub"
        try:
            config = AutoConfig.from_pretrained(source, local_files_only=local_files_only)
            if config.model_type != "wavlm":
                raise ValueError(f"its config.json is a {config.model_type!r} model, not WavLM")
            self.features = AutoFeatureExtractor.from_pretrained(source, local_files_only=local_files_only)
            model, info = WavLMForXVector.from_pretrained(
                source, local_files_only=local_files_only, output_loading_info=True
            )
        except Exception as exc:  # offline, not found, auth, not a model folder: all the user's to fix
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"speaker embedder 'wavlm-xvector' cannot load {where} ({detail}); it needs a WavLMForXVector "
                f"model with its preprocessor_config.json, e.g. {DEFAULT_WAVLM_XVECTOR} (download it once "
                "online, or pass a local folder)"
            ) from None
        head = sorted(k for k in info["missing_keys"] if not k.startswith("wavlm."))
        if head:  # a plain WavLM (no -sv fine-tuning) loads with a random x-vector head
            raise UserError(
                f"speaker embedder 'wavlm-xvector': {where} has no trained x-vector head (missing {head[0]}, ...); "
                f"use a speaker-verification model such as {DEFAULT_WAVLM_XVECTOR}"
            )
        self.model = model.eval()
        self.name = f"wavlm-xvector:{weights}"
        # Group norm in the first conv layer normalises over the whole (padded) clip, so padding
        # would change every frame; with it, clips run one at a time (see embed_batch).
        self.pads_exactly = config.feat_extract_norm != "group"

    def to(self, device: object) -> WavLMXVectorEmbedder:
        """Run on ``device`` (the eval device: the GPU when there is one); inputs follow the weights."""
        self.model.to(device)
        return self

    def embed(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        return self._run([self._prepare(audio, sample_rate)])[0]

    def embed_batch(self, clips: list[tuple[np.ndarray, int]]) -> list[np.ndarray]:
        """Embeddings of ``(audio, sample_rate)`` clips, equal to :meth:`embed` of each one.

        Clips are sorted by length and padded in batches with the attention mask, so the padding
        is left out of attention and of the statistics pooling. A model whose feature encoder uses
        group norm sees the padding anyway, so its clips run alone.
        """
        waves = [self._prepare(audio, rate) for audio, rate in clips]
        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
        size = self.batch_size if self.pads_exactly else 1
        out: list[np.ndarray] = [np.empty(0, np.float32)] * len(waves)
        for start in range(0, len(order), size):
            chunk = order[start: start + size]
            for index, vector in zip(chunk, self._run([waves[i] for i in chunk])):
                out[index] = vector
        return out

    def _prepare(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        wave = resample(np.asarray(audio, dtype=np.float32).reshape(-1), sample_rate, self.sample_rate)
        shortest = 400  # one 25 ms window: the conv encoder yields no frame for less
        return np.pad(wave, (0, shortest - len(wave))) if len(wave) < shortest else wave

    def _run(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """The x-vector of each wave, pooled over its own frames only.

        ``WavLMForXVector.forward`` pools a padded batch over lengths that ignore the TDNN
        dilations (transformers 5.x), so a padded clip's statistics took in frames computed from
        the padding, and batched unit vectors differed from single ones by 0.004-0.03 on a small
        model. This runs the model's own modules in its order and pools over the frames the
        dilated TDNN really leaves (``n - dilation * (kernel - 1)`` per layer).
        """
        import torch

        inputs = self.features(waves, sampling_rate=self.sample_rate, padding=True, return_attention_mask=True,
                               return_tensors="pt")
        model, config = self.model, self.model.config
        device = next(model.parameters()).device
        mask = inputs["attention_mask"].to(device)
        with torch.no_grad():
            outputs = model.wavlm(inputs["input_values"].to(device), attention_mask=mask,
                                  output_hidden_states=config.use_weighted_layer_sum)
            if config.use_weighted_layer_sum:
                weights = torch.softmax(model.layer_weights, dim=-1).view(-1, 1, 1, 1)
                hidden = (torch.stack(outputs.hidden_states, dim=0) * weights).sum(dim=0)
            else:
                hidden = outputs.last_hidden_state
            hidden = model.projector(hidden)
            for layer in model.tdnn:
                hidden = layer(hidden)
            lengths = model._get_feat_extract_output_lengths(mask.sum(dim=1))
            for kernel, dilation in zip(config.tdnn_kernel, config.tdnn_dilation):
                lengths = lengths - dilation * (kernel - 1)
            stats = torch.stack([torch.cat([hidden[i, :n].mean(dim=0), hidden[i, :n].std(dim=0)])
                                 for i, n in enumerate(lengths.tolist())])
            embeddings = model.feature_extractor(stats)
        embeddings = torch.nn.functional.normalize(embeddings.float(), dim=-1)
        return list(embeddings.cpu().numpy().astype(np.float32))


def _auto(_argument: str) -> SpeakerEmbedder:
    """WavLM x-vector from the local cache only (never a download), else the MFCC proxy, said so."""
    try:
        return WavLMXVectorEmbedder(DEFAULT_WAVLM_XVECTOR, local_files_only=True)
    except UserError:
        proxy = MfccStatsEmbedder()
        proxy.note = (
            f"speaker similarity used the MFCC proxy: {DEFAULT_WAVLM_XVECTOR} is not in the local Hugging Face "
            "cache; download it once or set speaker_similarity.embedder to wavlm-xvector:<folder>"
        )
        return proxy


_EMBEDDERS: dict[str, Callable[[str], SpeakerEmbedder]] = {
    "mfcc-stats": lambda _arg: MfccStatsEmbedder(),
    "kanade": KanadeGlobalEmbedder,
    "wavlm-xvector": WavLMXVectorEmbedder,
    "auto": _auto,
}


def register_embedder(name: str, factory: Callable[[str], SpeakerEmbedder]) -> None:
    """Make ``name`` (or ``name:<argument>``) usable in ``speaker_similarity.embedder``."""
    _EMBEDDERS[name] = factory


def load_embedder(spec: str) -> SpeakerEmbedder:
    """``"mfcc-stats"``, ``"auto"``, ``"wavlm-xvector[:<weights>]"`` or ``"kanade:<weights>"`` -> an embedder."""
    name, _, argument = spec.partition(":")
    if name not in _EMBEDDERS:
        raise UserError(f"unknown speaker embedder {name!r}; available: {', '.join(sorted(_EMBEDDERS))}")
    if name == "kanade" and not argument:
        raise UserError("speaker embedder 'kanade' needs its weights: write kanade:<folder or Hub id>")
    return _EMBEDDERS[name](argument)


def _embed_all(embedder: SpeakerEmbedder, clips: list[tuple[np.ndarray, int]]) -> list[np.ndarray]:
    """Through ``embed_batch`` where the embedder has one (a neural model batches), else one by one."""
    batch = getattr(embedder, "embed_batch", None)
    if batch is not None:
        return list(batch(clips))
    return [embedder.embed(audio, rate) for audio, rate in clips]


class SpeakerSimilarity:
    """Cosine similarity of samples to each speaker's reference recordings."""

    def __init__(self, embedder: SpeakerEmbedder, references: dict[str, list[str]]):
        self.embedder = embedder
        # What the scores are ("speaker verification (WavLM x-vector)", "proxy (...)"), and why
        # a proxy was used when ``auto`` fell back: for the results and the report.
        self.label: str = getattr(embedder, "label", embedder.name)
        self.note: str | None = getattr(embedder, "note", None)
        self.centroids: dict[str, np.ndarray] = {}
        # Each reference's own vector, for leave-one-out scores of the references themselves.
        self.vectors: dict[str, list[np.ndarray]] = {}
        self.references: dict[str, list[str]] = {}
        for speaker, paths in references.items():
            clips = []
            for path in paths:
                if not Path(path).is_file():
                    raise UserError(f"speaker_similarity.references.{speaker}: file not found: {path}")
                try:
                    samples, rate = load_audio(path)
                except AudioDecodeError as exc:
                    raise UserError(f"speaker_similarity.references.{speaker}: cannot read {path}: {exc}") from None
                clips.append((to_mono(samples), rate))
            if clips:
                self.vectors[speaker.lower()] = _embed_all(embedder, clips)
                self.references[speaker.lower()] = [str(p) for p in paths]
                self.centroids[speaker.lower()] = _unit(np.mean(self.vectors[speaker.lower()], axis=0))

    def score(self, audio: np.ndarray, sample_rate: int, speaker: str | None) -> float | None:
        """Similarity in [-1, 1] to ``speaker``'s references; None when it has none or audio is empty."""
        return self.score_batch([(audio, sample_rate, speaker)])[0]

    def score_batch(self, samples: list[tuple[np.ndarray, int, str | None]],
                    leave_out: list[int | None] | None = None) -> list[float | None]:
        """:meth:`score` of each ``(audio, sample_rate, speaker)``, embedded together.

        ``leave_out[i]``, when given, is the index of one of the speaker's references that sample
        ``i`` is not compared with (a reference recording, or its codec round trip, scored
        against the other references); None when that leaves no reference.
        """
        leave_out = leave_out or [None] * len(samples)
        centroids: list[np.ndarray | None] = []
        for (_audio, _rate, speaker), skip in zip(samples, leave_out, strict=True):
            vectors = self.vectors.get((speaker or "").lower(), [])
            kept = [v for j, v in enumerate(vectors) if j != skip]
            centroids.append(_unit(np.mean(kept, axis=0)) if kept else None)
        wanted = [i for i, (audio, _rate, _speaker) in enumerate(samples) if len(audio) and centroids[i] is not None]
        vectors = _embed_all(self.embedder, [(np.asarray(samples[i][0], dtype=np.float32), samples[i][1])
                                             for i in wanted])
        scores: list[float | None] = [None] * len(samples)
        for i, vector in zip(wanted, vectors):
            scores[i] = round(float(np.dot(vector, centroids[i])), 4)
        return scores
