"""Where ``kanitts prepare`` reads recordings and transcripts from.

Three kinds of input behind one interface (:class:`~kanitts.prepare.sources.base.Source`): a
folder with ``metadata.csv`` or a CSV/JSONL manifest (:mod:`.files`), or a Hugging Face audio
dataset (:mod:`.hf`). :func:`open_source` picks one from the options.
"""

from __future__ import annotations

from pathlib import Path

from kanitts.errors import UserError
from kanitts.files import is_hub_id
from kanitts.prepare.options import PrepareOptions
from kanitts.prepare.sources.base import Source, SourceItem
from kanitts.prepare.sources.files import FolderSource, ManifestSource, has_audio_files
from kanitts.prepare.sources.hf import HFSource


def open_source(options: PrepareOptions) -> Source:
    """The source for ``options.input``: a folder with metadata.csv, a .csv/.jsonl manifest, a
    ``save_to_disk`` folder or anything else ``datasets.load_dataset`` takes (Hub id), unless
    ``options.input_kind`` names the kind."""
    given, kind = options.input, options.input_kind
    path = Path(str(given)).expanduser()
    if kind == "auto":
        if path.is_file():
            kind = "manifest"
        elif path.is_dir():
            kind = "folder" if (path / "metadata.csv").is_file() else "hf"
            saved = (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()
            if kind == "hf" and not saved and has_audio_files(path):
                raise UserError(
                    f"{path} holds audio files but no metadata.csv: add one (LJSpeech style, "
                    "`id|text` per line) or pass a CSV/JSONL manifest with path,text[,speaker]"
                )
        elif not is_hub_id(str(given)):
            raise UserError(f"input {given} does not exist (a Hub dataset id is owner/name)")
        else:
            kind = "hf"
    if kind == "folder":
        return FolderSource(path, text_field=options.text_field, encoding=options.encoding)
    if kind == "manifest":
        if not path.is_file():
            raise UserError(f"manifest {given} does not exist")
        return ManifestSource(path, encoding=options.encoding)
    if kind == "hf":
        return HFSource(
            str(given),
            split=options.split,
            config_name=options.config_name,
            audio_column=options.audio_column,
            text_column=options.text_column,
            speaker_column=options.speaker_column or "speaker",
            speaker_column_required=options.speaker_column is not None,
        )
    raise UserError(f"unknown input kind {kind!r}: use auto, folder, manifest or hf")


__all__ = ["FolderSource", "HFSource", "ManifestSource", "Source", "SourceItem", "open_source"]
