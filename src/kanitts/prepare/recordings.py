"""Long recordings without transcripts -> a folder of clips with an editable ``metadata.csv``.

A folder of audio files and no ``metadata.csv`` takes this path before encoding: every file is
scanned for speech (:mod:`kanitts.vad`), cut at pauses (:mod:`.segmenting`), and the clips are
transcribed (:class:`kanitts.asr.Transcriber`, batched), and trimmed to their words where the
ASR times them (``refine_cuts``, :func:`~kanitts.prepare.segmenting.refine`), into
``<output>.clips/``:

- ``wavs/<file>_<n>.wav``: the clips, mono 16-bit at the file's own rate, read from the file by
  seeking (a recording is never decoded whole);
- ``metadata.csv``: ``id|text||confidence|flags`` per clip, LJSpeech style (the third,
  normalised-text column is left empty so the second is used). A clip with flags (ASR confidence
  below ``min_asr_confidence``, too many or too few characters per second, no text, a word cut
  by the clip's end) is left out
  when the folder is encoded; after checking a transcript, clear its flags to keep it, or delete
  the line to drop the clip;
- ``segments/<file>.json``: one per finished recording (its clips, what was left out and a
  fingerprint of the file and the settings), written last and atomically, so a killed run
  resumes with the next unfinished recording;
- ``kanitts_segments.json``: written with ``metadata.csv`` once every recording is done; from
  then on the folder is only read, never rewritten, so a reviewed ``metadata.csv`` is safe.

Under a launcher every rank cuts the recordings ``k % world_size == rank`` and rank 0 writes
``metadata.csv`` once all are there. The VAD of the next recording runs in a thread while the
current one is transcribed (:func:`scan_ahead`); an error or Ctrl-C stops that scan within a
block, and the recordings finished before it stay finished.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from threading import Event
from typing import Any, TypeVar

from kanitts.atomic import atomic_file
from kanitts.audio import AudioDecodeError, to_mono, write_wav
from kanitts.errors import UserError
from kanitts.prepare.cleaning import text_rate_warnings
from kanitts.prepare.distributed import Ranks
from kanitts.prepare.options import PrepareOptions, Segmentation
from kanitts.prepare.segmenting import Segment, refine, segment
from kanitts.prepare.shards import read_json, write_json
from kanitts.prepare.sources.base import AUDIO_EXTENSIONS
from kanitts.prepare.sources.files import METADATA_NAME

CLIPS_SUFFIX = ".clips"
STATE_DIR = "segments"
DONE_NAME = "kanitts_segments.json"
FORMAT_VERSION = 1
#: recordings scanned (VAD) ahead of the one being transcribed: one keeps the ASR fed when the
#: VAD is the faster part, and bounds what is held (a file's regions and cuts, not its audio)
SCAN_AHEAD = 1

T = TypeVar("T")
R = TypeVar("R")


def needs_segmenting(options: PrepareOptions) -> bool:
    """Whether ``options.input`` is a folder of recordings without transcripts."""
    path = Path(str(options.input)).expanduser()
    if options.input_kind not in ("auto", "folder") or not path.is_dir():
        return False
    if (path / METADATA_NAME).is_file():
        return False
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return False
    return bool(recordings(path))


def clips_folder(output: Path) -> Path:
    return output.with_name(output.name + CLIPS_SUFFIX)


def recordings(root: Path) -> list[Path]:
    """The audio files under ``root`` (subfolders included), in name order."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)


def clip_stem(root: Path, path: Path) -> str:
    """A recording's name for its clips: its path under ``root``, folders joined by ``__``."""
    relative = path.relative_to(root).with_suffix("")
    return "__".join(relative.parts).replace("|", "_")


def one_line(text: str) -> str:
    """A transcript as a ``metadata.csv`` field: one line, no column separator."""
    return " ".join(text.replace("|", "/").split())


@dataclass
class RecordingsReport:
    """What cutting and transcribing the recordings did, in seconds (all files, all ranks)."""

    folder: Path
    files: int = 0
    audio: float = 0.0
    speech: float = 0.0
    kept: float = 0.0  # seconds in unflagged clips (padding included)
    clips: int = 0
    flagged: int = 0
    flagged_seconds: float = 0.0
    flags_by_kind: dict[str, int] = field(default_factory=dict)
    short: float = 0.0
    long: float = 0.0
    unreadable: list[str] = field(default_factory=list)  # "file: why"
    # cut refinement with the ASR's word times (refine_cuts): files cut without word times,
    # clips trimmed to their words, clips whose word times were unusable (VAD cut kept)
    untimed_files: int = 0
    trimmed: int = 0
    unusable: int = 0
    resumed: int = 0
    complete: bool = True
    reused: bool = False  # the folder was finished by an earlier run

    def lines(self) -> list[str]:
        h = 1 / 3600
        lines = [
            f"recordings: {self.files} file(s), {self.audio * h:.3f} h of audio -> {self.folder}",
            f"kept {self.kept * h:.3f} h in {self.clips - self.flagged} clip(s); left out: "
            f"{max(0.0, self.audio - self.kept - self.flagged_seconds - self.short - self.long) * h:.3f} h of "
            "silence between the clips, "
            f"{self.short * h:.3f} h of speech too short for a clip, "
            f"{self.long * h:.3f} h of speech too long without a pause, "
            f"{self.flagged_seconds * h:.3f} h in {self.flagged} flagged clip(s)"
            + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(self.flags_by_kind.items()))})" if self.flagged else ""),
        ]
        timed = self.files - self.untimed_files - len(self.unreadable)
        if timed > 0:
            lines.append(
                f"cuts: {self.trimmed} clip(s) trimmed to their first and last word"
                + (f", {self.unusable} kept at the VAD cut (word times unusable: the reason is the clip's "
                   f"\"cut\" in {self.folder / STATE_DIR}/<file>.json)" if self.unusable else "")
            )
        if self.untimed_files:
            lines.append(f"cuts: {self.untimed_files} recording(s) kept the VAD cuts (the ASR model gives no word "
                         "times, or refine_cuts is off)")
        lines += [f"unreadable recording: {entry}" for entry in self.unreadable]
        if self.resumed:
            lines.append(f"{self.resumed} recording(s) reused from an interrupted run")
        if self.reused:
            lines.append(f"{self.folder} was finished by an earlier run and is used as it is (delete it to cut again)")
        return lines


def _file_fingerprint(path: Path, settings: dict[str, Any]) -> str:
    st = path.stat()
    blob = json.dumps([FORMAT_VERSION, st.st_size, st.st_mtime_ns, settings], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _settings(options: PrepareOptions, seg: Segmentation) -> dict[str, Any]:
    return {
        **seg.describe(),
        "min_chars_per_second": options.min_chars_per_second,
        "max_chars_per_second": options.max_chars_per_second,
    }


def prepare_recordings(options: PrepareOptions, output: Path, ranks: Ranks, device: str | None) -> RecordingsReport:
    """Cut and transcribe this rank's recordings of ``options.input`` into the clips folder of
    ``output``; rank 0 writes ``metadata.csv`` once every recording is done."""
    root = Path(str(options.input)).expanduser()
    folder = clips_folder(output)
    seg = options.segmentation()
    settings = _settings(options, seg)
    files = recordings(root)
    stems = [clip_stem(root, p) for p in files]
    twice = [s for s, n in Counter(stems).items() if n > 1]
    if twice:
        clash = [str(p.relative_to(root)) for p, s in zip(files, stems) if s == twice[0]]
        raise UserError(
            f"{root}: the recordings {' and '.join(clash)} would name their clips alike ({twice[0]}_*); rename one"
        )

    done = read_json(folder / DONE_NAME)
    if done is not None and (folder / METADATA_NAME).is_file():
        report = _report(folder, [read_json(folder / STATE_DIR / f"{s}.json") or {} for s in stems])
        report.reused = True
        if done.get("settings") != settings:
            changed = [k for k in settings if done.get("settings", {}).get(k) != settings[k]]
            print(f"warning: {folder} was cut with other settings ({', '.join(changed)}); it is used as it "
                  "is, with its metadata.csv (delete the folder to cut again)", file=sys.stderr)
        return report

    state = folder / STATE_DIR
    if ranks.rank == 0 or not ranks.collective:
        state.mkdir(parents=True, exist_ok=True)
    ranks.barrier()
    state.mkdir(parents=True, exist_ok=True)

    mine = [k for k in range(len(files)) if k % ranks.world_size == ranks.rank]
    fingerprints = {k: _file_fingerprint(files[k], settings) for k in mine}
    todo = [k for k in mine if (read_json(state / f"{stems[k]}.json") or {}).get("fingerprint") != fingerprints[k]]
    resumed = len(mine) - len(todo)
    if resumed:
        print(f"note: {resumed} of {len(mine)} recording(s) already cut in {folder}; continuing", file=sys.stderr)
    if todo:
        _cut_and_transcribe(files, stems, todo, fingerprints, root, folder, options, seg, device, ranks.rank)

    ranks.barrier()
    records = [read_json(state / f"{s}.json") for s in stems]
    complete = all(r is not None and r.get("fingerprint") == _file_fingerprint(p, settings)
                   for r, p in zip(records, files))
    report = _report(folder, [r or {} for r in records])
    report.resumed = resumed
    report.complete = complete
    if complete and ranks.rank == 0:
        _write_metadata(folder, records)
        write_json(folder / DONE_NAME, {"format": FORMAT_VERSION, "settings": settings, "input": str(root.resolve()),
                                        "files": stems})
    ranks.barrier()
    return report


def _report(folder: Path, records: list[dict]) -> RecordingsReport:
    report = RecordingsReport(folder=folder, files=len(records))
    kinds: Counter[str] = Counter()
    for record in records:
        if not record:
            continue
        if record.get("problem"):
            report.unreadable.append(f"{record['file']}: {record['problem']}")
            continue
        report.audio += record["duration"]
        report.speech += record["speech"]
        report.short += record["short"]
        report.long += record["long"]
        if not record.get("word_times"):
            report.untimed_files += 1
        for clip in record["clips"]:
            report.clips += 1
            report.trimmed += clip.get("cut") == "words"
            report.unusable += clip.get("cut", "").startswith("vad: ")
            seconds = clip["end"] - clip["start"]
            if clip["flags"]:
                report.flagged += 1
                report.flagged_seconds += seconds
                kinds.update(flag.split(":", 1)[0] for flag in clip["flags"].split("; "))
            else:
                report.kept += seconds
    report.flags_by_kind = dict(kinds)
    return report


def _write_metadata(folder: Path, records: list[dict | None]) -> None:
    lines = []
    for record in records:
        for clip in (record or {}).get("clips", []):
            confidence = "" if clip["confidence"] is None else f"{clip['confidence']:.3f}"
            lines.append(f"{clip['id']}|{one_line(clip['text'])}||{confidence}|{clip['flags']}")
    with atomic_file(folder / METADATA_NAME) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _cut_and_transcribe(
    files: list[Path], stems: list[str], todo: list[int], fingerprints: dict[int, str], root: Path, folder: Path,
    options: PrepareOptions, seg: Segmentation, device: str | None, rank: int,
) -> None:
    from kanitts.asr import Transcriber
    from kanitts.vad import VoiceActivity

    transcriber = Transcriber(seg.asr_model, language=seg.asr_language, device=device, batch_size=seg.asr_batch_size)
    # the VAD may split a region anywhere; leave room for the padding on both sides
    longest = max(seg.min_duration, seg.max_duration - 2 * seg.padding)
    vad = VoiceActivity(threshold=seg.vad_threshold, max_speech=longest)
    if seg.refine_cuts and not transcriber.word_timestamps and rank == 0:
        print(f"note: the ASR model {seg.asr_model} gives no word times (no alignment_heads in its generation "
              "config, or not Whisper); the clips keep the VAD cuts", file=sys.stderr)
    bar = _progress(len(todo), options.progress, rank)

    def scan(k: int, stop: Event):
        try:
            speech = vad.speech(files[k], stop)
        except (AudioDecodeError, OSError) as exc:
            return exc
        return speech, segment(
            speech.regions, speech.duration, min_duration=seg.min_duration, max_duration=seg.max_duration,
            target_duration=seg.target, padding=seg.padding, split_pause=seg.split_pause,
        )

    # the next recordings' VAD while this one is transcribed
    with closing(scan_ahead(scan, todo, ahead=SCAN_AHEAD)) as scans:
        for k, scanned in scans:
            relative = files[k].relative_to(root).as_posix()
            record: dict[str, Any] = {"file": relative, "fingerprint": fingerprints[k]}
            if isinstance(scanned, Exception):
                record["problem"] = str(scanned)
                print(f"warning: {files[k]}: unreadable ({scanned}); left out", file=sys.stderr)
            else:
                speech, cut = scanned
                record.update(duration=speech.duration, speech=cut.speech_seconds, short=cut.short_seconds,
                              long=cut.long_seconds, sample_rate=speech.sample_rate,
                              word_times=seg.refine_cuts and transcriber.word_timestamps)
                try:
                    record["clips"] = _transcribe_clips(
                        files[k], stems[k], cut.segments, folder, transcriber, options, seg
                    )
                except (AudioDecodeError, OSError) as exc:
                    record = {"file": relative, "fingerprint": fingerprints[k], "problem": str(exc)}
                    print(f"warning: {files[k]}: unreadable ({exc}); left out", file=sys.stderr)
                except Exception as exc:  # not the file's fault (out of memory, a bug): name it, stop
                    exc.add_note(f"while transcribing the recording {files[k]}; the recordings finished "
                                 f"before it are kept in {folder / STATE_DIR} and the next run goes on from it")
                    raise
            write_json(folder / STATE_DIR / f"{stems[k]}.json", record)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()


def scan_ahead(work: Callable[[T, Event], R], items: Iterable[T], *, ahead: int) -> Iterator[tuple[T, R]]:
    """``(item, work(item, stop))`` in the order of ``items``, computed by one background thread
    at most ``ahead`` items in front of the consumer.

    Hand-written because ``Executor.map`` submits every item at once (hours of recordings
    scanned into memory ahead of a slow ASR) and, on an error or Ctrl-C, lets the running item
    finish. Here closing the generator (use :func:`contextlib.closing`; the consumer's
    exception, ``KeyboardInterrupt`` included, then propagates unchanged) sets ``stop``, which
    ``work`` checks to give up early, cancels the items not started and waits for the thread.
    One thread, so ``work`` may use one model that is not thread-safe (the VAD is recurrent).
    """
    stop = Event()
    pending: deque[tuple[T, Future]] = deque()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kanitts-vad")
    try:
        for item in items:
            pending.append((item, pool.submit(work, item, stop)))
            if len(pending) > ahead:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)


def _transcribe_clips(path: Path, stem: str, segments: list, folder: Path, transcriber: Any,
                      options: PrepareOptions, seg: Segmentation) -> list[dict[str, Any]]:
    """Read, transcribe and write the clips of one recording, one ASR batch at a time; with
    word times, each clip is trimmed to its words (:func:`~kanitts.prepare.segmenting.refine`)
    before it is written. A clip's ``cut`` says how its edges were found: ``words``, ``vad``, or
    ``vad: <why the word times were not used>``."""
    import soundfile as sf

    timed = seg.refine_cuts and transcriber.word_timestamps
    clips: list[dict[str, Any]] = []
    try:
        handle = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioDecodeError(str(exc)) from None
    with handle:
        rate = int(handle.samplerate)
        for first in range(0, len(segments), seg.asr_batch_size):
            batch = segments[first : first + seg.asr_batch_size]
            audio = []
            for s in batch:
                handle.seek(int(round(s.start * rate)))
                frames = int(round(s.end * rate)) - int(round(s.start * rate))
                audio.append(to_mono(handle.read(frames, dtype="float32", always_2d=True)))
            transcripts = transcriber.transcribe_scored([(a, rate) for a in audio], words=timed)
            for n, (s, a, t) in enumerate(zip(batch, audio, transcripts, strict=True), start=first):
                clip_id = f"{stem}_{n:05d}"
                flags, how = [], "vad"
                if timed and t.words is not None:
                    s, a, how, cut_word = _refined(s, a, rate, t, seg)
                    if cut_word:
                        flags.append(f"word cut: the last word runs past the clip's end ({s.end:.2f} s into the "
                                     "recording)")
                write_wav(folder / "wavs" / f"{clip_id}.wav", a, rate)
                flags += _flags(t, len(a) / rate, options, seg)
                clips.append({"id": clip_id, "start": round(s.start, 3), "end": round(s.end, 3), "text": t.text,
                              "confidence": t.confidence, "cut": how, "flags": "; ".join(flags)})
    for clip, after in zip(clips, clips[1:]):  # the rest of a cut word begins the next clip
        if clip["flags"].startswith("word cut: the last") and after["start"] - clip["end"] <= 2 * seg.padding + 1e-3:
            note = f"word cut: begins with the end of a word cut at {clip['end']:.2f} s"
            after["flags"] = "; ".join(f for f in (note, after["flags"]) if f)
    return clips


def _refined(s: Segment, audio: Any, rate: int, transcript: Any, seg: Segmentation):
    """The clip ``s`` (its ``audio``) with its edges moved to its words, how its edges were found,
    and whether its last word runs into the cut."""
    if not transcript.words:
        return s, audio, "vad", False  # no words heard: nothing to trim to
    done = refine(s, [(w.start, w.end) for w in transcript.words], padding=seg.padding,
                  min_duration=seg.min_duration, max_duration=seg.max_duration)
    if done.note is not None:
        return s, audio, f"vad: {done.note}", False
    if not done.trimmed:
        return s, audio, "vad", done.word_cut
    origin = int(round(s.start * rate))
    first, last = int(round(done.segment.start * rate)) - origin, int(round(done.segment.end * rate)) - origin
    return done.segment, audio[max(0, first) : min(len(audio), last)], "words", False


def _flags(transcript: Any, duration: float, options: PrepareOptions, seg: Segmentation) -> list[str]:
    text = one_line(transcript.text)
    if not text:
        return ["no text: the ASR heard no words"]
    flags = []
    if transcript.confidence is not None and transcript.confidence < seg.min_asr_confidence:
        flags.append(f"low confidence: {transcript.confidence:.2f} < {seg.min_asr_confidence:g}")
    flags += text_rate_warnings(text, duration, options)
    return flags


def _progress(total: int, enabled: bool, rank: int):
    if not enabled or rank != 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="file", desc="cut + transcribe", dynamic_ncols=True)


__all__ = ["RecordingsReport", "clips_folder", "needs_segmenting", "prepare_recordings"]
