"""Where ``kanitts prepare`` reads recordings and transcripts from.

Three kinds of input, one interface (:class:`Source`): a numbered list of items, each with a
transcript, an optional speaker and audio that :meth:`Source.read` decodes on demand.

- :class:`FolderSource`: a folder with an LJSpeech-style ``metadata.csv`` (``id|text`` or
  ``id|text|normalized_text``, no header) and the audio as ``wavs/<id>.<ext>`` or ``<id>.<ext>``.
- :class:`ManifestSource`: a CSV (with a header) or JSONL file with ``path``, ``text`` and an
  optional ``speaker``; relative paths are relative to the manifest's folder.
- :class:`HFSource`: a Hugging Face audio dataset, from the Hub or a local folder
  (``save_to_disk`` output or data files), with configurable column names. Audio is decoded
  here with soundfile (the column is cast to ``Audio(decode=False)``), not by ``datasets``.

A line that cannot be used (malformed, missing audio file) does not stop anything: the item
carries a ``problem`` and ends up in ``rejected.csv``.

Text files (``metadata.csv``, manifests) are UTF-8 unless they start with a byte-order mark
(UTF-8, UTF-16 or UTF-32), or ``encoding`` names their codec. A file that is not what it is read
as is refused as a whole, naming the line and byte where decoding failed: a Latin-1 or cp1252
transcript read as UTF-8 would otherwise fail on one line and pass mojibake on the next.
"""

from __future__ import annotations

import abc
import codecs
import csv
import hashlib
import io
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kanitts.audio import AudioDecodeError, load_audio
from kanitts.errors import UserError

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".oga")


@dataclass(frozen=True)
class SourceItem:
    """One recording: where it comes from, what is said, by whom; or why it cannot be used."""

    index: int
    source: str
    text: str | None
    speaker: str | None = None
    problem: str | None = None


class Source(abc.ABC):
    """A numbered collection of :class:`SourceItem` with decodable audio."""

    kind: str = ""
    description: str = ""
    has_speaker: bool = False
    _items: list[SourceItem]

    def __len__(self) -> int:
        return len(self._items)

    def item(self, index: int) -> SourceItem:
        return self._items[index]

    @abc.abstractmethod
    def read(self, index: int) -> tuple[np.ndarray, int]:
        """``(samples (T, C) float32, sample_rate)``; raises AudioDecodeError or OSError."""

    def fingerprint(self) -> str:
        """Changes when the list of items, their texts/speakers or their audio files change."""
        h = hashlib.sha256(self.kind.encode())
        for it in self._items:
            h.update(repr((it.source, it.text, it.speaker, it.problem)).encode())
            h.update(repr(self._audio_stamp(it.index)).encode())
        return h.hexdigest()[:16]

    def _audio_stamp(self, index: int) -> Any:
        return None


def _clean_text(text: Any) -> str | None:
    if text is None:
        return None
    text = str(text).strip()
    return text or None


def _clean_speaker(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN from pandas-made files
        return None
    value = str(value).strip()
    return value or None


# --- text files -----------------------------------------------------------------------------------

#: Byte-order marks and the codec that reads past them; UTF-32 first (its LE mark starts like UTF-16's).
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def check_encoding(encoding: str) -> str | None:
    """Why ``encoding`` cannot be used (None when it can): ``auto`` or a codec Python knows."""
    if encoding == "auto":
        return None
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        return f"--encoding {encoding!r} is not a text encoding Python knows (e.g. utf-8, cp1252, latin-1, utf-16)"
    if not getattr(info, "_is_text_encoding", True):
        return f"--encoding {encoding!r} is not a text encoding"
    return None


def read_text(path: Path, encoding: str = "auto") -> str:
    """The whole text of a transcript file, decoded strictly.

    ``auto``: the codec of a byte-order mark, else UTF-8. A byte that does not decode raises
    :class:`UserError` naming the line, the byte and how to read or convert the file; so does a
    NUL character, which in a file read as UTF-8 means UTF-16 without a byte-order mark.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    if encoding == "auto":
        codec = next((name for bom, name in _BOMS if data.startswith(bom)), "utf-8")
    else:
        codec = encoding
    if codec == "utf-8" and b"\x00" in data:  # UTF-8 text has no NUL; UTF-16 text is full of them
        raise UserError(_nul_problem(path, data[: data.index(b"\x00")].count(b"\n") + 1, codec))
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as exc:
        raise UserError(_decode_problem(path, data, codec, exc, encoding == "auto")) from None
    text = text.removeprefix("\ufeff")  # a UTF-8 mark in a file named as --encoding utf-8
    if "\x00" in text:
        raise UserError(_nul_problem(path, text.count("\n", 0, text.index("\x00")) + 1, codec))
    return text


def _nul_problem(path: Path, line: int, codec: str) -> str:
    return (
        f"{path}: line {line} holds a NUL byte, so it is not {codec} text; a file saved as UTF-16 "
        "without a byte-order mark looks like this. Pass --encoding utf-16-le (or utf-16-be), "
        "or save it as UTF-8."
    )


def _decode_problem(path: Path, data: bytes, codec: str, exc: UnicodeDecodeError, auto: bool) -> str:
    start, NEWLINE = exc.start, b"\n"
    line = data[:start].decode(codec, errors="replace").count("\n") + 1
    bad = " ".join(f"0x{b:02X}" for b in data[start : min(exc.end, start + 4)])
    column = ""
    if codecs.lookup(codec).name in ("utf-8", "utf-8-sig"):  # one byte per newline: count within the line
        column = f", byte {start - data.rfind(NEWLINE, 0, start)} of that line"
    where = f"{path}: line {line}{column} (byte {start + 1} of the file) is {bad}, which is not valid {codec}"
    if not auto:
        return f"{where}: the file is in another encoding than --encoding {codec}."
    if codec != "utf-8":
        return f"{where} although the file starts with a {codec} byte-order mark; pass --encoding with its real encoding."
    guess, family = "cp1252", "cp1252 (Western European)"
    try:
        data.decode(guess)
    except UnicodeDecodeError:
        guess, family = "latin-1", "Latin-1"
    return (
        f"{where}. Windows and older tools often write {family}: pass --encoding {guess} "
        f"(or the file's real encoding), or convert the file to UTF-8 once: "
        f"iconv -f {guess} -t utf-8 '{path}' > '{path}.utf8' && mv '{path}.utf8' '{path}'"
    )


# --- files on disk --------------------------------------------------------------------------------


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

    def __init__(
        self,
        root: str | Path,
        text_field: str = "normalized",
        metadata: str = "metadata.csv",
        encoding: str = "auto",
    ):
        if text_field not in ("normalized", "text"):
            raise UserError(f"text field must be 'normalized' or 'text', got {text_field!r}")
        self.root = Path(root)
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
                self._items.append(SourceItem(i, clip_id, _clean_text(text), problem=problem))
                self._paths.append(None)
                continue
            self._items.append(SourceItem(i, self._relative(path), _clean_text(text)))
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

    def __init__(self, manifest: str | Path, encoding: str = "auto"):
        manifest = Path(manifest)
        self.root = manifest.parent
        self.description = str(manifest.resolve())
        rows = list(self._rows(manifest, encoding))
        self.has_speaker = any(
            isinstance(r, dict) and _clean_speaker(r.get("speaker")) is not None for _, r in rows
        )
        self._items, self._paths = [], []
        for line_no, row in rows:
            i = len(self._items)
            if not isinstance(row, dict):
                self._items.append(SourceItem(i, f"{manifest.name}:{line_no}", None, problem=str(row)))
                self._paths.append(None)
                continue
            raw_path = str(row.get("path") or "").strip()
            text = _clean_text(row.get("text"))
            speaker = _clean_speaker(row.get("speaker"))
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
    def _rows(manifest: Path, encoding: str = "auto") -> Iterable[tuple[int, dict | str]]:
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


# --- Hugging Face datasets ------------------------------------------------------------------------


class HFSource(Source):
    """A Hugging Face audio dataset (Hub id or local folder)."""

    kind = "hf"

    def __init__(
        self,
        name_or_path: str | Path,
        split: str = "train",
        config_name: str | None = None,
        audio_column: str = "audio",
        text_column: str = "text",
        speaker_column: str | None = "speaker",
        speaker_column_required: bool = False,
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
            SourceItem(i, f"{split}[{i}]", _clean_text(t), _clean_speaker(s))
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


def _has_audio_files(folder: Path) -> bool:
    for sub in (folder, folder / "wavs"):
        if sub.is_dir() and any(p.suffix.lower() in AUDIO_EXTENSIONS for p in sub.iterdir()):
            return True
    return False


def open_source(
    input: str | Path,
    kind: str = "auto",
    *,
    text_field: str = "normalized",
    split: str = "train",
    config_name: str | None = None,
    audio_column: str = "audio",
    text_column: str = "text",
    speaker_column: str | None = None,
    encoding: str = "auto",
) -> Source:
    """Pick the source for ``input``: a folder with metadata.csv, a .csv/.jsonl manifest, a
    ``save_to_disk`` folder or anything else ``datasets.load_dataset`` takes (Hub id).
    ``encoding`` is that of metadata.csv or the manifest (see :func:`read_text`)."""
    path = Path(str(input)).expanduser()
    if kind == "auto":
        if path.is_file():
            kind = "manifest"
        elif path.is_dir():
            kind = "folder" if (path / "metadata.csv").is_file() else "hf"
            saved = (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()
            if kind == "hf" and not saved and _has_audio_files(path):
                raise UserError(
                    f"{path} holds audio files but no metadata.csv: add one (LJSpeech style, "
                    "`id|text` per line) or pass a CSV/JSONL manifest with path,text[,speaker]"
                )
        elif str(input).startswith((".", "/", "~")):
            raise UserError(f"input {input} does not exist")
        else:
            kind = "hf"
    if kind == "folder":
        return FolderSource(path, text_field=text_field, encoding=encoding)
    if kind == "manifest":
        if not path.is_file():
            raise UserError(f"manifest {input} does not exist")
        return ManifestSource(path, encoding=encoding)
    if kind == "hf":
        return HFSource(
            str(input),
            split=split,
            config_name=config_name,
            audio_column=audio_column,
            text_column=text_column,
            speaker_column=speaker_column or "speaker",
            speaker_column_required=speaker_column is not None,
        )
    raise UserError(f"unknown input kind {kind!r}: use auto, folder, manifest or hf")
