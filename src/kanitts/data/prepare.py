"""``kanitts prepare``: recordings + transcripts -> the codec dataset that training reads.

The run, in order:

1. **Input** (:mod:`kanitts.data.audio_sources`): a folder with ``metadata.csv``, a CSV/JSONL manifest,
   or a Hugging Face audio dataset; items are numbered and cut into shards of ``shard_size``.
2. **Audio** (:mod:`kanitts.audio`), in a thread pool one shard ahead of the encoder: decode,
   downmix, resample to the codec rate, optional trimming and normalisation, the checks that
   reject a clip (unreadable, empty, silent, too short, too long, no text) and those that mark it
   as suspect (clipped, over full scale, a transcript too long or short for the audio): kept
   with a ``warnings`` entry, or rejected with ``suspect_clips="reject"``.
3. **Encoding**: clips of a shard sorted by length and cut into batches of about
   ``batch_seconds`` of padded audio; ``codec.encode`` pads each clip to whole frames, so
   ``encoded_len = ceil(samples / samples_per_frame)`` as in the reference datasets.
4. **Shards**: each finished shard is a ``save_to_disk`` folder inside ``<output>.partial/``,
   written under a temporary name and renamed, with its rejected clips; ``manifest.json`` there
   holds the fingerprint of the inputs, the options and the codec weights.
5. **Assembly**: shards concatenated in order, saved to a temporary folder next to the output with
   ``rejected.csv`` and ``kanitts_prepare.json``, renamed to the output, ``.partial`` removed;
   then optionally ``push_to_hub``.

Safety: an existing output or ``.partial`` folder is never written into unless ``--resume`` (same
fingerprint only) or ``--overwrite`` says so, and assembly reads exactly the shards the manifest
names, so nothing from an earlier run can slip in.

Several GPUs: under ``accelerate launch`` / ``torchrun`` every rank encodes the shards
``k % world_size == rank`` and rank 0 merges them (see docs/prepare.md).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from kanitts import __version__
from kanitts.atomic import atomic_file, remove_leftovers, swap_in, temporary_sibling
from kanitts.audio import (
    AudioDecodeError,
    loudness_normalize,
    peak_dbfs,
    peak_normalize,
    resample,
    to_mono,
    trim_silence,
)
from kanitts.codecs import Codec, load_codec
from kanitts.data.audio_sources import Source, SourceItem, check_encoding, open_source
from kanitts.errors import UserError
from kanitts.locks import RunLock
from kanitts.files import check_output_folder

MANIFEST_NAME = "manifest.json"
SUMMARY_NAME = "kanitts_prepare.json"
REJECTED_NAME = "rejected.csv"
FORMAT_VERSION = 1


@dataclass
class PrepareOptions:
    """Everything ``kanitts prepare`` takes; the CLI flags map one to one."""

    input: str
    output: str
    input_kind: str = "auto"  # auto | folder | manifest | hf
    # transcripts and speakers
    text_field: str = "normalized"  # metadata.csv: "normalized" (3rd column if present) or "text"
    split: str = "train"
    config_name: str | None = None
    audio_column: str = "audio"
    text_column: str = "text"
    speaker_column: str | None = None  # None: use a "speaker" column when there is one
    speaker: str | None = None  # one speaker for the whole input (overrides any column)
    encoding: str = "auto"  # metadata.csv / manifest: UTF-8 (or its byte-order mark's), or a codec name
    # codec
    codec: str = "nanocodec"
    codec_model: str | None = None  # Hub id or local folder; None: the codec's default weights
    device: str | None = None  # None: CUDA when present (the rank's GPU), else CPU
    dtype: str = "fp32"  # fp32 (as the reference datasets) | bf16 | fp16 | auto (bf16 on GPU)
    # audio
    normalize: str = "none"  # none | peak | loudness
    peak_dbfs: float = -1.0
    loudness_lufs: float = -23.0
    trim_silence: bool = False
    trim_top_db: float = 40.0
    silence_dbfs: float = -60.0  # clips whose peak stays below this are rejected as silent
    min_duration: float = 0.3
    max_duration: float = 40.0
    # suspect clips: kept with a warning ("warn") or rejected ("reject")
    suspect_clips: str = "warn"
    clip_level: float = 0.999  # |x| at or above this is "at full scale"
    max_clipped_fraction: float = 0.001  # more samples than this at full scale: clipped
    min_chars_per_second: float = 2.0  # transcript characters per second of (trimmed) audio
    max_chars_per_second: float = 30.0
    # batching and sharding
    batch_seconds: float | None = None  # padded audio per batch; None: 600 on GPU, 60 on CPU
    max_batch_size: int | None = None  # None: 64 on GPU, 1 on CPU (batching does not pay there)
    shard_size: int = 500
    num_workers: int = 4
    # run control
    resume: bool = False
    overwrite: bool = False
    push_to_hub: str | None = None
    private: bool = False
    progress: bool = True
    # set by the launcher (torchrun/accelerate env vars) or by hand to split work between runs
    rank: int | None = None
    world_size: int | None = None

    def validate(self) -> None:
        problems = []
        if self.resume and self.overwrite:
            problems.append("--resume and --overwrite exclude each other")
        if self.normalize not in ("none", "peak", "loudness"):
            problems.append(f"--normalize must be none, peak or loudness, not {self.normalize!r}")
        if self.input_kind not in ("auto", "folder", "manifest", "hf"):
            problems.append(f"--input-kind must be auto, folder, manifest or hf, not {self.input_kind!r}")
        if self.min_duration < 0 or self.max_duration <= self.min_duration:
            problems.append(
                f"durations must satisfy 0 <= min ({self.min_duration}) < max ({self.max_duration})"
            )
        if self.shard_size < 1 or (self.max_batch_size or 1) < 1 or self.num_workers < 1:
            problems.append("--shard-size, --max-batch-size and --num-workers must be at least 1")
        if self.batch_seconds is not None and self.batch_seconds <= 0:
            problems.append("--batch-seconds must be positive")
        if self.suspect_clips not in ("warn", "reject"):
            problems.append(f"--suspect-clips must be warn or reject, not {self.suspect_clips!r}")
        if not 0 < self.clip_level <= 1:
            problems.append(f"--clip-level must lie in (0, 1], not {self.clip_level:g}")
        if not 0 <= self.max_clipped_fraction <= 1:
            problems.append(f"--max-clipped-fraction must lie in [0, 1], not {self.max_clipped_fraction:g}")
        if not 0 <= self.min_chars_per_second < self.max_chars_per_second:
            problems.append(
                f"characters per second must satisfy 0 <= min ({self.min_chars_per_second:g}) "
                f"< max ({self.max_chars_per_second:g})"
            )
        if (problem := check_encoding(self.encoding)) is not None:
            problems.append(problem)
        if problems:
            raise UserError("; ".join(problems))


@dataclass
class PrepareResult:
    """What a run did; ``summary()`` is what the CLI prints."""

    output: Path
    rows: int = 0
    items: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    warned: int = 0  # clips kept with warnings
    warnings_by_kind: dict[str, int] = field(default_factory=dict)
    warning_examples: list[str] = field(default_factory=list)  # "source: warning", the first few
    audio_hours: float = 0.0
    encoded_hours_this_run: float = 0.0
    seconds: float = 0.0
    speakers: dict[str, int] = field(default_factory=dict)
    shards_done_here: int = 0
    shards_resumed: int = 0
    assembled: bool = False
    pushed_to: str | None = None
    already_complete: bool = False

    @property
    def hours_per_second(self) -> float:
        return self.encoded_hours_this_run / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        if self.already_complete:
            return f"{self.output} is already complete ({self.rows} rows); nothing to do."
        if not self.assembled:
            return (
                f"this rank encoded {self.shards_done_here} shard(s) "
                f"({self.encoded_hours_this_run:.3f} h of audio); rank 0 assembles {self.output}"
            )
        lines = [
            f"wrote {self.output}: {self.rows} rows, {self.audio_hours:.3f} h of audio",
            f"rejected {self.rejected} of {self.items} items"
            + (
                " (" + ", ".join(f"{k}: {v}" for k, v in sorted(self.rejected_by_reason.items())) + ")"
                if self.rejected
                else ""
            )
            + (f"; see {self.output / REJECTED_NAME}" if self.rejected else ""),
            f"encoded {self.encoded_hours_this_run:.3f} h in {self.seconds:.1f} s "
            f"({self.hours_per_second:.4f} audio h/s, "
            f"{self.hours_per_second * 3600:.1f}x real time)"
            + (f"; {self.shards_resumed} shard(s) reused from the interrupted run" if self.shards_resumed else ""),
        ]
        if self.warned:
            kinds = ", ".join(f"{k}: {v}" for k, v in sorted(self.warnings_by_kind.items()))
            lines.append(
                f"kept {self.warned} suspect clip(s) with warnings ({kinds}); the `warnings` column "
                "names them (empty for the others), --suspect-clips reject leaves them out:"
            )
            lines += [f"  {example}" for example in self.warning_examples]
            if self.warned > len(self.warning_examples):
                lines.append(f"  ... and {self.warned - len(self.warning_examples)} more")
        if self.speakers:
            top = sorted(self.speakers.items(), key=lambda kv: (-kv[1], kv[0]))
            shown = ", ".join(f"{k}: {v}" for k, v in top[:10])
            more = f", ... ({len(top)} speakers)" if len(top) > 10 else ""
            lines.append(f"rows per speaker: {shown}{more}")
        if self.pushed_to:
            lines.append(f"pushed to https://huggingface.co/datasets/{self.pushed_to}")
        return "\n".join(lines)


class _Rejected(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class _Clip:
    item: SourceItem
    audio: np.ndarray  # mono float32 at the codec rate
    warnings: list[str] = field(default_factory=list)  # "kind: what was measured"


#: at most this many warned clips are listed one by one in the summary
WARNING_EXAMPLES = 10


# --- distributed helpers -------------------------------------------------------------------------


class _Ranks:
    """Rank/world size from options or the launcher's env, and collectives when they exist."""

    def __init__(self, options: PrepareOptions):
        env_world = int(os.environ.get("WORLD_SIZE", "1"))
        self.world_size = options.world_size or env_world
        self.rank = options.rank if options.rank is not None else int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", str(self.rank)))
        self._dist = None
        if not (0 <= self.rank < self.world_size):
            raise UserError(f"rank {self.rank} is outside world size {self.world_size}")
        if self.world_size > 1 and options.world_size is None:
            import datetime as _dt

            import torch.distributed as dist

            if not dist.is_initialized():
                # gloo only carries barriers and small messages here; data never moves.
                dist.init_process_group(backend="gloo", timeout=_dt.timedelta(days=7))
            self._dist = dist

    @property
    def collective(self) -> bool:
        return self._dist is not None

    def barrier(self) -> None:
        if self._dist is not None:
            self._dist.barrier()

    def broadcast(self, value: Any) -> Any:
        if self._dist is None:
            return value
        box = [value]
        self._dist.broadcast_object_list(box, src=0)
        return box[0]

    def device(self, requested: str | None) -> str | None:
        """One GPU per rank: a bare or implied ``cuda`` becomes this rank's ``cuda:<local rank>``
        (``cuda:N`` and ``cpu`` are taken as given)."""
        if self.world_size == 1 or requested not in (None, "auto", "cuda"):
            return requested
        import torch

        if torch.cuda.is_available():
            index = self.local_rank % torch.cuda.device_count()
            torch.cuda.set_device(index)
            return f"cuda:{index}"
        return requested if requested == "cuda" else None  # resolve_device names the missing GPU


# --- the run ----------------------------------------------------------------------------------


def prepare_dataset(options: PrepareOptions, codec: Codec | None = None) -> PrepareResult:
    """Run ``kanitts prepare`` in-process; ``codec`` skips loading ``options.codec_model``.

    The output is locked for the whole run: a second run into it is refused, naming this one.
    """
    with ExitStack() as held:
        return _prepare_dataset(options, codec, held)


def _prepare_dataset(options: PrepareOptions, codec: Codec | None, held: ExitStack) -> PrepareResult:
    options.validate()
    started = time.perf_counter()
    output = Path(options.output).expanduser().absolute()
    partial = output.with_name(output.name + ".partial")
    ranks = _Ranks(options)

    # Refuse early, before anything heavy is loaded.
    # Rank 0 rules on the output folder for everyone; runs split by hand (--rank/--world-size
    # without a launcher) each rule for themselves.
    rules = ranks.rank == 0 or not ranks.collective
    early_error = None
    if rules:
        early_error = (
            _unwritable(output) or _lock_output(output, ranks, held) or _early_refusal(output, partial, options)
        )
    early_error = ranks.broadcast(early_error)
    if early_error:
        raise UserError(early_error)

    source, source_error = None, None
    if ranks.rank == 0:  # rank 0 first, so a Hub dataset is downloaded and cached once
        try:
            source = _open_source(options)
        except UserError as exc:
            source_error = str(exc)
    source_error = ranks.broadcast(source_error)
    if source_error:
        raise UserError(source_error)
    if source is None:
        source = _open_source(options)
    if len(source) == 0:
        raise UserError(f"{source.description} lists no recordings")

    if codec is None:
        codec = load_codec(
            options.codec,
            options.codec_model,
            device=ranks.device(options.device),
            dtype=options.dtype,
        )
    manifest = _manifest(options, source, codec)

    decision: dict[str, Any] = {}
    if rules:
        try:
            decision = _claim_output(output, partial, manifest, options)
        except UserError as exc:
            decision = {"error": str(exc)}
    decision = ranks.broadcast(decision)
    if "error" in decision:
        raise UserError(decision["error"])
    if decision.get("complete"):
        return _result_from_summary(output)
    if ranks.collective and ranks.broadcast(manifest["fingerprint"]) != manifest["fingerprint"]:
        raise UserError(f"rank {ranks.rank} sees different inputs or codec weights than rank 0")

    result = PrepareResult(output=output, items=len(source))
    num_shards = manifest["num_shards"]
    mine = [k for k in range(num_shards) if k % ranks.world_size == ranks.rank]
    todo = [k for k in mine if not _shard_done(partial, k)]
    result.shards_resumed = len(mine) - len(todo)
    _remove_stale_temporaries(partial, todo)

    _encode_shards(todo, source, codec, options, manifest, partial, result, ranks.rank)

    ranks.barrier()
    if ranks.rank == 0:
        missing = [k for k in range(num_shards) if not _shard_done(partial, k)]
        if missing:
            if ranks.world_size > 1 and not ranks.collective:
                result.seconds = time.perf_counter() - started
                return result  # the other ranks' runs are still to come
            raise UserError(f"shards {missing[:5]} of {partial} are missing; run again with --resume")
        _assemble(output, partial, manifest, result, options)
        if options.push_to_hub:
            _push(output, options)
            result.pushed_to = options.push_to_hub
    ranks.barrier()
    result.seconds = time.perf_counter() - started
    return result


def _open_source(options: PrepareOptions) -> Source:
    return open_source(
        options.input,
        options.input_kind,
        text_field=options.text_field,
        encoding=options.encoding,
        split=options.split,
        config_name=options.config_name,
        audio_column=options.audio_column,
        text_column=options.text_column,
        speaker_column=options.speaker_column,
    )


# --- output folder rules ------------------------------------------------------------------------


def _lock_output(output: Path, ranks: _Ranks, held: ExitStack) -> str | None:
    """Lock the output until the run ends (``held`` releases it); the refusal, if another run has it.

    Ranks started by hand each lock their own part, as they each write their own shards.
    """
    part = f".rank-{ranks.rank}" if ranks.rank else ""
    lock = RunLock(output.with_name(f".{output.name}{part}.lock"), f"{output}" + (f" (rank {ranks.rank})" if part else ""))
    try:
        note = lock.acquire()
    except UserError as exc:
        return str(exc)
    held.callback(lock.release)
    if note:
        print(f"note: {note}", file=sys.stderr, flush=True)
    remove_leftovers(output.parent)
    return None


def _unwritable(output: Path) -> str | None:
    """Checked before the lock, which is itself a file beside the output."""
    try:  # shards go to a sibling (.partial) and the result is swapped in: the parent is written
        check_output_folder(output, "output folder", replaced_whole=True)
    except UserError as exc:
        return str(exc)
    return None


def _early_refusal(output: Path, partial: Path, options: PrepareOptions) -> str | None:
    if options.overwrite:
        return None
    if output.exists() and not options.resume:
        return (
            f"{output} already exists. Pass --overwrite to replace it, or choose another output. "
            "(Writing into an existing dataset is refused so that rows of an earlier run "
            "can never end up in this one.)"
        )
    if not output.exists() and partial.exists() and not options.resume:
        return (
            f"an interrupted run left {partial}. Continue it with --resume (only if the inputs "
            "and options are unchanged), or start over with --overwrite."
        )
    return None


def _claim_output(output: Path, partial: Path, manifest: dict, options: PrepareOptions) -> dict:
    """Decide what to do with existing folders (rank 0); create ``.partial`` when starting."""
    if options.overwrite:
        if partial.exists():
            shutil.rmtree(partial)
    elif output.exists():  # --resume on a finished output
        summary = _read_json(output / SUMMARY_NAME)
        if summary is None:
            raise UserError(
                f"{output} exists and was not written by kanitts prepare; refusing to touch it. "
                "Use --overwrite to replace it or choose another output."
            )
        old = summary.get("manifest", {})
        if old.get("fingerprint") != manifest["fingerprint"]:
            raise UserError(
                f"{output} was prepared from different inputs or options "
                f"({_differences(old, manifest)}); --resume only continues the same run. "
                "Use --overwrite to replace it or choose another output."
            )
        return {"complete": True}
    elif partial.exists():  # --resume
        old = _read_json(partial / MANIFEST_NAME)
        if old is None:
            raise UserError(f"{partial} has no readable {MANIFEST_NAME}; start over with --overwrite")
        if old.get("fingerprint") != manifest["fingerprint"]:
            raise UserError(
                f"cannot resume {partial}: it was started with different inputs or options "
                f"({_differences(old, manifest)}). Start over with --overwrite, or use the "
                "original inputs and options."
            )
        return {"resumed": True}
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "shards").mkdir(exist_ok=True)
    _write_json(partial / MANIFEST_NAME, manifest)
    return {"fresh": True}


def _differences(old: dict, new: dict) -> str:
    keys = []
    for section in ("input", "options", "codec"):
        a, b = old.get(section, {}), new.get(section, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                keys.append(f"{section}.{key}: {a.get(key)!r} -> {b.get(key)!r}")
    if not keys:
        keys.append("the audio files or transcripts changed")
    return "; ".join(keys[:6]) + (" ..." if len(keys) > 6 else "")


def _manifest(options: PrepareOptions, source: Source, codec: Codec) -> dict[str, Any]:
    import hashlib

    input_part = {
        "kind": source.kind,
        "location": source.description,
        "items": len(source),
        "fingerprint": source.fingerprint(),
    }
    option_part = {
        key: getattr(options, key)
        for key in (
            "text_field", "split", "config_name", "audio_column", "text_column", "speaker_column",
            "speaker", "normalize", "peak_dbfs", "loudness_lufs", "trim_silence", "trim_top_db",
            "silence_dbfs", "min_duration", "max_duration", "shard_size", "suspect_clips",
            "clip_level", "max_clipped_fraction", "min_chars_per_second", "max_chars_per_second",
        )
    }
    codec_part = codec.describe()
    blob = json.dumps([input_part, option_part, codec_part], sort_keys=True, default=str)
    return {
        "format": FORMAT_VERSION,
        "kanitts_version": __version__,
        "fingerprint": hashlib.sha256(blob.encode()).hexdigest()[:20],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "num_shards": math.ceil(len(source) / options.shard_size),
        "has_speaker": bool(options.speaker is not None or source.has_speaker),
        "input": input_part,
        "options": option_part,
        "codec": codec_part,
    }


def _shard_dir(partial: Path, k: int) -> Path:
    return partial / "shards" / f"shard-{k:05d}"


def _shard_done(partial: Path, k: int) -> bool:
    return (_shard_dir(partial, k) / "meta.json").is_file()


def _remove_stale_temporaries(partial: Path, todo: list[int]) -> None:
    for k in todo:
        tmp = _shard_dir(partial, k).with_name(_shard_dir(partial, k).name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)


# --- audio -> clip ---------------------------------------------------------------------------------


def _load_clip(source: Source, item: SourceItem, options: PrepareOptions, sample_rate: int) -> _Clip:
    """Decode and clean one item, or raise _Rejected with the reason."""
    if item.problem:
        reason = "missing audio" if "not found" in item.problem or "empty path" in item.problem else "malformed"
        raise _Rejected(reason, item.problem)
    if not item.text:
        raise _Rejected("empty text", "the transcript is empty")
    try:
        samples, sr = source.read(item.index)
    except (AudioDecodeError, OSError) as exc:
        raise _Rejected("unreadable", str(exc)) from None
    if samples.size == 0 or samples.shape[0] == 0:
        raise _Rejected("empty", "the file has no samples")
    audio = to_mono(samples)
    if not np.isfinite(audio).all():
        raise _Rejected("unreadable", "the audio contains NaN or infinite samples")
    warnings = _level_warnings(samples, options)
    peak = peak_dbfs(audio)
    if peak < options.silence_dbfs:
        raise _Rejected("silent", f"peak {peak:.1f} dBFS is below {options.silence_dbfs:g} dBFS")
    audio = resample(audio, sr, sample_rate)
    if options.trim_silence:
        audio = trim_silence(audio, sample_rate, top_db=options.trim_top_db)
    duration = len(audio) / sample_rate
    if duration < options.min_duration:
        raise _Rejected("too short", f"{duration:.2f} s < {options.min_duration:g} s")
    if duration > options.max_duration:
        raise _Rejected("too long", f"{duration:.2f} s > {options.max_duration:g} s")
    warnings += _text_rate_warnings(item.text, duration, options)
    if warnings and options.suspect_clips == "reject":
        raise _Rejected(warnings[0].split(":", 1)[0], "; ".join(warnings))
    if options.normalize == "peak":
        audio = peak_normalize(audio, options.peak_dbfs)
    elif options.normalize == "loudness":
        audio = loudness_normalize(audio, sample_rate, options.loudness_lufs, peak_limit_dbfs=options.peak_dbfs)
    np.clip(audio, -1.0, 1.0, out=audio)
    return _Clip(item, np.ascontiguousarray(audio, dtype=np.float32), warnings)


def _level_warnings(samples: np.ndarray, options: PrepareOptions) -> list[str]:
    """Over full scale (float samples past ±1) or clipped (too many samples at full scale),
    measured on the decoded channels before downmixing and resampling, which would hide both."""
    magnitude = np.abs(samples)
    peak = float(magnitude.max())
    if peak > 1.0:
        return [f"over full scale: peak {peak:.3g} ({20 * math.log10(peak):+.1f} dBFS), cut to ±1 unless --normalize lowers it"]
    at_full_scale = np.count_nonzero(magnitude >= options.clip_level) / magnitude.size
    if at_full_scale > options.max_clipped_fraction:
        return [f"clipped: {100 * at_full_scale:.2f}% of the samples at full scale (|x| >= {options.clip_level:g})"]
    return []


def _text_rate_warnings(text: str, duration: float, options: PrepareOptions) -> list[str]:
    """A transcript implausibly long or short for the audio: likely paired with the wrong clip,
    or cut. Characters are counted with runs of whitespace as one."""
    if duration <= 0:
        return []
    chars = len(" ".join(text.split()))
    rate = chars / duration
    if rate > options.max_chars_per_second:
        return [f"text too long: {chars} characters in {duration:.2f} s ({rate:.1f}/s > {options.max_chars_per_second:g}/s)"]
    if rate < options.min_chars_per_second:
        return [f"text too short: {chars} characters in {duration:.2f} s ({rate:.1f}/s < {options.min_chars_per_second:g}/s)"]
    return []


def _safe_load(source: Source, item: SourceItem, options: PrepareOptions, sample_rate: int) -> _Clip | _Rejected:
    try:
        return _load_clip(source, item, options, sample_rate)
    except _Rejected as rej:
        return rej
    except Exception as exc:  # a decoder crash on one file must not end the run
        return _Rejected("unreadable", f"{type(exc).__name__}: {exc}")


# --- encoding -----------------------------------------------------------------------------------


def _batches(clips: list[_Clip], budget_samples: int, max_batch: int, max_padding: float = 0.1) -> list[list[_Clip]]:
    """Length bucketing: longest first; a batch holds clips whose padded size fits the budget
    and that are each at least ``1 - max_padding`` of the batch's longest clip (so at most about
    10 % of what the encoder computes is padding)."""
    ordered = sorted(clips, key=lambda c: -len(c.audio))
    batches: list[list[_Clip]] = []
    current: list[_Clip] = []
    for clip in ordered:
        if current:
            longest = len(current[0].audio)
            if (
                (len(current) + 1) * longest > budget_samples
                or len(current) >= max_batch
                or len(clip.audio) < (1.0 - max_padding) * longest
            ):
                batches.append(current)
                current = []
        current.append(clip)
    if current:
        batches.append(current)
    return batches


def _encode_shards(
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
            return [pool.submit(_safe_load, source, source.item(i), options, sr) for i in shard_items[k]]

        pending = submit(todo[0])
        for pos, k in enumerate(todo):
            loaded = [f.result() for f in pending]
            pending = submit(todo[pos + 1]) if pos + 1 < len(todo) else []  # decode ahead
            clips = [c for c in loaded if isinstance(c, _Clip)]
            rejected = [
                {"index": item_index, "source": source.item(item_index).source, "reason": r.reason, "detail": r.detail}
                for item_index, r in zip(shard_items[k], loaded)
                if isinstance(r, _Rejected)
            ]
            warned = [
                {"index": c.item.index, "source": c.item.source, "warnings": c.warnings} for c in clips if c.warnings
            ]
            rows: dict[int, dict[str, Any]] = {}
            for batch in _batches(clips, budget, max_batch):
                lengths = torch.tensor([len(c.audio) for c in batch], dtype=torch.int64)
                waves = torch.zeros(len(batch), int(lengths.max()), dtype=torch.float32)
                for b, c in enumerate(batch):
                    waves[b, : len(c.audio)] = torch.from_numpy(c.audio)
                codes, frame_lengths = codec.encode(waves, lengths)
                expected = codec.frame_lengths(lengths).tolist()
                if frame_lengths.cpu().tolist() != expected:  # pragma: no cover - codec bug guard
                    raise RuntimeError(f"{codec.kind} returned frame lengths {frame_lengths.tolist()} != {expected}")
                for c, cols in zip(batch, codec.dataset_columns(codes, frame_lengths)):
                    rows[c.item.index] = _row(c, cols, manifest["has_speaker"], options.speaker, sr)
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
            _write_shard(partial, k, [rows[i] for i in sorted(rows)], rejected, warned, manifest, codec)
            result.shards_done_here += 1
            result.rejected += len(rejected)
    if bar is not None:
        bar.close()
    result.encoded_hours_this_run = encoded_seconds / 3600


def _row(clip: _Clip, cols: dict[str, Any], has_speaker: bool, speaker: str | None, sr: int) -> dict[str, Any]:
    row: dict[str, Any] = {"text": clip.item.text}
    row.update(cols)
    if has_speaker:
        row["speaker"] = speaker if speaker is not None else clip.item.speaker
    row["duration_sec"] = len(clip.audio) / sr
    row["source"] = clip.item.source
    row["warnings"] = "; ".join(clip.warnings)
    return row


def _features(codec: Codec, has_speaker: bool):
    from datasets import Features, Value

    spec: dict[str, Any] = {"text": Value("string")}
    spec.update(codec.dataset_features())
    if has_speaker:
        spec["speaker"] = Value("string")
    spec["duration_sec"] = Value("float64")
    spec["source"] = Value("string")
    spec["warnings"] = Value("string")
    return Features(spec)


def _write_shard(
    partial: Path, k: int, rows: list[dict], rejected: list[dict], warned: list[dict], manifest: dict, codec: Codec
) -> None:
    from datasets import Dataset

    final = _shard_dir(partial, k)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if rows:
        features = _features(codec, manifest["has_speaker"])
        ds = Dataset.from_list(rows, features=features)
        with _quiet_datasets():
            ds.save_to_disk(str(tmp / "data"))
    meta = {
        "shard": k,
        "fingerprint": manifest["fingerprint"],
        "rows": len(rows),
        "audio_seconds": float(sum(r["duration_sec"] for r in rows)),
        "rejected": rejected,
        "warned": warned,
    }
    _write_json(tmp / "meta.json", meta)
    if final.exists():  # only an unfinished leftover can be here (no meta.json): replace it
        shutil.rmtree(final)
    tmp.rename(final)


# --- assembly -----------------------------------------------------------------------------------


def _assemble(output: Path, partial: Path, manifest: dict, result: PrepareResult, options: PrepareOptions) -> None:
    from datasets import concatenate_datasets, load_from_disk

    parts = []
    rejected: list[dict] = []
    warned: list[dict] = []
    audio_seconds = 0.0
    for k in range(manifest["num_shards"]):
        meta = _read_json(_shard_dir(partial, k) / "meta.json")
        if meta is None or meta.get("fingerprint") != manifest["fingerprint"]:
            raise UserError(
                f"shard {k} in {partial} does not belong to this run; start over with --overwrite"
            )
        rejected.extend(meta["rejected"])
        warned.extend(meta["warned"])
        audio_seconds += meta["audio_seconds"]
        if meta["rows"]:
            parts.append(load_from_disk(str(_shard_dir(partial, k) / "data")))

    result.rejected = len(rejected)
    result.rejected_by_reason = dict(Counter(r["reason"] for r in rejected))
    warned.sort(key=lambda w: w["index"])
    result.warned = len(warned)
    result.warnings_by_kind = dict(Counter(text.split(":", 1)[0] for w in warned for text in w["warnings"]))
    result.warning_examples = [f"{w['source']}: {'; '.join(w['warnings'])}" for w in warned[:WARNING_EXAMPLES]]
    if not parts:
        _write_rejected(partial / REJECTED_NAME, rejected)
        raise UserError(
            f"none of the {result.items} items could be used; reasons are in {partial / REJECTED_NAME}"
        )
    dataset = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    result.rows = len(dataset)
    result.audio_hours = audio_seconds / 3600
    if manifest["has_speaker"]:
        result.speakers = dict(Counter(s if s is not None else "(none)" for s in dataset["speaker"]))

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(output)
    if tmp.exists():
        shutil.rmtree(tmp)
    with _quiet_datasets():
        dataset.save_to_disk(str(tmp))
    _write_rejected(tmp / REJECTED_NAME, rejected)
    summary = {
        "manifest": manifest,
        "rows": result.rows,
        "items": result.items,
        "rejected": result.rejected,
        "rejected_by_reason": result.rejected_by_reason,
        "warned": result.warned,
        "warnings_by_kind": result.warnings_by_kind,
        "warning_examples": result.warning_examples,
        "audio_hours": result.audio_hours,
        "speakers": result.speakers,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    _write_json(tmp / SUMMARY_NAME, summary)
    del dataset, parts

    swap_in(tmp, output)  # with --overwrite, the old dataset goes only now that the new one is complete
    shutil.rmtree(partial, ignore_errors=True)
    result.assembled = True


def _result_from_summary(output: Path) -> PrepareResult:
    summary = _read_json(output / SUMMARY_NAME) or {}
    return PrepareResult(
        output=output,
        rows=summary.get("rows", 0),
        items=summary.get("items", 0),
        rejected=summary.get("rejected", 0),
        rejected_by_reason=summary.get("rejected_by_reason", {}),
        warned=summary.get("warned", 0),
        warnings_by_kind=summary.get("warnings_by_kind", {}),
        warning_examples=summary.get("warning_examples", []),
        audio_hours=summary.get("audio_hours", 0.0),
        speakers=summary.get("speakers", {}),
        assembled=True,
        already_complete=True,
    )


def _write_rejected(path: Path, rejected: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["source", "reason", "detail"])
        for r in sorted(rejected, key=lambda r: r["index"]):
            writer.writerow([r["source"], r["reason"], r["detail"]])


def _push(output: Path, options: PrepareOptions) -> None:
    from datasets import load_from_disk

    try:
        load_from_disk(str(output)).push_to_hub(options.push_to_hub, private=options.private)
    except Exception as exc:
        raise UserError(
            f"{output} is complete, but pushing it to {options.push_to_hub} failed "
            f"({type(exc).__name__}: {exc}). Check `hf auth login` and the repo name, then push "
            f"with `datasets.load_from_disk('{output}').push_to_hub(...)`."
        ) from None


# --- small helpers ------------------------------------------------------------------------------


def _progress(total: int, enabled: bool, rank: int):
    if not enabled or rank != 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="clip", desc="prepare", dynamic_ncols=True)


class _quiet_datasets:
    """Silence datasets' own progress bars while shards are written."""

    def __enter__(self):
        from datasets.utils import logging as ds_logging

        self._was_enabled = ds_logging.is_progress_bar_enabled()
        ds_logging.disable_progress_bar()

    def __exit__(self, *exc):
        from datasets.utils import logging as ds_logging

        if self._was_enabled:
            ds_logging.enable_progress_bar()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_json(path: Path, data: dict) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


__all__ = ["PrepareOptions", "PrepareResult", "prepare_dataset"]
