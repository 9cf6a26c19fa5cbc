"""The dataset step: the reference pipeline's per-row algorithm against kanitts.data.sequences.

    python benchmarks/bench_data.py [--rows 20000] [--num-proc 2]

Builds a synthetic codec dataset (2 to 12 s clips at 12.5 frames/s, silent stretches made of
repeated frames, two speakers) and a small local tokenizer, then runs

(a) `reference_training_dataset`: a faithful re-creation of the reference KaniTTS data step,
    row by row as it works (datasets `filter`/`map` per row, contiguous shards in a process
    pool, `shuffle(seed=42).select(range(max_len))`, concatenate, shuffle), and
(b) `build_training_dataset` with an empty cache, then again (cache hit),

checks that both give identical input_ids, labels and attention_mask, and prints rows/s and the
ratio. The last line is `ratio: <ours over the baseline>`.

`reference_training_dataset` is also the parity oracle of tests/test_data_sequences.py, which
imports it from this file: the reference algorithm is written down once, here, independently of
TokenLayout, so the tests compare two separate implementations.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import datasets  # noqa: E402

from kanitts.config import DatasetConfig, ModelConfig  # noqa: E402
from kanitts.data.codec_sources import load_source  # noqa: E402

FPS = 12.5

# --- (a) the reference algorithm, one row at a time ------------------------------------------


def reference_training_dataset(
    dataset_cfg: DatasetConfig,
    model_cfg: ModelConfig,
    tokenizer_path: str,
    *,
    num_shards: int = 1,
    final_shuffle_seed: int | None = None,
    max_len_seed: int = 42,
) -> datasets.Dataset:
    """The reference data step. Its final shuffle is unseeded (pass a seed to compare outputs);
    its max_len sample always uses seed 42 (pass another to compare with a different `seed`)."""
    parts = []
    for entry in dataset_cfg.hf_datasets:
        table = load_source(entry)
        if entry.categorical_filter is not None:
            column, value = entry.categorical_filter.column_name, entry.categorical_filter.value
            table = table.filter(lambda row: row[column] == value)
        renames = {
            entry.text_col_name: "text",
            **{c: f"nano_layer_{i + 1}" for i, c in enumerate(entry.layer_columns())},
            entry.encoded_len: "encoded_len",
        }
        table = table.rename_columns({old: new for old, new in renames.items() if old != new})
        shards = [table.shard(num_shards=num_shards, index=i, contiguous=True) for i in range(num_shards)]
        job = (tokenizer_path, dataset_cfg.max_duration_sec, entry.speaker_id, model_cfg)
        if num_shards == 1:
            done = [_reference_shard(shards[0], *job)]
        else:
            with ProcessPoolExecutor(max_workers=num_shards) as pool:
                done = list(pool.map(_reference_shard, shards, *[[arg] * num_shards for arg in job]))
        part = datasets.concatenate_datasets(done)
        if entry.max_len is not None:
            part = part.shuffle(seed=max_len_seed).select(range(entry.max_len))
        parts.append(part)
    return datasets.concatenate_datasets(parts).shuffle(seed=final_shuffle_seed)


def _reference_shard(
    shard: datasets.Dataset, tokenizer_path: str, max_duration_sec: float | None, speaker_id: str | None, model_cfg: ModelConfig
) -> datasets.Dataset:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    special = model_cfg.special_tokens
    codec = model_cfg.codec
    layers = [f"nano_layer_{i + 1}" for i in range(codec.num_codebooks)]
    if max_duration_sec:
        shard = shard.filter(lambda row: row["encoded_len"] / codec.fps <= max_duration_sec)

    def audio_codes(row: dict) -> dict:
        frames = np.array([row[layer] for layer in layers]).T
        frames = frames + np.array([codec.codebook_size * i for i in range(codec.num_codebooks)])
        changed = np.any(frames[1:] != frames[:-1], axis=1)
        frames = frames[np.insert(changed, 0, True)]
        row["codes_list"] = (frames + codec.audio_tokens_start).flatten().tolist()
        return row

    def sequence(row: dict) -> dict:
        prompt = f"{speaker_id.lower()}: {row['text']}" if speaker_id is not None else row["text"]
        text_ids = tokenizer.encode(prompt, add_special_tokens=True)
        text_ids.append(special.end_of_text)
        ids = (
            [special.start_of_human] + text_ids + [special.end_of_human, special.start_of_ai, special.start_of_speech]
            + row["codes_list"] + [special.end_of_speech, special.end_of_ai]
        )
        row["input_ids"] = ids
        row["labels"] = ids
        row["attention_mask"] = [1] * len(ids)
        return row

    shard = shard.map(audio_codes, remove_columns=layers)
    shard = shard.filter(lambda row: row["codes_list"] is not None)
    shard = shard.filter(lambda row: len(row["codes_list"]) > 0)
    shard = shard.map(sequence, remove_columns=["text", "codes_list"])
    return shard.remove_columns([c for c in shard.column_names if c not in ("input_ids", "labels", "attention_mask")])


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


def same_sequences(a: datasets.Dataset, b: datasets.Dataset) -> bool:
    if len(a) != len(b):
        return False
    a, b = a.flatten_indices(), b.flatten_indices()
    return all(
        a.data.column(c).combine_chunks().equals(b.data.column(c).combine_chunks())
        for c in ("input_ids", "labels", "attention_mask")
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

    from kanitts.data.report import import_plotting
    from kanitts.data.sequences import build_training_dataset
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
        print(f"baseline (reference, per row): {baseline_s:8.2f} s  {base_rate:10,.0f} rows/s  {baseline_cpu:8.2f} CPU s")
        print(f"ours (vectorised, no cache):   {ours_s:8.2f} s  {ours_rate:10,.0f} rows/s  {ours_cpu:8.2f} CPU s")
        print(f"CPU time ratio (baseline over ours; steadier than wall time on a busy machine): "
              f"{baseline_cpu / ours_cpu:.1f}")
        print(f"ours (second run, cache hit):  {cached_s:8.2f} s")
        print(f"ratio: {ours_rate / base_rate:.1f}")


if __name__ == "__main__":
    main()
