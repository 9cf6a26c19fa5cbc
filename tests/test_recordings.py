"""Long recordings -> clips -> codec dataset: the real Silero VAD, the cutting rule, the review
loop, resuming after kill -9, and the errors a user can cause.

The recordings are espeak-ng sentences joined with pauses of known length (one file with some
noise), so the cut points can be checked against the joins. The ASR is a tiny random Whisper
(its transcripts are noise; only the plumbing is checked) and the codec the tiny NanoCodec.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kanitts.errors import UserError
from kanitts.prepare.options import PrepareOptions
from kanitts.prepare.segmenting import Segment, cut_points, refine, segment

ESPEAK = shutil.which("espeak-ng")
needs_espeak = pytest.mark.skipif(ESPEAK is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")
SR = 22050
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Speech synthesis on a small machine can still be tested quickly.",
    "Please call Stella and ask her to bring these things from the store.",
    "A long recording is cut into clips at the pauses between sentences.",
    "Nobody expected the results to arrive so early in the morning.",
    "She sells sea shells by the sea shore.",
]
#: the settings of these tests: clips of 1.5 to 6 s, so that most joins must be cuts
CUTS = dict(segment_min_duration=1.5, segment_max_duration=6.0, segment_padding=0.15)


def _sentence(text: str, voice: str, tmp: Path) -> np.ndarray:
    from kanitts.audio import load_audio, resample, to_mono, trim_silence

    path = tmp / "sentence.wav"
    subprocess.run([ESPEAK, "-v", voice, "-w", str(path), text], check=True, capture_output=True)
    samples, rate = load_audio(path)
    return trim_silence(resample(to_mono(samples), rate, SR), SR, keep_ms=10)


def long_recording(path: Path, count: int, seed: int, noise_dbfs: float | None = None):
    """``count`` sentences with pauses of 0.4 to 1.0 s between them; returns the join times (the
    middle of each pause) and the sentences' (start, end), in seconds."""
    rng = np.random.default_rng(seed)
    pieces, joins, spans, t = [np.zeros(int(0.5 * SR), np.float32)], [], [], 0.5
    for k in range(count):
        x = _sentence(SENTENCES[(k + seed) % len(SENTENCES)], ("en-us", "en-us+f3")[k % 2], path.parent)
        spans.append((t, t + len(x) / SR))
        pieces.append(x)
        t += len(x) / SR
        if k < count - 1:
            pause = int(round(rng.uniform(0.4, 1.0) * SR))
            joins.append(t + pause / SR / 2)
            pieces.append(np.zeros(pause, np.float32))
            t += pause / SR
    pieces.append(np.zeros(int(0.5 * SR), np.float32))
    audio = np.concatenate(pieces)
    if noise_dbfs is not None:
        audio = audio + 10 ** (noise_dbfs / 20) * rng.standard_normal(len(audio)).astype(np.float32)
    sf.write(path, audio, SR, subtype="PCM_16")
    return joins, spans


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """A folder of two recordings: ``clean.wav`` (6 sentences) and ``noisy.wav`` (5, noise at -45 dBFS)."""
    if ESPEAK is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    folder = tmp_path_factory.mktemp("recordings")
    truth = {"clean.wav": long_recording(folder / "clean.wav", 6, seed=0),
             "noisy.wav": long_recording(folder / "noisy.wav", 5, seed=1, noise_dbfs=-45)}
    (folder / "sentence.wav").unlink()
    return folder, truth


@pytest.fixture(scope="module")
def speech(recordings):
    from kanitts.vad import VoiceActivity

    folder, _ = recordings
    vad = VoiceActivity(max_speech=6.0 - 2 * 0.15)
    return {name: vad.speech(folder / name) for name in ("clean.wav", "noisy.wav")}


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    from kanitts.tiny import build_tiny_whisper

    return build_tiny_whisper(tmp_path_factory.mktemp("whisper"), chunk_seconds=8)


def _near(points, targets, tolerance=0.2) -> float:
    """The fraction of ``points`` within ``tolerance`` seconds of one of ``targets``."""
    if not points:
        return 0.0
    return float(np.mean([min(abs(p - t) for t in targets) <= tolerance for p in points]))


# --- the VAD and the cutting rule on real speech ----------------------------------------------


@needs_espeak
def test_the_vad_finds_the_joins_and_the_cuts_fall_on_them(recordings, speech):
    _, truth = recordings
    report = {}
    for name, (joins, spans) in truth.items():
        found = speech[name]
        pauses = [(a[1] + b[0]) / 2 for a, b in zip(found.regions, found.regions[1:]) if b[0] - a[1] >= 0.3]
        cut = segment(found.regions, found.duration, min_duration=1.5, max_duration=6.0, target_duration=3.75,
                      padding=0.15, split_pause=1.5)
        cuts = cut_points(cut.segments)
        report[name] = dict(pause_recall=_near(joins, pauses), pause_precision=_near(pauses, joins),
                            cut_precision=_near(cuts, joins), cut_recall=_near(joins, cuts), clips=len(cut.segments))
        assert all(1.5 <= s.duration <= 6.0 for s in cut.segments), cut.segments
        assert all(a.end <= b.start for a, b in zip(cut.segments, cut.segments[1:]))  # padding never overlaps
        inside = [c for c in cuts if any(s + 0.05 < c < e - 0.05 for s, e in spans)]
        assert not inside, f"{name}: cuts inside a sentence at {inside}"
    print("cut points against the joins (within 0.2 s):", json.dumps(report))
    assert report["clean.wav"]["pause_recall"] == 1.0 and report["clean.wav"]["pause_precision"] == 1.0
    assert report["clean.wav"]["cut_precision"] == 1.0
    assert report["noisy.wav"]["pause_recall"] >= 0.75 and report["noisy.wav"]["cut_precision"] >= 0.75
    # 6 s clips and 2.5-4.5 s sentences: nearly every join has to be a cut
    assert report["clean.wav"]["cut_recall"] >= 0.8


@needs_espeak
def test_streaming_in_small_blocks_gives_the_regions_of_one_long_block(recordings, speech):
    from kanitts.vad import VoiceActivity

    folder, _ = recordings
    small = VoiceActivity(max_speech=6.0 - 2 * 0.15, block_seconds=0.7).speech(folder / "clean.wav")
    whole = speech["clean.wav"]
    assert small.duration == whole.duration and len(small.regions) == len(whole.regions)
    assert np.allclose(np.array(small.regions), np.array(whole.regions), atol=0.05)


def test_the_longest_pause_near_the_target_wins():
    # pauses of 0.2 s at 1.1, 0.8 s at 3.6 and 0.3 s at 6.65; clips of 2-7 s aiming at 5 s
    regions = [(0.0, 1.0), (1.2, 3.2), (4.0, 6.5), (6.8, 9.0)]
    cut = segment(regions, 9.0, min_duration=2.0, max_duration=7.0, target_duration=5.0, padding=0.1,
                  split_pause=1.5)
    assert cut.segments[0] == Segment(0.0, pytest.approx(3.3))  # the long pause, not the one nearer 5 s
    assert cut_points(cut.segments) == [pytest.approx(3.6)]


def test_a_long_pause_always_ends_a_clip_and_short_speech_is_counted():
    regions = [(0.0, 2.5), (5.0, 5.5), (8.0, 10.0)]  # pauses of 2.5 s
    cut = segment(regions, 10.5, min_duration=1.5, max_duration=12.0, target_duration=6.0, padding=0.3,
                  split_pause=1.5)
    assert [(round(s.start, 2), round(s.end, 2)) for s in cut.segments] == [(0.0, 2.8), (7.7, 10.3)]
    assert cut.short_seconds == pytest.approx(0.5)


def test_speech_longer_than_the_longest_clip_without_a_pause_is_counted():
    cut = segment([(1.0, 20.0)], 21.0, min_duration=2.0, max_duration=12.0, target_duration=7.0, padding=0.2,
                  split_pause=1.5)
    assert cut.segments == [] and cut.long_seconds == pytest.approx(19.0)


# --- refining the cuts with the ASR's word times ---------------------------------------------

BOUNDS = dict(padding=0.2, min_duration=1.5, max_duration=6.0)


def test_a_clip_is_trimmed_to_its_words_with_padding_inside_the_vad_cut():
    clip = Segment(10.0, 14.0)
    done = refine(clip, [(0.0, 0.9), (0.9, 1.4), (1.4, 3.1)], **BOUNDS)  # Whisper: the first word from 0
    assert done.trimmed and not done.word_cut and done.note is None
    assert done.segment == Segment(10.0, pytest.approx(13.3))
    done = refine(clip, [(0.5, 1.4), (1.4, 3.9)], **BOUNDS)  # padding never reaches outside the VAD clip
    assert done.segment == Segment(pytest.approx(10.3), 14.0)
    assert refine(clip, [(0.1, 3.85)], **BOUNDS) == refine(clip, [(0.1, 3.85)], **BOUNDS)
    assert not refine(clip, [(0.0, 3.85)], **BOUNDS).trimmed  # already padded: the VAD cut stays


def test_a_last_word_running_into_the_cut_is_a_word_cut_unless_the_vad_found_a_clear_pause():
    words = [(0.0, 2.0), (2.0, 3.98)]
    for short in (Segment(0.0, 4.0), Segment(0.0, 4.0, silence_after=0.05), Segment(0.0, 4.0, silence_after=0.0)):
        done = refine(short, words, **BOUNDS)  # unknown, a short pause, speech the VAD split
        assert done.word_cut and not done.trimmed and done.note is None and done.segment == short
    assert refine(Segment(0.0, 4.0), [(0.0, 4.05)], **BOUNDS).word_cut  # rounding past the end: clamped
    clear = refine(Segment(0.0, 4.0, silence_after=0.2), words, **BOUNDS)  # a pause of 0.4 s or more
    assert not clear.word_cut
    assert clear.note == "the last word runs to the clip's end, across the pause the VAD found there"
    unpadded = refine(Segment(0.0, 4.0, silence_after=0.0), words, **{**BOUNDS, "padding": 0.0})
    assert not unpadded.word_cut and unpadded.note is None  # without padding every clip ends on its last word


def test_the_cuts_carry_the_silence_the_vad_kept_after_the_speech():
    cut = segment([(0.0, 2.5), (2.6, 4.0), (5.0, 7.5)], 7.6, min_duration=1.5, max_duration=12.0,
                  target_duration=3.0, padding=0.2, split_pause=0.9)
    assert [s.silence_after for s in cut.segments] == [pytest.approx(0.2), pytest.approx(0.1)]


@pytest.mark.parametrize("words, note", [
    ([(0.0, 1.0), (1.0, 9.98)], "word times past the clip's end (9.98 s of 4.00 s)"),
    ([(0.0, 1.0), (2.0, 1.5)], "word times out of order (2.00-1.50 s)"),
    ([(1.0, 2.0), (0.5, 3.0)], "word times out of order"),
    ([(-0.5, 2.0)], "word times out of order (-0.50-2.00 s)"),
    ([(0.0, float("nan"))], "word times out of order"),
    ([(0.0, 0.4)], "trimmed to its words it would last 0.60 s, outside 1.5-6 s"),
    ([], "no word times"),
])
def test_word_times_that_cannot_be_right_keep_the_vad_cut_and_say_why(words, note):
    done = refine(Segment(2.0, 6.0), words, **BOUNDS)
    assert done.segment == Segment(2.0, 6.0) and not done.trimmed and not done.word_cut
    assert done.note.startswith(note)


def test_clips_are_written_as_refined_and_a_word_cut_flags_both_sides(tmp_path):
    """The recording step on constructed word times (no models): a word cut at the end of the
    first clip flags it and the clip after it, the second is trimmed, the third's times are noise."""
    from kanitts.asr import Transcript, Word
    from kanitts.prepare.recordings import _transcribe_clips

    path = tmp_path / "long.wav"
    sf.write(path, 0.1 * np.random.default_rng(0).standard_normal(10 * SR).astype(np.float32), SR)
    by_length = {3.0: (Word("cut", 0.0, 3.0),), 2.5: (Word("one", 0.0, 1.0), Word("two", 1.0, 2.0)),
             2.9: (Word("noise", 0.0, 7.5),)}

    class Timed:
        word_timestamps = True

        def transcribe_scored(self, clips, *, words):
            return [Transcript("some words", -0.1, by_length[round(len(a) / rate, 1)]) for a, rate in clips]

    options = PrepareOptions(input=str(tmp_path), output=str(tmp_path / "out"), min_chars_per_second=0.0,
                             segment_min_duration=1.5, segment_max_duration=6.0, segment_padding=0.2)
    segments = [Segment(0.0, 3.0, silence_after=0.05), Segment(3.0, 5.5, silence_after=0.2),
                Segment(6.5, 9.4, silence_after=0.2)]
    clips = _transcribe_clips(path, "long", segments, tmp_path, Timed(), options, options.segmentation())
    assert [c["cut"] for c in clips] == ["vad", "words", "vad: word times past the clip's end (7.50 s of 2.90 s)"]
    assert clips[0]["flags"] == "word cut: the last word runs past the clip's end (3.00 s into the recording)"
    assert clips[1]["flags"] == "word cut: begins with the end of a word cut at 3.00 s"
    assert (clips[1]["start"], clips[1]["end"]) == (3.0, 5.2) and clips[2]["flags"] == ""
    durations = [sf.info(tmp_path / "wavs" / f"long_{n:05d}.wav").duration for n in range(3)]
    assert durations == [pytest.approx(3.0), pytest.approx(2.2), pytest.approx(2.9)]


def _trimmed_words(monkeypatch):
    """The tiny Whisper's word times are noise; give every other clip words from 0 to 1 s before
    its end (a trim of 0.8 s with 0.2 s of padding) and leave the rest as the model says."""
    from kanitts.asr import Transcriber, Word

    real = Transcriber.transcribe_scored
    calls = []

    def transcribe_scored(self, clips, *, words=False):
        calls.append(words)
        out = real(self, clips, words=words)
        return [replace(t, words=(Word("one", 0.0, len(a) / rate - 1.0),)) if k % 2 == 0 else t
                for k, ((a, rate), t) in enumerate(zip(clips, out))]

    monkeypatch.setattr(Transcriber, "transcribe_scored", transcribe_scored)
    return calls


@needs_espeak
def test_word_times_trim_the_clips_and_unusable_ones_keep_the_vad_cut(recordings, speech, whisper, tiny_codec,
                                                                         tmp_path, monkeypatch):
    from kanitts.prepare.pipeline import prepare_dataset

    source, _ = recordings
    inp = tmp_path / "long"
    inp.mkdir()
    shutil.copy(source / "clean.wav", inp)
    calls = _trimmed_words(monkeypatch)
    result = prepare_dataset(_options(inp, tmp_path / "alice", whisper, transcribe_only=True),
                             tiny_codec)
    assert calls and all(calls)  # word times asked for in every batch
    found = speech["clean.wav"]
    vad = segment(found.regions, found.duration, min_duration=1.5, max_duration=6.0, target_duration=3.75,
                  padding=0.15, split_pause=1.5).segments
    clips = json.loads((tmp_path / "alice.clips" / "segments" / "clean.json").read_text())["clips"]
    assert len(clips) == len(vad) >= 4
    for k, (clip, cut) in enumerate(zip(clips, vad)):
        wav = sf.info(tmp_path / "alice.clips" / "wavs" / f"{clip['id']}.wav")
        assert wav.duration == pytest.approx(clip["end"] - clip["start"], abs=2e-3)
        assert 1.5 <= wav.duration <= 6.0  # never outside the bounds
        assert cut.start - 1e-3 <= clip["start"] and clip["end"] <= cut.end + 1e-3  # inside the VAD clip
        if k % 2 == 0 and cut.duration - 0.85 >= 1.5:  # trimmed to 0.15 s after the constructed last word
            assert clip["cut"] == "words" and clip["end"] == pytest.approx(cut.end - 0.85, abs=2e-3)
        elif k % 2 == 1:  # the random model's word times: past the clip's end, or else plausible
            assert clip["cut"] == "vad" or clip["cut"].startswith("vad: word times")
    trimmed = sum(c["cut"] == "words" for c in clips)
    implausible = sum(c["cut"].startswith("vad: ") for c in clips)
    assert trimmed >= 1 and implausible >= 1  # the random model's word times fall past its clips
    assert "cuts: " + f"{trimmed} clip(s) trimmed to their first and last word" in result.summary()
    if implausible:
        said = (f"{implausible} kept at the VAD cut (word times unusable: the reason is the clip's \"cut\" in "
                f"{tmp_path / 'alice.clips' / 'segments'}/<file>.json)")
        assert said in result.summary()


@needs_espeak
@pytest.mark.parametrize("how", ["model without alignment heads", "refine_cuts off"])
def test_without_word_times_the_vad_cuts_are_kept_and_the_summary_says_so(recordings, whisper, tiny_codec,
                                                                           tmp_path, how, capsys):
    from kanitts.prepare.pipeline import prepare_dataset
    from kanitts.tiny import build_tiny_whisper

    source, _ = recordings
    inp = tmp_path / "long"
    inp.mkdir()
    shutil.copy(source / "clean.wav", inp)
    if how == "refine_cuts off":
        options = _options(inp, tmp_path / "alice", whisper, transcribe_only=True, refine_cuts=False)
    else:
        untimed = build_tiny_whisper(tmp_path / "whisper", chunk_seconds=8, alignment_heads=False)
        options = _options(inp, tmp_path / "alice", untimed, transcribe_only=True)
    summary = prepare_dataset(options, tiny_codec).summary()
    assert "cuts: 1 recording(s) kept the VAD cuts (the ASR model gives no word times, or refine_cuts is off)" \
        in summary
    assert "trimmed to their first and last word" not in summary
    said = "gives no word times (no alignment_heads in its generation config, or not Whisper)"
    assert (said in capsys.readouterr().err) is (how == "model without alignment heads")
    record = json.loads((tmp_path / "alice.clips" / "segments" / "clean.json").read_text())
    assert record["word_times"] is False and {c["cut"] for c in record["clips"]} == {"vad"}


# --- the next recordings scanned ahead -----------------------------------------------------------


def test_scans_ahead_come_back_in_order_and_at_most_ahead_of_the_consumer():
    from kanitts.prepare.recordings import scan_ahead

    submitted = []

    def work(item, stop):
        submitted.append(item)
        return item * 10

    seen = []
    for item, result in scan_ahead(work, iter(range(6)), ahead=2):
        assert max(submitted) <= item + 2  # never more than two ahead
        seen.append((item, result))
    assert seen == [(k, 10 * k) for k in range(6)]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_an_error_in_the_consumer_stops_the_scan_ahead_and_propagates(error):
    import threading
    from contextlib import closing

    from kanitts.prepare.recordings import scan_ahead

    started, second_running, stopped = [], threading.Event(), []

    def work(item, stop):
        started.append(item)
        if item == 1:
            second_running.set()
            stopped.append(stop.wait(timeout=60))  # a long scan, given up when told to stop
        return item

    with pytest.raises(type(error)), closing(scan_ahead(work, range(5), ahead=2)) as scans:
        for _ in scans:
            second_running.wait(timeout=60)
            raise error
    assert stopped == [True]  # item 1 was told to stop (it did not run to its end)
    assert started == [0, 1]  # item 2, queued, was cancelled; 3 and 4 never submitted


def test_a_vad_scan_stops_at_the_next_block_once_told(tmp_path):
    import threading

    from kanitts.vad import ScanStopped, VoiceActivity

    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(3 * SR, np.float32), SR)
    stop = threading.Event()
    stop.set()
    with pytest.raises(ScanStopped, match=r"long\.wav"):
        VoiceActivity(block_seconds=1.0).speech(path, stop)


@needs_espeak
def test_an_error_while_transcribing_names_the_recording_and_keeps_the_ones_before(recordings, whisper, tiny_codec,
                                                                                    tmp_path, monkeypatch):
    from kanitts.prepare import recordings as cutting
    from kanitts.prepare.pipeline import prepare_dataset

    source, _ = recordings
    inp = tmp_path / "long"
    shutil.copytree(source, inp)
    real = cutting._transcribe_clips

    def failing(path, *args):
        if path.name == "noisy.wav":
            raise RuntimeError("CUDA out of memory")
        return real(path, *args)

    monkeypatch.setattr(cutting, "_transcribe_clips", failing)
    with pytest.raises(RuntimeError, match="CUDA out of memory") as raised:
        prepare_dataset(_options(inp, tmp_path / "alice", whisper, transcribe_only=True), tiny_codec)
    assert f"while transcribing the recording {inp / 'noisy.wav'}" in raised.value.__notes__[0]
    state = tmp_path / "alice.clips" / "segments"
    assert (state / "clean.json").is_file() and not (state / "noisy.json").exists()

    monkeypatch.setattr(cutting, "_transcribe_clips", real)
    summary = prepare_dataset(_options(inp, tmp_path / "alice", whisper, transcribe_only=True), tiny_codec).summary()
    assert "1 recording(s) reused from an interrupted run" in summary and "recordings: 2 file(s)" in summary


# --- options and config -----------------------------------------------------------------------


@pytest.mark.parametrize("options, message", [
    (dict(segment_min_duration=5.0, segment_max_duration=3.0),
     "--segment-min-duration (5) and --segment-max-duration (3)"),
    (dict(segment_target_duration=20.0), "--segment-target-duration (20) must lie between"),
    (dict(vad_threshold=1.5), "--vad-threshold must lie in (0, 1), not 1.5"),
    (dict(min_asr_confidence=0.5), "--min-asr-confidence is a log-probability"),
    (dict(asr_batch_size=0), "--asr-batch-size must be at least 1"),
])
def test_wrong_segmentation_options_are_named(options, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PrepareOptions(input="in", output="out", **options).validate()


def _one_recording(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    sf.write(folder / "long.wav", np.zeros(SR, np.float32), SR)
    return folder


def test_the_prepare_section_of_dataset_config_fills_what_flags_leave_open(tmp_path):
    from kanitts.recipes.prepare import segmentation_defaults

    shutil.copy(Path(__file__).resolve().parents[1] / "config" / "dataset_config.yaml", tmp_path)
    config = tmp_path / "dataset_config.yaml"
    config.write_text(config.read_text() + "prepare:\n  segment_min_duration: 3\n  asr_language: fr\n"
                      "  refine_cuts: false\n")
    options = PrepareOptions(input=str(_one_recording(tmp_path / "in")), output="out", asr_language="de")
    filled = segmentation_defaults(options, tmp_path).segmentation()
    assert (filled.min_duration, filled.max_duration, filled.asr_language) == (3.0, 12.0, "de")  # 12: max_duration_sec
    assert filled.refine_cuts is False and PrepareOptions(input="in", output="out").segmentation().refine_cuts

    config.write_text(config.read_text() + "  min_confidence: -2\n")
    with pytest.raises(UserError, match=r"dataset_config.yaml.*prepare.min_confidence"):
        segmentation_defaults(options, tmp_path)


@pytest.mark.parametrize("flags, refine", [([], None), (["--refine-cuts"], True), (["--no-refine-cuts"], False)])
def test_refine_cuts_is_a_flag_left_to_the_config_when_not_given(flags, refine):
    from kanitts.cli import build_parser

    args = build_parser().parse_args(["prepare", "in", "out", *flags])
    assert args.refine_cuts is refine


def test_transcribe_only_needs_a_folder_of_recordings(tmp_path, tiny_codec):
    from kanitts.prepare.pipeline import prepare_dataset

    folder = tmp_path / "clips"
    folder.mkdir()
    sf.write(folder / "a.wav", np.zeros(SR, np.float32), SR)
    (folder / "metadata.csv").write_text("a|hello\n")
    with pytest.raises(UserError, match="--transcribe-only cuts and transcribes a folder of recordings"):
        options = PrepareOptions(input=str(folder), output=str(tmp_path / "out"), transcribe_only=True)
        prepare_dataset(options, tiny_codec)


def test_recordings_without_speech_are_an_error_that_says_so(tmp_path, whisper, tiny_codec):
    from kanitts.prepare.pipeline import prepare_dataset

    inp = _one_recording(tmp_path / "in")  # one second of digital silence
    with pytest.raises(UserError, match=r"no clip could be cut from the recordings in .*in: kept 0\.000 h in 0 clip"):
        prepare_dataset(_options(inp, tmp_path / "out", whisper), tiny_codec)


def test_a_missing_asr_model_is_named_before_any_audio_is_read(tmp_path, tiny_codec):
    from kanitts.prepare.pipeline import prepare_dataset

    options = PrepareOptions(input=str(_one_recording(tmp_path / "in")), output=str(tmp_path / "out"),
                             asr_model=str(tmp_path / "no-such-model"), progress=False)
    with pytest.raises(UserError, match=f"ASR model {tmp_path / 'no-such-model'}: no such folder"):
        prepare_dataset(options, tiny_codec)


# --- review loop, kill -9 -----------------------------------------------------------------------


def _options(inp: Path, out: Path, whisper: Path, **kw) -> PrepareOptions:
    kw.setdefault("progress", False)
    return PrepareOptions(input=str(inp), output=str(out), asr_model=str(whisper), asr_batch_size=4,
                          min_asr_confidence=-20.0, min_chars_per_second=0.0, max_chars_per_second=1000.0,
                          **CUTS, **kw)


def _metadata(folder: Path) -> list[list[str]]:
    return [line.split("|") for line in (folder / "metadata.csv").read_text(encoding="utf-8").splitlines()]


@needs_espeak
def test_transcribe_only_then_edit_then_encode(recordings, whisper, tiny_codec, tmp_path, capsys):
    from datasets import load_from_disk

    from kanitts.prepare.pipeline import prepare_dataset

    source, _ = recordings
    inp = tmp_path / "long"
    shutil.copytree(source, inp)
    (inp / "broken.wav").write_bytes(b"RIFF not really a wav file")
    out = tmp_path / "alice"

    result = prepare_dataset(_options(inp, out, whisper, transcribe_only=True), tiny_codec)
    clips = tmp_path / "alice.clips"
    summary = result.summary()
    assert not out.exists() and f"review {clips / 'metadata.csv'}" in summary
    assert "recordings: 3 file(s)" in summary and "unreadable recording: broken.wav: " in summary
    assert f"{inp / 'broken.wav'}: unreadable" in capsys.readouterr().err
    rows = _metadata(clips)
    assert len(rows) >= 8 and all(len(r) == 5 and r[2] == "" and float(r[3]) <= 0 for r in rows)
    for clip_id, *_ in rows:
        duration = sf.info(clips / "wavs" / f"{clip_id}.wav").duration
        assert 1.5 - 0.01 <= duration <= 6.0 + 0.01

    # the review: correct one transcript, drop a clip, flag another
    rows[0][1] = "The quick brown fox jumps over the lazy dog."
    dropped = rows.pop(1)[0]
    rows[1][4] = "wrong speaker"
    (clips / "metadata.csv").write_text("".join("|".join(r) + "\n" for r in rows), encoding="utf-8")

    result = prepare_dataset(_options(inp, out, whisper, speaker="alice"), tiny_codec)  # the same command
    assert "is used as it is" in result.summary()
    ds = load_from_disk(str(out))
    assert len(ds) == len(rows) - 1
    assert ds[0]["text"] == "The quick brown fox jumps over the lazy dog." and ds[0]["speaker"] == "alice"
    assert f"wavs/{dropped}.wav" not in ds["source"]
    rejected = (out / "rejected.csv").read_text()
    assert f"wavs/{rows[1][0]}.wav,flagged,wrong speaker" in rejected


KILLED_RUN = """
import sys
from pathlib import Path
from kanitts.prepare.options import PrepareOptions
from kanitts.recipes import prepare

inp, out, whisper, codec = sys.argv[1:]
options = PrepareOptions(input=inp, output=out, asr_model=whisper, asr_batch_size=4, min_asr_confidence=-20.0,
                         min_chars_per_second=0.0, max_chars_per_second=1000.0, progress=False,
                         segment_min_duration=1.5, segment_max_duration=6.0, segment_padding=0.15)
sys.exit(prepare.run(options, config_dir=Path("no-config"), codec_model=codec, device="cpu"))
"""


@needs_espeak
def test_kill_9_while_cutting_then_resume(recordings, whisper, tiny_codec, tiny_codec_dir, tmp_path):
    from datasets import load_from_disk

    from kanitts.prepare.pipeline import prepare_dataset

    source, _ = recordings
    inp, out = tmp_path / "long", tmp_path / "alice"
    shutil.copytree(source, inp)
    state = tmp_path / "alice.clips" / "segments"
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(inp), str(out), str(whisper), str(tiny_codec_dir)],
                            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (state / "clean.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (state / "clean.json").exists() and not (tmp_path / "alice.clips" / "metadata.csv").exists()
    first = (state / "clean.json").read_bytes()

    result = prepare_dataset(_options(inp, out, whisper), tiny_codec)
    assert "1 recording(s) reused from an interrupted run" in result.summary()
    assert (state / "clean.json").read_bytes() == first  # not cut again
    records = [json.loads((state / f"{name}.json").read_text()) for name in ("clean", "noisy")]
    assert len(load_from_disk(str(out))) == sum(len(r["clips"]) for r in records)
