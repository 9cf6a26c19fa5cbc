"""The steps that turn codec rows into training sequences, in the reference pipeline's order.

Per dataset: the categorical filter (:func:`rows_matching`), then per batch of rows
(:func:`sequences_for_batch`): the duration filter, the bad-data checks, the codebook columns
(renamed by :class:`RowRules`) to frames, frames to audio ids with the repeat-frame dedup
(:meth:`TokenLayout.rows_to_ids`), the speaker prefix, the special tokens around text and audio
(:meth:`TokenLayout.training_ids`). Then the `max_len` sample (:func:`apply_max_len`); the
concatenation of the datasets and the final shuffle are in :mod:`kanitts.sequences.build`.

Every step works on whole Arrow columns with numpy (no Python loop over rows or frames; the
tokenizer encodes a batch in Rust): that is what makes the dataset step fast.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kanitts.codecs.registry import codec_entry
from kanitts.config import DatasetConfig, DatasetEntry, ModelConfig
from kanitts.sequences.summary import RowStatus
from kanitts.tokens import TokenLayout

# Markers passed through TokenLayout.training_ids to read off where text and audio go.
_TEXT_MARK, _AUDIO_MARK = -1, -2


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
    # The codec's global (speaker) embedding column (Kanade's), carried as speaker_embedding; None: none.
    embedding_column: str | None = None

    @classmethod
    def of(
        cls, name: str, entry: DatasetEntry, source: datasets.Dataset, dataset_cfg: DatasetConfig,
        model_cfg: ModelConfig,
    ) -> RowRules:
        return cls(
            dataset=name,
            text_column=entry.text_col_name,
            layer_columns=tuple(entry.layer_columns(model_cfg.codec_layers)),
            encoded_len_column=entry.encoded_len,
            speaker_id=entry.speaker_id,
            speaker_column="speaker" if entry.speaker_id is None and "speaker" in source.column_names else None,
            max_duration_sec=dataset_cfg.max_duration_sec,
            fps=model_cfg.codec.fps,
            dedup_frames=dataset_cfg.dedup_frames,
            layout=TokenLayout.from_config(model_cfg),
            embedding_column=embedding_column(model_cfg),
        )


def embedding_column(model_cfg: ModelConfig) -> str | None:
    """The dataset column of the codec's per-clip global embedding (None for codecs without one)."""
    return codec_entry(model_cfg.codec.kind).embedding_column


def rows_matching(entry: DatasetEntry, source: datasets.Dataset) -> np.ndarray:
    """Source rows that pass `categorical_filter`, compared with Python `==` as the reference does.

    Applied before the batches, so rows of other speakers cost nothing further.
    """
    if entry.categorical_filter is None:
        return np.arange(len(source))
    wanted = entry.categorical_filter.value
    values = source.with_format("arrow")[entry.categorical_filter.column_name].to_pylist()
    return np.flatnonzero(np.fromiter((v == wanted for v in values), dtype=bool, count=len(values)))


def apply_max_len(kept: np.ndarray, status: np.ndarray, max_len: int | None, seed: int) -> tuple[np.ndarray, list[str]]:
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
    if rules.embedding_column is not None:
        embeddings = batch.column(rules.embedding_column)
        embedding_lengths = pc.fill_null(pc.list_value_length(embeddings), 0).to_numpy().astype(np.int64)
        embedding_values = pc.list_flatten(embeddings).to_numpy(zero_copy_only=False).astype(np.float32)
        not_finite = np.zeros(n, dtype=bool)
        not_finite[np.repeat(np.arange(n), embedding_lengths)[~np.isfinite(embedding_values)]] = True
        drop((embedding_lengths == 0) | not_finite, RowStatus.BAD_EMBEDDING)
    texts = batch.column(rules.text_column).to_pylist()
    drop(np.fromiter((not t or t.isspace() for t in texts), dtype=bool, count=n), RowStatus.EMPTY_TEXT)
    drop(lengths[:, 0] == 0, RowStatus.NO_AUDIO)

    kept = status == RowStatus.KEPT
    frames = np.stack([c[np.repeat(kept, lengths[:, k])] for k, c in enumerate(codes)], axis=1)
    audio, frame_counts = layout.rows_to_ids(frames, lengths[kept, 0], dedup=rules.dedup_frames)

    kept_rows = np.flatnonzero(kept)
    prompts = [layout.text_prompt(texts[i], rules.speaker_id) for i in kept_rows]
    text_ids = encode_prompts(tokenizer, prompts)
    text_counts = np.fromiter(map(len, text_ids), dtype=np.int64, count=len(text_ids))
    flat_text = np.fromiter(itertools.chain.from_iterable(text_ids), dtype=np.int64, count=int(text_counts.sum()))

    sequence_lengths = np.zeros(n, dtype=np.int64)
    values, sequence_lengths[kept] = _assemble(
        layout, flat_text, text_counts, audio, frame_counts * layout.num_codebooks
    )
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
    extra = {}
    if rules.embedding_column is not None:
        # kept rows keep their clip's embedding, the others get an empty one
        lengths_out = np.where(kept, embedding_lengths, 0)
        values_out = embedding_values[np.repeat(kept, embedding_lengths)]
        embedding_offsets = pa.array(np.concatenate([[0], np.cumsum(lengths_out)]).astype(np.int32))
        extra["speaker_embedding"] = pa.ListArray.from_arrays(
            embedding_offsets, pa.array(values_out, type=pa.float32())
        )
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
            **extra,
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
