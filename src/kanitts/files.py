"""Checks on the user's files that every command makes before it starts working.

- **Outputs**: a folder or file a command will write must be creatable and writable. Checked
  up front, so that a read-only mount, a file where a folder should be or a full disk is said
  in one line before an hour of encoding or training, not as a traceback at the first save.
- **Weights**: a truncated or corrupt ``*.safetensors`` makes safetensors raise
  "Error while deserializing header" without saying which file; here the file is named.
- **Hub ids**: whether a name a user gives is a Hugging Face Hub repo id or a local path, by
  one rule (:func:`is_hub_id`) for every command.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from kanitts.errors import UserError

# Bytes the probe writes and syncs: enough that a full disk refuses them.
_PROBE_BYTES = 64 * 1024

# The Hub's repo id: ``owner/name``, each part starting with a letter or digit.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")

# Names ending so are files a user means (weights, configs, data, audio), never repos: the Hub
# would allow ``owner/model.safetensors`` as a repo name, but a user who writes it means a file
# that is missing, and should be told so rather than get the Hub's "repository not found".
FILE_SUFFIXES = (
    ".safetensors", ".bin", ".pt", ".pth", ".ckpt",
    ".yaml", ".yml", ".json", ".jsonl", ".csv", ".parquet", ".arrow", ".gz",
    ".wav", ".flac", ".mp3", ".ogg",
)


def is_repo_id(name: str | None) -> bool:
    """``name`` is spelled as a Hub repo id (``owner/name``), whatever exists on this disk.

    For names that can only be repo ids (where to upload); a name that may also be a folder
    goes through :func:`is_hub_id`.
    """
    return bool(name) and bool(_HUB_ID.match(str(name)))


def is_hub_id(name: str | Path | None) -> bool:
    """``name`` means a Hub repo: spelled ``owner/name`` and not an existing local path.

    The one rule for every name that may be a folder, a file or a Hub id. A folder that happens
    to be called ``owner/name`` wins, as it does for ``from_pretrained``. A name that starts
    with ``.``, ``/`` or ``~``, has more than one ``/`` or a backslash, or ends like a file
    (:data:`FILE_SUFFIXES`) is a local path, so a caller can say that it does not exist.
    """
    if name is None:
        return False
    text = str(name)
    return is_repo_id(text) and not text.lower().endswith(FILE_SUFFIXES) and not Path(text).expanduser().exists()


def _existing_ancestor(path: Path, what: str, start: Path | None = None) -> Path:
    """The deepest folder on the way to ``path`` (from ``start`` up); refuses a file standing
    where a folder must be."""
    start = path if start is None else start
    for candidate in (start, *start.parents):
        if candidate.is_dir():
            return candidate
        if os.path.lexists(candidate):
            if candidate == path:
                raise UserError(f"{what} {path} is a file, not a folder; remove it or choose another path")
            raise UserError(f"{what} {path} cannot be created: {candidate} is a file, not a folder")
    raise UserError(f"{what} {path} cannot be created: none of its folders exists")


def _probe(folder: Path, what: str, path: Path) -> None:
    """Write, sync and drop an unnamed file in ``folder``: the only test that root passes honestly.

    ``os.access`` says yes to root on a read-only mount and knows nothing of free space, so the
    check writes for real (an O_TMPFILE where the OS has it: nothing is left behind).
    """
    try:
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(b"\0" * _PROBE_BYTES)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UserError(f"{what} {path} cannot be written: {reason} (in {folder})") from None


def check_output_folder(path: Path | str, what: str, *, replaced_whole: bool = False) -> Path:
    """Refuse now if ``path`` (a folder a command will fill) cannot be created and written.

    ``replaced_whole``: the folder is written as a temporary sibling and swapped in
    (:mod:`kanitts.atomic`), so its parent is what must be writable. Nothing is created.
    """
    path = Path(path).expanduser()
    existing = _existing_ancestor(path, what)
    if replaced_whole and existing == path:
        existing = _existing_ancestor(path, what, start=path.parent)
    _probe(existing, what, path)
    return path


def check_output_file(path: Path | str, what: str) -> Path:
    """Refuse now if the file ``path`` cannot be written (it is a folder, or its folder cannot be)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; name a file, e.g. {path / 'out.wav'}")
    _probe(_existing_ancestor(path, what, start=path.parent), what, path)
    return path


def check_safetensors(path: Path | str, what: str | None = None) -> None:
    """Refuse a ``.safetensors`` file, or every one in a folder, whose header cannot be read.

    Opening reads the header and checks that the file holds every byte it declares, which finds
    truncated downloads and copies; it maps the data without reading it, so it is cheap.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    for file in files:
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as exc:
            reason = str(exc).removeprefix("Error while deserializing header: ")
            raise UserError(
                f"{what + ': ' if what else ''}{file} is truncated or corrupt ({reason}); copy or download it again"
            ) from None


def check_model_weights(name_or_path: str, what: str | None = None) -> None:
    """:func:`check_safetensors` for a local model folder; a Hub id is checked on load instead."""
    if Path(name_or_path).is_dir():
        check_safetensors(name_or_path, what)


def corrupt_download(name: str, exc: Exception, what: str) -> UserError:
    """The error for a Hub model whose downloaded weights do not read (a cut-off download)."""
    from huggingface_hub import constants

    reason = str(exc).removeprefix("Error while deserializing header: ")
    folder = Path(constants.HF_HUB_CACHE) / f"models--{name.replace('/', '--')}"
    return UserError(
        f"{what}: the weights of {name!r} are truncated or corrupt ({reason}); delete {folder} "
        "so that they are downloaded again"
    )
