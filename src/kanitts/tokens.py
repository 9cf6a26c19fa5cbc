"""The token space of a KaniTTS model: the one place that knows token ids.

A codec frame is `num_codebooks` codes, one per codebook. In the language model's vocabulary a
frame becomes `num_codebooks` consecutive tokens, codebook i's code c being
``audio_tokens_start + i * codebook_size + c``. Training sequences and inference prompts wrap the
text and the audio in the special tokens of model_config.yaml, exactly as the reference
pipeline does, so models and checkpoints carry over between the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from kanitts.config import ModelConfig


@dataclass(frozen=True)
class DecodedFrames:
    """Codec frames recovered from a generated token stream, with what went wrong, if anything.

    `codes` has shape (num_codebooks, frames). `dropped_frames` counts the broken frames left
    out (a bad token costs its own frame, not the ones after it). `truncated` is True when the
    end of the audio is missing: the stream had no end marker (generation hit max_new_tokens)
    or its last frame is broken or incomplete. `problems` says where and why, for logs and evaluation
    metrics. Never raises for a bad stream: one bad sample must not fail a batch.
    """

    codes: np.ndarray
    truncated: bool = False
    problems: list[str] = field(default_factory=list)
    dropped_frames: int = 0

    @property
    def num_frames(self) -> int:
        return int(self.codes.shape[1])


# At most this many broken places are described one by one; the rest are counted.
MAX_DESCRIBED_PROBLEMS = 5


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
    # special_tokens.speaker_embedding; None: the id after pad (see :attr:`speaker_slot`)
    speaker_embedding: int | None = None

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
            speaker_embedding=s.speaker_embedding,
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
        frames = np.asarray(frames)
        return frames[first_of_runs(frames, np.array([len(frames)]))]

    def frames_to_ids(self, codes: np.ndarray, dedup: bool = True) -> np.ndarray:
        """Codec codes (num_codebooks, frames) -> flat audio token ids, frame by frame."""
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[0] != self.num_codebooks:
            raise ValueError(f"expected codes of shape ({self.num_codebooks}, frames), got {codes.shape}")
        ids, _ = self.rows_to_ids(codes.T, np.array([codes.shape[1]]), dedup)
        return ids

    def rows_to_ids(
        self, frames: np.ndarray, frame_counts: np.ndarray, dedup: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """The audio token ids of many rows at once, end to end, and each row's frame count.

        `frames` is (sum of frame_counts, num_codebooks): the rows' frames end to end (the
        dataset step passes a whole batch, so no Python loop runs over rows). With `dedup`, a
        frame equal to the one before it in the same row is dropped (see :meth:`dedup_frames`);
        the counts returned are the frames left per row.
        """
        frame_counts = np.asarray(frame_counts, dtype=np.int64)
        if dedup:
            keep = first_of_runs(frames, frame_counts)
            row_of_frame = np.repeat(np.arange(len(frame_counts)), frame_counts)
            frame_counts = np.bincount(row_of_frame[keep], minlength=len(frame_counts))
            frames = frames[keep]
        return (frames + self.codebook_offsets).reshape(-1), frame_counts

    def ids_to_frames(self, ids: Sequence[int] | np.ndarray) -> DecodedFrames:
        """Generated token ids -> codec codes (num_codebooks, frames), keeping every whole frame.

        Where the audio is (the same rule for every stream):

        - it starts after the last start_of_speech; without one, after the last start_of_ai;
          without either, at the first audio token;
        - it ends at the first end_of_speech (generation's eos), end_of_ai or pad token after
          that; without one, at the end of the stream (``truncated``).

        In between, a frame is ``num_codebooks`` consecutive tokens of codebooks 0, 1, ... in
        order. Each one is kept; anything else (a token of the wrong codebook, a text or
        special token, a frame cut short) is dropped up to the next codebook-0 token, where
        frames start again, and counted in ``dropped_frames`` (the frames its audio tokens
        would have made, at least one where audio tokens were lost).
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        problems: list[str] = []
        begin = self._audio_begin(ids, problems)
        ends = np.flatnonzero(np.isin(ids[begin:], (self.end_of_speech, self.end_of_ai, self.pad)))
        truncated = not len(ends)
        if truncated:
            problems.append("no end_of_speech token: generation stopped early, audio may be cut off")
        span = ids[begin: begin + int(ends[0])] if len(ends) else ids[begin:]

        c = self.num_codebooks
        audio = (span >= self.audio_tokens_start) & (span < self.audio_tokens_end)
        book = np.where(audio, (span - self.audio_tokens_start) // self.codebook_size, -1)
        # Windows of codebooks 0..c-1 cannot overlap (only their first token is codebook 0),
        # so every one found is kept.
        whole = np.zeros(len(span), dtype=bool)
        if len(span) >= c:
            windows = np.lib.stride_tricks.sliding_window_view(book, c)
            whole[: len(windows)] = (windows == np.arange(c)).all(axis=1)
        starts = np.flatnonzero(whole)
        covered = np.zeros(len(span), dtype=bool)
        covered[(starts[:, None] + np.arange(c)).reshape(-1)] = True

        dropped, broken, partial = 0, [], None
        for run_start, run_end in _runs(~covered):
            frame = int(np.count_nonzero(starts < run_start)) + dropped
            lost = -(-int(np.count_nonzero(audio[run_start:run_end])) // c)
            dropped += lost
            if run_end == len(span) and lost:
                truncated = True  # the last frame is broken: the end of the audio is missing
            expected = np.arange(run_end - run_start) % c
            wrong = np.flatnonzero(book[run_start:run_end] != expected)
            if len(wrong):
                at = run_start + int(wrong[0])
                what = (f"token {int(span[at])} at audio position {at} (frame {frame}) is not a "
                        f"codebook-{int(expected[wrong[0]])} token")
            elif run_end == len(span):
                partial = f"partial last frame ({run_end - run_start} of {c} tokens) dropped"
                continue
            else:
                what = f"frame {frame} has only {run_end - run_start} of {c} tokens"
            cost = f"dropped {lost} frame(s)" if lost else f"dropped {run_end - run_start} token(s)"
            broken.append(f"{what}; {cost}" + (", kept the frames around it" if len(starts) else ""))
        problems.extend(broken[:MAX_DESCRIBED_PROBLEMS])
        if len(broken) > MAX_DESCRIBED_PROBLEMS:
            problems.append(f"... and {len(broken) - MAX_DESCRIBED_PROBLEMS} more broken place(s)")
        if partial:
            problems.append(partial)
        if dropped:
            problems.append(f"{dropped} of {len(starts) + dropped} frame(s) dropped as broken")
        frames = span[(starts[:, None] + np.arange(c))] - self.codebook_offsets
        return DecodedFrames(codes=frames.T.copy(), truncated=truncated, problems=problems, dropped_frames=dropped)

    def _audio_begin(self, ids: np.ndarray, problems: list[str]) -> int:
        """Where the audio of a generated stream starts (see :meth:`ids_to_frames`)."""
        for marker in (self.start_of_speech, self.start_of_ai):
            found = np.flatnonzero(ids == marker)
            if len(found):
                if marker != self.start_of_speech:
                    problems.append("no start_of_speech token: audio read from after start_of_ai")
                return int(found[-1]) + 1
        audio = np.flatnonzero((ids >= self.audio_tokens_start) & (ids < self.audio_tokens_end))
        begin = int(audio[0]) if len(audio) else len(ids)
        if begin:
            problems.append(f"no start_of_speech token: {begin} token(s) before the first audio token skipped")
        return begin

    def is_audio(self, token_id: int) -> bool:
        return self.audio_tokens_start <= token_id < self.audio_tokens_end

    # --- sequences -----------------------------------------------------------------------

    @staticmethod
    def text_prompt(text: str, speaker: str | None = None) -> str:
        """The text the model reads: 'alice: Hello' with a speaker, as the reference builds it."""
        return f"{speaker.lower()}: {text}" if speaker else text

    @property
    def speaker_slot(self) -> int:
        """The placeholder id of the speaker-embedding slot (special_tokens.speaker_embedding, else
        the id after pad). Its input embedding is replaced by the projected speaker embedding, and it
        never carries a loss, so the id only marks the place."""
        return self.pad + 1 if self.speaker_embedding is None else self.speaker_embedding

    def with_speaker_slot(self, ids: Sequence[int]) -> list[int]:
        """A sequence with the speaker slot inserted right after its start_of_human (position 0),
        where KaniTTS-2 puts its speaker embedding."""
        ids = list(ids)
        if not ids or ids[0] != self.start_of_human:
            raise ValueError(
                f"a sequence must start with start_of_human ({self.start_of_human}) to take a speaker slot; "
                f"this one starts with {ids[:1]}"
            )
        return [ids[0], self.speaker_slot, *ids[1:]]

    def prompt_ids(self, text_ids: Sequence[int], speaker_slot: bool = False) -> list[int]:
        """Inference prompt: the model goes on with start_of_ai, start_of_speech and audio.

        `text_ids` is the tokenizer's encoding with its special tokens (it starts with BOS).
        With `speaker_slot`, the slot of a speaker-conditioned model follows start_of_human.
        """
        ids = [self.start_of_human, *text_ids, self.end_of_text, self.end_of_human]
        return self.with_speaker_slot(ids) if speaker_slot else ids

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


def first_of_runs(frames: np.ndarray, frame_counts: np.ndarray) -> np.ndarray:
    """Mask of frames that differ from the frame before them in the same row.

    `frames` is (sum of frame_counts, num_codebooks): rows' frames end to end. A row's first
    frame is always kept, even if it equals the previous row's last.
    """
    keep = np.ones(len(frames), dtype=bool)
    if len(frames) > 1:
        np.any(frames[1:] != frames[:-1], axis=1, out=keep[1:])
    frame_counts = np.asarray(frame_counts, dtype=np.int64)
    starts = np.cumsum(frame_counts) - frame_counts
    keep[starts[frame_counts > 0]] = True
    return keep


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True in ``mask``."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))
