"""Outputs appear whole or not at all, and what a killed run left half-written is cleaned up.

Checkpoints, prepared datasets, cached training sequences, eval outputs, reports, audio and
weight files are written into a temporary sibling and renamed into place once complete, so a
crash never leaves something that looks finished, and a replaced folder is only removed after
its successor is in place.

A kill (SIGKILL, out of memory, a lost node) runs no cleanup, and a merged 400M model left in
a temporary folder is a gigabyte. So every temporary sibling is named after its owner,
``.NAME.tmp-PID@HOST`` (``.NAME.old-PID@HOST`` for a folder being replaced), and the first
write into a folder removes the ones whose owner is gone: written on this host by a process
that no longer runs. A live process's, or another host's (whose processes cannot be checked
from here), are never touched. What was removed is said in one line on stderr. Each folder is
swept once per process, so writing many files into one folder costs one listing.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

HOST = socket.gethostname()

# `.NAME.tmp-PID@HOST`; without `@HOST` (as earlier versions named them) it was this host's.
_LEFTOVER = re.compile(r"^\..+\.(?:tmp|old)-(?P<pid>\d+)(?:@(?P<host>.+))?$")
_swept: set[Path] = set()


def temporary_sibling(final: Path, kind: str = "tmp") -> Path:
    """The name this process writes ``final`` under before renaming it; sweeps the folder first."""
    final = Path(final)
    remove_leftovers(final.parent)
    return final.with_name(f".{final.name}.{kind}-{os.getpid()}@{HOST}")


def pid_is_running(pid: int) -> bool:
    """Whether a process with this id runs on this host (another user's counts)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(folder: Path | str) -> list[tuple[str, int]]:
    """Remove the temporary siblings in ``folder`` whose owner is dead; returns (name, bytes) of each.

    Says what it removed, and how much space that freed, in one line on stderr.
    """
    folder = Path(folder).absolute()
    if folder in _swept:
        return []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []  # nothing written here yet: swept on the first write, once the folder exists
    _swept.add(folder)
    removed = []
    for entry in entries:
        match = _LEFTOVER.match(entry.name)
        if match is None or match["host"] not in (None, HOST) or pid_is_running(int(match["pid"])):
            continue
        size = _size(Path(entry.path))
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            Path(entry.path).unlink(missing_ok=True)
        if not os.path.lexists(entry.path):
            removed.append((entry.name, size))
    if removed:
        names = ", ".join(name for name, _ in removed[:3])
        names += f" and {len(removed) - 3} more" if len(removed) > 3 else ""
        print(
            f"note: removed {len(removed)} unfinished write(s) of runs that were killed, in {folder}: "
            f"{names} ({format_bytes(sum(size for _, size in removed))} freed)",
            file=sys.stderr,
            flush=True,
        )
    return removed


def _size(path: Path) -> int:
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size
    return sum(
        (Path(root) / name).lstat().st_size for root, _, files in os.walk(path) for name in files
    )


def format_bytes(size: int) -> str:
    value, unit = float(size), "bytes"
    for bigger in ("KB", "MB", "GB", "TB"):
        if value < 1000:
            break
        value, unit = value / 1000, bigger
    return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"


def process_umask() -> int:
    """The process umask. Linux reports it in /proc/self/status; elsewhere reading it means
    setting it (``os.umask``) and setting it straight back, a window another thread could see."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def readable_as_opened(path: Path) -> None:
    """Give the files at ``path`` (a file, or every file below a folder) the mode ``open()``
    would, 0666 less the umask, whatever their writer chose: safetensors' ``save_file`` creates
    0600 files, which other users of a shared model folder or a container could not read."""
    mode = 0o666 & ~process_umask()
    files = [path] if not path.is_dir() else [Path(root) / name for root, _, names in os.walk(path) for name in names]
    for file in files:
        if not file.is_symlink() and file.stat().st_mode & 0o777 != mode:
            os.chmod(file, mode)


def swap_in(staged: Path, final: Path) -> None:
    """Move the complete folder ``staged`` to ``final``, replacing any folder there; its files
    get the modes ``open()`` would give them (:func:`readable_as_opened`)."""
    readable_as_opened(staged)
    if final.exists():
        old = temporary_sibling(final, "old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        staged.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staged.rename(final)


def write_atomically(final: Path, write: Callable[[Path], object]) -> None:
    """Calls ``write(folder)`` on a fresh temporary sibling of ``final``, then swaps it in.

    If ``write`` raises, ``final`` is left as it was and the temporary folder is removed.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        swap_in(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary sibling of ``path`` to write; renamed to ``path`` if the block succeeds.

    The parent folder is created. If the block raises, the temporary file is removed and an
    existing ``path`` is left untouched. The temporary name does not end in ``path``'s suffix:
    writers that pick a format from the suffix must be told the format. The finished file gets
    the mode ``open()`` would give it (:func:`readable_as_opened`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        readable_as_opened(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
