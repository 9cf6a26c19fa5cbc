"""Clips -> codes: length-bucketed batches through the codec, one shard at a time, with audio
decoded in a thread pool one shard ahead of the encoder.

``codec.encode_rows`` gives each clip's columns (codes, and a global embedding for Kanade) and
``encoded_len = codec.num_frames(samples)``: ``ceil(samples / samples_per_frame)`` for NanoCodec,
as in the reference datasets.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kanitts.bucketing import bucket_by_length
from kanitts.codecs import Codec
from kanitts.prepare.assembly import PrepareResult
from kanitts.prepare.cleaning import Clip, Rejected, safe_load
from kanitts.prepare.options import PrepareOptions
from kanitts.prepare.shards import make_row, write_shard
from kanitts.prepare.sources import Source


def length_buckets(
    clips: list[Clip], budget_samples: int, max_batch: int, max_padding: float = 0.1
) -> list[list[Clip]]:
    """Clips in batches whose padded size fits ``budget_samples`` (the encoder's memory) and of
    which at most ``max_padding`` is padding (the encoder's time), longest first: the
    distribution's one bucketing rule, :func:`kanitts.bucketing.bucket_by_length`."""
    groups = bucket_by_length(
        [len(clip.audio) for clip in clips], max_items=max_batch, max_padded=budget_samples, max_padding=max_padding
    )
    return [[clips[i] for i in group] for group in groups]


def encode_shards(
    todo: list[int],
    source: Source,
    codec: Codec,
    options: PrepareOptions,
    manifest: dict,
    partial: Path,
    result: PrepareResult,
    rank: int,
) -> None:
    import torch

    if not todo:
        return
    sr = codec.sample_rate
    on_gpu = codec.device.type == "cuda"
    batch_seconds = options.batch_seconds or (600.0 if on_gpu else 60.0)
    # On a CPU one clip per call is fastest: a single clip already keeps the cores busy, and
    # bigger activations only add cache misses (benchmarks/RESULTS.md).
    max_batch = options.max_batch_size or (64 if on_gpu else 1)
    budget = int(batch_seconds * sr)
    n = len(source)
    shard_items = {
        k: range(k * options.shard_size, min(n, (k + 1) * options.shard_size)) for k in todo
    }
    total_items = sum(len(r) for r in shard_items.values())
    bar = _progress(total_items, options.progress, rank)
    t0 = time.perf_counter()
    encoded_seconds = 0.0

    with ThreadPoolExecutor(max_workers=options.num_workers, thread_name_prefix="kanitts-audio") as pool:

        def submit(k: int) -> list[Future]:
            return [pool.submit(safe_load, source, source.item(i), options, sr) for i in shard_items[k]]

        pending = submit(todo[0])
        for pos, k in enumerate(todo):
            loaded = [f.result() for f in pending]
            pending = submit(todo[pos + 1]) if pos + 1 < len(todo) else []  # decode ahead
            clips = [c for c in loaded if isinstance(c, Clip)]
            rejected = [
                {"index": item_index, "source": source.item(item_index).source, "reason": r.reason, "detail": r.detail}
                for item_index, r in zip(shard_items[k], loaded)
                if isinstance(r, Rejected)
            ]
            warned = [
                {"index": c.item.index, "source": c.item.source, "warnings": c.warnings} for c in clips if c.warnings
            ]
            rows: dict[int, dict[str, Any]] = {}
            for batch in length_buckets(clips, budget, max_batch):
                lengths = torch.tensor([len(c.audio) for c in batch], dtype=torch.int64)
                waves = torch.zeros(len(batch), int(lengths.max()), dtype=torch.float32)
                for b, c in enumerate(batch):
                    waves[b, : len(c.audio)] = torch.from_numpy(c.audio)
                frame_lengths, columns = codec.encode_rows(waves, lengths)
                expected = codec.frame_lengths(lengths).tolist()
                if frame_lengths.cpu().tolist() != expected:  # pragma: no cover - codec bug guard
                    raise RuntimeError(f"{codec.kind} returned frame lengths {frame_lengths.tolist()} != {expected}")
                for c, cols in zip(batch, columns):
                    rows[c.item.index] = make_row(c, cols, manifest["has_speaker"], options.speaker, sr)
                batch_seconds_done = float(lengths.sum()) / sr
                encoded_seconds += batch_seconds_done
                if bar is not None:
                    bar.update(len(batch))
                    elapsed = max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix_str(
                        f"{encoded_seconds / 3600:.3f} h audio, "
                        f"{encoded_seconds / 3600 / elapsed:.4f} h/s, rejected {result.rejected + len(rejected)}",
                        refresh=False,
                    )
            if bar is not None and rejected:
                bar.update(len(rejected))
            write_shard(partial, k, [rows[i] for i in sorted(rows)], rejected, warned, manifest, codec)
            result.shards_done_here += 1
            result.rejected += len(rejected)
    if bar is not None:
        bar.close()
    result.encoded_hours_this_run = encoded_seconds / 3600


def _progress(total: int, enabled: bool, rank: int):
    if not enabled or rank != 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="clip", desc="prepare", dynamic_ncols=True)


