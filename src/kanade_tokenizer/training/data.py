"""Audio chunks for Kanade training, read from the CSV that ``dump_dataset`` writes.

Audio is resampled to the model rate with the original's windowed-sinc resampler
(:func:`kanade_tokenizer.audio.resample`), as ``load_audio`` does. Every file is cut into fixed
windows at the model rate: a file no longer than ``chunk_size``
gives one window (zero-padded at the end when loaded); a longer one gives windows at 0, hop,
2·hop, ... plus one aligned to the file's end. The windows are deterministic and training
only shuffles their order, as the reference recipe does.

A file that cannot be read mid-epoch is skipped (a warning names its CSV row and path, and
``ChunkedAudioDataset.bad_files`` counts it) and the next window takes its place, so one
broken file does not end a long run. Problems found before training starts (a missing CSV,
missing columns, bad numbers, files that do not exist) raise at once with the row named.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ..audio import load_audio, peak_normalize, read_frames, resample

logger = logging.getLogger(__name__)

CSV_COLUMNS = ("audio_id", "path", "length", "sample_rate")


class AudioDataError(ValueError):
    """The dataset CSV or the audio it lists cannot be used."""


@dataclass
class AudioDataConfig:
    """One split: where the audio is and how it is cut and batched."""

    csv_path: str
    audio_root: str
    sample_rate: int = 24000
    mono: bool = True
    normalize: bool = True
    chunk_size: int = 138240
    chunk_hop_size: int | None = None  # None: chunk_size (no overlap)
    batch_size: int = 16
    num_workers: int = 0
    pin_memory: bool = False
    persistent_workers: bool = False
    shuffle: bool = False
    drop_last: bool = False


@dataclass(frozen=True)
class AudioRecord:
    row: int  # 1-based data row of the CSV (the header is row 0)
    audio_id: str
    path: Path
    length: int  # frames at the file's own rate
    sample_rate: int


@dataclass(frozen=True)
class Chunk:
    record: AudioRecord
    offset: int  # in samples at the model rate
    size: int


@dataclass
class AudioBatch:
    """``waveform`` (B, 1, S) zero-padded at the end; ``lengths`` the real samples of each item."""

    waveform: torch.Tensor
    lengths: torch.Tensor
    audio_ids: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)

    def pin_memory(self) -> AudioBatch:
        """A copy with the tensors in pinned memory. The DataLoader's ``pin_memory`` pins only
        tensors, mappings, sequences and objects with this method; a plain dataclass would pass
        through unpinned."""
        return replace(self, waveform=self.waveform.pin_memory(), lengths=self.lengths.pin_memory())


def read_audio_csv(csv_path: str | Path, audio_root: str | Path) -> list[AudioRecord]:
    """Parse and check the CSV; every file it lists must exist under ``audio_root``."""
    csv_path, audio_root = Path(csv_path), Path(audio_root)
    if not csv_path.is_file():
        raise AudioDataError(f"{csv_path}: no such CSV (make one with kanade_tokenizer.scripts.dump_dataset)")
    if not audio_root.is_dir():
        raise AudioDataError(f"audio_root {audio_root}: no such folder")
    records: list[AudioRecord] = []
    missing: list[str] = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        absent = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if absent:
            raise AudioDataError(f"{csv_path}: missing column(s) {', '.join(absent)}; expected {','.join(CSV_COLUMNS)}")
        for row, entry in enumerate(reader, start=1):
            try:
                length, sr = int(entry["length"]), int(entry["sample_rate"])
            except (TypeError, ValueError):
                raise AudioDataError(
                    f"{csv_path} row {row}: length and sample_rate must be integers, "
                    f"got {entry['length']!r}, {entry['sample_rate']!r}"
                ) from None
            if length <= 0 or sr <= 0:
                raise AudioDataError(f"{csv_path} row {row}: length and sample_rate must be positive")
            path = audio_root / entry["path"]
            if not path.is_file():
                missing.append(f"row {row}: {path}")
            records.append(AudioRecord(row, entry["audio_id"], path, length, sr))
    if missing:
        shown = "; ".join(missing[:5]) + (f"; and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise AudioDataError(f"{csv_path}: {len(missing)} listed audio file(s) not found ({shown})")
    if not records:
        raise AudioDataError(f"{csv_path}: lists no audio files")
    return records


def chunk_offsets(length: int, chunk_size: int, hop: int) -> list[int]:
    """Window starts for a file of ``length`` samples (see the module docstring)."""
    if length <= chunk_size:
        return [0]
    starts = list(range(0, length - chunk_size + 1, hop))
    end_aligned = length - chunk_size
    if end_aligned > starts[-1]:
        starts.append(end_aligned)
    return starts


class ChunkedAudioDataset(Dataset):
    def __init__(self, config: AudioDataConfig):
        if config.chunk_size <= 0:
            raise AudioDataError(f"chunk_size must be positive, got {config.chunk_size}")
        hop = config.chunk_hop_size or config.chunk_size
        if hop <= 0:
            raise AudioDataError(f"chunk_hop_size must be positive, got {hop}")
        self.config = config
        self.csv_path = Path(config.csv_path)
        self.chunks: list[Chunk] = []
        for record in read_audio_csv(config.csv_path, config.audio_root):
            length = math.ceil(record.length * config.sample_rate / record.sample_rate)
            for offset in chunk_offsets(length, config.chunk_size, hop):
                self.chunks.append(Chunk(record, offset, config.chunk_size))
        self.bad_files: set[Path] = set()

    def __len__(self) -> int:
        return len(self.chunks)

    def load(self, chunk: Chunk) -> torch.Tensor:
        """The chunk as (chunk.size,) float32 at the model rate, zero-padded at the end."""
        record, sr = chunk.record, self.config.sample_rate
        start = chunk.offset * record.sample_rate // sr
        frames = math.ceil(chunk.size * record.sample_rate / sr)
        channels, _ = read_frames(record.path, start, frames)
        audio = channels.mean(dim=0) if self.config.mono else channels[0]
        wave = resample(audio, record.sample_rate, sr)[: chunk.size].contiguous()
        if self.config.normalize:
            wave = peak_normalize(wave)
        return torch.nn.functional.pad(wave, (0, chunk.size - wave.numel()))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Chunk]:
        for attempt in range(len(self.chunks)):
            chunk = self.chunks[(index + attempt) % len(self.chunks)]
            if chunk.record.path in self.bad_files:
                continue
            try:
                return self.load(chunk), chunk
            except Exception as e:  # libsndfile errors, truncated files, bad headers
                self.bad_files.add(chunk.record.path)
                logger.warning(
                    "%s row %d: skipping unreadable audio %s (%s: %s); %d bad file(s) so far",
                    self.csv_path, chunk.record.row, chunk.record.path, type(e).__name__, e, len(self.bad_files),
                )
        raise AudioDataError(f"{self.csv_path}: none of the listed audio files could be read")


class WholeFileDataset(Dataset):
    """Every file of the CSV whole (not cut into chunks), read with ``load_audio`` at the model
    rate, for ``kanade-train predict``. A file that cannot be read yields None and a warning
    naming its CSV row, so one bad file does not end a long run."""

    def __init__(self, config: AudioDataConfig):
        self.config = config
        self.csv_path = Path(config.csv_path)
        self.records = read_audio_csv(config.csv_path, config.audio_root)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Chunk] | None:
        record = self.records[index]
        try:
            wave = load_audio(record.path, self.config.sample_rate, normalize=self.config.normalize)
        except Exception as e:  # unreadable, truncated, empty
            logger.warning("%s row %d: skipping %s (%s)", self.csv_path, record.row, record.path, e)
            return None
        return wave, Chunk(record, 0, wave.numel())


def collate_files(items: list[tuple[torch.Tensor, Chunk] | None]) -> AudioBatch | None:
    """:func:`collate_audio` of the readable items; None when there is none."""
    items = [item for item in items if item is not None]
    return collate_audio(items) if items else None


def collate_audio(items: list[tuple[torch.Tensor, Chunk]]) -> AudioBatch:
    lengths = torch.tensor([wave.numel() for wave, _ in items], dtype=torch.long)
    waveform = torch.zeros(len(items), 1, int(lengths.max()))
    for i, (wave, _) in enumerate(items):
        waveform[i, 0, : wave.numel()] = wave
    return AudioBatch(
        waveform=waveform,
        lengths=lengths,
        audio_ids=[c.record.audio_id for _, c in items],
        paths=[str(c.record.path) for _, c in items],
        offsets=[c.offset for _, c in items],
    )


class AudioDataModule(pl.LightningDataModule):
    """Train / validation / test splits, each an :class:`AudioDataConfig` (val and test optional),
    and the files ``predict`` runs over: ``predict_config``, or ``test_config`` when there is none
    (whole files; chunk settings do not apply). ``predict`` writes to ``predict_dir`` (None:
    ``<trainer.default_root_dir>/predictions``), and with ``predict_vocoder`` (a vocoder Hub id or
    folder, e.g. ``vocos``) also the reconstructions as audio."""

    def __init__(
        self,
        train_config: AudioDataConfig,
        val_config: AudioDataConfig | None = None,
        test_config: AudioDataConfig | None = None,
        predict_config: AudioDataConfig | None = None,
        predict_dir: str | None = None,
        predict_vocoder: str | None = None,
    ):
        super().__init__()
        self.predict_dir = predict_dir
        self.predict_vocoder = predict_vocoder
        self.train_config = train_config
        self.val_config = val_config
        self.test_config = test_config
        self.predict_config = predict_config
        self.datasets: dict[str, Dataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":
            if "predict" not in self.datasets:
                config = self.predict_config or self.test_config
                if config is None:
                    raise AudioDataError(
                        "predict needs the files to run over: set data.predict_config (or data.test_config) "
                        "with a csv_path and audio_root"
                    )
                self.predict_config = config
                self.datasets["predict"] = WholeFileDataset(config)
            return
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage or "", ())
        for split in wanted or ("train", "val", "test"):
            config = getattr(self, f"{split}_config")
            if config is not None and split not in self.datasets:
                self.datasets[split] = ChunkedAudioDataset(config)

    def _loader(self, split: str) -> DataLoader:
        config: AudioDataConfig = getattr(self, f"{split}_config")
        return DataLoader(
            self.datasets[split],
            batch_size=config.batch_size,
            shuffle=config.shuffle,
            drop_last=config.drop_last,
            num_workers=config.num_workers,
            pin_memory=config.pin_memory,
            persistent_workers=config.persistent_workers and config.num_workers > 0,
            collate_fn=collate_audio,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val") if "val" in self.datasets else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        config = self.predict_config
        return DataLoader(
            self.datasets["predict"],
            batch_size=config.batch_size,
            shuffle=False,
            num_workers=config.num_workers,
            pin_memory=config.pin_memory,
            collate_fn=collate_files,
        )
