"""Folders that mark work as done appear whole or not at all.

Checkpoints, prepared datasets, cached training sequences, eval datasets and reports are written
into a temporary sibling and swapped in once complete, so a crash never leaves something that
looks finished, and a replaced folder is only removed after its successor is in place.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable


def swap_in(staged: Path, final: Path) -> None:
    """Move the complete folder ``staged`` to ``final``, replacing any folder there."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
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
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        swap_in(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
