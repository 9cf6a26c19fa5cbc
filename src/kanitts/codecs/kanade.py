"""The Kanade tokenizer (:mod:`kanade_tokenizer`) behind the :class:`~kanitts.codecs.base.Codec` interface.

Kanade splits speech in two: content tokens (one book of 12,800 codes, 12.5 or 25 per second)
and one global embedding per clip that carries the voice. So this codec has one codebook, and
what NanoCodec keeps in its codes Kanade needs twice over:

- **encode** gives the tokens and the clip's global embedding (:meth:`KanadeCodec.encode_rows`
  writes both into a dataset row, as ``kanade_tokens_1`` and ``global_embedding``);
- **decode** needs a global embedding per item: the voice to speak in. Given none, it uses
  :attr:`KanadeCodec.voice` (set from a reference clip or a speaker's mean embedding), and
  refuses when there is none, rather than speak in an arbitrary voice.

Frame counts are Kanade's own (``floor(ceil(L / 480) / downsample)`` at 24 kHz, a few lengths one
more: :meth:`KanadeModel.num_tokens`), not ``ceil(L / samples_per_frame)``; decoding gives
``frames * samples_per_frame`` samples, the contract's length.

The mel spectrogram becomes audio through the vocoder the model's config names
(``config.vocoder_name``: Vocos for the 12.5 Hz and 25 Hz models, HiFT for 25 Hz clean). A name
that is a folder next to the model (``vocoder`` in folders :meth:`KanadeCodec.save_pretrained`
writes) is read from there, so a saved codec is complete offline. The vocoder loads on the first
decode: preparing a dataset never needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kanitts.codecs.base import Codec, mono_batch, weights_fingerprint
from kanitts.codecs.registry import codec_entry
from kanitts.errors import UserError
from kanitts.runtime import canonical_dtype, resolve_device

DEFAULT_KANADE = codec_entry("kanade").default_weights
EMBEDDING_COLUMN = codec_entry("kanade").embedding_column
VOCODER_FOLDER = "vocoder"


def _mixed_precision(dtype: str | torch.dtype | None) -> str:
    """The KanadeModel ``mixed_precision`` of a codec ``dtype`` (None: as released, bf16 on CUDA)."""
    if dtype is None:
        return "auto"
    name = dtype if isinstance(dtype, str) else str(dtype).replace("torch.", "")
    return canonical_dtype(name, "dtype")


class KanadeCodec(Codec):
    """Kanade content tokens (one codebook) plus a global embedding per clip."""

    kind = "kanade"

    def __init__(
        self,
        model: Any,
        *,
        vocoder: Any = None,
        vocoder_source: str | Path | None = None,
        name_or_path: str = "random",
        device: str | torch.device | None = None,
    ):
        self._device = torch.device(resolve_device(device))
        self.model = model.to(self._device).eval()
        self.model.requires_grad_(False)
        self._vocoder = vocoder if vocoder is None else vocoder.to(self._device).eval()
        self._vocoder_source = vocoder_source
        self._name_or_path = str(name_or_path)
        self._fingerprint: str | None = None
        self.sample_rate = int(model.sample_rate)
        self.num_codebooks = 1
        self.codebook_size = int(model.codebook_size)
        ssl = model.ssl_feature_extractor
        #: audio samples per content token (1920 at 12.5 Hz, 960 at 25 Hz)
        self.samples_per_frame = int(round(self.sample_rate / ssl.ssl_sample_rate * ssl.hop_size)) * int(
            model.config.downsample_factor
        )
        self.embedding_dim = int(model.global_embedding_dim)
        #: the global embedding :meth:`decode` uses when given none (a voice to speak in)
        self.voice: torch.Tensor | None = None

    # --- loading and saving ----------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path = DEFAULT_KANADE,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        *,
        vocoder: str | Path | None = None,
        **kwargs: Any,
    ) -> KanadeCodec:
        """Load a Kanade model from a Hub id (``frothywater/kanade-12.5hz``) or a local folder
        (config.yaml + model.safetensors); ``vocoder`` overrides the one its config names."""
        from kanade_tokenizer import KanadeConfigError, KanadeModel, KanadeWeightsError

        name = str(name_or_path)
        try:
            model = KanadeModel.from_pretrained(name, mixed_precision=_mixed_precision(dtype), **kwargs)
        except (OSError, ValueError, KanadeConfigError, KanadeWeightsError) as exc:
            raise UserError(f"cannot load the Kanade codec {name!r}: {exc}") from None
        source = vocoder
        if source is None:
            named = model.config.vocoder_name
            beside = Path(name) / named
            source = beside if Path(name).is_dir() and beside.is_dir() else named
        return cls(model, vocoder_source=source, name_or_path=name, device=device)

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """The model in the released layout and, when one is loaded or named by a folder, its
        vocoder in ``vocoder/`` (named so in config.yaml): the folder then decodes offline."""
        out = Path(out_dir)
        vocoder = self._vocoder
        if vocoder is None and self._vocoder_source is not None and Path(self._vocoder_source).is_dir():
            vocoder = self.vocoder
        named = self.model.config.vocoder_name
        if vocoder is not None:
            self.model.config.vocoder_name = VOCODER_FOLDER
        try:
            self.model.save_pretrained(out)
        finally:
            self.model.config.vocoder_name = named
        if vocoder is not None:
            vocoder.save_pretrained(out / VOCODER_FOLDER, safe_serialization=True)
        return out

    # --- identity / device -------------------------------------------------------------------------

    @property
    def name_or_path(self) -> str:
        return self._name_or_path

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.model.to_config_dict(), self.model)
        return self._fingerprint

    @property
    def device(self) -> torch.device:
        return self._device

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "embedding_dim": self.embedding_dim,
            "mixed_precision": str(self.model.mixed_precision),
        }

    @property
    def vocoder(self):
        """The vocoder, loaded on first use (see the module docstring for which one)."""
        if self._vocoder is None:
            from kanade_tokenizer.vocoders import VocoderLoadError, load_vocoder_for

            source = self._vocoder_source
            try:
                self._vocoder = load_vocoder_for(self.model, None if source is None else str(source), self._device)
            except (OSError, ValueError, VocoderLoadError) as exc:
                raise UserError(
                    f"Kanade codec {self._name_or_path}: cannot load its vocoder {source!s}: {exc}"
                ) from None
        return self._vocoder

    # --- lengths -------------------------------------------------------------------------------------

    def num_frames(self, num_samples: int) -> int:
        return int(self.model.num_tokens(int(num_samples))) if num_samples > 0 else 0

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return torch.tensor([self.num_frames(int(n)) for n in lengths.reshape(-1).tolist()], dtype=torch.int64)

    # --- encode ----------------------------------------------------------------------------------------

    def encode_with_embeddings(
        self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`encode` plus each clip's global embedding, ``(B, embedding_dim)`` float32.

        Runs :meth:`KanadeModel.encode_batch`, whose items equal one-clip-at-a-time encoding.
        A clip too short for one token has no tokens, and its embedding is zeros.
        """
        waveforms, lengths = mono_batch(waveforms, lengths)
        batch = waveforms.shape[0]
        frames = self.frame_lengths(lengths)
        codes = torch.zeros(batch, 1, int(frames.max()) if batch else 0, dtype=torch.int64)
        embeddings = torch.zeros(batch, self.embedding_dim, dtype=torch.float32)
        usable = [b for b in range(batch) if int(frames[b]) > 0]
        if usable:
            items = [waveforms[b, : int(lengths[b])].float() for b in usable]
            features = self.model.encode_batch(items)
            for b, feats in zip(usable, features):
                tokens = feats.content_token_indices.to("cpu", torch.int64)
                codes[b, 0, : tokens.numel()] = tokens
                embeddings[b] = feats.global_embedding.to("cpu", torch.float32)
        return codes.to(self._device), frames.to(self._device), embeddings.to(self._device)

    def encode(
        self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        codes, frames, _ = self.encode_with_embeddings(waveforms, lengths)
        return codes, frames

    def embed(self, waveform: torch.Tensor) -> torch.Tensor:
        """The global embedding ``(embedding_dim,)`` of one clip at :attr:`sample_rate`: its voice."""
        wave = torch.as_tensor(waveform, dtype=torch.float32).reshape(-1)
        if wave.numel() < self.model.min_audio_length():
            raise UserError(
                f"the voice clip is too short ({wave.numel()} samples); Kanade needs at least "
                f"{self.model.min_audio_length()} samples at {self.sample_rate} Hz, a few seconds are best"
            )
        feats = self.model.encode(wave, return_content=False)
        return feats.global_embedding.to("cpu", torch.float32)

    def encode_rows(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        codes, frames, embeddings = self.encode_with_embeddings(waveforms, lengths)
        rows = self.dataset_columns(codes, frames)
        for row, embedding in zip(rows, embeddings.to("cpu").tolist()):
            row[EMBEDDING_COLUMN] = embedding
        return frames, rows

    def dataset_features(self) -> dict[str, Any]:
        from datasets import List, Value

        return {**super().dataset_features(), EMBEDDING_COLUMN: List(Value("float32"))}

    # --- decode ------------------------------------------------------------------------------------------

    def decode(
        self,
        codes: torch.Tensor,
        frame_lengths: torch.Tensor | None = None,
        global_embeddings: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode as the contract says; ``global_embeddings`` ``(B, embedding_dim)`` is the voice
        of each item (default: :attr:`voice` for all)."""
        from kanade_tokenizer.vocoders import mel_to_audio

        if codes.ndim == 2:
            codes = codes.unsqueeze(0)
        if codes.ndim != 3 or codes.shape[1] != 1:
            raise ValueError(f"decode expects codes of shape (B, 1, F), got {tuple(codes.shape)}")
        batch, _, max_frames = codes.shape
        if frame_lengths is None:
            frame_lengths = torch.full((batch,), max_frames, dtype=torch.int64)
        frame_lengths = torch.as_tensor(frame_lengths, dtype=torch.int64).to("cpu")
        if frame_lengths.shape != (batch,) or bool((frame_lengths < 0).any()) or bool(
            (frame_lengths > max_frames).any()
        ):
            raise ValueError(f"frame_lengths must be {batch} values in [0, {max_frames}]")
        codes = codes.to("cpu", torch.int64)
        for b in range(batch):
            valid = codes[b, 0, : int(frame_lengths[b])]
            if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= self.codebook_size):
                raise ValueError(
                    f"codes must lie in [0, {self.codebook_size}); got [{int(valid.min())}, {int(valid.max())}]"
                )
        embeddings = self._voices(global_embeddings, batch)
        sample_lengths = frame_lengths * self.samples_per_frame
        audio = torch.zeros(batch, int(max_frames) * self.samples_per_frame, dtype=torch.float32)
        todo = [b for b in range(batch) if int(frame_lengths[b]) > 0]
        if todo:
            mels = self.model.decode_batch(
                [embeddings[b] for b in todo],
                content_token_indices=[codes[b, 0, : int(frame_lengths[b])] for b in todo],
                target_audio_lengths=[int(sample_lengths[b]) for b in todo],
            )
            vocoder = self.vocoder
            for b, mel in zip(todo, mels):
                audio[b, : int(sample_lengths[b])] = mel_to_audio(vocoder, mel, int(sample_lengths[b]))
        return audio.to(self._device), sample_lengths.to(self._device)

    def _voices(self, global_embeddings: torch.Tensor | None, batch: int) -> torch.Tensor:
        if global_embeddings is None:
            if self.voice is None:
                raise ValueError(
                    "Kanade decoding needs a voice: a global embedding per item, or codec.voice "
                    "(a reference clip's embedding, e.g. `synthesize --voice ref.wav`)"
                )
            global_embeddings = self.voice
        embeddings = torch.as_tensor(global_embeddings, dtype=torch.float32).to("cpu")
        if embeddings.ndim == 1:
            embeddings = embeddings.expand(batch, -1)
        if embeddings.shape != (batch, self.embedding_dim):
            raise ValueError(
                f"global embeddings must be ({batch}, {self.embedding_dim}), got {tuple(embeddings.shape)}"
            )
        return embeddings
