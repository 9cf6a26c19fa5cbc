"""The dataset step: the reference pipeline's per-row algorithm against kanitts.sequences.

    python benchmarks/bench_data.py [--rows 20000] [--num-proc 2]

Builds a synthetic codec dataset (2 to 12 s clips at 12.5 frames/s, silent stretches made of
repeated frames, two speakers) and a small local tokenizer, then runs

(a) `reference_training_dataset`: a faithful re-creation of the reference KaniTTS data step,
    row by row as it works (datasets `filter`/`map` per row, contiguous shards in a process
    pool, `shuffle(seed=42).select(range(max_len))`, concatenate, shuffle), and
(b) `build_training_dataset` with an empty cache, then again (cache hit),

checks that both give identical input_ids, labels and attention_mask, and prints rows/s and the
ratio. The last line is `ratio: <ours over the baseline>`.

`reference_training_dataset` is the oracle in tests/reference/data_processing.py, the same code
the parity tests of tests/test_data_sequences.py compare against: the reference algorithm is
written down once, there, independently of TokenLayout.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
# The source tree, and tests/ for the reference oracle (tests/reference/), shared with the tests.
sys.path[:0] = [str(REPO_ROOT / "src"), str(REPO_ROOT / "tests")]

import datasets  # noqa: E402

from kanitts.config import DatasetConfig  # noqa: E402

from reference.data_processing import reference_training_dataset, same_sequences  # noqa: E402

FPS = 12.5

# --- the synthetic data ------------------------------------------------------------------------

_WORDS = (
    "the a voice model speaks clearly today while quiet rooms echo with soft words and people listen "
    "to stories about rivers mountains cities music small machines learning patiently every evening"
).split()


def synthetic_codec_rows(rows: int, seed: int = 0) -> datasets.Dataset:
    """Codec rows like `kanitts prepare` writes: 2-12 s, silences as runs of one repeated frame."""
    rng = np.random.default_rng(seed)
    frame_counts = rng.integers(int(2 * FPS), int(12 * FPS) + 1, size=rows)
    layers: list[list[np.ndarray]] = [[], [], [], []]
    texts = []
    for count in frame_counts:
        codes = rng.integers(0, 4032, size=(4, count))
        silence = rng.integers(1, count // 4 + 1)  # a silent stretch of repeated frames
        start = rng.integers(0, count - silence + 1)
        codes[:, start: start + silence] = codes[:, [start]]
        for k in range(4):
            layers[k].append(codes[k])
        words = rng.choice(_WORDS, size=max(1, int(count / FPS * 2.5)))
        texts.append(" ".join(words).capitalize() + ".")
    return datasets.Dataset.from_dict(
        {
            "text": texts,
            **{f"nano_layer_{k + 1}": layers[k] for k in range(4)},
            "encoded_len": frame_counts,
            "speaker": np.where(np.arange(rows) % 3 == 0, "bob", "alice").tolist(),
        }
    )


def bench_tokenizer(folder: Path, texts: list[str]):
    """The tiny test tokenizer retrained on the benchmark's words, so that, like a real LFM2
    tokenizer on English, it spends about 1.5 tokens per word (the test one spends about 4)."""
    from kanitts.tiny import build_tokenizer

    tokenizer = build_tokenizer(folder).train_new_from_iterator(texts, vocab_size=1024)
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def benchmark_configs(source: str, cache_dir: str, bob_max_len: int) -> DatasetConfig:
    return DatasetConfig.model_validate(
        {
            "max_duration_sec": 10,
            "cache_dir": cache_dir,
            "hf_datasets": [
                {"reponame": source, "speaker_id": "Alice",
                 "categorical_filter": {"column_name": "speaker", "value": "alice"}},
                {"reponame": source, "speaker_id": "Bob", "max_len": bob_max_len,
                 "categorical_filter": {"column_name": "speaker", "value": "bob"}},
            ],
        }
    )


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished child processes."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--num-proc", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    from kanitts.sequences import build_training_dataset
    from kanitts.sequences.summary import import_plotting
    from kanitts.tiny import tiny_model_config

    # Library imports are set-up, not throughput: the baseline's (datasets, transformers) are
    # loaded above, and the plotting modules our summary histogram needs (~0.4 s, once per
    # process) are loaded here, before either side is timed.
    import_plotting()

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        rows = synthetic_codec_rows(args.rows)
        rows.save_to_disk(str(tmp_path / "codec"))
        tokenizer = bench_tokenizer(tmp_path / "tokenizer", rows["text"])
        model_cfg = tiny_model_config(len(tokenizer))
        cfg = benchmark_configs(str(tmp_path / "codec"), str(tmp_path / "cache"), bob_max_len=args.rows // 4)
        print(f"{args.rows:,} codec rows, 2 datasets (speaker filters, max_duration_sec, max_len), "
              f"{args.num_proc} process(es), {os.cpu_count()} CPU core(s)")

        start, cpu = time.perf_counter(), cpu_seconds()
        reference = reference_training_dataset(
            cfg, model_cfg, str(tmp_path / "tokenizer"), num_shards=args.num_proc, final_shuffle_seed=cfg.seed
        )
        baseline_s, baseline_cpu = time.perf_counter() - start, cpu_seconds() - cpu

        start, cpu = time.perf_counter(), cpu_seconds()
        ours, report = build_training_dataset(cfg, model_cfg, tokenizer, num_proc=args.num_proc)
        ours_s, ours_cpu = time.perf_counter() - start, cpu_seconds() - cpu

        start = time.perf_counter()
        build_training_dataset(cfg, model_cfg, tokenizer, num_proc=args.num_proc)
        cached_s = time.perf_counter() - start

        print(report.format())
        identical = same_sequences(reference, ours)
        print(f"identical input_ids, labels, attention_mask: {identical} ({len(ours):,} sequences)")
        if not identical:
            raise SystemExit("outputs differ")
        base_rate, ours_rate = args.rows / baseline_s, args.rows / ours_s
        print(f"baseline (reference, per row): {baseline_s:8.2f} s  {base_rate:10,.0f} rows/s  "
              f"{baseline_cpu:8.2f} CPU s")
        print(f"ours (vectorised, no cache):   {ours_s:8.2f} s  {ours_rate:10,.0f} rows/s  {ours_cpu:8.2f} CPU s")
        print(f"CPU time ratio (baseline over ours; steadier than wall time on a busy machine): "
              f"{baseline_cpu / ours_cpu:.1f}")
        print(f"ours (second run, cache hit):  {cached_s:8.2f} s")
        print(f"ratio: {ours_rate / base_rate:.1f}")


if __name__ == "__main__":
    main()
