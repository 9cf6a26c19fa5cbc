"""What the server adds to ``generate``: sampling and stopping per row, and audio as it is made.

``model.generate`` takes one temperature, one top-p and one repetition penalty for the whole
batch, draws every row's token from one random stream, and stops a row only at its end token. A
server batches requests that each bring their own settings and seed, and must stop a row whose
client left or whose time ran out. So generation runs greedy over the scores of
:class:`RowSampler`, which applies each row's settings and draws each row's token from the row's
own generator (a row's tokens therefore do not depend on what it is batched with);
:class:`RowStopper` ends rows one by one; :class:`FrameStreamer` receives every new token and
decodes the frames of each row in chunks while the rest is still being generated.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from kanitts.codecs.base import Codec
from kanitts.tokens import DecodedFrames, TokenLayout


@dataclass(frozen=True)
class Sampling:
    """One request's generation settings (``seed`` None: a fresh random one)."""

    do_sample: bool
    temperature: float
    top_p: float
    repetition_penalty: float
    max_new_tokens: int
    seed: int | None = None


class RowSampler:
    """A logits processor that picks every row's next token with that row's settings.

    The scores it returns are 0 for the picked token and -inf elsewhere, so ``generate`` runs
    with ``do_sample=False`` and takes exactly that token. Like transformers' processors:
    repetition penalty over the row's tokens (its left padding excluded), temperature, top-p
    (nucleus) filtering; then one uniform draw per row from its own ``torch.Generator`` picks
    from the cumulative distribution (inverse-CDF sampling).
    """

    def __init__(self, settings: Sequence[Sampling], seeds: Sequence[int], prompt_starts: Sequence[int]):
        self.greedy = torch.tensor([not s.do_sample for s in settings])
        self.temperature = torch.tensor([s.temperature if s.do_sample else 1.0 for s in settings])
        self.top_p = torch.tensor([s.top_p for s in settings])
        self.penalty = torch.tensor([s.repetition_penalty for s in settings])
        self.generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        self.prompt_starts = torch.tensor(list(prompt_starts))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        device = scores.device
        scores = scores.float()
        # Repetition penalty: padding positions point at the row's first real token instead, so
        # they count nothing the row does not already hold.
        positions = torch.arange(input_ids.shape[1], device=device)[None, :]
        starts = self.prompt_starts.to(device)[:, None]
        first_real = input_ids.gather(1, starts)
        seen_ids = torch.where(positions >= starts, input_ids, first_real)
        penalty = self.penalty.to(device)[:, None]
        seen = scores.gather(1, seen_ids)
        scores = scores.scatter(1, seen_ids, torch.where(seen < 0, seen * penalty, seen / penalty))

        scores = scores / self.temperature.to(device)[:, None]
        ordered, order = scores.sort(dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        cumulative = probs.cumsum(dim=-1)
        probs = probs.masked_fill(cumulative - probs > self.top_p.to(device)[:, None], 0.0)
        cdf = probs.cumsum(dim=-1)
        draws = torch.stack([torch.rand((), generator=g) for g in self.generators]).to(device)
        pick = torch.searchsorted(cdf, (draws * cdf[:, -1])[:, None].contiguous()).clamp(max=cdf.shape[1] - 1)
        pick = torch.where(self.greedy.to(device)[:, None], torch.zeros_like(pick), pick)
        chosen = order.gather(1, pick)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(1, chosen, 0.0)


class RowStopper(StoppingCriteria):
    """Ends each row on its own: its client left, its deadline passed, or its token budget is spent."""

    def __init__(self, should_stop: Sequence[Callable[[], bool]], budgets: Sequence[int], prompt_width: int):
        self.should_stop = list(should_stop)
        self.budgets = list(budgets)
        self.prompt_width = prompt_width
        self.stopped = [False] * len(self.budgets)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_width
        for row, (stop, budget) in enumerate(zip(self.should_stop, self.budgets)):
            if not self.stopped[row] and (step >= budget or stop()):
                self.stopped[row] = True
        return torch.tensor(self.stopped, device=input_ids.device)


class FrameStreamer(BaseStreamer):
    """Receives every generated token; hands each row's audio on in chunks of whole frames.

    Every ``chunk_frames`` frames, the row's tokens so far are parsed with the layout's one rule
    (``TokenLayout.ids_to_frames``) and the new frames decoded with ``Codec.decode_tail`` (left
    context, so the joined chunks match a whole-utterance decode). A row ends at its end token or
    when :class:`RowStopper` stopped it; its last frames and what went wrong go to ``on_done``.
    """

    def __init__(
        self,
        layout: TokenLayout,
        codec: Codec,
        stopper: RowStopper,
        chunk_frames: int,
        on_audio: Callable[[int, np.ndarray], None],
        on_done: Callable[[int, DecodedFrames, int, str | None], None],
        voices: Sequence[torch.Tensor | None] | None = None,
    ):
        self.layout, self.codec, self.stopper = layout, codec, stopper
        #: each row's voice (a (dim,) global embedding) for a codec that decodes with one
        self.voices = list(voices) if voices is not None else [None] * len(stopper.budgets)
        self.chunk_tokens = chunk_frames * layout.num_codebooks
        self.on_audio, self.on_done = on_audio, on_done
        rows = len(stopper.budgets)
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.sent = [0] * rows
        self.finished = [False] * rows
        self.prompt_seen = False
        self.ends = {layout.end_of_speech, layout.end_of_ai}
        self.first_audio_at: float | None = None

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate hands over the prompt first
            self.prompt_seen = True
            return
        for row, token in enumerate(value.reshape(-1).tolist()):
            if self.finished[row]:
                continue
            tokens = self.tokens[row]
            tokens.append(int(token))
            if token in self.ends or self.stopper.stopped[row]:
                self._finish(row)
            elif (len(tokens) - 2) % self.chunk_tokens == 0 and len(tokens) > 2:
                self._send(row, self.layout.ids_to_frames(tokens))

    def end(self) -> None:
        for row in range(len(self.tokens)):
            if not self.finished[row]:
                self._finish(row)

    def _send(self, row: int, frames: DecodedFrames) -> str | None:
        if frames.num_frames <= self.sent[row]:
            return None
        try:
            voice = self.voices[row]
            extra = {} if voice is None else {"global_embeddings": voice[None]}
            audio = self.codec.decode_tail(torch.from_numpy(frames.codes), self.sent[row], **extra)
        except (RuntimeError, ValueError) as exc:
            return f"codec decoding failed: {exc}"
        self.sent[row] = frames.num_frames
        if self.first_audio_at is None:
            self.first_audio_at = time.perf_counter()
        self.on_audio(row, audio.float().to("cpu").numpy().astype(np.float32, copy=False))
        return None

    def _finish(self, row: int) -> None:
        self.finished[row] = True
        frames = self.layout.ids_to_frames(self.tokens[row])
        problem = self._send(row, frames)
        self.on_done(row, frames, len(self.tokens[row]), problem)
