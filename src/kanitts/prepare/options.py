"""What a prepare run takes: :class:`PrepareOptions` and :class:`CodecSpec`.

Every default of ``kanitts prepare`` is written here and nowhere else: ``kanitts.cli`` builds its
flags from these fields (default and help text), so the command line and
``prepare_dataset(PrepareOptions(...), CodecSpec(...))`` cannot drift apart.

The codec is not an option with a default: which codec encodes a dataset is what training and
inference must decode with, so it comes from ``model_config.yaml`` (the recipe,
:mod:`kanitts.recipes.prepare`, reads it) or from the caller, never from a fallback here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from kanitts.errors import UserError
from kanitts.prepare.text_files import check_encoding
from kanitts.runtime import DTYPE_NAMES, canonical_dtype

INPUT_KINDS = ("auto", "folder", "manifest", "hf")
TEXT_FIELDS = ("normalized", "text")
NORMALIZE_MODES = ("none", "peak", "loudness")
SUSPECT_CLIP_MODES = ("warn", "reject")
DTYPES = tuple(DTYPE_NAMES)  # both spellings: fp32/float32, bf16/bfloat16, fp16/float16, auto


def _opt(default: Any, help: str | None = None) -> Any:
    """A field whose ``help`` the CLI shows next to the flag (``%(default)s`` is argparse's)."""
    return field(default=default, metadata={"help": help} if help else {})


@dataclass
class CodecSpec:
    """The codec a run encodes with: ``kind`` (a registered codec), ``weights`` (Hub id or folder)
    and how it runs. Both names are required, so no caller gets a codec it did not choose."""

    kind: str
    weights: str
    device: str | None = _opt(None, "cpu, cuda, cuda:1 (default: the GPU when there is one)")
    dtype: str = _opt(
        "fp32",
        "encoder precision (default fp32, as the reference datasets; bf16 is faster on GPUs but "
        "can change a few codes; auto: bf16 on GPU, fp32 on CPU)",
    )

    def validate(self) -> None:
        canonical_dtype(self.dtype, "--dtype")


@dataclass(frozen=True)
class Segmentation:
    """How long recordings are cut and transcribed: the ``segment_*``, ``vad_*`` and ``asr_*``
    options with every ``None`` resolved to its default."""

    min_duration: float = 2.0
    max_duration: float = 12.0
    target_duration: float | None = None  # None: halfway between min and max
    padding: float = 0.2
    split_pause: float = 1.5
    vad_threshold: float = 0.5
    asr_model: str = "openai/whisper-large-v3-turbo"  # kanitts.asr.DEFAULT_ASR_MODEL (torch-free here)
    asr_language: str | None = "en"
    asr_batch_size: int = 8
    min_asr_confidence: float = -1.0
    refine_cuts: bool = True

    @property
    def target(self) -> float:
        return self.target_duration if self.target_duration is not None else (self.min_duration + self.max_duration) / 2

    def problems(self) -> list[str]:
        found = []
        if not 0 < self.min_duration < self.max_duration:
            found.append(
                f"--segment-min-duration ({self.min_duration:g}) and --segment-max-duration "
                f"({self.max_duration:g}) must satisfy 0 < min < max"
            )
        elif not self.min_duration <= self.target <= self.max_duration:
            found.append(
                f"--segment-target-duration ({self.target:g}) must lie between the shortest "
                f"({self.min_duration:g}) and longest ({self.max_duration:g}) clip"
            )
        if not 0 <= self.padding < self.min_duration / 2:
            found.append(f"--segment-padding ({self.padding:g}) must lie in [0, segment_min_duration / 2)")
        if self.split_pause <= 0:
            found.append(f"--split-pause must be positive, not {self.split_pause:g}")
        if not 0 < self.vad_threshold < 1:
            found.append(f"--vad-threshold must lie in (0, 1), not {self.vad_threshold:g}")
        if self.asr_batch_size < 1:
            found.append(f"--asr-batch-size must be at least 1, not {self.asr_batch_size}")
        if self.min_asr_confidence > 0:
            found.append(f"--min-asr-confidence is a log-probability (<= 0), not {self.min_asr_confidence:g}")
        return found

    def describe(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_SEG = Segmentation()  # the defaults, for the help texts below


@dataclass
class PrepareOptions:
    """Everything ``kanitts prepare`` takes besides the codec; the CLI flags map one to one."""

    input: str
    output: str
    input_kind: str = _opt("auto")
    # transcripts and speakers
    text_field: str = _opt(
        "normalized", "metadata.csv: use the 3rd (normalized) column when present, or always the 2nd"
    )
    split: str = _opt("train", "HF dataset split (default: %(default)s)")
    config_name: str | None = _opt(None, "HF dataset configuration (subset)")
    audio_column: str = _opt("audio", "HF dataset audio column (default: %(default)s)")
    text_column: str = _opt("text", "HF dataset text column (default: %(default)s)")
    speaker_column: str | None = _opt(
        None, "HF dataset speaker column (default: 'speaker' when the dataset has one)"
    )
    speaker: str | None = _opt(None, "one speaker name for the whole input (overrides any column)")
    speaker_embedder: str | None = _opt(
        None,
        "KaniTTS-2 speaker embedder (Hub id or folder, e.g. nineninesix/speaker-emb-tbr): adds each clip's "
        "speaker embedding as column speaker_emb (default: speaker_embedder.weights of model_config.yaml)",
    )
    encoding: str = _opt(
        "auto",
        "encoding of metadata.csv / the manifest (default auto: UTF-8, or UTF-8/16/32 with a "
        "byte-order mark); e.g. cp1252, latin-1, utf-16-le",
    )
    # audio
    normalize: str = _opt("none")
    peak_dbfs: float = _opt(-1.0, "peak target / ceiling (default: %(default)s)")
    loudness_lufs: float = _opt(-23.0, "loudness target (default: %(default)s LUFS)")
    trim_silence: bool = _opt(False, "cut leading and trailing silence")
    trim_top_db: float = _opt(40.0, "what counts as silence when trimming: dB below the loudest frame")
    silence_dbfs: float = _opt(-60.0, "reject clips whose peak is below this (default: %(default)s dBFS)")
    min_duration: float = _opt(0.3, "seconds (default: %(default)s)")
    max_duration: float = _opt(40.0, "seconds (default: %(default)s)")
    # suspect clips: kept with a warning ("warn") or rejected ("reject")
    suspect_clips: str = _opt("warn", "keep suspect clips with a warning (default) or reject them")
    clip_level: float = _opt(0.999, "|sample| at or above this counts as full scale (default: %(default)s)")
    max_clipped_fraction: float = _opt(
        0.001, "a clip with more of its samples at full scale is clipped (default: %(default)s = 0.1%%)"
    )
    min_chars_per_second: float = _opt(
        2.0, "transcripts slower than this are too short for their audio (default: %(default)s)"
    )
    max_chars_per_second: float = _opt(
        30.0, "transcripts faster than this are too long for their audio (default: %(default)s)"
    )
    # long recordings without transcripts (a folder of audio files and no metadata.csv): cut at
    # pauses and transcribed into <output>.clips/ first. None: the `prepare` section of
    # dataset_config.yaml, else the default named in the help.
    segment_min_duration: float | None = _opt(
        None, f"shortest clip cut from a long recording, seconds (default: {_SEG.min_duration:g})"
    )
    segment_max_duration: float | None = _opt(
        None, f"longest clip, seconds (default: max_duration_sec of dataset_config.yaml, else {_SEG.max_duration:g})"
    )
    segment_target_duration: float | None = _opt(
        None, "the clip length cuts aim for, seconds (default: halfway between the shortest and longest)"
    )
    segment_padding: float | None = _opt(
        None, f"silence kept on each side of a clip, seconds (default: {_SEG.padding:g})"
    )
    split_pause: float | None = _opt(
        None, f"a pause at least this long always ends a clip, seconds (default: {_SEG.split_pause:g})"
    )
    vad_threshold: float | None = _opt(
        None, f"speech probability from which Silero VAD calls a window speech (default: {_SEG.vad_threshold:g})"
    )
    asr_model: str | None = _opt(None, f"ASR model (Hub id or folder) for the transcripts (default: {_SEG.asr_model})")
    asr_language: str | None = _opt(
        None, f"language of the recordings, for multilingual ASR models (default: {_SEG.asr_language})"
    )
    asr_batch_size: int | None = _opt(None, f"clips per ASR batch (default: {_SEG.asr_batch_size})")
    min_asr_confidence: float | None = _opt(
        None,
        "clips whose transcript's mean token log-probability is below this are flagged "
        f"(default: {_SEG.min_asr_confidence:g})",
    )
    refine_cuts: bool | None = _opt(
        None,
        "move each clip's edges to its first and last word where the ASR model times words (Whisper "
        "with alignment heads), and flag clips whose last word runs into the cut; --no-refine-cuts keeps "
        f"the VAD cuts (default: {'on' if _SEG.refine_cuts else 'off'})",
    )
    transcribe_only: bool = _opt(
        False, "cut and transcribe long recordings into <output>.clips/ (with an editable metadata.csv) and stop"
    )
    # batching and sharding
    batch_seconds: float | None = _opt(None, "padded audio seconds per encoder batch (default: 600 on GPU, 60 on CPU)")
    max_batch_size: int | None = _opt(
        None, "clips per encoder call (default: 64 on GPU, 1 on CPU, where batching does not pay)"
    )
    shard_size: int = _opt(500, "clips per resumable shard (default: %(default)s)")
    num_workers: int = _opt(4, "audio decoding threads (default: %(default)s)")
    # run control
    resume: bool = _opt(False, "continue an interrupted run (same inputs/options)")
    overwrite: bool = _opt(False, "replace an existing output or interrupted run")
    push_to_hub: str | None = _opt(None, "also push the dataset to this Hub repo")
    private: bool = _opt(False, "make the pushed dataset private")
    progress: bool = _opt(True)
    # set by the launcher (torchrun/accelerate env vars) or by hand to split work between runs
    rank: int | None = None
    world_size: int | None = None

    def segmentation(self) -> Segmentation:
        """The segmentation settings, defaults filled in where an option is None."""
        given = {target: getattr(self, name) for name, target in SEGMENTATION_FIELDS.items()}
        return Segmentation(**{k: v for k, v in given.items() if v is not None})

    def validate(self) -> None:
        problems = []
        if self.resume and self.overwrite:
            problems.append("--resume and --overwrite exclude each other")
        if self.normalize not in NORMALIZE_MODES:
            problems.append(f"--normalize must be none, peak or loudness, not {self.normalize!r}")
        if self.input_kind not in INPUT_KINDS:
            problems.append(f"--input-kind must be auto, folder, manifest or hf, not {self.input_kind!r}")
        if self.min_duration < 0 or self.max_duration <= self.min_duration:
            problems.append(
                f"durations must satisfy 0 <= min ({self.min_duration}) < max ({self.max_duration})"
            )
        if self.shard_size < 1 or (self.max_batch_size or 1) < 1 or self.num_workers < 1:
            problems.append("--shard-size, --max-batch-size and --num-workers must be at least 1")
        if self.batch_seconds is not None and self.batch_seconds <= 0:
            problems.append("--batch-seconds must be positive")
        if self.suspect_clips not in SUSPECT_CLIP_MODES:
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
        problems += self.segmentation().problems()
        if (problem := check_encoding(self.encoding)) is not None:
            problems.append(problem)
        if problems:
            raise UserError("; ".join(problems))


#: PrepareOptions field -> Segmentation field (the `prepare` section of dataset_config.yaml
#: uses the PrepareOptions names)
SEGMENTATION_FIELDS = {
    "segment_min_duration": "min_duration",
    "segment_max_duration": "max_duration",
    "segment_target_duration": "target_duration",
    "segment_padding": "padding",
    "split_pause": "split_pause",
    "vad_threshold": "vad_threshold",
    "asr_model": "asr_model",
    "asr_language": "asr_language",
    "asr_batch_size": "asr_batch_size",
    "min_asr_confidence": "min_asr_confidence",
    "refine_cuts": "refine_cuts",
}


def default(cls: type, name: str) -> Any:
    """The default of field ``name`` of dataclass ``cls``: what the CLI flag defaults to."""
    return next(f.default for f in fields(cls) if f.name == name)


def help_text(cls: type, name: str) -> str | None:
    return next(f.metadata.get("help") for f in fields(cls) if f.name == name)


__all__ = ["CodecSpec", "PrepareOptions", "Segmentation"]
