"""The Codec interface: waveforms in, discrete codes out, and back.

Everything downstream of a codec (dataset preparation, the token layout, inference) talks to
this class only. A codec is described by a handful of numbers (sample rate, frame rate, number of
codebooks, codebook size) and two batched operations:

- ``encode(waveforms (B, T) float, lengths (B,)) -> codes (B, K, F) int64, frame_lengths (B,)``
- ``decode(codes (B, K, F) int, frame_lengths (B,)) -> waveforms (B, T) float, sample_lengths (B,)``

Items in a batch may have different lengths: positions past an item's length are padding, are
ignored on the way in, and are zero on the way out. ``frame_lengths`` rounds up
(``ceil(samples / samples_per_frame)``), which is how the reference KaniTTS datasets count frames.

How the codes land in a dataset row is also the codec's business (:meth:`Codec.dataset_columns`),
so a codec with another layout (the Kanade tokenizer: one codebook and a global embedding) plugs
into ``kanitts prepare`` without changing it.
"""

from __future__ import annotations

import abc
import hashlib
import json
import math
from pathlib import Path
from typing import Any, ClassVar

import torch


def mono_batch(waveforms: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, T)`` waveforms and their ``(B,)`` CPU int64 lengths from what :meth:`Codec.encode` takes.

    A ``(T,)`` clip or ``(B, 1, T)`` batch is reshaped; no lengths means every clip is ``T``
    long. Every codec checks its input here, so they all accept and refuse the same things.
    """
    if waveforms.ndim == 1:
        waveforms = waveforms.unsqueeze(0)
    elif waveforms.ndim == 3 and waveforms.shape[1] == 1:
        waveforms = waveforms.squeeze(1)
    if waveforms.ndim != 2:
        raise ValueError(f"encode expects (B, T) mono waveforms, got shape {tuple(waveforms.shape)}")
    batch, total = waveforms.shape
    if lengths is None:
        lengths = torch.full((batch,), total, dtype=torch.int64)
    lengths = torch.as_tensor(lengths, dtype=torch.int64).to("cpu")
    if lengths.shape != (batch,) or bool((lengths < 0).any()) or bool((lengths > total).any()):
        raise ValueError(f"lengths must be {batch} values in [0, {total}], got {lengths.tolist()}")
    return waveforms, lengths


def weights_fingerprint(config: dict[str, Any], module: torch.nn.Module) -> str:
    """16 hex digits of a hash over ``config`` and every tensor of ``module``'s state dict.

    Dataset caches and eval score caches are keyed by it, so two codecs with the same
    architecture but other weights never share tokens or scores.
    """
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for key, tensor in module.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class Codec(abc.ABC):
    """A neural audio codec with discrete codes (see the module docstring for the contract)."""

    #: registry name, as used by :func:`kanitts.codecs.load_codec`
    kind: ClassVar[str] = ""

    sample_rate: int
    num_codebooks: int
    codebook_size: int
    samples_per_frame: int

    # --- numbers --------------------------------------------------------------------------

    @property
    def frame_rate(self) -> float:
        """Frames per second of audio (12.5 for the 22 kHz NanoCodec)."""
        return self.sample_rate / self.samples_per_frame

    def num_frames(self, num_samples: int) -> int:
        """Frames a clip of ``num_samples`` samples encodes to: ``ceil(num_samples / samples_per_frame)``."""
        return math.ceil(int(num_samples) / self.samples_per_frame)

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Vectorised :meth:`num_frames` (ceil division), as int64."""
        lengths = lengths.to(torch.int64)
        return (lengths + self.samples_per_frame - 1) // self.samples_per_frame

    # --- identity ---------------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def name_or_path(self) -> str:
        """Where the weights came from (Hub id, local folder, or ``"random"``)."""

    @property
    @abc.abstractmethod
    def fingerprint(self) -> str:
        """A short string that changes whenever the weights or the configuration change.

        ``kanitts prepare --resume`` compares it to refuse mixing codes of two different codecs.
        """

    def describe(self) -> dict[str, Any]:
        """What goes into a prepared dataset's manifest about the codec."""
        return {
            "kind": self.kind,
            "name_or_path": self.name_or_path,
            "fingerprint": self.fingerprint,
            "sample_rate": self.sample_rate,
            "frame_rate": self.frame_rate,
            "num_codebooks": self.num_codebooks,
            "codebook_size": self.codebook_size,
            "samples_per_frame": self.samples_per_frame,
        }

    # --- device -----------------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def device(self) -> torch.device:
        """The device the codec runs on."""

    # --- the two operations -------------------------------------------------------------------

    @abc.abstractmethod
    def encode(
        self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a padded batch of mono waveforms at :attr:`sample_rate`.

        Args:
            waveforms: ``(B, T)`` float tensor; item ``b`` is ``waveforms[b, :lengths[b]]``.
            lengths: ``(B,)`` integer tensor of valid samples; ``None`` means all ``T``.

        Returns:
            ``codes`` ``(B, num_codebooks, F)`` int64 on the codec's device, where only
            ``codes[b, :, :frame_lengths[b]]`` is meaningful (the rest is 0), and
            ``frame_lengths`` ``(B,)`` int64 with ``ceil(lengths / samples_per_frame)``.
        """

    @abc.abstractmethod
    def decode(
        self, codes: torch.Tensor, frame_lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode a padded batch of codes.

        Args:
            codes: ``(B, num_codebooks, F)`` integer tensor with values in ``[0, codebook_size)``
                for the valid frames; padding frames are ignored.
            frame_lengths: ``(B,)`` valid frames per item; ``None`` means all ``F``.

        Returns:
            ``waveforms`` ``(B, F * samples_per_frame)`` float32, zero past each item's end, and
            ``sample_lengths`` ``(B,)`` int64 = ``frame_lengths * samples_per_frame``.
        """

    # --- streaming --------------------------------------------------------------------------

    #: Frames before a chunk that :meth:`decode_tail` decodes again as left context, so that a
    #: causal decoder's state at the chunk's start is (nearly) what it is in a whole-utterance
    #: decode; None decodes the whole prefix every time (exact, cost growing with the length).
    stream_context_frames: int | None = None

    def decode_tail(self, codes: torch.Tensor, start: int, **decode_kwargs: Any) -> torch.Tensor:
        """The samples of frames ``start:`` of one utterance's ``codes`` ``(num_codebooks, F)``.

        Streaming decodes each new chunk of frames as it is generated: joined, the tails equal
        ``decode(codes)`` up to what the left context of :attr:`stream_context_frames` leaves out
        (docs/serving.md gives the measured difference). Returns a 1-D float tensor.
        ``decode_kwargs`` go to :meth:`decode` (Kanade: the row's ``global_embeddings``).
        """
        context = self.stream_context_frames
        begin = 0 if context is None else max(0, start - context)
        audio, _ = self.decode(codes[None, :, begin:], **decode_kwargs)
        return audio[0, (start - begin) * self.samples_per_frame:]

    # --- loading ----------------------------------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        **kwargs: Any,
    ) -> Codec:
        """Load from a Hugging Face Hub id or a local folder."""

    @abc.abstractmethod
    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Write a local folder that :meth:`from_pretrained` reads back (tests and offline use)."""

    # --- dataset layout -----------------------------------------------------------------------

    @property
    def code_columns(self) -> list[str]:
        """Dataset column of each codebook, in codebook order: what the registry declares for :attr:`kind`."""
        from kanitts.codecs.registry import code_columns

        return code_columns(self.kind, self.num_codebooks)

    def dataset_features(self) -> dict[str, Any]:
        """``datasets`` feature types of the columns :meth:`dataset_columns` fills."""
        from datasets import List, Value

        features: dict[str, Any] = {name: List(Value("int64")) for name in self.code_columns}
        features["encoded_len"] = Value("int64")
        return features

    def encode_rows(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """Encode a padded batch straight into dataset row fragments: ``(frame_lengths, rows)``.

        What ``kanitts prepare`` calls. The default is :meth:`encode` then :meth:`dataset_columns`;
        a codec with more than codes per clip (Kanade's global embedding) adds its columns here.
        """
        codes, frame_lengths = self.encode(waveforms, lengths)
        return frame_lengths, self.dataset_columns(codes, frame_lengths)

    def dataset_columns(self, codes: torch.Tensor, frame_lengths: torch.Tensor) -> list[dict[str, Any]]:
        """Turn an encoded batch into one dataset row fragment per item.

        The default writes each codebook as a list of ints under :attr:`code_columns` and the
        frame count as ``encoded_len``.
        """
        codes_np = codes.detach().to("cpu", torch.int64).numpy()
        lens = frame_lengths.detach().to("cpu", torch.int64).tolist()
        rows: list[dict[str, Any]] = []
        for b, n in enumerate(lens):
            row: dict[str, Any] = {
                name: codes_np[b, k, :n].tolist() for k, name in enumerate(self.code_columns)
            }
            row["encoded_len"] = int(n)
            rows.append(row)
        return rows
