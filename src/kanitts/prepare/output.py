"""Who may write the output folder, and what happens to what is already there.

An existing output or ``.partial`` folder is never written into unless ``--resume`` (same
fingerprint only) or ``--overwrite`` says so; the output is locked for the whole run
(:mod:`kanitts.locks`), and it is checked writable (:mod:`kanitts.files`) before anything heavy
is loaded.
"""

from __future__ import annotations

import shutil
import sys
from contextlib import ExitStack
from pathlib import Path

from kanitts.atomic import remove_leftovers
from kanitts.errors import UserError
from kanitts.files import check_output_folder
from kanitts.locks import RunLock
from kanitts.prepare.distributed import Ranks
from kanitts.prepare.options import PrepareOptions
from kanitts.prepare.shards import MANIFEST_NAME, SUMMARY_NAME, differences, read_json, write_json


def lock_output(output: Path, ranks: Ranks, held: ExitStack) -> str | None:
    """Lock the output until the run ends (``held`` releases it); the refusal, if another run has it.

    Ranks started by hand each lock their own part, as they each write their own shards.
    """
    part = f".rank-{ranks.rank}" if ranks.rank else ""
    what = f"{output}" + (f" (rank {ranks.rank})" if part else "")
    lock = RunLock(output.with_name(f".{output.name}{part}.lock"), what)
    try:
        note = lock.acquire()
    except UserError as exc:
        return str(exc)
    held.callback(lock.release)
    if note:
        print(f"note: {note}", file=sys.stderr, flush=True)
    remove_leftovers(output.parent)
    return None


def unwritable(output: Path) -> str | None:
    """Checked before the lock, which is itself a file beside the output."""
    try:  # shards go to a sibling (.partial) and the result is swapped in: the parent is written
        check_output_folder(output, "output folder", replaced_whole=True)
    except UserError as exc:
        return str(exc)
    return None


def early_refusal(output: Path, partial: Path, options: PrepareOptions) -> str | None:
    if options.overwrite:
        return None
    if output.exists() and not options.resume:
        return (
            f"{output} already exists. Pass --overwrite to replace it, or choose another output. "
            "(Writing into an existing dataset is refused so that rows of an earlier run "
            "can never end up in this one.)"
        )
    if not output.exists() and partial.exists() and not options.resume:
        return (
            f"an interrupted run left {partial}. Continue it with --resume (only if the inputs "
            "and options are unchanged), or start over with --overwrite."
        )
    return None


def claim_output(output: Path, partial: Path, manifest: dict, options: PrepareOptions) -> dict:
    """Decide what to do with existing folders (rank 0); create ``.partial`` when starting."""
    if options.overwrite:
        if partial.exists():
            shutil.rmtree(partial)
    elif output.exists():  # --resume on a finished output
        summary = read_json(output / SUMMARY_NAME)
        if summary is None:
            raise UserError(
                f"{output} exists and was not written by kanitts prepare; refusing to touch it. "
                "Use --overwrite to replace it or choose another output."
            )
        old = summary.get("manifest", {})
        if old.get("fingerprint") != manifest["fingerprint"]:
            raise UserError(
                f"{output} was prepared from different inputs or options "
                f"({differences(old, manifest)}); --resume only continues the same run. "
                "Use --overwrite to replace it or choose another output."
            )
        return {"complete": True}
    elif partial.exists():  # --resume
        old = read_json(partial / MANIFEST_NAME)
        if old is None:
            raise UserError(f"{partial} has no readable {MANIFEST_NAME}; start over with --overwrite")
        if old.get("fingerprint") != manifest["fingerprint"]:
            raise UserError(
                f"cannot resume {partial}: it was started with different inputs or options "
                f"({differences(old, manifest)}). Start over with --overwrite, or use the "
                "original inputs and options."
            )
        return {"resumed": True}
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "shards").mkdir(exist_ok=True)
    write_json(partial / MANIFEST_NAME, manifest)
    return {"fresh": True}
