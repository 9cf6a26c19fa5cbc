"""Voice activity: where in a recording someone speaks, with Silero VAD.

The ``silero-vad`` package ships its model inside the wheel (TorchScript), so this runs offline;
only the model and the package's own frame-probabilities-to-regions logic
(``get_speech_timestamps_from_probs``) are used, never its audio I/O, which needs torchaudio or
torchcodec. Audio is read here with soundfile in blocks and resampled to 16 kHz with a soxr
stream, so a file of any length is scanned in constant memory: what is kept per file is one
float per 32 ms window (about 0.4 MB per hour).

The model is recurrent over time, so windows are fed one after another (as the package's
``get_speech_timestamps`` does); its state carries over between blocks, so streaming a file
gives the probabilities of scanning it whole (up to soxr's streaming edges). Each window is a
few hundred kilo-FLOPs, so the scan runs on one thread (torch's thread count is per calling
thread; it is put back afterwards): measured on 2 busy cores, two threads were 30 times slower
than one, spinning against other processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from threading import Event

import numpy as np

from kanitts.audio import AudioDecodeError, to_mono

#: the model's rate and window (512 samples = 32 ms at 16 kHz)
SAMPLE_RATE = 16000
WINDOW = 512


def _load_model():
    """The TorchScript model from the wheel. Importing ``silero_vad`` sets torch to one thread
    for the whole process; the count is put back so that the codec and ASR keep their cores."""
    import torch

    threads = torch.get_num_threads()
    try:
        from silero_vad import load_silero_vad
    finally:
        torch.set_num_threads(threads)
    return load_silero_vad()


class ScanStopped(Exception):
    """A scan given up because its ``stop`` event was set (the run is ending)."""


@dataclass(frozen=True)
class Speech:
    """What the VAD found in one file: speech ``regions`` as (start, end) seconds, in order."""

    regions: list[tuple[float, float]]
    duration: float  # seconds of audio in the file
    sample_rate: int  # the file's own rate


class VoiceActivity:
    """Silero VAD loaded once, run over files one window at a time.

    ``threshold``: a window with a speech probability at or above it is speech.
    ``min_silence``: a quieter stretch shorter than this (seconds) does not end a region.
    ``min_speech``: regions shorter than this are dropped (clicks, breaths).
    ``max_speech``: a region longer than this is split, at its longest inner silence of at least
    ~0.1 s when it has one (the package's rule), else hard.
    """

    def __init__(
        self,
        *,
        threshold: float = 0.5,
        min_silence: float = 0.1,
        min_speech: float = 0.25,
        max_speech: float = float("inf"),
        block_seconds: float = 30.0,
    ):
        if not 0 < threshold < 1:
            raise ValueError(f"VAD threshold must lie in (0, 1), got {threshold}")
        self.threshold = threshold
        self.min_silence = min_silence
        self.min_speech = min_speech
        self.max_speech = max_speech
        self.block_seconds = block_seconds
        self.model = _load_model()

    def probabilities(self, path: str | Path, stop: Event | None = None) -> tuple[np.ndarray, float, int]:
        """Speech probability per 32 ms window of ``path``, its duration and its own sample rate.

        Raises :class:`~kanitts.audio.AudioDecodeError` for a file libsndfile cannot read, and
        :class:`ScanStopped` at the next block once ``stop`` is set (a scan running ahead in a
        thread then ends within a block instead of finishing an hour-long file).
        """
        import soundfile as sf
        import soxr
        import torch

        try:
            handle = sf.SoundFile(str(path))
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as exc:
            raise AudioDecodeError(str(exc).strip() or type(exc).__name__) from None
        probs: list[float] = []
        self.model.reset_states()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        rate, frames = int(handle.samplerate), 0
        try:
            with handle, torch.inference_mode():
                stream = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
                pending = np.zeros(0, dtype=np.float32)
                block = max(WINDOW, int(self.block_seconds * rate))
                for chunk in handle.blocks(blocksize=block, dtype="float32", always_2d=True):
                    if stop is not None and stop.is_set():
                        raise ScanStopped(str(path))
                    frames += len(chunk)
                    pending = self._feed(pending, stream.resample_chunk(to_mono(chunk)), probs)
                tail = np.concatenate([pending, stream.resample_chunk(np.zeros(0, np.float32), last=True)])
                if len(tail):
                    self._feed(np.pad(tail, (0, (-len(tail)) % WINDOW)), np.zeros(0, np.float32), probs)
        except sf.SoundFileRuntimeError as exc:
            raise AudioDecodeError(f"cannot decode past {frames / rate:.1f} s: {exc}") from None
        finally:
            torch.set_num_threads(threads)
        return np.asarray(probs, dtype=np.float32), frames / rate, rate

    def _feed(self, pending: np.ndarray, new: np.ndarray, probs: list[float]) -> np.ndarray:
        """Run the model over the whole windows of ``pending + new``; return what is left over."""
        import torch

        audio = np.concatenate([pending, np.asarray(new, dtype=np.float32)]) if len(pending) else new
        whole = len(audio) // WINDOW * WINDOW
        if whole:
            windows = torch.from_numpy(np.ascontiguousarray(audio[:whole])).view(-1, WINDOW)
            for window in windows:
                probs.append(float(self.model(window, SAMPLE_RATE)))
        return np.asarray(audio[whole:], dtype=np.float32)

    def regions(self, probs: np.ndarray, duration: float) -> list[tuple[float, float]]:
        """Speech regions (seconds) from window probabilities, by the package's rule (hysteresis
        around ``threshold``, ``min_silence``, ``min_speech``, ``max_speech``), unpadded."""
        from silero_vad import get_speech_timestamps_from_probs

        found = get_speech_timestamps_from_probs(
            [float(p) for p in probs],
            sampling_rate=SAMPLE_RATE,
            threshold=self.threshold,
            min_speech_duration_ms=int(self.min_speech * 1000),
            max_speech_duration_s=self.max_speech,
            min_silence_duration_ms=int(self.min_silence * 1000),
            speech_pad_ms=0,
            audio_length_samples=int(round(duration * SAMPLE_RATE)),
        )
        return [(s["start"] / SAMPLE_RATE, min(duration, s["end"] / SAMPLE_RATE)) for s in found]

    def speech(self, path: str | Path, stop: Event | None = None) -> Speech:
        """The speech regions of a file, scanned in blocks (constant memory); ``stop``: as for
        :meth:`probabilities`."""
        probs, duration, rate = self.probabilities(path, stop)
        return Speech(self.regions(probs, duration), duration, rate)
