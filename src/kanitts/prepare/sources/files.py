"""Inputs on disk: a folder with an LJSpeech-style ``metadata.csv``, or a CSV/JSONL manifest.

- :class:`FolderSource`: ``metadata.csv`` (``id|text`` or ``id|text|normalized_text``, no
  header) and the audio as ``wavs/<id>.<ext>`` or ``<id>.<ext>``. The folders that
  :mod:`kanitts.prepare.recordings` writes add ``|confidence|flags``: a clip with flags is left
  out (rejected as flagged), one without is used.
- :class:`ManifestSource`: a CSV (with a header) or JSONL file with ``path``, ``text`` and an
  optional ``speaker``; relative paths are relative to the manifest's folder.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from kanitts.audio import load_audio
from kanitts.errors import UserError
from kanitts.prepare.sources.base import AUDIO_EXTENSIONS, Source, SourceItem, clean_speaker, clean_text
from kanitts.prepare.text_files import read_text

METADATA_NAME = "metadata.csv"

class _FileSource(Source):
    """Items whose audio is a file; ``_paths[i]`` is None when the file was not found."""

    _paths: list[Path | None]
    root: Path

    def read(self, index: int) -> tuple[np.ndarray, int]:
        path = self._paths[index]
        if path is None:  # pragma: no cover - such items carry a problem and are never read
            raise FileNotFoundError(self._items[index].source)
        return load_audio(path)

    def _audio_stamp(self, index: int) -> Any:
        path = self._paths[index]
        if path is None:
            return None
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_size, st.st_mtime_ns)

    def _relative(self, path: Path) -> str:
        try:
            return path.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(path)


class FolderSource(_FileSource):
    """A folder with an LJSpeech-style ``metadata.csv``."""

    kind = "folder"

    def __init__(self, root: str | Path, *, text_field: str, encoding: str):
        if text_field not in ("normalized", "text"):
            raise UserError(f"text field must be 'normalized' or 'text', got {text_field!r}")
        self.root = Path(root)
        metadata = METADATA_NAME
        meta = self.root / metadata
        if not meta.is_file():
            raise UserError(
                f"{self.root} has no {metadata}: put one there (LJSpeech style, `id|text` or "
                "`id|text|normalized_text` per line), or pass a CSV/JSONL manifest with "
                "path,text[,speaker] columns instead of the folder"
            )
        self.description = str(meta.resolve())
        index = self._index_audio()
        self._items, self._paths = [], []
        lines = read_text(meta, encoding).splitlines()
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            parts = line.split("|")
            i = len(self._items)
            if len(parts) < 2 or not parts[0].strip():
                problem = f"malformed line {line_no} (expected id|text or id|text|normalized_text)"
                self._items.append(SourceItem(i, f"{metadata}:{line_no}", None, problem=problem))
                self._paths.append(None)
                continue
            clip_id = parts[0].strip()
            text = parts[1]
            if text_field == "normalized" and len(parts) >= 3 and parts[2].strip():
                text = parts[2]
            path = self._find(clip_id, index)
            if path is None:
                problem = (
                    f"audio file not found (looked for {clip_id}.{{wav,flac,mp3,ogg}} "
                    "in wavs/ and the folder)"
                )
                self._items.append(SourceItem(i, clip_id, clean_text(text), problem=problem))
                self._paths.append(None)
                continue
            flags = parts[4].strip() if len(parts) >= 5 and parts[4].strip() else None
            self._items.append(SourceItem(i, self._relative(path), clean_text(text), flags=flags))
            self._paths.append(path)

    def _index_audio(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for folder in (self.root, self.root / "wavs"):  # the later folder wins: wavs/ first
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if path.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS:
                    found[path.stem] = path
                    found[path.name] = path
        return found

    def _find(self, clip_id: str, index: dict[str, Path]) -> Path | None:
        if clip_id in index:
            return index[clip_id]
        candidate = self.root / clip_id  # ids that are relative paths, e.g. "wavs/a.wav"
        if candidate.is_file():
            return candidate
        for ext in AUDIO_EXTENSIONS:
            if (p := candidate.with_name(candidate.name + ext)).is_file():
                return p
        return None


class ManifestSource(_FileSource):
    """A CSV (header row) or JSONL manifest with ``path``, ``text`` and optional ``speaker``."""

    kind = "manifest"

    def __init__(self, manifest: str | Path, *, encoding: str):
        manifest = Path(manifest)
        self.root = manifest.parent
        self.description = str(manifest.resolve())
        rows = list(self._rows(manifest, encoding))
        self.has_speaker = any(
            isinstance(r, dict) and clean_speaker(r.get("speaker")) is not None for _, r in rows
        )
        self._items, self._paths = [], []
        for line_no, row in rows:
            i = len(self._items)
            if not isinstance(row, dict):
                self._items.append(SourceItem(i, f"{manifest.name}:{line_no}", None, problem=str(row)))
                self._paths.append(None)
                continue
            raw_path = str(row.get("path") or "").strip()
            text = clean_text(row.get("text"))
            speaker = clean_speaker(row.get("speaker"))
            if not raw_path:
                self._items.append(
                    SourceItem(i, f"{manifest.name}:{line_no}", text, speaker, problem="empty path")
                )
                self._paths.append(None)
                continue
            path = Path(raw_path).expanduser()
            if not path.is_absolute():
                path = self.root / path
            if not path.is_file():
                self._items.append(
                    SourceItem(i, raw_path, text, speaker, problem=f"audio file not found: {path}")
                )
                self._paths.append(None)
                continue
            self._items.append(SourceItem(i, self._relative(path), text, speaker))
            self._paths.append(path)

    @staticmethod
    def _rows(manifest: Path, encoding: str) -> Iterable[tuple[int, dict | str]]:
        suffix = manifest.suffix.lower()
        if suffix not in (".jsonl", ".json", ".ndjson", ".csv", ".tsv"):
            raise UserError(f"{manifest}: a manifest must be .csv, .tsv or .jsonl")
        with io.StringIO(read_text(manifest, encoding), newline="") as handle:
            if suffix in (".jsonl", ".json", ".ndjson"):
                for line_no, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        yield line_no, f"line {line_no} is not JSON ({exc.msg})"
                        continue
                    if not isinstance(row, dict) or "path" not in row or "text" not in row:
                        yield line_no, f"line {line_no} needs an object with 'path' and 'text'"
                        continue
                    yield line_no, row
            else:
                reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
                fields = [f.strip() for f in (reader.fieldnames or [])]
                reader.fieldnames = fields
                missing = [c for c in ("path", "text") if c not in fields]
                if missing:
                    raise UserError(
                        f"{manifest}: the header must name the columns path,text[,speaker]; "
                        f"missing {', '.join(missing)} (found: {', '.join(fields) or 'nothing'})"
                    )
                for line_no, row in enumerate(reader, start=2):
                    yield line_no, row


def has_audio_files(folder: Path) -> bool:
    for sub in (folder, folder / "wavs"):
        if sub.is_dir() and any(p.suffix.lower() in AUDIO_EXTENSIONS for p in sub.iterdir()):
            return True
    return False
