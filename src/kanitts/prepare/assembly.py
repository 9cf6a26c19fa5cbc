"""The end of a run: finished shards concatenated in order into the output, and what the run did.

The merged dataset is saved to a temporary folder next to the output with ``rejected.csv`` and
``kanitts_prepare.json``, swapped in for the output (:mod:`kanitts.atomic`: with ``--overwrite``
the old dataset goes only once the new one is complete), and ``.partial`` is removed; then,
optionally, the dataset is pushed to the Hub.
"""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from kanitts.atomic import swap_in, temporary_sibling
from kanitts.errors import UserError
from kanitts.prepare.shards import REJECTED_NAME, SUMMARY_NAME, quiet_datasets, read_json, shard_dir, write_json

#: at most this many warned clips are listed one by one in the summary
WARNING_EXAMPLES = 10


@dataclass
class PrepareResult:
    """What a run did; ``summary()`` is what the CLI prints."""

    output: Path
    rows: int = 0
    items: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    warned: int = 0  # clips kept with warnings
    warnings_by_kind: dict[str, int] = field(default_factory=dict)
    warning_examples: list[str] = field(default_factory=list)  # "source: warning", the first few
    audio_hours: float = 0.0
    encoded_hours_this_run: float = 0.0
    seconds: float = 0.0
    speakers: dict[str, int] = field(default_factory=dict)
    shards_done_here: int = 0
    shards_resumed: int = 0
    assembled: bool = False
    pushed_to: str | None = None
    already_complete: bool = False
    recordings: list[str] = field(default_factory=list)  # what cutting long recordings did
    stopped: str | None = None  # why the run stopped before encoding (--transcribe-only)

    @property
    def hours_per_second(self) -> float:
        return self.encoded_hours_this_run / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return "\n".join([*self.recordings, self._summary()])

    def _summary(self) -> str:
        if self.stopped:
            return self.stopped
        if self.already_complete:
            return f"{self.output} is already complete ({self.rows} rows); nothing to do."
        if not self.assembled:
            return (
                f"this rank encoded {self.shards_done_here} shard(s) "
                f"({self.encoded_hours_this_run:.3f} h of audio); rank 0 assembles {self.output}"
            )
        lines = [
            f"wrote {self.output}: {self.rows} rows, {self.audio_hours:.3f} h of audio",
            f"rejected {self.rejected} of {self.items} items"
            + (
                " (" + ", ".join(f"{k}: {v}" for k, v in sorted(self.rejected_by_reason.items())) + ")"
                if self.rejected
                else ""
            )
            + (f"; see {self.output / REJECTED_NAME}" if self.rejected else ""),
            f"encoded {self.encoded_hours_this_run:.3f} h in {self.seconds:.1f} s "
            f"({self.hours_per_second:.4f} audio h/s, "
            f"{self.hours_per_second * 3600:.1f}x real time)"
            + (f"; {self.shards_resumed} shard(s) reused from the interrupted run" if self.shards_resumed else ""),
        ]
        if self.warned:
            kinds = ", ".join(f"{k}: {v}" for k, v in sorted(self.warnings_by_kind.items()))
            lines.append(
                f"kept {self.warned} suspect clip(s) with warnings ({kinds}); the `warnings` column "
                "names them (empty for the others), --suspect-clips reject leaves them out:"
            )
            lines += [f"  {example}" for example in self.warning_examples]
            if self.warned > len(self.warning_examples):
                lines.append(f"  ... and {self.warned - len(self.warning_examples)} more")
        if self.speakers:
            top = sorted(self.speakers.items(), key=lambda kv: (-kv[1], kv[0]))
            shown = ", ".join(f"{k}: {v}" for k, v in top[:10])
            more = f", ... ({len(top)} speakers)" if len(top) > 10 else ""
            lines.append(f"rows per speaker: {shown}{more}")
        if self.pushed_to:
            lines.append(f"pushed to https://huggingface.co/datasets/{self.pushed_to}")
        return "\n".join(lines)


def assemble(output: Path, partial: Path, manifest: dict, result: PrepareResult) -> None:
    from datasets import concatenate_datasets, load_from_disk

    parts = []
    rejected: list[dict] = []
    warned: list[dict] = []
    audio_seconds = 0.0
    for k in range(manifest["num_shards"]):
        meta = read_json(shard_dir(partial, k) / "meta.json")
        if meta is None or meta.get("fingerprint") != manifest["fingerprint"]:
            raise UserError(
                f"shard {k} in {partial} does not belong to this run; start over with --overwrite"
            )
        rejected.extend(meta["rejected"])
        warned.extend(meta["warned"])
        audio_seconds += meta["audio_seconds"]
        if meta["rows"]:
            parts.append(load_from_disk(str(shard_dir(partial, k) / "data")))

    result.rejected = len(rejected)
    result.rejected_by_reason = dict(Counter(r["reason"] for r in rejected))
    warned.sort(key=lambda w: w["index"])
    result.warned = len(warned)
    result.warnings_by_kind = dict(Counter(text.split(":", 1)[0] for w in warned for text in w["warnings"]))
    result.warning_examples = [f"{w['source']}: {'; '.join(w['warnings'])}" for w in warned[:WARNING_EXAMPLES]]
    if not parts:
        write_rejected(partial / REJECTED_NAME, rejected)
        raise UserError(
            f"none of the {result.items} items could be used; reasons are in {partial / REJECTED_NAME}"
        )
    dataset = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    result.rows = len(dataset)
    result.audio_hours = audio_seconds / 3600
    if manifest["has_speaker"]:
        result.speakers = dict(Counter(s if s is not None else "(none)" for s in dataset["speaker"]))

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(output)
    if tmp.exists():
        shutil.rmtree(tmp)
    with quiet_datasets():
        dataset.save_to_disk(str(tmp))
    write_rejected(tmp / REJECTED_NAME, rejected)
    summary = {
        "manifest": manifest,
        "rows": result.rows,
        "items": result.items,
        "rejected": result.rejected,
        "rejected_by_reason": result.rejected_by_reason,
        "warned": result.warned,
        "warnings_by_kind": result.warnings_by_kind,
        "warning_examples": result.warning_examples,
        "audio_hours": result.audio_hours,
        "speakers": result.speakers,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(tmp / SUMMARY_NAME, summary)
    del dataset, parts

    swap_in(tmp, output)  # with --overwrite, the old dataset goes only now that the new one is complete
    shutil.rmtree(partial, ignore_errors=True)
    result.assembled = True


def result_from_summary(output: Path) -> PrepareResult:
    summary = read_json(output / SUMMARY_NAME) or {}
    return PrepareResult(
        output=output,
        rows=summary.get("rows", 0),
        items=summary.get("items", 0),
        rejected=summary.get("rejected", 0),
        rejected_by_reason=summary.get("rejected_by_reason", {}),
        warned=summary.get("warned", 0),
        warnings_by_kind=summary.get("warnings_by_kind", {}),
        warning_examples=summary.get("warning_examples", []),
        audio_hours=summary.get("audio_hours", 0.0),
        speakers=summary.get("speakers", {}),
        assembled=True,
        already_complete=True,
    )


def source_root(output: Path | str) -> Path | None:
    """The folder a prepared dataset's ``source`` column is relative to, or None where none is.

    ``source`` names each clip as its input named it: relative to the folder of ``metadata.csv``
    (a folder input) or of the manifest, absolute when it lies outside; a Hub input names rows
    (``train[3]``), not files. The input's location is in ``kanitts_prepare.json``; a dataset
    without one (not written by ``kanitts prepare``) gives None.
    """
    summary = read_json(Path(output) / SUMMARY_NAME) or {}
    found = (summary.get("manifest") or {}).get("input") or {}
    if found.get("kind") not in ("folder", "manifest") or not found.get("location"):
        return None
    return Path(found["location"]).parent


def write_rejected(path: Path, rejected: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["source", "reason", "detail"])
        for r in sorted(rejected, key=lambda r: r["index"]):
            writer.writerow([r["source"], r["reason"], r["detail"]])


def push(output: Path, repo: str, private: bool) -> None:
    from datasets import load_from_disk

    try:
        load_from_disk(str(output)).push_to_hub(repo, private=private)
    except Exception as exc:
        raise UserError(
            f"{output} is complete, but pushing it to {repo} failed "
            f"({type(exc).__name__}: {exc}). Check `hf auth login` and the repo name, then push "
            f"with `datasets.load_from_disk('{output}').push_to_hub(...)`."
        ) from None
