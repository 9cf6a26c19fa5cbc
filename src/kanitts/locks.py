"""One run at a time per experiment and per prepared dataset, and a refusal that names the other.

Two ``kanitts train`` on one config folder would train into the same ``.runs/<model_id>``, the
later resuming from the other's live checkpoint, and the last to finish would replace the
other's model; two ``kanitts prepare`` into one output would mix their shards. So each takes an
exclusive lock first, and a second run is refused with who holds it.

The lock is ``filelock``'s (``flock`` on Unix, also honoured over NFS): the kernel releases it
when its process ends, however it ends, so a killed run never blocks the next one and a lock
cannot be stale. Beside it, ``<lock>.json`` records the holder (pid, host, start time, command)
for the refusal message; a run that finds such a record left by a process that died says that
it took the lock over.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from kanitts.atomic import HOST, atomic_file
from kanitts.errors import UserError


class RunLock:
    """An exclusive lock on ``path`` (a ``.lock`` file) for ``what`` (e.g. "experiment 'a'")."""

    def __init__(self, path: Path | str, what: str):
        self.path = Path(path)
        self.info_path = self.path.with_name(self.path.name + ".json")
        self.what = what
        self._lock = FileLock(str(self.path), timeout=0)

    def acquire(self) -> str | None:
        """Takes the lock, or raises UserError naming its holder.

        Returns a note for the user when the lock was taken over from a run that died.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise UserError(
                f"{self.what} is in use by another run: {describe_holder(read_holder(self.info_path))}. "
                "Wait for it to finish or stop it, then run again."
            ) from None
        previous = read_holder(self.info_path)
        note = None
        if previous and (previous.get("pid"), previous.get("host")) != (os.getpid(), HOST):
            note = (
                f"took over the lock of {self.what}: the run that held it ({describe_holder(previous)}) "
                "is no longer running"
            )
        holder = {
            "pid": os.getpid(),
            "host": HOST,
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
        }
        with atomic_file(self.info_path) as tmp:
            tmp.write_text(json.dumps(holder), encoding="utf-8")
        return note

    def release(self) -> None:
        """Forgets the holder record, then releases; the lock file stays, as flock locks need."""
        if self._lock.is_locked:
            self.info_path.unlink(missing_ok=True)
            self._lock.release()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def read_holder(info_path: Path) -> dict | None:
    try:
        data = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe_holder(holder: dict | None) -> str:
    if not holder:
        return "a process that has not said who it is yet"
    return (
        f"pid {holder.get('pid')} on host {holder.get('host')}, since {holder.get('since')} "
        f"(command: {holder.get('command') or '?'})"
    )
