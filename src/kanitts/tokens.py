"""The token space of a KaniTTS model: the one place that knows token ids.

A codec frame is `num_codebooks` codes, one per codebook. In the language model's vocabulary a
frame becomes `num_codebooks` consecutive tokens, codebook i's code c being
``audio_tokens_start + i * codebook_size + c``. Training sequences and inference prompts wrap the
text and the audio in the special tokens of model_config.yaml, exactly as the reference
pipeline does, so models and checkpoints carry over between the two.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from kanitts.config import ModelConfig


@dataclass(frozen=True)
class DecodedFrames:
    """Codec frames recovered from a generated token stream, with what went wrong, if anything.

    `codes` has shape (num_codebooks, frames). `truncated` is True when the stream had no
    end_of_speech (generation hit max_new_tokens) or when a broken tail was dropped; `problems`
    says where and why, for logs and evaluation metrics. Never raises for a bad stream: one bad
    sample must not fail a batch.
    """

    codes: np.ndarray
    truncated: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return int(self.codes.shape[1])


@dataclass(frozen=True)
class TokenLayout:
    text_vocab_size: int
    start_of_text: int
    end_of_text: int
    start_of_speech: int
    end_of_speech: int
    start_of_human: int
    end_of_human: int
    start_of_ai: int
    end_of_ai: int
    pad: int
    audio_tokens_start: int
    num_codebooks: int
    codebook_size: int

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> TokenLayout:
        s = cfg.special_tokens
        return cls(
            text_vocab_size=cfg.tokenizer.vocab_size,
            start_of_text=s.start_of_text,
            end_of_text=s.end_of_text,
            start_of_speech=s.start_of_speech,
            end_of_speech=s.end_of_speech,
            start_of_human=s.start_of_human,
            end_of_human=s.end_of_human,
            start_of_ai=s.start_of_ai,
            end_of_ai=s.end_of_ai,
            pad=s.pad_token,
            audio_tokens_start=cfg.codec.audio_tokens_start,
            num_codebooks=cfg.codec.num_codebooks,
            codebook_size=cfg.codec.codebook_size,
        )

    # --- the audio part ------------------------------------------------------------------

    @property
    def audio_tokens_end(self) -> int:
        """One past the highest audio token id."""
        return self.audio_tokens_start + self.num_codebooks * self.codebook_size

    @property
    def vocab_size(self) -> int:
        """The smallest model vocabulary that holds every id of this layout."""
        return max(self.audio_tokens_end, self.pad + 1, self.end_of_ai + 1)

    @property
    def min_new_tokens(self) -> int:
        """The fewest generated tokens that hold one frame: start_of_ai, start_of_speech, its codes."""
        return 2 + self.num_codebooks

    @property
    def codebook_offsets(self) -> np.ndarray:
        """Token id of code 0 in each codebook, shape (num_codebooks,)."""
        return self.audio_tokens_start + self.codebook_size * np.arange(self.num_codebooks, dtype=np.int64)

    @staticmethod
    def dedup_frames(frames: np.ndarray) -> np.ndarray:
        """Drop each frame equal to the one before it (all codes equal); frames is (F, C).

        The reference pipeline does this before training, which shortens silences; the model
        learns that, so our training data must do the same.
        """
        if len(frames) < 2:
            return frames
        keep = np.empty(len(frames), dtype=bool)
        keep[0] = True
        np.any(frames[1:] != frames[:-1], axis=1, out=keep[1:])
        return frames[keep]

    def frames_to_ids(self, codes: np.ndarray, dedup: bool = True) -> np.ndarray:
        """Codec codes (num_codebooks, frames) -> flat audio token ids, frame by frame."""
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[0] != self.num_codebooks:
            raise ValueError(f"expected codes of shape ({self.num_codebooks}, frames), got {codes.shape}")
        frames = codes.T
        if dedup:
            frames = self.dedup_frames(frames)
        return (frames + self.codebook_offsets).reshape(-1)

    def ids_to_frames(self, ids: Sequence[int] | np.ndarray) -> DecodedFrames:
        """Generated token ids -> codec codes (num_codebooks, frames), keeping what is valid.

        Takes the span after the first start_of_speech (or the whole stream if there is none)
        up to the first end_of_speech. Each position must hold a token of its own codebook;
        at the first one that does not, and at a partial last frame, the rest is dropped and
        the problem recorded with its position.
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        problems: list[str] = []
        starts = np.flatnonzero(ids == self.start_of_speech)
        begin = int(starts[0]) + 1 if len(starts) else 0
        if not len(starts) and len(ids) and not self.is_audio(int(ids[0])):
            problems.append("no start_of_speech token")
        ends = np.flatnonzero(ids[begin:] == self.end_of_speech)
        truncated = not len(ends)
        if truncated:
            problems.append("no end_of_speech token: generation stopped early, audio may be cut off")
        span = ids[begin: begin + int(ends[0])] if len(ends) else ids[begin:]

        c = self.num_codebooks
        slot = np.arange(len(span)) % c
        low = self.audio_tokens_start + slot * self.codebook_size
        bad = np.flatnonzero((span < low) | (span >= low + self.codebook_size))
        usable = len(span)
        if len(bad):
            first = int(bad[0])
            problems.append(
                f"token {int(span[first])} at audio position {first} (frame {first // c}) is not a "
                f"codebook-{first % c} token; dropped frames from {first // c} on"
            )
            usable = first - first % c
            truncated = True
        elif len(span) % c:
            problems.append(f"partial last frame ({len(span) % c} of {c} tokens) dropped")
            usable = len(span) - len(span) % c
            truncated = True
        frames = span[:usable].reshape(-1, c) - self.codebook_offsets
        return DecodedFrames(codes=frames.T.copy(), truncated=truncated, problems=problems)

    def is_audio(self, token_id: int) -> bool:
        return self.audio_tokens_start <= token_id < self.audio_tokens_end

    # --- sequences -----------------------------------------------------------------------

    @staticmethod
    def text_prompt(text: str, speaker: str | None = None) -> str:
        """The text the model reads: 'alice: Hello' with a speaker, as the reference builds it."""
        return f"{speaker.lower()}: {text}" if speaker else text

    def prompt_ids(self, text_ids: Sequence[int]) -> list[int]:
        """Inference prompt: the model goes on with start_of_ai, start_of_speech and audio.

        `text_ids` is the tokenizer's encoding with its special tokens (it starts with BOS).
        """
        return [self.start_of_human, *text_ids, self.end_of_text, self.end_of_human]

    def training_ids(self, text_ids: Sequence[int], audio_ids: Sequence[int] | np.ndarray) -> list[int]:
        """One training sequence: the prompt, then the speech the model must produce."""
        return [
            *self.prompt_ids(text_ids),
            self.start_of_ai,
            self.start_of_speech,
            *np.asarray(audio_ids, dtype=np.int64).tolist(),
            self.end_of_speech,
            self.end_of_ai,
        ]

    @staticmethod
    def num_prompt_tokens(num_text_ids: int) -> int:
        """Length of the prompt part of a training sequence: what the model reads, not writes.

        With `loss_on: audio` these positions get no loss; the model still learns to produce
        start_of_ai and start_of_speech, which it generates itself at inference.
        """
        return num_text_ids + 3
