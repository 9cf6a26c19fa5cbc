"""A re-creation of the reference KaniTTS fine-tuning pipeline's data step (its
`dataset_processor.py`), row by row as it works: per dataset, `categorical_filter`, rename the
configured columns to the standard names, contiguous shards processed in a process pool, each
shard filtering on `encoded_len / fps <= max_duration_sec`, offsetting codebook k by
k * codebook_size, dropping every frame equal to the one before, adding the audio-token start,
and wrapping the text prompt and codes in the special tokens (`labels = input_ids`, an all-ones
`attention_mask`); then `shuffle(seed=42).select(range(max_len))`, concatenation and a final
shuffle (unseeded in the reference).

Why it is an oracle: it is written from the reference's algorithm, independently of
`kanitts.tokens.TokenLayout` and of the vectorised `kanitts` data step, with `datasets`'
per-row `filter`/`map` as the reference uses them. tests/test_data_sequences.py compares the two
implementations token for token, and benchmarks/bench_data.py uses it as the baseline it times.
Nothing in `kanitts` imports it.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import datasets
import numpy as np

from kanitts.config import DatasetConfig, ModelConfig
from kanitts.sequences.sources import load_source


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
        table = load_source(entry, entry.layer_columns(model_cfg.codec_layers))
        if entry.categorical_filter is not None:
            column, value = entry.categorical_filter.column_name, entry.categorical_filter.value
            table = table.filter(lambda row, column=column, value=value: row[column] == value)
        renames = {
            entry.text_col_name: "text",
            **{c: f"nano_layer_{i + 1}" for i, c in enumerate(entry.layer_columns(model_cfg.codec_layers))},
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
    shard: datasets.Dataset,
    tokenizer_path: str,
    max_duration_sec: float | None,
    speaker_id: str | None,
    model_cfg: ModelConfig,
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


def same_sequences(a: datasets.Dataset, b: datasets.Dataset) -> bool:
    """Equal value for value and storage type for type: Arrow's `equals` compares the list
    element types too (`int32` ids, `int64` labels, `int8` mask), which a Python `==` would not."""
    if len(a) != len(b):
        return False
    a, b = a.flatten_indices(), b.flatten_indices()
    return all(
        a.data.column(c).combine_chunks().equals(b.data.column(c).combine_chunks())
        for c in ("input_ids", "labels", "attention_mask")
    )
