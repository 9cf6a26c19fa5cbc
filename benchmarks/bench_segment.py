"""Cutting long recordings: Silero VAD + segmentation, streamed, vs VAD on the whole file at once.

A recording of ``--minutes`` of espeak-ng sentences (two voices) joined with pauses of 0.4 to
1.0 s (synthetic speech-like bursts when espeak-ng is missing) at 22.05 kHz is cut two ways:

- **whole file** (the baseline, how the package's README uses it): the file decoded whole,
  resampled to 16 kHz in one soxr call, ``silero_vad.get_speech_timestamps`` on the whole tensor;
- **streamed** (what ``kanitts prepare`` does, :class:`kanitts.vad.VoiceActivity`): soundfile
  blocks of ``--block-seconds`` through a soxr resample stream into the same model;

both followed by the same segmentation (:func:`kanitts.prepare.segmenting.segment`, 2-12 s).
Both run the model on one thread (what ``silero_vad`` sets at import). The two are timed back to
back, the order alternating, best of ``--rounds``; the cut points of both are compared with the
joins. The audio each holds at once is printed (the whole file at 16 kHz vs one block).

ASR is timed separately: the clips of the streamed run through
:meth:`kanitts.asr.Transcriber.transcribe_scored` on ``--device`` with ``--asr`` (default: the
tests' tiny random Whisper, built here: a plumbing cost, not a model's speed; pass a Whisper
checkpoint to measure one).

The overlap is timed last: ``--overlap-files`` recordings (the first ``--overlap-seconds`` of
the one above, copied) cut and transcribed by
``kanitts prepare``'s own path (:func:`kanitts.prepare.recordings.prepare_recordings`, models
loaded included), once with the next file's VAD running while the current one is transcribed
(``SCAN_AHEAD = 1``, what ``prepare`` does) and once one step after the other (``0``).

    python benchmarks/bench_segment.py                  # ~1 minute on 2 idle CPU cores
    python benchmarks/bench_segment.py --minutes 30 --device cuda --asr openai/whisper-large-v3-turbo

Output: hours of audio per hour of wall time for each; the last line is
``ratio: <streamed / whole file>``. Record results in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bench_prepare import SENTENCES as PREPARE_SENTENCES  # noqa: E402
from bench_prepare import SR, VOICES, espeak_sentence  # noqa: E402

from kanitts.prepare.segmenting import cut_points, segment  # noqa: E402

SENTENCES = [
    *PREPARE_SENTENCES[:3],
    "A long recording is cut into clips at the natural pauses between sentences.",
    "Nobody expected the results to arrive so early in the morning.",
    "Every clip must be long enough to learn from but not too long.",
]
CUT = dict(min_duration=2.0, max_duration=12.0, target_duration=7.0, padding=0.2, split_pause=1.5)


def _sentences(tmp: Path) -> list[np.ndarray]:
    from kanitts.audio import trim_silence

    espeak = shutil.which("espeak-ng")
    out = []
    for k, text in enumerate(SENTENCES * 2):
        if espeak:
            out.append(trim_silence(espeak_sentence(text, VOICES[k % 2], tmp), SR, keep_ms=10))
        else:  # speech-like: noise bursts shaped by a syllable-rate envelope
            rng = np.random.default_rng(k)
            t = np.arange(int(SR * (2.5 + k % 3))) / SR
            out.append((0.2 * rng.standard_normal(len(t)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))).astype(np.float32))
    return out


def build_recording(path: Path, minutes: float) -> list[float]:
    import soundfile as sf

    pieces = _sentences(path.parent)
    rng = np.random.default_rng(0)
    joins, t = [], 0.5
    with sf.SoundFile(str(path), "w", SR, 1, subtype="PCM_16") as f:
        f.write(np.zeros(int(0.5 * SR), np.float32))
        k = 0
        while t < minutes * 60:
            x = pieces[k % len(pieces)]
            f.write(x)
            t += len(x) / SR
            pause = int(round(rng.uniform(0.4, 1.0) * SR))
            joins.append(t + pause / SR / 2)
            f.write(np.zeros(pause, np.float32))
            t += pause / SR
            k += 1
    return joins[:-1]


def whole_file(path: Path, model) -> tuple[list[tuple[float, float]], float, int]:
    import soundfile as sf
    import soxr
    import torch
    from silero_vad import get_speech_timestamps

    audio, rate = sf.read(str(path), dtype="float32")
    audio16 = soxr.resample(audio, rate, 16000).astype(np.float32)
    found = get_speech_timestamps(torch.from_numpy(audio16), model, threshold=0.5, min_silence_duration_ms=100,
                                  min_speech_duration_ms=250, speech_pad_ms=0, max_speech_duration_s=11.6)
    regions = [(s["start"] / 16000, s["end"] / 16000) for s in found]
    return regions, len(audio) / rate, audio.nbytes + audio16.nbytes


def precision(cuts: list[float], joins: list[float]) -> float:
    joins_arr = np.asarray(joins)
    return float(np.mean([np.min(np.abs(joins_arr - c)) <= 0.2 for c in cuts])) if cuts else 0.0


def overlap(path: Path, tmp: Path, model: str, device: str, files: int, seconds_each: float) -> None:
    """Cut + transcribe ``files`` copies of the start of ``path`` with the VAD scanned ahead and without."""
    import soundfile as sf

    from kanitts.prepare import recordings as cutting
    from kanitts.prepare.distributed import Ranks
    from kanitts.prepare.options import PrepareOptions

    folder = tmp / "recordings"
    folder.mkdir()
    audio, rate = sf.read(str(path), dtype="float32", frames=int(seconds_each * SR))
    for k in range(files):
        sf.write(folder / f"part{k}.wav", audio, rate, subtype="PCM_16")
    seconds = {}
    for ahead in (1, 0):
        out = tmp / f"out-ahead{ahead}"
        options = PrepareOptions(input=str(folder), output=str(out), asr_model=model, asr_batch_size=8,
                                 min_asr_confidence=-100.0, min_chars_per_second=0.0, max_chars_per_second=1e4,
                                 segment_min_duration=CUT["min_duration"], segment_max_duration=CUT["max_duration"],
                                 progress=False)
        cutting.SCAN_AHEAD = ahead
        t0 = time.perf_counter()
        report = cutting.prepare_recordings(options, out, Ranks(0, 1), device)
        seconds[ahead] = time.perf_counter() - t0
        audio = report.audio
    cutting.SCAN_AHEAD = 1
    print(f"overlap ({files} files, cut + transcribe): VAD of the next file ahead "
          f"{audio / seconds[1]:.1f} h of audio per hour ({seconds[1]:.1f} s), one after the other "
          f"{audio / seconds[0]:.1f} ({seconds[0]:.1f} s): {seconds[0] / seconds[1]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="length of the recording (default 3)")
    parser.add_argument("--block-seconds", type=float, default=30.0, help="streaming block (default 30 s)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="device of the ASR (the VAD runs on the CPU)")
    parser.add_argument("--asr", default="tiny", help="ASR model: 'tiny' (random, built here), a Hub id or a folder")
    parser.add_argument("--asr-clips", type=int, default=16, help="clips to transcribe (default 16)")
    parser.add_argument("--overlap-files", type=int, default=3,
                        help="recordings for the VAD/ASR overlap timing (default 3; 0 skips it)")
    parser.add_argument("--overlap-seconds", type=float, default=40.0,
                        help="length of each of those recordings (default 40)")
    args = parser.parse_args()

    import torch

    from kanitts.vad import WINDOW, VoiceActivity

    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} CPU cores, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "long.wav"
        joins = build_recording(path, args.minutes)
        vad = VoiceActivity(max_speech=11.6, block_seconds=args.block_seconds)
        vad.probabilities(path)  # the TorchScript model optimises itself over its first calls
        espeak = bool(shutil.which("espeak-ng"))
        print(f"data: {args.minutes:g} min at {SR} Hz, {len(joins)} joins, espeak-ng: {espeak}")

        best = {"whole": float("inf"), "streamed": float("inf")}
        results = {}
        for r in range(args.rounds):
            for name in (("whole", "streamed") if r % 2 == 0 else ("streamed", "whole")):
                t0 = time.perf_counter()
                if name == "whole":
                    threads = torch.get_num_threads()
                    torch.set_num_threads(1)
                    try:
                        regions, duration, held = whole_file(path, vad.model)
                    finally:
                        torch.set_num_threads(threads)
                else:
                    speech = vad.speech(path)
                    regions, duration = speech.regions, speech.duration
                    held = int(args.block_seconds * SR * 4 + args.block_seconds * 16000 * 4 + WINDOW * 4)
                cut = segment(regions, duration, **CUT)
                best[name] = min(best[name], time.perf_counter() - t0)
                results[name] = (cut, duration, held)
        for name in ("whole", "streamed"):
            cut, duration, held = results[name]
            speed = duration / best[name]
            print(f"{name}: {speed:.1f} h of audio per hour ({best[name]:.2f} s for {duration:.0f} s), "
                  f"{len(cut.segments)} clips, cut precision {precision(cut_points(cut.segments), joins):.2f}, "
                  f"audio held {held / 2**20:.1f} MiB")

        cut = results["streamed"][0]
        from kanitts.asr import Transcriber

        model = args.asr
        if model == "tiny":
            from kanitts.tiny import build_tiny_whisper

            model = str(build_tiny_whisper(Path(tmp) / "whisper", chunk_seconds=16))
        transcriber = Transcriber(model, language="en", device=args.device, batch_size=8)
        import soundfile as sf

        clips = []
        with sf.SoundFile(str(path)) as f:
            for s in cut.segments[: args.asr_clips]:
                f.seek(int(s.start * SR))
                clips.append((f.read(int(s.duration * SR), dtype="float32"), SR))
        transcriber.transcribe_scored(clips[:2])  # warm-up
        t0 = time.perf_counter()
        transcriber.transcribe_scored(clips)
        dt = time.perf_counter() - t0
        seconds = sum(len(c) / SR for c, _ in clips)
        print(f"asr ({args.asr} on {args.device}): {seconds / dt:.1f} h of audio per hour "
              f"({len(clips)} clips, {dt:.2f} s)")
        if args.overlap_files > 0:
            overlap(path, Path(tmp), model, args.device, args.overlap_files, args.overlap_seconds)
    print(f"ratio: {best['whole'] / best['streamed']:.3f}")


if __name__ == "__main__":
    main()
