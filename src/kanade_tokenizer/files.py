"""Output files appear whole or not at all: written under a temporary name, then renamed; and
weights files that are not safetensors say what they are; Hub downloads that fail say so in
one line.

The same rule as the fine-tuning pipeline's outputs (one distribution, one rule): temporary
names carry their owner, and leftovers of killed runs are removed by the next write into the
folder (see :mod:`kanitts.atomic`).
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from kanitts.atomic import atomic_file

atomic_path = atomic_file
"""Write-then-rename with the pipeline's rule (:func:`kanitts.atomic.atomic_file`)."""


def describe_weights_file(path: str | os.PathLike[str]) -> str | None:
    """None for a safetensors file; otherwise what ``path`` holds instead, in words.

    Recognises the files that end up where safetensors weights are expected: PyTorch
    checkpoints (``torch.save``: a zip archive with ``data.pkl``, or a bare pickle), Git LFS
    pointers (a clone without ``git lfs pull``), HTML pages (a download that fetched an error
    page) and empty files.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    size = path.stat().st_size
    if len(head) >= 10:
        header_len = int.from_bytes(head[:8], "little")
        if 8 + header_len <= size and head[8:9] == b"{":
            return None
    if size == 0:
        return "an empty file"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                if any(name.endswith("data.pkl") for name in archive.namelist()):
                    return "a PyTorch checkpoint (torch.save zip archive), not safetensors"
        except zipfile.BadZipFile:
            pass
        return "a zip archive, not safetensors"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle (an older torch.save file), not safetensors"
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the weights (fetch them with `git lfs pull`)"
    if head.lstrip()[:1] == b"<":
        return "an HTML/XML page, not weights (a failed download?)"
    try:
        json.loads(head.decode("utf-8"))
        return "a JSON file, not safetensors"
    except (UnicodeDecodeError, ValueError):
        pass
    return f"not a safetensors file (it starts with bytes {head[:8].hex(' ')})"


class KanadeHubError(OSError):
    """A file from the Hugging Face Hub that cannot be had: offline and not cached, no network,
    no such repo or file. One line that says which, and how to get it."""


def hub_error(what: str, repo: str, exc: BaseException) -> KanadeHubError:
    """The :class:`KanadeHubError` for ``exc``, raised while fetching ``what`` from ``repo``."""
    from huggingface_hub import constants

    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else type(exc).__name__
    if constants.HF_HUB_OFFLINE:
        hint = (
            "HF_HUB_OFFLINE is set and it is not in the local cache; "
            f"fetch it once with network (`hf download {repo}`)"
        )
    else:
        hint = f"check the network and the repo id, or fetch it where there is network (`hf download {repo}`)"
    return KanadeHubError(f"cannot load {what} from the Hugging Face Hub ({repo}): {first.rstrip('.')}; {hint}")


__all__ = ["KanadeHubError", "atomic_path", "describe_weights_file", "hub_error"]
