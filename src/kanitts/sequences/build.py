"""Codec datasets -> training sequences: the dataset step of `kanitts train` and `kanitts data`.

    from kanitts.sequences import build_training_dataset
    sequences, report = build_training_dataset(configs.dataset, configs.model, tokenizer)
    print(report.format())

`sequences` is a `datasets.Dataset` with columns input_ids, labels, attention_mask, length,
speaker and dataset, and speaker_embedding (each clip's global embedding) for a codec that has
one (Kanade); `report` (:class:`~kanitts.sequences.summary.TrainingDataReport`) says what
was kept and dropped and why; `report.fingerprint` identifies the sequences for checkpoint
metadata.

The sequences are token for token what the reference KaniTTS pipeline builds from the same rows
and tokenizer: same filters in the same order, same frame dedup, same prompt, same `max_len`
sample (numpy's PCG64 permutation with the seed, as `Dataset.shuffle(seed)` draws it). Where we
differ, it is to fix something and is documented in docs/data.md: `max_len` above the row count
keeps every row instead of raising, the final shuffle is seeded, and rows that would crash the
reference or teach the model garbage (bad codec data, empty text) are skipped and counted.

This module plans the work (which rows, how many processes), runs the steps of
:mod:`kanitts.sequences.steps` over every dataset, concatenates and shuffles, and writes the
cache folder (:mod:`kanitts.sequences.cache`).
"""

from __future__ import annotations

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
from kanitts.config import DatasetConfig, DatasetEntry, ModelConfig
from kanitts.errors import UserError
from kanitts.sequences.cache import (
    HISTOGRAM_FILE,
    SEQUENCES_FILE,
    SUMMARY_FILE,
    VALIDATION_FILE,
    VALIDATION_SOURCES_FILE,
    HeldOutRow,
    cache_key,
    is_complete,
    load_cached,
    write_validation_sources,
)
from kanitts.sequences.columns import codec_problems, column_problems, rename_problems
from kanitts.sequences.sources import load_source
from kanitts.sequences.steps import RowRules, apply_max_len, embedding_column, rows_matching, sequences_for_batch
from kanitts.sequences.summary import (
    BAD_DATA,
    DatasetSummary,
    DropCount,
    GroupSummary,
    RowStatus,
    TrainingDataReport,
    import_plotting,
    save_length_histogram,
)
from kanitts.sequences.validation import split_validation
from kanitts.tokens import TokenLayout

# Below this many rows per process, starting worker processes costs more than it saves.
MIN_ROWS_PER_PROCESS = 10_000
MAP_BATCH_SIZE = 1000
WRITE_BATCH_ROWS = 10_000
IN_MEMORY_GATHER_BYTES = 2 * 1024**3

OUTPUT_COLUMNS = ["input_ids", "labels", "attention_mask", "length", "speaker", "dataset"]

# What the batches produce: the output columns, then per-row bookkeeping for the report (status,
# frames before and after dedup, encoded_len one frame off the layers). The token lists get the
# storage types `datasets` picks for the reference's Python lists (it narrows input_ids and
# attention_mask), so the features match too.
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

# The column of each clip's global (speaker) embedding, for codecs that have one (Kanade).
EMBEDDING_OUTPUT = "speaker_embedding"
_EMBEDDING_FEATURE = datasets.List(datasets.Value("float32"))


def _features(features: datasets.Features, with_embedding: bool) -> datasets.Features:
    return datasets.Features({**features, EMBEDDING_OUTPUT: _EMBEDDING_FEATURE}) if with_embedding else features


def _output_columns(with_embedding: bool) -> list[str]:
    return [*OUTPUT_COLUMNS, EMBEDDING_OUTPUT] if with_embedding else OUTPUT_COLUMNS

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
    `n_shards_per_dataset` (the reference's name for it), then the CPU count (at most 8).
    `rebuild` ignores an existing cache. Raises UserError for missing columns and for a dataset
    that the filters leave empty.
    """
    layout = TokenLayout.from_config(model_cfg)
    codec_layers = model_cfg.codec_layers
    problems = [p for entry in dataset_cfg.hf_datasets for p in rename_problems(entry, codec_layers)]
    if problems:
        raise UserError("\n".join(problems))
    sources = [load_source(entry, entry.layer_columns(codec_layers)) for entry in dataset_cfg.hf_datasets]
    problems = [
        p
        for entry, source in zip(dataset_cfg.hf_datasets, sources)
        for p in column_problems(entry, source, codec_layers, embedding_column(model_cfg, entry, source.column_names))
    ]
    problems += [p for entry in dataset_cfg.hf_datasets for p in codec_problems(entry, model_cfg.codec)]
    carried = [
        embedding_column(model_cfg, e, s.column_names) is not None for e, s in zip(dataset_cfg.hf_datasets, sources)
    ]
    if any(carried) and not all(carried):
        problems += [
            f"dataset {entry.label}: has no speaker embedding column, while other datasets have one; prepare it "
            "with the same speaker embedder, or name its column (speaker_emb)"
            for entry, has in zip(dataset_cfg.hf_datasets, carried) if not has
        ]
    if problems:
        raise UserError("\n".join(problems))

    fingerprint = cache_key(dataset_cfg, model_cfg, tokenizer, sources)
    root = Path(cache_dir if cache_dir is not None else dataset_cfg.cache_dir)
    final = root / fingerprint
    if is_complete(final) and not rebuild:
        return load_cached(final)

    root.mkdir(parents=True, exist_ok=True)
    staging = temporary_sibling(final)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        report = _build(dataset_cfg, model_cfg, layout, tokenizer, sources, staging, fingerprint, final, num_proc)
        swap_in(staging, final)  # rebuild, or another process finished first: the newest wins
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return datasets.Dataset.from_file(str(final / SEQUENCES_FILE)), report


# --- building --------------------------------------------------------------------------------


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
        matching = rows_matching(entry, source)
        if len(source) and not len(matching):
            errors.append(_emptied_message(entry, rules, source, None))
            continue
        processes = max(1, min(requested, len(matching) // MIN_ROWS_PER_PROCESS))
        plans.append(_Plan(index, entry, source, rules, matching, processes))

    mapped_parts, chosen_parts, held_parts, summaries = [], [], [], []
    held_sources: list[HeldOutRow] = []
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
            kept, held = split_validation(
                kept, outcomes.speakers[kept], fraction=entry.validation_fraction, rows=entry.validation_rows,
                seed=dataset_cfg.seed, dataset=rules.dataset,
            )
            chosen, notes = apply_max_len(kept, outcomes.status, entry.max_len, dataset_cfg.seed)
            summary = _summarize(rules.dataset, outcomes, chosen, model_cfg.codec.fps)
            summary.notes.extend(notes)
            summary.validation_rows = len(held)
            for speaker in summary.speakers:
                speaker.validation_rows = int(np.count_nonzero(outcomes.speakers[held] == speaker.name))
            held_parts.append(base + held)
            held_sources += _held_out_sources(plan, rules.dataset, outcomes, held)
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
        with_embedding = any(plan.rules.embedding_column is not None for plan in plans)
        _write_in_order(mapped_parts, order, staging / SEQUENCES_FILE, with_embedding)
        held_all = np.concatenate(held_parts)
        if len(held_all):
            _write_in_order(mapped_parts, held_all, staging / VALIDATION_FILE, with_embedding)
            write_validation_sources(staging / VALIDATION_SOURCES_FILE, held_sources)
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
        features=_features(_MAP_FEATURES, plan.rules.embedding_column is not None),
        num_proc=plan.processes if plan.processes > 1 else None,
        keep_in_memory=in_memory,
        cache_file_name=None if in_memory else str(work / f"dataset-{plan.index}.arrow"),
        new_fingerprint=fingerprint,
        desc=f"{plan.rules.dataset}: rows -> sequences",
    ).with_format(None)
    filtered_out = np.zeros(0, dtype=np.int64) if passes is None else np.flatnonzero(~passes)
    return mapped, RowOutcomes.of(mapped.data, matching, filtered_out)


def _held_out_sources(plan: _Plan, name: str, outcomes: RowOutcomes, held: np.ndarray) -> list[HeldOutRow]:
    """Where each held-out row of one dataset came from, in the order validation.arrow holds them.

    The sequences keep only token ids; eval needs the row's text and its ``source`` clip (the
    recording ``kanitts prepare`` encoded) to use held-out rows as the speakers' references.
    """
    if not len(held):
        return []
    rows = outcomes.rows[held]
    columns = [plan.entry.text_col_name, *(["source"] if "source" in plan.source.column_names else [])]
    picked = plan.source.select_columns(columns).select(rows.tolist()).to_dict()
    sources = picked.get("source", [None] * len(rows))
    return [
        HeldOutRow(dataset=name, dataset_index=plan.index, row=int(row), speaker=str(speaker), text=text,
                   source=None if source is None else str(source))
        for row, speaker, text, source in zip(rows, outcomes.speakers[held], picked[plan.entry.text_col_name],
                                              sources, strict=True)
    ]


def _estimated_bytes(entry: DatasetEntry, source: datasets.Dataset, matching: np.ndarray, layout: TokenLayout) -> int:
    """An upper bound of the size of one dataset's sequences: 13 bytes (ids, labels, mask) per audio token."""
    frames = pc.fill_null(source.with_format("arrow")[entry.encoded_len], 0).to_numpy()
    return int(frames[matching].sum()) * layout.num_codebooks * 13


def _write_in_order(parts: list[datasets.Dataset], order: np.ndarray, path: Path, with_embedding: bool) -> None:
    """Write the rows `order` picks from the parts (concatenated), in that order, as one Arrow file.

    Arrow gathers rows fastest from one contiguous table in memory; past IN_MEMORY_GATHER_BYTES,
    `datasets` gathers them from the memory-mapped files instead (slower, little memory).
    """
    columns = _output_columns(with_embedding)
    table = pa.concat_tables([part.data.table for part in parts]).select(columns)
    if table.nbytes > IN_MEMORY_GATHER_BYTES:
        rows = datasets.concatenate_datasets(parts).select(order).select_columns(columns)
        rows.flatten_indices(cache_file_name=str(path))
        return
    table = table.combine_chunks()
    with ArrowWriter(path=str(path), features=_features(OUTPUT_FEATURES, with_embedding)) as writer:
        for start in tqdm(range(0, len(order), WRITE_BATCH_ROWS), desc="writing training sequences", unit="batch"):
            writer.write_table(table.take(order[start: start + WRITE_BATCH_ROWS]))
        writer.finalize()


def dataset_names(entries: list[DatasetEntry]) -> list[str]:
    """How the report and the `dataset` column name each entry: its label, numbered when two share one."""
    labels = [e.label for e in entries]
    return [f"{label} #{i + 1}" if labels.count(label) > 1 else label for i, label in enumerate(labels)]


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
    for reasons, what in steps:  # noqa: B007 - `what` names, after the loop, the step that emptied the set
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
