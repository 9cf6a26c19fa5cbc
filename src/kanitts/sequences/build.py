"""Codec datasets -> training sequences: the dataset step of `kanitts train` and `kanitts data`.

    from kanitts.data.sequences import build_training_dataset
    sequences, report = build_training_dataset(configs.dataset, configs.model, tokenizer)
    print(report.format())

`sequences` is a `datasets.Dataset` with columns input_ids, labels, attention_mask, length,
speaker and dataset; `report` (:class:`~kanitts.data.report.TrainingDataReport`) says what was
kept and dropped and why; `report.fingerprint` identifies the sequences for checkpoint metadata.

The sequences are token for token what the reference KaniTTS pipeline builds from the same rows
and tokenizer: same filters in the same order, same frame dedup, same prompt, same `max_len`
sample (numpy's PCG64 permutation with the seed, as `Dataset.shuffle(seed)` draws it). Where we
differ, it is to fix something and is documented in docs/data.md: `max_len` above the row count
keeps every row instead of raising, the final shuffle is seeded, and rows that would crash the
reference or teach the model garbage (bad codec data, empty text) are skipped and counted.

Why it is fast: each batch of rows is processed as whole Arrow columns with numpy (no Python loop
over rows or frames; the tokenizer encodes the batch in Rust), in `num_proc` processes, and the
result is cached under `cache_dir/<fingerprint>/`, keyed by everything that determines it
(dataset configs and source fingerprints, token layout, tokenizer, seed, PROCESSING_VERSION), so
the next run with the same inputs loads it in seconds. The folder (sequences.arrow, summary.json,
lengths.png) is written under a temporary name and renamed, so a crash never leaves a cache that
looks complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets.arrow_writer import ArrowWriter
from tqdm.auto import tqdm

from kanitts.atomic import swap_in, temporary_sibling
from kanitts.config import DatasetConfig, DatasetEntry, ModelConfig, suggest
from kanitts.data.codec_sources import load_source
from kanitts.data.report import (
    BAD_DATA,
    DatasetSummary,
    DropCount,
    GroupSummary,
    RowStatus,
    TrainingDataReport,
    import_plotting,
    save_length_histogram,
)
from kanitts.errors import UserError
from kanitts.tokens import TokenLayout

# Bump when a change to this module changes the sequences it builds: old caches stop matching.
PROCESSING_VERSION = 3

# Below this many rows per process, starting worker processes costs more than it saves.
MIN_ROWS_PER_PROCESS = 10_000
MAP_BATCH_SIZE = 1000
WRITE_BATCH_ROWS = 10_000
IN_MEMORY_GATHER_BYTES = 2 * 1024**3

SEQUENCES_FILE = "sequences.arrow"
SUMMARY_FILE = "summary.json"
HISTOGRAM_FILE = "lengths.png"

OUTPUT_COLUMNS = ["input_ids", "labels", "attention_mask", "length", "speaker", "dataset"]

# What the batches produce: the output columns, then per-row bookkeeping for the report (status,
# frames before and after dedup, encoded_len one frame off the layers). The token lists get the storage types `datasets` picks for the
# reference's Python lists (it narrows input_ids and attention_mask), so the features match too.
_MAP_FEATURES = datasets.Features(
    {
        "input_ids": datasets.List(datasets.Value("int32")),
        "labels": datasets.List(datasets.Value("int64")),
        "attention_mask": datasets.List(datasets.Value("int8")),
        "length": datasets.Value("int64"),
        "speaker": datasets.Value("string"),
        "dataset": datasets.Value("string"),
        "status": datasets.Value("int8"),
        "frames": datasets.Value("int64"),
        "kept_frames": datasets.Value("int64"),
        "encoded_len_off_by_one": datasets.Value("bool"),
    }
)

OUTPUT_FEATURES = datasets.Features({name: _MAP_FEATURES[name] for name in OUTPUT_COLUMNS})

# Markers passed through TokenLayout.training_ids to read off where text and audio go.
_TEXT_MARK, _AUDIO_MARK = -1, -2


def build_training_dataset(
    dataset_cfg: DatasetConfig,
    model_cfg: ModelConfig,
    tokenizer: Any,
    *,
    cache_dir: Path | str | None = None,
    num_proc: int | None = None,
    rebuild: bool = False,
) -> tuple[datasets.Dataset, TrainingDataReport]:
    """Build (or load from the cache) the training sequences of every dataset in `dataset_cfg`.

    `tokenizer` is the base model's (a transformers tokenizer; fast ones are much faster).
    `cache_dir` defaults to `dataset_cfg.cache_dir`; `num_proc` to `dataset_cfg.num_proc`, then
    `n_shards_per_dataset`, then the CPU count (at most 8). `rebuild` ignores an existing cache.
    Raises UserError for missing columns and for a dataset that the filters leave empty.
    """
    layout = TokenLayout.from_config(model_cfg)
    sources = [load_source(entry) for entry in dataset_cfg.hf_datasets]
    problems = [p for entry, source in zip(dataset_cfg.hf_datasets, sources) for p in column_problems(entry, source)]
    if problems:
        raise UserError("\n".join(problems))

    fingerprint = cache_key(dataset_cfg, model_cfg, tokenizer, sources)
    root = Path(cache_dir if cache_dir is not None else dataset_cfg.cache_dir)
    final = root / fingerprint
    if (final / SUMMARY_FILE).is_file() and (final / SEQUENCES_FILE).is_file() and not rebuild:
        return _load_cached(final)

    root.mkdir(parents=True, exist_ok=True)
    staging = temporary_sibling(final)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        report = _build(dataset_cfg, model_cfg, layout, tokenizer, sources, staging, fingerprint, final, num_proc)
        swap_in(staging, final)  # rebuild, or another process finished first: the newest wins
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return datasets.Dataset.from_file(str(final / SEQUENCES_FILE)), report


def training_data_command(
    config_dir: Path | str,
    *,
    tokenizer_name: str | None = None,
    rebuild: bool = False,
    num_proc: int | None = None,
) -> TrainingDataReport:
    """`kanitts data`: build (or find cached) the training sequences of a config folder.

    The tokenizer is the base model's from experiments.yaml unless `tokenizer_name` (a folder or
    Hub id) is given; `kanitts train` then reuses the same cache.
    """
    from transformers import AutoTokenizer

    from kanitts.config import load_configs

    kinds = ("dataset", "model") if tokenizer_name else ("dataset", "model", "experiments")
    configs = load_configs(config_dir, kinds=kinds)
    name = tokenizer_name or configs.experiments.base_model
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise UserError(f"tokenizer {name!r} could not be loaded (a model folder or Hub id): {exc}") from None
    _, report = build_training_dataset(configs.dataset, configs.model, tokenizer, rebuild=rebuild, num_proc=num_proc)
    return report


def column_problems(entry: DatasetEntry, source: datasets.Dataset) -> list[str]:
    """Missing or mistyped columns of one dataset, each naming the dataset, the column and the key."""
    wanted = {
        "text_col_name": (entry.text_col_name, "text"),
        "encoded_len": (entry.encoded_len, "int"),
        **{f"nano_layer_{i + 1}": (c, "int_list") for i, c in enumerate(entry.layer_columns())},
    }
    if entry.categorical_filter is not None:
        wanted["categorical_filter.column_name"] = (entry.categorical_filter.column_name, "any")
    columns = source.column_names
    problems = []
    for key, (column, kind) in wanted.items():
        if column not in columns:
            problems.append(
                f"dataset {entry.label}: column {column!r} ({key}) not found{suggest(column, columns)}; "
                f"it has columns {columns}"
            )
            continue
        arrow_type = source.data.schema.field(column).type
        if not _has_kind(arrow_type, kind):
            expected = {"text": "text", "int": "integers", "int_list": "lists of integer codes"}[kind]
            problems.append(f"dataset {entry.label}: column {column!r} ({key}) holds {arrow_type}, expected {expected}")
    return problems


def _has_kind(arrow_type: pa.DataType, kind: str) -> bool:
    if kind == "text":
        return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
    if kind == "int":
        return pa.types.is_integer(arrow_type)
    if kind == "int_list":
        return (
            pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type)
        ) and pa.types.is_integer(arrow_type.value_type)
    return True


def cache_key(
    dataset_cfg: DatasetConfig, model_cfg: ModelConfig, tokenizer: Any, sources: list[datasets.Dataset]
) -> str:
    """A digest of everything the sequences depend on, and nothing else (not num_proc, not paths of the cache)."""
    payload = {
        "processing_version": PROCESSING_VERSION,
        "datasets": [
            {**entry.model_dump(), "source_fingerprint": getattr(source, "_fingerprint", None), "rows": len(source)}
            for entry, source in zip(dataset_cfg.hf_datasets, sources)
        ],
        "max_duration_sec": dataset_cfg.max_duration_sec,
        "seed": dataset_cfg.seed,
        "dedup_frames": dataset_cfg.dedup_frames,
        "layout": dataclasses.asdict(TokenLayout.from_config(model_cfg)),
        "fps": model_cfg.codec.fps,
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A digest of what decides the tokenizer's ids: its full definition, or its vocabulary and specials."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps([type(tokenizer).__name__, tokenizer.special_tokens_map], sort_keys=True, default=str)
    return hashlib.sha256((definition + extra).encode()).hexdigest()


def _load_cached(folder: Path) -> tuple[datasets.Dataset, TrainingDataReport]:
    report = TrainingDataReport.from_json((folder / SUMMARY_FILE).read_text(encoding="utf-8"))
    report.from_cache = True
    report.cache_path = str(folder)
    return datasets.Dataset.from_file(str(folder / SEQUENCES_FILE)), report


# --- building --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowRules:
    """How the rows of one dataset are checked and turned into sequences; sent to worker processes."""

    dataset: str
    text_column: str
    layer_columns: tuple[str, ...]
    encoded_len_column: str
    speaker_id: str | None
    speaker_column: str | None  # statistics only, when there is no speaker_id
    max_duration_sec: float | None
    fps: float
    dedup_frames: bool
    layout: TokenLayout

    @classmethod
    def of(
        cls, name: str, entry: DatasetEntry, source: datasets.Dataset, dataset_cfg: DatasetConfig, model_cfg: ModelConfig
    ) -> RowRules:
        return cls(
            dataset=name,
            text_column=entry.text_col_name,
            layer_columns=tuple(entry.layer_columns()),
            encoded_len_column=entry.encoded_len,
            speaker_id=entry.speaker_id,
            speaker_column="speaker" if entry.speaker_id is None and "speaker" in source.column_names else None,
            max_duration_sec=dataset_cfg.max_duration_sec,
            fps=model_cfg.codec.fps,
            dedup_frames=dataset_cfg.dedup_frames,
            layout=TokenLayout.from_config(model_cfg),
        )


@dataclass
class RowOutcomes:
    """What became of each row of one dataset: per-row arrays, for max_len, the report and errors.

    `rows` are source row indices of the rows that passed the categorical filter (those the
    batches saw), aligned with the other arrays; `filtered_out` are the others.
    """

    rows: np.ndarray
    status: np.ndarray
    frames: np.ndarray
    kept_frames: np.ndarray
    off_by_one: np.ndarray
    lengths: np.ndarray
    speakers: np.ndarray
    filtered_out: np.ndarray

    @classmethod
    def of(cls, table: pa.Table, rows: np.ndarray, filtered_out: np.ndarray) -> RowOutcomes:
        return cls(
            rows=rows,
            status=table.column("status").to_numpy().copy(),
            frames=table.column("frames").to_numpy(),
            kept_frames=table.column("kept_frames").to_numpy(),
            off_by_one=table.column("encoded_len_off_by_one").to_numpy(),
            lengths=table.column("length").to_numpy(),
            speakers=np.asarray(table.column("speaker").to_pylist(), dtype=object),
            filtered_out=filtered_out,
        )

    def all_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(status, source row) of every source row, the categorical filter's drops included."""
        status = np.concatenate([self.status, np.full(len(self.filtered_out), RowStatus.CATEGORICAL_FILTER, np.int8)])
        return status, np.concatenate([self.rows, self.filtered_out])


@dataclass(frozen=True)
class _Plan:
    index: int
    entry: DatasetEntry
    source: datasets.Dataset
    rules: RowRules
    matching: np.ndarray  # source rows that pass the categorical filter
    processes: int


def _build(
    dataset_cfg: DatasetConfig,
    model_cfg: ModelConfig,
    layout: TokenLayout,
    tokenizer: Any,
    sources: list[datasets.Dataset],
    staging: Path,
    fingerprint: str,
    final: Path,
    num_proc: int | None,
) -> TrainingDataReport:
    """Run every dataset's rows through the batches, pick and shuffle, write the cache into `staging`."""
    requested = num_proc or dataset_cfg.num_proc or dataset_cfg.n_shards_per_dataset or min(os.cpu_count() or 1, 8)
    work = staging / "work"
    work.mkdir(parents=True)
    names = dataset_names(dataset_cfg.hf_datasets)
    plans, errors = [], []
    for index, (entry, source) in enumerate(zip(dataset_cfg.hf_datasets, sources)):
        rules = RowRules.of(names[index], entry, source, dataset_cfg, model_cfg)
        matching = _rows_matching(entry, source)
        if len(source) and not len(matching):
            errors.append(_emptied_message(entry, rules, source, None))
            continue
        processes = max(1, min(requested, len(matching) // MIN_ROWS_PER_PROCESS))
        plans.append(_Plan(index, entry, source, rules, matching, processes))

    mapped_parts, chosen_parts, summaries = [], [], []
    lengths_by_dataset: dict[str, np.ndarray] = {}
    base = 0
    with ThreadPoolExecutor(max_workers=1) as drawer:
        if all(plan.processes == 1 for plan in plans):
            # Importing matplotlib takes about a second: done while the tokenizer, numpy and Arrow
            # work outside the GIL. Not when worker processes will be forked, as a fork in the
            # middle of an import can deadlock the child.
            drawer.submit(import_plotting)
        for plan in plans:
            entry, source, rules = plan.entry, plan.source, plan.rules
            mapped, outcomes = _run_batches(plan, tokenizer, layout, work, f"{fingerprint}-{plan.index}")
            kept = np.flatnonzero(outcomes.status == RowStatus.KEPT)
            if not len(kept):
                errors.append(_emptied_message(entry, rules, source, outcomes))
                continue
            chosen, notes = _apply_max_len(kept, outcomes.status, entry.max_len, dataset_cfg.seed)
            summary = _summarize(rules.dataset, outcomes, chosen, model_cfg.codec.fps)
            summary.notes.extend(notes)
            summaries.append(summary)
            lengths_by_dataset[rules.dataset] = outcomes.lengths[chosen]
            mapped_parts.append(mapped)
            chosen_parts.append(base + chosen)
            base += len(mapped)
        if errors:
            raise UserError("\n".join(errors))

        # The reference concatenates the datasets and shuffles; a seeded permutation of the
        # chosen rows of all datasets is the same thing, written out in that order.
        chosen_all = np.concatenate(chosen_parts)
        order = chosen_all[np.random.default_rng(dataset_cfg.seed).permutation(len(chosen_all))]
        histogram = drawer.submit(save_length_histogram, lengths_by_dataset, staging / HISTOGRAM_FILE)
        _write_in_order(mapped_parts, order, staging / SEQUENCES_FILE)
        histogram.result()
    del mapped_parts
    shutil.rmtree(work)

    report = TrainingDataReport(datasets=summaries, fingerprint=fingerprint, cache_path=str(final))
    (staging / SUMMARY_FILE).write_text(report.to_json(), encoding="utf-8")
    return report


def _run_batches(
    plan: _Plan, tokenizer: Any, layout: TokenLayout, work: Path, fingerprint: str
) -> tuple[datasets.Dataset, RowOutcomes]:
    """All batches of one dataset through `sequences_for_batch`: its output and per-row outcomes."""
    source, matching = plan.source, plan.matching
    # Rows of other speakers are dropped inside each batch by Arrow (a `select` here would
    # gather rows one by one in Python).
    passes = None
    if len(matching) < len(source):
        passes = np.zeros(len(source), dtype=bool)
        passes[matching] = True
    # One process and little data: keep the output in memory, written once at the end.
    in_memory = plan.processes == 1 and _estimated_bytes(plan.entry, source, matching, layout) <= IN_MEMORY_GATHER_BYTES
    mapped = source.with_format("arrow").map(
        sequences_for_batch,
        batched=True,
        batch_size=MAP_BATCH_SIZE,
        with_indices=True,
        fn_kwargs={"rules": plan.rules, "tokenizer": tokenizer, "passes_filter": passes},
        remove_columns=source.column_names,
        features=_MAP_FEATURES,
        num_proc=plan.processes if plan.processes > 1 else None,
        keep_in_memory=in_memory,
        cache_file_name=None if in_memory else str(work / f"dataset-{plan.index}.arrow"),
        new_fingerprint=fingerprint,
        desc=f"{plan.rules.dataset}: rows -> sequences",
    ).with_format(None)
    filtered_out = np.zeros(0, dtype=np.int64) if passes is None else np.flatnonzero(~passes)
    return mapped, RowOutcomes.of(mapped.data, matching, filtered_out)


def _estimated_bytes(entry: DatasetEntry, source: datasets.Dataset, matching: np.ndarray, layout: TokenLayout) -> int:
    """An upper bound of the size of one dataset's sequences: 13 bytes (ids, labels, mask) per audio token."""
    frames = pc.fill_null(source.with_format("arrow")[entry.encoded_len], 0).to_numpy()
    return int(frames[matching].sum()) * layout.num_codebooks * 13


def _write_in_order(parts: list[datasets.Dataset], order: np.ndarray, path: Path) -> None:
    """Write the rows `order` picks from the parts (concatenated), in that order, as one Arrow file.

    Arrow gathers rows fastest from one contiguous table in memory; past IN_MEMORY_GATHER_BYTES,
    `datasets` gathers them from the memory-mapped files instead (slower, little memory).
    """
    table = pa.concat_tables([part.data.table for part in parts]).select(OUTPUT_COLUMNS)
    if table.nbytes > IN_MEMORY_GATHER_BYTES:
        rows = datasets.concatenate_datasets(parts).select(order).select_columns(OUTPUT_COLUMNS)
        rows.flatten_indices(cache_file_name=str(path))
        return
    table = table.combine_chunks()
    with ArrowWriter(path=str(path), features=OUTPUT_FEATURES) as writer:
        for start in tqdm(range(0, len(order), WRITE_BATCH_ROWS), desc="writing training sequences", unit="batch"):
            writer.write_table(table.take(order[start: start + WRITE_BATCH_ROWS]))
        writer.finalize()


def _rows_matching(entry: DatasetEntry, source: datasets.Dataset) -> np.ndarray:
    """Source rows that pass `categorical_filter`, compared with Python `==` as the reference does.

    Applied before the batches, so rows of other speakers cost nothing further.
    """
    if entry.categorical_filter is None:
        return np.arange(len(source))
    wanted = entry.categorical_filter.value
    values = source.with_format("arrow")[entry.categorical_filter.column_name].to_pylist()
    return np.flatnonzero(np.fromiter((v == wanted for v in values), dtype=bool, count=len(values)))


def dataset_names(entries: list[DatasetEntry]) -> list[str]:
    """How the report and the `dataset` column name each entry: its label, numbered when two share one."""
    labels = [e.label for e in entries]
    return [f"{label} #{i + 1}" if labels.count(label) > 1 else label for i, label in enumerate(labels)]


def _apply_max_len(kept: np.ndarray, status: np.ndarray, max_len: int | None, seed: int) -> tuple[np.ndarray, list[str]]:
    """The rows `max_len` keeps, in the order the reference's `shuffle(seed).select(range(max_len))` gives.

    Marks the rows it leaves out in `status`. Above the row count it keeps them all (the
    reference raises there).
    """
    if max_len is None:
        return kept, []
    order = np.random.default_rng(seed).permutation(len(kept))
    status[kept[order[max_len:]]] = RowStatus.OVER_MAX_LEN
    notes = []
    if max_len > len(kept):
        notes.append(f"max_len {max_len} is more than the {len(kept)} rows left after filtering: all are kept")
    return kept[order[:max_len]], notes


def _summarize(name: str, outcomes: RowOutcomes, chosen: np.ndarray, fps: float) -> DatasetSummary:
    o = outcomes
    kept = o.status == RowStatus.KEPT
    status, rows = o.all_rows()
    summary = DatasetSummary.of(name, status, rows, o.frames[kept], o.lengths[kept], fps)
    summary.frames_removed_as_repeats = int(o.frames[chosen].sum() - o.kept_frames[chosen].sum())
    off = np.flatnonzero(kept & o.off_by_one)
    if len(off):
        summary.encoded_len_off_by_one = DropCount(count=len(off), example_row=int(o.rows[off[0]]))
    # Rows the categorical filter removed belong to other speakers or subsets: not this one's losses.
    for speaker in dict.fromkeys(o.speakers):
        mine = o.speakers == speaker
        summary.speakers.append(
            GroupSummary.of(speaker, o.status[mine], o.rows[mine], o.frames[mine & kept], o.lengths[mine & kept], fps)
        )
    return summary


def _emptied_message(
    entry: DatasetEntry, rules: RowRules, source: datasets.Dataset, outcomes: RowOutcomes | None
) -> str:
    """Which configured step removed the last rows of a dataset, with what the user can check.

    `outcomes` is None when the categorical filter matched nothing (the batches never ran).
    """
    where = f"dataset {rules.dataset}"
    if not len(source):
        return f"{where}: has no rows"
    if outcomes is None:
        column, value = entry.categorical_filter.column_name, entry.categorical_filter.value
        values = source.unique(column)[:10]
        return (
            f"{where}: no rows left after categorical_filter ({column} == {value!r}): it matches none of the "
            f"{len(source)} rows; values in column {column!r} include {values}"
        )
    status = outcomes.status
    steps = [
        ((RowStatus.TOO_LONG,), f"max_duration_sec: {rules.max_duration_sec}"),
        (BAD_DATA, "the bad-data checks"),
        ((RowStatus.EMPTY_TEXT,), "the empty-text check"),
        ((RowStatus.NO_AUDIO,), "the no-audio check"),
    ]
    remaining = len(status)
    for reasons, what in steps:
        removed = int(np.isin(status, reasons).sum())
        before, remaining = remaining, remaining - removed
        if removed and not remaining:
            break
    message = f"{where}: no rows left after {what} ({before} of {len(source)} rows reached it)"
    if RowStatus.TOO_LONG in reasons:
        shortest = outcomes.frames[status == RowStatus.TOO_LONG].min() / rules.fps
        return message + f"; the shortest clip is {shortest:.1f} s"
    counts = [
        f"{int((status == r).sum())} {r.description} (e.g. row {int(outcomes.rows[np.flatnonzero(status == r)[0]])})"
        for r in reasons
        if (status == r).any()
    ]
    return message + ": " + ", ".join(counts)


# --- one batch of rows, vectorised -----------------------------------------------------------


def sequences_for_batch(
    batch: pa.Table, indices: list[int], rules: RowRules, tokenizer: Any, passes_filter: np.ndarray | None = None
) -> pa.Table:
    """Check a batch of source rows and build the training sequence of each row that passes.

    `passes_filter` (by source row) says which rows the categorical filter keeps; the others are
    left out of the output. Every other row gets one output row, in order (so worker shards
    concatenate in order): dropped rows have empty sequences and their RowStatus, for the report.
    """
    if passes_filter is not None:
        batch = batch.filter(pa.array(passes_filter[indices]))
    n = batch.num_rows
    layout = rules.layout
    status = np.zeros(n, dtype=np.int8)

    def drop(mask: np.ndarray, reason: RowStatus) -> None:
        status[(status == RowStatus.KEPT) & mask] = reason

    encoded_len = pc.fill_null(batch.column(rules.encoded_len_column), -1).to_numpy().astype(np.int64)
    if rules.max_duration_sec:
        drop(~(encoded_len / rules.fps <= rules.max_duration_sec), RowStatus.TOO_LONG)

    layers = [batch.column(c) for c in rules.layer_columns]
    lengths = np.stack([pc.fill_null(pc.list_value_length(a), 0).to_numpy() for a in layers], axis=1).astype(np.int64)
    codes = [pc.list_flatten(a).to_numpy().astype(np.int64) for a in layers]
    drop(np.any(lengths != lengths[:, :1], axis=1), RowStatus.LAYER_LENGTHS_DIFFER)
    # The layers are what is trained on; encoded_len only feeds the duration filter. One frame
    # off is kept, as the reference keeps it (counted in the summary); more is bad data.
    off = lengths[:, 0] - encoded_len
    drop((encoded_len < 0) | (np.abs(off) > 1), RowStatus.ENCODED_LEN_MISMATCH)
    out_of_range = np.zeros(n, dtype=bool)
    for k, layer_codes in enumerate(codes):
        bad = (layer_codes < 0) | (layer_codes >= layout.codebook_size)
        out_of_range[np.repeat(np.arange(n), lengths[:, k])[bad]] = True
    drop(out_of_range, RowStatus.CODE_OUT_OF_RANGE)
    texts = batch.column(rules.text_column).to_pylist()
    drop(np.fromiter((not t or t.isspace() for t in texts), dtype=bool, count=n), RowStatus.EMPTY_TEXT)
    drop(lengths[:, 0] == 0, RowStatus.NO_AUDIO)

    kept = status == RowStatus.KEPT
    frame_counts = lengths[kept, 0]
    frames = np.stack([c[np.repeat(kept, lengths[:, k])] for k, c in enumerate(codes)], axis=1)
    if rules.dedup_frames:
        keep = _first_of_runs(frames, frame_counts)
        frame_counts = np.bincount(np.repeat(np.arange(len(frame_counts)), frame_counts)[keep], minlength=len(frame_counts))
        frames = frames[keep]
    audio = (frames + layout.codebook_offsets).reshape(-1)

    kept_rows = np.flatnonzero(kept)
    prompts = [layout.text_prompt(texts[i], rules.speaker_id) for i in kept_rows]
    text_ids = encode_prompts(tokenizer, prompts)
    text_counts = np.fromiter(map(len, text_ids), dtype=np.int64, count=len(text_ids))
    flat_text = np.fromiter(itertools.chain.from_iterable(text_ids), dtype=np.int64, count=int(text_counts.sum()))

    sequence_lengths = np.zeros(n, dtype=np.int64)
    values, sequence_lengths[kept] = _assemble(layout, flat_text, text_counts, audio, frame_counts * layout.num_codebooks)
    offsets = pa.array(np.concatenate([[0], np.cumsum(sequence_lengths)]).astype(np.int32))
    labels = pa.ListArray.from_arrays(offsets, pa.array(values, type=pa.int64()))
    ids = pa.ListArray.from_arrays(offsets, pa.array(values.astype(np.int32)))
    ones = pa.ListArray.from_arrays(offsets, pa.array(np.ones(len(values), dtype=np.int8)))

    if rules.speaker_id is not None:
        speakers = [rules.speaker_id] * n
    elif rules.speaker_column is not None:
        speakers = ["" if s is None else str(s) for s in batch.column(rules.speaker_column).to_pylist()]
    else:
        speakers = [""] * n
    kept_frames = np.zeros(n, dtype=np.int64)
    kept_frames[kept] = frame_counts
    return pa.table(
        {
            "input_ids": ids,
            "labels": labels,
            "attention_mask": ones,
            "length": sequence_lengths,
            "speaker": pa.array(speakers, type=pa.string()),
            "dataset": pa.array([rules.dataset] * n, type=pa.string()),
            "status": status,
            "frames": lengths[:, 0],
            "kept_frames": kept_frames,
            "encoded_len_off_by_one": np.abs(off) == 1,
        }
    )


def encode_prompts(tokenizer: Any, prompts: list[str]) -> list[list[int]]:
    """The ids `tokenizer.encode(prompt, add_special_tokens=True)` gives each prompt (the reference's
    call), for a whole batch at once.

    A fast tokenizer with no truncation or padding configured is asked directly for the ids only
    (`encode_batch_fast`, which skips the character offsets transformers would compute and then
    discard); that is the call transformers makes in that case, minus the offsets. Any other
    tokenizer goes through its own batched `__call__`.
    """
    if not prompts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if (
        backend is not None
        and hasattr(backend, "encode_batch_fast")
        and backend.truncation is None
        and backend.padding is None
        and backend.encode_special_tokens == bool(getattr(tokenizer, "split_special_tokens", False))
    ):
        return [encoding.ids for encoding in backend.encode_batch_fast(prompts, add_special_tokens=True)]
    encoded = tokenizer(prompts, add_special_tokens=True, return_attention_mask=False, return_token_type_ids=False)
    return encoded["input_ids"]


def _first_of_runs(frames: np.ndarray, frame_counts: np.ndarray) -> np.ndarray:
    """Mask of frames that differ from the frame before them in the same row (TokenLayout.dedup_frames, batched).

    `frames` is (sum of frame_counts, num_codebooks): the rows' frames end to end. A row's first
    frame is always kept, even if it equals the previous row's last.
    """
    keep = np.ones(len(frames), dtype=bool)
    if len(frames) > 1:
        np.any(frames[1:] != frames[:-1], axis=1, out=keep[1:])
    starts = np.cumsum(frame_counts) - frame_counts
    keep[starts[frame_counts > 0]] = True
    return keep


def _assemble(
    layout: TokenLayout, flat_text: np.ndarray, text_counts: np.ndarray, audio: np.ndarray, audio_counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Lay out every row's training_ids end to end: returns (all ids, length of each row).

    Where text and audio go between the special tokens is read off TokenLayout.training_ids
    itself (with marker ids), so that method stays the one definition of a sequence.
    """
    template = np.asarray(layout.training_ids([_TEXT_MARK], [_AUDIO_MARK]), dtype=np.int64)
    text_at = int(np.flatnonzero(template == _TEXT_MARK)[0])
    audio_at = int(np.flatnonzero(template == _AUDIO_MARK)[0])
    head, middle, tail = template[:text_at], template[text_at + 1: audio_at], template[audio_at + 1:]

    row_lengths = len(template) - 2 + text_counts + audio_counts
    ends = np.cumsum(row_lengths)
    starts = ends - row_lengths
    out = np.empty(int(ends[-1]) if len(ends) else 0, dtype=np.int64)

    def put_fixed(tokens: np.ndarray, at: np.ndarray) -> None:
        out[at[:, None] + np.arange(len(tokens))] = tokens

    def put_runs(tokens: np.ndarray, counts: np.ndarray, at: np.ndarray) -> None:
        run_starts = np.cumsum(counts) - counts
        out[np.repeat(at - run_starts, counts) + np.arange(len(tokens))] = tokens

    put_fixed(head, starts)
    put_runs(flat_text, text_counts, starts + len(head))
    put_fixed(middle, starts + len(head) + text_counts)
    put_runs(audio, audio_counts, starts + len(head) + text_counts + len(middle))
    put_fixed(tail, ends - len(tail))
    return out, row_lengths
