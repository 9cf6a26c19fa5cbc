"""`kanitts prepare` encoding: batched (length-bucketed, exact) vs one clip at a time.

The reference dataset pipeline encodes one clip per call (NeMo ``AudioCodecModel.encode`` at batch
size 1, each clip zero-padded to a multiple of 1,764 samples). Here the same clips go through

- **one at a time**: ``nanocodec_torch.AudioCodecModel.encode`` on each padded clip alone, and
- **batched**: the prepare command's own path, length bucketing (``_batches``) + ``NanoCodec.encode``
  (padding to whole frames, replicate-fill so codes equal the one-at-a-time codes),

with the full-size NanoCodec (61.7 M parameters) randomly initialised (no download), in the same
process, interleaved round by round, best round of each. The batched codes are compared with the
one-at-a-time codes. Clips: espeak-ng sentences in two voices (en-us, en-us+f3) when espeak-ng is
installed, else synthetic speech-like signals.

    python benchmarks/bench_prepare.py                   # ~2-5 minutes on 2 CPU cores
    python benchmarks/bench_prepare.py --device cuda --clips 64 --dtype bf16

Output: one line per measurement; the last line is ``ratio: <batched / one-at-a-time>`` in audio
seconds per wall second. Record results in benchmarks/RESULTS.md.
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
from kanitts.data.prepare import _batches, _Clip  # noqa: E402

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


def _clips(n: int) -> tuple[list[np.ndarray], str]:
    espeak = shutil.which("espeak-ng")
    if espeak:
        import soundfile as sf

        out = []
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(n):
                voice = ("en-us", "en-us+f3")[i % 2]
                path = Path(tmp) / f"{i}.wav"
                speed = str(140 + 15 * (i % 5))
                subprocess.run([espeak, "-v", voice, "-s", speed, "-w", str(path), SENTENCES[i % len(SENTENCES)]],
                               check=True, capture_output=True)
                x, sr = sf.read(path, dtype="float32")
                assert sr == SR
                out.append(x)
        return out, "espeak-ng (en-us, en-us+f3)"
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
    """The reference way: the package's encode, one clip per call, padded to whole frames."""
    model, spf, out = codec.model, codec.samples_per_frame, []
    with torch.inference_mode():
        for x in clips:
            padded = math.ceil(len(x) / spf) * spf
            audio = torch.zeros(1, padded, device=codec.device)
            audio[0, : len(x)] = torch.from_numpy(x).to(codec.device)
            with codec._autocast():
                tokens, _ = model.encode(audio, torch.tensor([padded], device=codec.device))
            out.append(tokens[0].to("cpu", torch.int64))
    return out


def batched(codec: NanoCodec, clips: list[np.ndarray], batch_seconds: float, max_batch: int) -> list[torch.Tensor]:
    """The prepare command's path: length bucketing + NanoCodec.encode."""
    items = [_Clip(item=i, audio=x) for i, x in enumerate(clips)]  # item: the clip's index here
    out: list[torch.Tensor | None] = [None] * len(clips)
    for batch in _batches(items, int(batch_seconds * codec.sample_rate), max_batch):
        lengths = torch.tensor([len(c.audio) for c in batch])
        waves = torch.zeros(len(batch), int(lengths.max()))
        for b, c in enumerate(batch):
            waves[b, : len(c.audio)] = torch.from_numpy(c.audio)
        codes, frames = codec.encode(waves, lengths)
        for b, c in enumerate(batch):
            out[c.item] = codes[b, :, : frames[b]].cpu()
    return out  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batch-seconds", type=float, nargs="+", default=None,
                        help="bucket budgets to try; the first one gives the ratio (default: the prepare default)")
    parser.add_argument("--max-batch-size", type=int, default=64)
    args = parser.parse_args()

    device = torch.device(args.device)
    budgets = args.batch_seconds or [600.0 if device.type == "cuda" else 60.0]
    torch.manual_seed(0)
    codec = NanoCodec.from_config(seed=0, device=device, dtype=args.dtype)
    clips, kind = _clips(args.clips)
    total = sum(len(x) for x in clips) / SR
    params = sum(p.numel() for p in codec.model.parameters()) / 1e6
    cpu = platform.processor() or platform.machine()
    print(f"machine: {platform.platform()}, {cpu}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads" + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""))
    print(f"codec: full-size NanoCodec, random init, {params:.1f} M parameters, {args.dtype} on {device}")
    print(f"clips: {len(clips)} {kind}, {total:.1f} s of audio, "
          f"{min(len(x) for x in clips) / SR:.2f}-{max(len(x) for x in clips) / SR:.2f} s each")

    # warm-up (first-call allocations / kernel selection)
    one_at_a_time(codec, clips[:2])
    batched(codec, clips[:2], budgets[0], args.max_batch_size)

    best_single = math.inf
    best_batched = {b: math.inf for b in budgets}
    single_codes = batched_codes = None
    for r in range(args.rounds):
        _sync(device)
        t = time.perf_counter()
        single_codes = one_at_a_time(codec, clips)
        _sync(device)
        best_single = min(best_single, time.perf_counter() - t)
        for b in budgets:
            t = time.perf_counter()
            codes = batched(codec, clips, b, args.max_batch_size)
            _sync(device)
            best_batched[b] = min(best_batched[b], time.perf_counter() - t)
            if b == budgets[0]:
                batched_codes = codes
        print(f"round {r + 1}: one-at-a-time {best_single:.2f} s, batched "
              + ", ".join(f"{b:g} s budget {best_batched[b]:.2f} s" for b in budgets), flush=True)

    same = sum(int(torch.equal(a, b)) for a, b in zip(single_codes, batched_codes))
    frames = sum(a.shape[-1] for a in single_codes)
    diff = sum(int((a != b).sum()) for a, b in zip(single_codes, batched_codes))
    distinct = len(torch.unique(torch.cat([a.flatten() for a in single_codes])))
    print(f"codes identical to one-at-a-time: {same}/{len(clips)} clips ({diff} of {frames * 4} codes differ; "
          f"{distinct} distinct code values)")
    sizes = [len(b) for b in _batches([_Clip(item=i, audio=x) for i, x in enumerate(clips)],
                                      int(budgets[0] * SR), args.max_batch_size)]
    print(f"batches at the {budgets[0]:g} s budget: {len(sizes)} (sizes {sizes})")
    single_speed = total / best_single
    print(f"one-at-a-time: {single_speed:.2f} audio s per wall s")
    for b in budgets:
        print(f"batched ({b:g} s budget, max {args.max_batch_size} clips): {total / best_batched[b]:.2f} audio s per wall s")
    print(f"ratio: {(total / best_batched[budgets[0]]) / single_speed:.3f}")


if __name__ == "__main__":
    main()
