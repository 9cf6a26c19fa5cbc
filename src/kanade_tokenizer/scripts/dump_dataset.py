"""List the audio files of a folder in a CSV for training (``audio_id,path,length,sample_rate``).

    python -m kanade_tokenizer.scripts.dump_dataset AUDIO_DIR -o data.csv [-p "train-*/**/*.wav"] [-w 8]

``path`` is relative to AUDIO_DIR, ``length`` is in frames at the file's own rate, ``audio_id``
is the file stem (duplicates get ``_1``, ``_2``, ...). Headers are read with
:func:`kanade_tokenizer.audio.audio_info` (a truncated WAV is refused, naming it) in a thread
pool; the CSV is written to a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kanade_tokenizer.audio import audio_info
from kanade_tokenizer.files import atomic_path


def scan_audio(root: str | os.PathLike[str], pattern: str = "**/*.wav", workers: int = 8) -> list[dict]:
    """One row per file matching ``pattern`` under ``root`` (sorted by path)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder")
    files = sorted(p for p in root.glob(pattern) if p.is_file())
    if not files:
        raise ValueError(f"{root}: no files match {pattern!r}")

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        infos = list(pool.map(audio_info, files))  # AudioLoadError is a ValueError naming the file
    seen: Counter[str] = Counter()
    rows = []
    for path, (frames, sr) in zip(files, infos):
        stem = path.stem
        audio_id = stem if seen[stem] == 0 else f"{stem}_{seen[stem]}"
        seen[stem] += 1
        rows.append({"audio_id": audio_id, "path": path.relative_to(root).as_posix(), "length": frames,
                     "sample_rate": sr})
    return rows


def write_csv(rows: list[dict], output: str | os.PathLike[str]) -> Path:
    output = Path(output)
    with atomic_path(output) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["audio_id", "path", "length", "sample_rate"])
        writer.writeheader()
        writer.writerows(rows)
    return output


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kanade_tokenizer.scripts.dump_dataset", description=__doc__.split("\n")[0]
    )
    parser.add_argument("audio_dir")
    parser.add_argument("-o", "--output", required=True, help="CSV file to write")
    parser.add_argument("-p", "--pattern", default="**/*.wav", help='glob under AUDIO_DIR (default "**/*.wav")')
    parser.add_argument("-w", "--workers", type=int, default=8)
    args = parser.parse_args(argv)
    try:
        rows = scan_audio(args.audio_dir, args.pattern, args.workers)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    write_csv(rows, args.output)
    rates = Counter(r["sample_rate"] for r in rows)
    seconds = sum(r["length"] / r["sample_rate"] for r in rows)
    print(f"{len(rows)} files, sample rates {dict(rates)}, {sum(r['length'] for r in rows)} samples, "
          f"{seconds / 3600:.2f} h -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
