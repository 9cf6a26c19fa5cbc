"""Load test of `kanitts serve` on loopback: dynamic batching against one request at a time.

    python benchmarks/bench_serve.py                          # CPU, small LFM2, tiny NanoCodec
    python benchmarks/bench_serve.py --shape lfm2-350m --device cuda --dtype bfloat16 --clients 16

The server runs in this process on 127.0.0.1 with random weights (decoding constrained to the
token layout, so every request yields audio); ``--clients`` threads each send one streaming
request (pcm) after another for ``--seconds``, then the requests under way finish. Run twice: with
``max_batch_size 1`` (every request alone, the baseline) and with ``--max-batch-size``. Printed
per run: requests per second, seconds of audio per wall second, p50/p95 latency and time to first
audio, errors (0 expected: the queue holds every client), peak memory. Then the streaming
tolerance: the chunked decode (the server's stream) against one whole-utterance decode, max
|diff| and SNR, for the codec given by ``--codec``. The last line is
``ratio: <audio s per wall s, batched / one at a time>``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import numpy as np
from bench_generate import SENTENCES, add_model_arguments, build_models, describe

from kanitts.config import InferenceConfig
from kanitts.inference import KaniTTS
from kanitts.serving.server import Server
from kanitts.tiny import TINY_NANOCODEC_CONFIG


def load(server: Server, clients: int, seconds: float, max_new_tokens: int) -> dict:
    """Every client sends request after request until ``seconds`` are over; returns the figures."""
    records: list[tuple[float, float, float]] = []  # latency, time to first audio, audio seconds
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds
    rate = server.engines["bench"].sample_rate

    def client(index: int) -> None:
        with httpx.Client(base_url=server.url, timeout=600) as http:
            n = 0
            while time.perf_counter() < stop_at:
                body = {"model": "bench", "input": SENTENCES[(index * 7 + n) % len(SENTENCES)],
                        "response_format": "pcm", "seed": index * 1000 + n, "max_new_tokens": max_new_tokens}
                n += 1
                start = time.perf_counter()
                first, size = None, 0
                try:
                    with http.stream("POST", "/v1/audio/speech", json=body) as response:
                        if response.status_code != 200:
                            response.read()
                            raise RuntimeError(f"{response.status_code} {response.text[:200]}")
                        for chunk in response.iter_bytes():
                            first = first or time.perf_counter()
                            size += len(chunk)
                except Exception as exc:  # every failure is a figure of this benchmark
                    with lock:
                        errors.append(str(exc))
                    continue
                end = time.perf_counter()
                with lock:
                    records.append((end - start, (first or end) - start, size / 2 / rate))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    latency = sorted(r[0] for r in records)
    first = sorted(r[1] for r in records)

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")

    return {
        "requests": len(records), "errors": len(errors), "first_error": errors[0] if errors else "",
        "wall": wall, "req_per_s": len(records) / wall, "audio_per_s": sum(r[2] for r in records) / wall,
        "p50": statistics.median(latency) if latency else float("nan"), "p95": pct(latency, 0.95),
        "ttfa50": statistics.median(first) if first else float("nan"), "ttfa95": pct(first, 0.95),
        "batches": list(server.engines["bench"].stats.batch_rows),
    }


def peak_memory(device: str) -> str:
    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    text = f"peak RSS {rss:.0f} MiB"
    if device.startswith("cuda"):
        text += f", peak CUDA {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
        torch.cuda.reset_peak_memory_stats()
    return text


def stream_tolerance(codec_kind: str, device: str, chunk: int, frames: int = 48) -> str:
    """The server's chunked decode against one whole decode of the same random frames."""
    import torch

    from kanitts.codecs.nanocodec import NanoCodec

    codec = NanoCodec.from_config(TINY_NANOCODEC_CONFIG if codec_kind == "tiny" else None, seed=0, device=device)
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, codec.codebook_size, (codec.num_codebooks, frames), generator=generator)
    whole = codec.decode(codes[None])[0][0].float().cpu()
    joined = torch.cat([codec.decode_tail(codes[:, : min(frames, s + chunk)], s).float().cpu()
                        for s in range(0, frames, chunk)])
    diff = (joined - whole).abs().max().item()
    snr = 10 * np.log10(float((whole**2).sum()) / max(float(((joined - whole) ** 2).sum()), 1e-30))
    return (f"stream vs whole decode ({codec_kind} NanoCodec, random weights, {frames} frames in chunks of {chunk}, "
            f"{codec.stream_context_frames} frames of left context): max |diff| {diff:.2e}, SNR {snr:.1f} dB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=15.0,
                        help="load time per run (then the requests under way end)")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=66, help="2 markers + 4 tokens per frame: 16 frames")
    parser.add_argument("--codec", choices=["tiny", "full"], default="tiny", help="codec of the tolerance line")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model_dir, codec_dir, model_cfg = build_models(Path(tmp), args)
        figures = {}
        for name, batch in (("one at a time", 1), (f"batched (max {args.max_batch_size})", args.max_batch_size)):
            cfg = InferenceConfig.model_validate({
                "model": {"torch_dtype": args.dtype},
                "generation": {"max_new_tokens": args.max_new_tokens, "constrained_decoding": True},
                "server": {"port": 0, "max_batch_size": batch, "max_queue": args.clients, "batch_wait_ms": 20},
            })
            tts = KaniTTS.from_pretrained(model_dir, codec=codec_dir, model_cfg=model_cfg, inference_cfg=cfg,
                                          device=args.device)
            if not figures:
                print(describe(tts, args))
                print(f"{args.clients} clients for {args.seconds:g} s per run, max_new_tokens {args.max_new_tokens}, "
                      "streaming pcm on 127.0.0.1")
            with Server({"bench": tts}, cfg.server, cfg.generation, log_level="warning") as server:
                load(server, 1, 0.0, 10)  # warm-up: one request
                server.engines["bench"].stats.batch_rows.clear()
                r = load(server, args.clients, args.seconds, args.max_new_tokens)
            rows = r["batches"]
            print(f"{name:22s} {r['requests']:4d} requests  {r['req_per_s']:6.2f} req/s  "
                  f"{r['audio_per_s']:6.2f} audio s / wall s  latency p50 {r['p50']:.2f} s p95 {r['p95']:.2f} s  "
                  f"first audio p50 {r['ttfa50']:.2f} s p95 {r['ttfa95']:.2f} s  errors {r['errors']}  "
                  f"mean batch {sum(rows) / max(len(rows), 1):.1f} rows  {peak_memory(args.device)}")
            if r["errors"]:
                print(f"  first error: {r['first_error']}")
            figures[batch] = r["audio_per_s"]
            del tts
        print(stream_tolerance(args.codec, args.device, chunk=4))
        ratio = figures[args.max_batch_size] / figures[1]
        print(f"dynamic batching vs one at a time: {ratio:.2f}x audio per wall second")
        print(f"ratio: {ratio:.3f}")


if __name__ == "__main__":
    main()
