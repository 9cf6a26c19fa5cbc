"""Where a codec dataset comes from: a Hub id, a `save_to_disk` folder, or local data files.

`reponame` in dataset_config.yaml names all three, with the same keys for each, and the kind is
detected here, so configs written for the Hub-only reference pipeline keep working and users with
local data need no Hub account:

- an existing folder written by `Dataset.save_to_disk` (a `DatasetDict` folder gives `split`);
- a folder of data files, such as the `.jsonl.gz` shards the NanoCodec dataset pipeline writes;
- a file or glob of `.parquet`, `.jsonl`, `.json` or `.csv` files (optionally `.gz`);
- anything else is a Hub dataset id, loaded with `name` and `split`.

CSV cannot hold lists, so the codebook columns (the caller names them) stored there as text
("[1, 2, 3]", or "[1 2 3]" as pandas and `Dataset.to_csv` write them) are parsed back into lists
of codes.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from pathlib import Path

import datasets

from kanitts.config import DatasetEntry
from kanitts.errors import UserError
from kanitts.files import is_hub_id

# File suffix -> the `datasets` builder that reads it.
FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}

# A list of integers as CSV holds it: "[1, 2, 3]", "[1 2 3]" or "1 2 3".
_CODES = r"[\s,]*(?:-?\d+(?:[\s,]+-?\d+)*)?[\s,]*"
_CODE_LIST = re.compile(rf"\s*(?:\[{_CODES}\]|{_CODES})\s*")
_CODE = re.compile(r"-?\d+")


def load_source(entry: DatasetEntry, code_columns: Sequence[str]) -> datasets.Dataset:
    """The rows of one configured dataset, as a `datasets.Dataset`, whatever kind of source it is.

    `code_columns` are the dataset's codebook columns (``entry.layer_columns(codec_layers)``),
    parsed back into lists where a CSV file holds them as text.
    """
    path = Path(entry.reponame).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return _load_saved(path, entry)
        files = _data_files_in(path)
        if not files:
            raise UserError(
                f"dataset {entry.label}: folder {path} is neither a save_to_disk folder nor holds "
                f"data files ({', '.join(FILE_BUILDERS)})"
            )
        return _load_files(files, entry, code_columns)
    if _builder_for(entry.reponame) is not None:
        files = sorted(glob.glob(str(path)))
        if not files:
            raise UserError(f"dataset {entry.label}: no file matches {entry.reponame!r} (from {os.getcwd()})")
        return _load_files(files, entry, code_columns)
    if not is_hub_id(entry.reponame):
        raise UserError(
            f"dataset {entry.label}: {entry.reponame!r} looks like a local path but does not exist "
            f"(from {os.getcwd()}); a Hub dataset id is owner/name"
        )
    return _load_hub(entry)


def _builder_for(name: str) -> str | None:
    suffixes = Path(name.removesuffix(".gz")).suffix.lower()
    return FILE_BUILDERS.get(suffixes)


def _data_files_in(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.iterdir() if p.is_file() and _builder_for(p.name) is not None)


def _load_saved(path: Path, entry: DatasetEntry) -> datasets.Dataset:
    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError, IndexError, KeyError) as exc:  # what a damaged or empty folder raises
        raise UserError(
            f"dataset {entry.label}: cannot read the save_to_disk folder {path} ({type(exc).__name__}: {exc}); "
            "is it complete, and does it have rows?"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if entry.split not in loaded:
            raise UserError(
                f"dataset {entry.label}: split {entry.split!r} not found in {path}; it has {sorted(loaded)}"
            )
        return loaded[entry.split]
    return loaded


def _load_files(files: list[str], entry: DatasetEntry, code_columns: Sequence[str]) -> datasets.Dataset:
    builders = {_builder_for(f) for f in files}
    if len(builders) > 1:
        raise UserError(f"dataset {entry.label}: mixes file kinds {sorted(builders)}; use one kind per dataset")
    builder = builders.pop()
    try:
        table = datasets.load_dataset(builder, data_files={entry.split: files}, split=entry.split)
    except (ValueError, OSError, datasets.exceptions.DatasetGenerationError) as exc:
        raise UserError(f"dataset {entry.label}: cannot read {builder} files {files[:3]}: {exc}") from None
    if builder == "csv":
        table = _parse_list_columns(table, entry, code_columns)
    return table


def _parse_list_columns(table: datasets.Dataset, entry: DatasetEntry, code_columns: Sequence[str]) -> datasets.Dataset:
    """Codebook columns written to CSV arrive as text; turn them back into lists of codes."""
    text_layers = [
        c for c in code_columns
        if c in table.column_names and table.features[c].dtype in ("string", "large_string")
    ]
    if not text_layers:
        return table

    def parse(batch: dict, indices: list[int]) -> dict:
        out = {}
        for column in text_layers:
            parsed = []
            for index, cell in zip(indices, batch[column]):
                if not _CODE_LIST.fullmatch(cell or ""):
                    raise UserError(
                        f"dataset {entry.label}: row {index}: column {column!r} is not a list of codes: {cell[:60]!r}"
                    )
                parsed.append([int(code) for code in _CODE.findall(cell)])
            out[column] = parsed
        return out

    features = table.features.copy()
    for column in text_layers:
        features[column] = datasets.Sequence(datasets.Value("int64"))
    return table.map(parse, batched=True, with_indices=True, features=features, desc=f"{entry.label}: parse CSV lists")


def _load_hub(entry: DatasetEntry) -> datasets.Dataset:
    try:
        return datasets.load_dataset(entry.reponame, entry.name, split=entry.split)
    except Exception as exc:  # the Hub client raises many unrelated types for one cause: unreachable
        offline = any(
            os.environ.get(v, "").lower() in {"1", "true", "yes"} for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
        )
        hint = (
            "offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) and it is not in the local cache"
            if offline
            else "check the id, `name` and `split`, your network and `huggingface-cli login` for private datasets"
        )
        raise UserError(
            f"dataset {entry.label}: cannot load {entry.reponame!r} (name={entry.name!r}, split={entry.split!r}) "
            f"from the Hugging Face Hub: {hint}. A local folder or file is looked up relative to {os.getcwd()}. "
            f"({type(exc).__name__}: {exc})"
        ) from None
