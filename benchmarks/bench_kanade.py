"""Kanade tokenizer throughput: batched vs one-at-a-time encoding, and decode real-time factor.

Full 12.5 Hz configuration (config/kanade/model/12hz.yaml) with random weights, including a
random full-size WavLM-base+ (``WavLMConfig()``), so it runs offline. The same clips go through
``encode`` one at a time and through ``encode_batch``; both are timed in the same process,
interleaved, best of ``--rounds``. The batched tokens are checked against the single ones.

    python benchmarks/bench_kanade.py            # ~1-3 minutes on 2 CPU cores
    python benchmarks/bench_kanade.py --device cuda --clips 16

Output: one line per measurement; the last line is ``ratio: <batched / one-at-a-time>``
(audio seconds per wall second). Record results in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kanade_tokenizer import KanadeModel  # noqa: E402
from kanade_tokenizer.testing import synthetic_speech  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device):
    """(wall seconds, process CPU seconds, result)."""
    _sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, time.process_time() - cpu, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "config" / "kanade" / "model" / "12hz.yaml"))
    parser.add_argument("--clips", type=int, default=8, help="number of clips (2-6 s each)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per mode (best is kept)")
    parser.add_argument("--batch-size", type=int, default=None, help="encode_batch batch_size (default: one batch)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-padding", default="auto",
                        help='encode_batch max_padding: "auto" (0.1 on CPU), a float, or "none"')
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-vocode", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    max_padding = {"auto": "auto", "none": None}.get(args.max_padding.lower())
    if args.max_padding.lower() not in ("auto", "none"):
        max_padding = float(args.max_padding)

    device = torch.device(args.device)
    torch.manual_seed(0)
    build_s, _, model = _timed(lambda: KanadeModel.from_config(args.config, load_ssl_weights=False).eval(), device)
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    durations = [2.0 + 4.0 * i / max(1, args.clips - 1) for i in range(args.clips)]
    clips = [synthetic_speech(d, seed=i).to(device) for i, d in enumerate(durations)]
    audio_s = sum(durations)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {device}, load {load:.1f}")
    print(f"model: {Path(args.config).name}, random weights, {n_params / 1e6:.1f}M params incl. WavLM "
          f"(built in {build_s:.1f}s)")
    print(f"clips: {len(clips)} x {durations[0]:.1f}-{durations[-1]:.1f} s = {audio_s:.1f} s of audio")

    # warm-up (allocator, kernels)
    model.encode(clips[0][:24000])
    model.encode_batch([clips[0][:24000], clips[1][:12000]])

    single_times, batch_times, padded_times = [], [], []
    single_cpu, batch_cpu, padded_cpu = [], [], []
    singles = batched = None
    for _ in range(args.rounds):
        t, c, singles = _timed(lambda: [model.encode(x) for x in clips], device)
        single_times.append(t)
        single_cpu.append(c)
        t, c, batched = _timed(
            lambda: model.encode_batch(clips, batch_size=args.batch_size, max_padding=max_padding), device
        )
        batch_times.append(t)
        batch_cpu.append(c)
        t, c, _ = _timed(lambda: model.encode_batch(clips, batch_size=args.batch_size, max_padding=None), device)
        padded_times.append(t)
        padded_cpu.append(c)
    mismatched = sum(
        int((a.content_token_indices != b.content_token_indices).sum()) for a, b in zip(singles, batched)
    )
    n_tokens = sum(a.content_token_indices.numel() for a in singles)
    max_global = max(float((a.global_embedding - b.global_embedding).abs().max()) for a, b in zip(singles, batched))
    single_speed = audio_s / min(single_times)
    batch_speed = audio_s / min(batch_times)
    print(f"encode one-at-a-time: {min(single_times):.2f} s -> {single_speed:.2f} audio s / wall s "
          f"(rounds: {', '.join(f'{t:.2f}' for t in single_times)})")
    print(f"encode_batch (batch_size={args.batch_size}, max_padding={args.max_padding}): {min(batch_times):.2f} s -> "
          f"{batch_speed:.2f} audio s / wall s (rounds: {', '.join(f'{t:.2f}' for t in batch_times)})")
    padded_speed = audio_s / min(padded_times)
    print(f"encode_batch (batch_size={args.batch_size}, max_padding=none): {min(padded_times):.2f} s -> "
          f"{padded_speed:.2f} audio s / wall s, ratio {padded_speed / single_speed:.3f} "
          f"(rounds: {', '.join(f'{t:.2f}' for t in padded_times)})")
    print(f"process CPU seconds (best round): one-at-a-time {min(single_cpu):.2f}, "
          f"encode_batch {min(batch_cpu):.2f} (cpu ratio {min(single_cpu) / min(batch_cpu):.3f}), "
          f"one padded batch {min(padded_cpu):.2f} (cpu ratio {min(single_cpu) / min(padded_cpu):.3f})")
    print(f"parity: {mismatched}/{n_tokens} tokens differ, max |global diff| {max_global:.2e}")

    # decode (+ vocode): real-time factor = wall seconds / audio seconds
    t_dec, _, mels = _timed(
        lambda: [model.decode(f.global_embedding, content_token_indices=f.content_token_indices,
                              target_audio_length=c.numel()) for f, c in zip(singles, clips)],
        device,
    )
    print(f"decode one-at-a-time: {t_dec:.2f} s, RTF {t_dec / audio_s:.4f}")
    t_decb, _, _ = _timed(
        lambda: model.decode_batch([f.global_embedding for f in singles],
                                   content_token_indices=[f.content_token_indices for f in singles],
                                   target_audio_lengths=[c.numel() for c in clips]),
        device,
    )
    print(f"decode_batch: {t_decb:.2f} s, RTF {t_decb / audio_s:.4f}")
    if not args.no_vocode:
        try:
            from kanade_tokenizer import load_vocoder, vocode
            from kanade_tokenizer.vocoders.vocos import Vocos

            with tempfile.TemporaryDirectory() as tmp:
                Vocos().save_pretrained(tmp)
                vocoder = load_vocoder(tmp, device=device)
            vocode(vocoder, mels[0][None])  # warm-up
            t_voc, _, _ = _timed(lambda: [vocode(vocoder, m[None]) for m in mels], device)
            print(f"vocode (random Vocos): {t_voc:.2f} s, RTF {t_voc / audio_s:.4f}; "
                  f"decode+vocode RTF {(t_dec + t_voc) / audio_s:.4f}")
        except Exception as exc:  # the vocoder package may be absent or different
            print(f"vocode: skipped ({type(exc).__name__}: {exc})")
    print(f"ratio: {batch_speed / single_speed:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
