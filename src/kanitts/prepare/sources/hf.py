"""A Hugging Face audio dataset as input: from the Hub or a local folder (``save_to_disk``
output or data files), with configurable column names.

Audio is decoded here with soundfile (the column is cast to ``Audio(decode=False)``), not by
``datasets``, so neither torchcodec nor torchaudio is needed.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import numpy as np

from kanitts.audio import AudioDecodeError, load_audio
from kanitts.errors import UserError
from kanitts.prepare.sources.base import Source, SourceItem, clean_speaker, clean_text


class HFSource(Source):
    """A Hugging Face audio dataset (Hub id or local folder)."""

    kind = "hf"

    def __init__(
        self,
        name_or_path: str | Path,
        *,
        split: str,
        config_name: str | None,
        audio_column: str,
        text_column: str,
        speaker_column: str | None,
        speaker_column_required: bool,
    ):
        local = Path(str(name_or_path)).expanduser()
        self.name_or_path = str(local.resolve()) if local.exists() else str(name_or_path)
        self.split = split
        ds = _load_hf_dataset(self.name_or_path, split, config_name)
        columns = list(ds.column_names)
        for what, col in (("audio", audio_column), ("text", text_column)):
            if col not in columns:
                raise UserError(
                    f"dataset {self.name_or_path} (split {split}) has no {what} column {col!r}; "
                    f"its columns are {', '.join(columns)} (choose with --{what}-column)"
                )
        if speaker_column and speaker_column not in columns:
            if speaker_column_required:
                raise UserError(
                    f"dataset {self.name_or_path} has no speaker column {speaker_column!r}; "
                    f"its columns are {', '.join(columns)}"
                )
            speaker_column = None
        from datasets import Audio

        if isinstance(ds.features.get(audio_column), Audio):
            ds = ds.cast_column(audio_column, Audio(decode=False))
        self._ds = ds
        self._audio_column = audio_column
        self._lock = threading.Lock()
        self.has_speaker = speaker_column is not None
        self.description = f"{self.name_or_path} [{split}]"
        texts = ds[text_column]
        speakers = ds[speaker_column] if speaker_column else [None] * len(ds)
        self._items = [
            SourceItem(i, f"{split}[{i}]", clean_text(t), clean_speaker(s))
            for i, (t, s) in enumerate(zip(texts, speakers))
        ]
        self._dataset_fingerprint = getattr(ds, "_fingerprint", None)

    def read(self, index: int) -> tuple[np.ndarray, int]:
        with self._lock:
            value = self._ds[index][self._audio_column]
        return _decode_hf_audio(value, self.name_or_path)

    def fingerprint(self) -> str:
        h = hashlib.sha256(super().fingerprint().encode())
        h.update(repr((self.name_or_path, self.split, self._dataset_fingerprint)).encode())
        return h.hexdigest()[:16]


def _load_hf_dataset(name_or_path: str, split: str, config_name: str | None):
    import datasets

    path = Path(name_or_path).expanduser()
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise UserError(
                        f"{path} has no split {split!r}; it has {', '.join(ds)} (choose with --split)"
                    )
                ds = ds[split]
            return ds
        return datasets.load_dataset(str(name_or_path), config_name, split=split)
    except UserError:
        raise
    except Exception as exc:  # missing repo, network, offline mode, bad split: all fixable by the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(
            f"cannot load the dataset {name_or_path!r} (split {split!r}"
            f"{', config ' + repr(config_name) if config_name else ''}): {type(exc).__name__}: {first}"
        ) from None


def _decode_hf_audio(value: Any, dataset: str) -> tuple[np.ndarray, int]:
    """Audio cell (``{"bytes", "path"}``, ``{"array", "sampling_rate"}`` or a path) -> (T, C), sr."""
    if value is None:
        raise AudioDecodeError("no audio in this row")
    if isinstance(value, str):
        return load_audio(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            return load_audio(value["bytes"])
        if value.get("array") is not None:
            sr = value.get("sampling_rate")
            if not sr:
                raise AudioDecodeError("audio array without sampling_rate")
            array = np.asarray(value["array"], dtype=np.float32)
            if array.ndim == 1:
                array = array[:, None]
            elif array.ndim == 2 and array.shape[0] < array.shape[1]:
                array = array.T  # (C, T) -> (T, C)
            return np.ascontiguousarray(array), int(sr)
        if value.get("path"):
            path = Path(value["path"])
            if not path.is_file():
                raise AudioDecodeError(f"audio file {path} referenced by {dataset} does not exist")
            return load_audio(path)
    raise AudioDecodeError(f"cannot interpret the audio cell ({type(value).__name__})")
