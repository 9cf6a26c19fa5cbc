"""`kanitts prepare` encoding: batched (length-bucketed, exact) vs one clip at a time.

The reference dataset pipeline encodes one clip per call (NeMo ``AudioCodecModel.encode`` at batch
size 1, each clip zero-padded to a multiple of 1,764 samples). Here the same clips go through

- **one at a time** (the baseline): the package's encoder and quantizer
  (``nanocodec_torch.AudioCodecModel.encode``'s two calls) on each padded clip, in the same
  precision as ours (``encode`` itself turns CUDA autocast off, which would compare fp32 with bf16);
- **kanitts, one clip per call**: ``NanoCodec.encode`` per clip (what prepare does on a CPU);
- **batched**: the prepare command's length buckets (``length_buckets``) through ``NanoCodec.encode``
  (padding to whole frames, replicate-fill so codes equal the one-at-a-time codes),

with the full-size NanoCodec (61.7 M parameters; ``--codec tiny``: the tests' small one, whose codes
vary more with the input) randomly initialised (no download), in the same
process: each bucket is encoded all ways back to back, the order alternating, best of the rounds
per bucket (so load from other processes hits all alike). The batched codes are compared with the
one-at-a-time codes. With ``--dtype bf16`` the batched codes are also compared with an fp32
encoding of the same clips by the same weights: the share of codes (and of frames) that bf16
moves to another value. Clips: espeak-ng sentences in two voices (en-us, en-us+f3) when espeak-ng
is installed, else synthetic speech-like signals.

    python benchmarks/bench_prepare.py                   # ~1-3 minutes on 2 idle CPU cores
    python benchmarks/bench_prepare.py --device cuda --clips 64 --batch-seconds 600
    python benchmarks/bench_prepare.py --dtype bf16 --codec tiny --rounds 1   # bf16 vs fp32 codes

Output: one line per measurement (on a CPU also the process CPU time, steadier on a shared
machine); the last line is ``ratio: <batched / one-at-a-time>`` in audio seconds per wall second.
Record results in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kanitts.codecs.nanocodec import NanoCodec  # noqa: E402
from kanitts.prepare.cleaning import Clip  # noqa: E402
from kanitts.prepare.encoding import length_buckets  # noqa: E402
from kanitts.tiny import TINY_NANOCODEC_CONFIG  # noqa: E402

SR = 22050
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Speech synthesis on a small machine can still be tested quickly.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "Six spoons of fresh snow peas, five thick slabs of blue cheese.",
    "We also need a small plastic snake and a big toy frog for the kids.",
    "She can scoop these things into three red bags.",
    "Hello.",
    "It was a bright cold day in April, and the clocks were striking thirteen.",
]


# The two espeak-ng voices the clips take in turn (bench_segment's recording too).
VOICES = ("en-us", "en-us+f3")


def espeak_sentence(text: str, voice: str, folder: Path, speed: int | None = None) -> np.ndarray:
    """``text`` spoken by espeak-ng (``speed`` in words per minute, else its default) as mono
    float32 at ``SR``; the WAV goes through ``folder``."""
    from kanitts.audio import load_audio, resample, to_mono

    path = folder / "sentence.wav"
    speed_option = ["-s", str(speed)] if speed is not None else []
    subprocess.run(["espeak-ng", "-v", voice, *speed_option, "-w", str(path), text], check=True, capture_output=True)
    samples, rate = load_audio(path)
    return resample(to_mono(samples), rate, SR)


def _clips(n: int) -> tuple[list[np.ndarray], str]:
    if shutil.which("espeak-ng"):
        with tempfile.TemporaryDirectory() as tmp:
            out = [espeak_sentence(SENTENCES[i % len(SENTENCES)], VOICES[i % 2], Path(tmp), speed=140 + 15 * (i % 5))
                   for i in range(n)]
        return out, f"espeak-ng ({', '.join(VOICES)})"
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        seconds = 1.0 + 4.0 * rng.random()
        t = np.arange(int(seconds * SR)) / SR
        f0 = 110 + 100 * (i % 2) + 20 * np.sin(2 * np.pi * 0.5 * t)
        x = np.sign(np.sin(2 * np.pi * np.cumsum(f0) / SR)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
        out.append((0.2 * x + 0.02 * rng.standard_normal(len(t))).astype(np.float32))
    return out, "synthetic"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def one_at_a_time(codec: NanoCodec, clips: list[np.ndarray]) -> list[torch.Tensor]:
    """The reference way, one clip per call, padded to whole frames: what the package's
    ``encode`` runs (encoder, then quantizer), without its decorator that disables CUDA autocast,
    so that the baseline computes in ``codec.compute_dtype`` like ours (the quantizer in fp32)."""
    model, spf, out = codec.model, codec.samples_per_frame, []
    with torch.inference_mode():
        for x in clips:
            padded = math.ceil(len(x) / spf) * spf
            audio = torch.zeros(1, 1, padded, device=codec.device)
            audio[0, 0, : len(x)] = torch.from_numpy(x).to(codec.device)
            length = torch.tensor([padded], device=codec.device)
            with codec._autocast():
                encoded, encoded_len = model.audio_encoder(audio, length)
            tokens = model.vector_quantizer.encode(encoded.float(), encoded_len)
            out.append(tokens[0].to("cpu", torch.int64))
    return out


def differing_codes(codes: dict[int, torch.Tensor], reference: dict[int, torch.Tensor]) -> tuple[int, int, int, int]:
    """(codes that differ, codes, frames with any differing code, frames)."""
    diff = sum(int((codes[i] != reference[i]).sum()) for i in reference)
    total = sum(reference[i].numel() for i in reference)
    frames_diff = sum(int((codes[i] != reference[i]).any(0).sum()) for i in reference)
    frames = sum(reference[i].shape[-1] for i in reference)
    return diff, total, frames_diff, frames


def encode_batch(codec: NanoCodec, clips: list[np.ndarray]) -> list[torch.Tensor]:
    """What prepare does with one batch: pad to the longest clip, NanoCodec.encode, trim."""
    lengths = torch.tensor([len(x) for x in clips])
    waves = torch.zeros(len(clips), int(lengths.max()))
    for b, x in enumerate(clips):
        waves[b, : len(x)] = torch.from_numpy(x)
    codes, frames = codec.encode(waves, lengths)
    return [codes[b, :, : frames[b]].cpu() for b in range(len(clips))]


def _timed(fn, device: torch.device):
    """(wall seconds, process CPU seconds, result)."""
    _sync(device)
    t, c = time.perf_counter(), time.process_time()
    result = fn()
    _sync(device)
    return time.perf_counter() - t, time.process_time() - c, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                        help="encoder precision of baseline and ours (bf16: also counts codes that differ from fp32)")
    parser.add_argument("--codec", default="full", choices=["full", "tiny"],
                        help="full-size NanoCodec (61.7 M) or the tests' tiny one, both random")
    parser.add_argument("--codec-model", default=None,
                        help="trained NanoCodec weights instead (a local folder, or a Hub id when online)")
    parser.add_argument("--batch-seconds", type=float, default=60.0, help="bucket budget (padded audio per batch)")
    parser.add_argument("--max-batch-size", type=int, default=64)
    args = parser.parse_args()

    device = torch.device(args.device)
    config = TINY_NANOCODEC_CONFIG if args.codec == "tiny" else None

    def build(dtype: str) -> NanoCodec:
        if args.codec_model:
            return NanoCodec.from_pretrained(args.codec_model, device=device, dtype=dtype)
        return NanoCodec.from_config(config, seed=0, device=device, dtype=dtype)

    codec = build(args.dtype)
    clips, kind = _clips(args.clips)
    total = sum(len(x) for x in clips) / SR
    params = sum(p.numel() for p in codec.model.parameters()) / 1e6
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(f"machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPU cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads{gpu}")
    weights = f"weights {args.codec_model}" if args.codec_model else f"{args.codec}, random init"
    print(f"codec: NanoCodec ({weights}), {params:.1f} M parameters, {args.dtype} on {device}")
    print(f"clips: {len(clips)} {kind}, {total:.1f} s of audio, "
          f"{min(len(x) for x in clips) / SR:.2f}-{max(len(x) for x in clips) / SR:.2f} s each")

    # The buckets prepare makes of these clips; each bucket is timed both ways back to back
    # (order alternating by round), best of the rounds per bucket, so that load changes on a
    # shared machine hit both methods alike.
    items = [Clip(item=i, audio=x) for i, x in enumerate(clips)]
    buckets = [[c.item for c in b] for b in length_buckets(items, int(args.batch_seconds * SR), args.max_batch_size)]
    print(f"buckets ({args.batch_seconds:g} s budget, max {args.max_batch_size} clips): "
          f"{len(buckets)}, sizes {[len(b) for b in buckets]}")
    one_at_a_time(codec, clips[:1])  # warm-up
    encode_batch(codec, [clips[i] for i in buckets[0]])

    methods = ("single", "batched", "prepare_cpu")
    best = {m: [math.inf] * len(buckets) for m in methods}
    best_cpu = {m: [math.inf] * len(buckets) for m in methods}
    single_codes: dict[int, torch.Tensor] = {}
    batched_codes: dict[int, torch.Tensor] = {}
    for r in range(args.rounds):
        for k, bucket in enumerate(buckets):
            bucket_clips = [clips[i] for i in bucket]
            order = methods if (r + k) % 2 == 0 else methods[::-1]
            for method in order:
                if method == "single":
                    dt, cpu, codes = _timed(lambda group=bucket_clips: one_at_a_time(codec, group), device)
                    single_codes.update(zip(bucket, codes))
                elif method == "batched":
                    dt, cpu, codes = _timed(lambda group=bucket_clips: encode_batch(codec, group), device)
                    batched_codes.update(zip(bucket, codes))
                else:  # what prepare does on a CPU: NanoCodec.encode, one clip per call
                    dt, cpu, _ = _timed(lambda group=bucket_clips: [encode_batch(codec, [x]) for x in group], device)
                best[method][k] = min(best[method][k], dt)
                best_cpu[method][k] = min(best_cpu[method][k], cpu)
        print(f"round {r + 1}: one-at-a-time {sum(best['single']):.2f} s, batched {sum(best['batched']):.2f} s "
              "(sums of per-bucket bests so far)", flush=True)

    same = sum(int(torch.equal(single_codes[i], batched_codes[i])) for i in range(len(clips)))
    diff, codes_total, _, _ = differing_codes(batched_codes, single_codes)
    distinct = len(torch.unique(torch.cat([c.flatten() for c in single_codes.values()])))
    print(f"codes identical to one-at-a-time: {same}/{len(clips)} clips ({diff} of {codes_total} codes differ; "
          f"{distinct} distinct code values)")
    if args.dtype != "fp32":
        # the same weights (same seed) in fp32, the same buckets
        reference = build("fp32")
        fp32_codes: dict[int, torch.Tensor] = {}
        for bucket in buckets:
            fp32_codes.update(zip(bucket, encode_batch(reference, [clips[i] for i in bucket])))
        diff, codes_total, frames_diff, frames = differing_codes(batched_codes, fp32_codes)
        print(f"{args.dtype} codes that differ from fp32: {diff} of {codes_total} ({100 * diff / codes_total:.2f} %); "
              f"frames with any code changed: {frames_diff} of {frames} ({100 * frames_diff / frames:.2f} %)")
    single_speed = total / sum(best["single"])
    batched_speed = total / sum(best["batched"])
    print(f"one-at-a-time: {single_speed:.2f} audio s per wall s")
    print(f"kanitts NanoCodec.encode, one clip per call (prepare's CPU default): "
          f"{total / sum(best['prepare_cpu']):.2f} audio s per wall s")
    print(f"batched: {batched_speed:.2f} audio s per wall s")
    if device.type == "cpu":  # less sensitive than wall time to other processes on the machine
        cpu_single, cpu_batched = sum(best_cpu["single"]), sum(best_cpu["batched"])
        print(f"CPU time: one-at-a-time {cpu_single:.2f} s, one clip per call (kanitts) "
              f"{sum(best_cpu['prepare_cpu']):.2f} s, batched {cpu_batched:.2f} s "
              f"(CPU-time ratio {cpu_single / cpu_batched:.3f})")
    print(f"ratio: {batched_speed / single_speed:.3f}")


if __name__ == "__main__":
    main()
