"""The queue and the dynamic batcher between the HTTP handlers and one loaded model.

Handlers submit a :class:`Job` (a request's text pieces and settings) and read its audio from an
asyncio queue. One worker thread per model takes the rows waiting (one row per piece, first come
first served) as soon as it is free: it waits ``batch_wait_ms`` for more to arrive, then generates
up to ``max_batch_size`` rows together. A job's audio leaves in piece order: the first piece
streams as it is generated, later ones (generated alongside) follow, with a short silence between.

With a codec that has a voice embedding (Kanade) every job carries its voice's embedding, and
rows of different voices share a batch: the speaker slot of a conditioned model is filled with
each row's own embedding, and each row's audio is decoded with it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kanitts.config import ServerSection
from kanitts.inference import KaniTTS
from kanitts.serving.generation import FrameStreamer, RowSampler, RowStopper, Sampling
from kanitts.tokens import DecodedFrames

log = logging.getLogger("kanitts.serve")


class QueueFull(Exception):
    """The queue holds ``max_queue`` waiting requests; ``retry_after`` is an estimate in seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"the server is busy ({retry_after} s until a place is likely free)")
        self.retry_after = retry_after


class Stopped(Exception):
    """The engine is shutting down."""


@dataclass
class Done:
    """The last item of a job's audio queue."""

    frames: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    timed_out: bool = False
    cancelled: bool = False
    problems: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class EngineStats:
    """What the worker did, for /health, the tests and the benchmark."""

    batch_rows: list[int] = field(default_factory=list)  # rows of every batch generated
    stopped_rows: int = 0  # rows ended early because the client left or the time ran out
    generated_tokens: list[int] = field(default_factory=list)  # per finished row


@dataclass(frozen=True)
class Voice:
    """A voice a request may name: its speaker prefix, its embedding, and where that came from."""

    prefix: str | None
    embedding: Any
    source: str


def model_voices(tts: KaniTTS, config: ServerSection, clips: Mapping[str, Path]) -> dict[str, Voice]:
    """The named voices of a model whose codec has a voice embedding (none for another codec).

    A clip of ``server.voice_clips`` is embedded here, once; a training speaker (and a name of
    ``server.voices`` or ``server.default_voice``) speaks with its prefix (where the model trained
    with it: :meth:`KaniTTS.prompt_text`) and its mean embedding, as ``synthesize --speaker``.
    """
    if not hasattr(tts.codec, "embed"):
        return {}
    voices: dict[str, Voice] = {}
    speakers = [key.split(":", 1)[1] for key in tts.voices if key.startswith("speaker:")]
    for name in [*speakers, *config.voices, *([config.default_voice] if config.default_voice else [])]:
        embedding, source = tts.voice_embedding(speaker=name)
        note = tts.prefix_note(name)
        voices[name] = Voice(name, embedding, f"{source}; {note}" if note else source)
    for name, path in clips.items():  # a configured clip wins over a speaker of the same name
        embedding, _ = tts.voice_embedding(path)
        voices[name] = Voice(None, embedding, f"the voice of the clip {Path(path).name}")
    return voices


class Job:
    """One request: its pieces, settings and deadline, and the queue its audio arrives on."""

    def __init__(
        self,
        pieces: list[str],
        speaker: str | None,
        sampling: Sampling,
        timeout_s: float,
        silence_samples: int,
        loop: asyncio.AbstractEventLoop,
        embedding: Any = None,
    ):
        self.pieces, self.speaker, self.sampling = pieces, speaker, sampling
        #: the voice embedding (Kanade); None: the model's default voice for ``speaker``
        self.embedding = embedding
        self.seed = sampling.seed if sampling.seed is not None else secrets.randbits(62)
        self.submitted = time.monotonic()
        self.deadline = self.submitted + timeout_s
        self.silence = np.zeros(silence_samples, dtype=np.float32)
        self.loop = loop
        self.audio: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self._lock = threading.Lock()
        self._chunks: list[list[np.ndarray]] = [[] for _ in pieces]
        self._done: list[Done | None] = [None] * len(pieces)
        self._current = 0
        self.rows_pending = len(pieces)

    # --- the handler's side ---------------------------------------------------------------

    def cancel(self) -> None:
        """The client left: stop generating for it (rows in a running batch end at the next token)."""
        self.cancelled.set()

    def should_stop(self) -> bool:
        return self.cancelled.is_set() or time.monotonic() > self.deadline

    # --- the worker's side ----------------------------------------------------------------

    def piece_seed(self, piece: int) -> int:
        """Each piece its own random stream, derived from the request's seed."""
        return (self.seed * 1_000_003 + piece) % (2**63)

    def add_audio(self, piece: int, audio: np.ndarray) -> None:
        with self._lock:
            self._chunks[piece].append(audio)
            self._flush()

    def piece_done(self, piece: int, done: Done) -> None:
        with self._lock:
            self._done[piece] = done
            self._flush()

    def fail(self, message: str) -> None:
        with self._lock:
            self._current = len(self.pieces)
            self._emit(Done(error=message))

    def _flush(self) -> None:
        while self._current < len(self.pieces):
            chunks = self._chunks[self._current]
            while chunks:
                self._emit(chunks.pop(0))
            if self._done[self._current] is None:
                return
            self._current += 1
            if self._current < len(self.pieces) and len(self.silence):
                self._emit(self.silence)
        if self._current == len(self.pieces):
            self._current += 1  # emit the summary once
            parts = [d for d in self._done if d is not None]
            self._emit(Done(
                frames=sum(d.frames for d in parts),
                prompt_tokens=sum(d.prompt_tokens for d in parts),
                generated_tokens=sum(d.generated_tokens for d in parts),
                timed_out=any(d.timed_out for d in parts),
                cancelled=self.cancelled.is_set(),
                problems=[p for d in parts for p in d.problems],
            ))

    def _emit(self, item: np.ndarray | Done) -> None:
        try:
            self.loop.call_soon_threadsafe(self.audio.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass


class Engine:
    """One model, its waiting rows and the worker thread that generates them in batches."""

    def __init__(self, tts: KaniTTS, config: ServerSection, model_id: str,
                 voice_clips: Mapping[str, Path] | None = None):
        self.tts, self.config, self.model_id = tts, config, model_id
        #: the voices a request may name, for a codec with voice embeddings (empty: speaker prefixes)
        self.voices = model_voices(tts, config, voice_clips or {})
        self.stats = EngineStats()
        self._rows: deque[tuple[Job, int]] = deque()
        self._waiting_jobs = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._batch_seconds = 1.0  # running mean of a batch's duration, for Retry-After
        self._thread = threading.Thread(target=self._run, name=f"kanitts-serve-{model_id}", daemon=True)

    @property
    def sample_rate(self) -> int:
        return self.tts.codec.sample_rate

    def start(self) -> Engine:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            for job, _ in self._rows:
                job.fail("the server is shutting down")
            self._rows.clear()
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    @property
    def queued(self) -> int:
        return self._waiting_jobs

    def retry_after(self) -> int:
        """Seconds until the queue has likely moved on by one batch."""
        batches = self._waiting_jobs / self.config.max_batch_size + 1
        return max(1, math.ceil(batches * self._batch_seconds))

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping:
                raise Stopped()
            if self._waiting_jobs >= self.config.max_queue:
                raise QueueFull(self.retry_after())
            self._waiting_jobs += 1
            self._rows.extend((job, piece) for piece in range(len(job.pieces)))
            self._cond.notify_all()

    # --- the worker -------------------------------------------------------------------------

    def _take(self) -> list[tuple[Job, int]] | None:
        """The next batch: wait for a row, then up to ``batch_wait_ms`` for more (None: stopping)."""
        limit = self.config.max_batch_size
        with self._cond:
            while not self._rows and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            gather_until = time.monotonic() + self.config.batch_wait_ms / 1000
            while len(self._rows) < limit and not self._stopping:
                left = gather_until - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = []
            while self._rows and len(batch) < limit:
                job, piece = self._rows.popleft()
                job.rows_pending -= 1
                if job.rows_pending == 0:
                    self._waiting_jobs -= 1
                if job.should_stop():
                    self._skip(job, piece)
                else:
                    batch.append((job, piece))
            return batch

    def _skip(self, job: Job, piece: int) -> None:
        job.piece_done(piece, Done(timed_out=not job.cancelled.is_set(), cancelled=job.cancelled.is_set()))

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            if not batch:
                continue
            started = time.monotonic()
            try:
                self._generate(batch)
            except Exception as exc:  # a bug or a device failure: the clients get a 500, the server lives on
                log.exception("generation failed")
                for job in {id(j): j for j, _ in batch}.values():
                    job.fail(f"generation failed: {type(exc).__name__}: {exc}")
            self._batch_seconds = 0.7 * self._batch_seconds + 0.3 * (time.monotonic() - started)

    def _generate(self, batch: list[tuple[Job, int]]) -> None:
        from transformers import StoppingCriteriaList

        tts = self.tts
        prompts = [tts.prompt_ids(job.pieces[piece], job.speaker) for job, piece in batch]
        voices = self._row_voices(batch)
        width = max(len(p) for p in prompts)
        budgets = [job.sampling.max_new_tokens for job, _ in batch]
        sampler = RowSampler(
            [job.sampling for job, _ in batch],
            [job.piece_seed(piece) for job, piece in batch],
            [width - len(p) for p in prompts],
        )
        stopper = RowStopper([job.should_stop for job, _ in batch], budgets, width)

        def on_audio(row: int, audio: np.ndarray) -> None:
            job, piece = batch[row]
            job.add_audio(piece, audio)

        def on_done(row: int, frames: DecodedFrames, generated: int, problem: str | None) -> None:
            job, piece = batch[row]
            ended_early = stopper.stopped[row] and job.should_stop()
            if ended_early:
                self.stats.stopped_rows += 1
            self.stats.generated_tokens.append(generated)
            problems = [*frames.problems, *([problem] if problem else [])]
            if ended_early:
                problems = []  # a stop we asked for is not the model's fault
            job.piece_done(piece, Done(
                frames=frames.num_frames, prompt_tokens=len(prompts[row]), generated_tokens=generated,
                timed_out=ended_early and not job.cancelled.is_set(), problems=problems,
            ))

        decoder_voices = voices if hasattr(tts.codec, "embed") else None
        streamer = FrameStreamer(tts.layout, tts.codec, stopper, self.config.stream_chunk_frames, on_audio, on_done,
                                 voices=decoder_voices)
        self.stats.batch_rows.append(len(batch))
        slots = None
        if tts.conditioning is not None and voices is not None:
            zeros = torch.zeros(tts.conditioning.embedding_dim)
            slots = torch.stack([zeros if v is None else torch.as_tensor(v, dtype=torch.float32) for v in voices])
        tts.generate_ids(
            prompts, slots, max_new_tokens=max(budgets), do_sample=False, temperature=None, top_p=None,
            repetition_penalty=1.0, num_return_sequences=1, logits_processor=[sampler],
            stopping_criteria=StoppingCriteriaList([stopper]), streamer=streamer,
        )
        streamer.end()

    def _row_voices(self, batch: list[tuple[Job, int]]) -> list[Any] | None:
        """Each row's voice embedding (None for a row without one), or None for a model without voices."""
        if not self.tts.takes_voice:
            return None
        return [job.embedding if job.embedding is not None else self.tts.voice_embedding(speaker=job.speaker)[0]
                for job, _ in batch]
