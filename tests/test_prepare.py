"""`kanitts prepare`: both input kinds, broken files, rejected.csv, resume, refusal, ranks.

Speech comes from espeak-ng (two voices, en-us and en-us+f3; tests that need it skip without it);
the run-control tests use synthetic signals so they run anywhere. The codec is the tiny random
NanoCodec from conftest (built locally, nothing downloaded).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kanitts.audio import resample
from kanitts.codecs import load_codec
from kanitts.errors import UserError
from kanitts.prepare.assembly import PrepareResult
from kanitts.prepare.options import CodecSpec, PrepareOptions
from kanitts.prepare.pipeline import prepare_dataset

SR = 22050
SPF = 1764
ESPEAK = shutil.which("espeak-ng")
needs_espeak = pytest.mark.skipif(ESPEAK is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Speech synthesis on a small machine can still be tested quickly.",
    "Please call Stella and ask her to bring these things.",
]


def _espeak(path: Path, text: str, voice: str) -> Path:
    subprocess.run([ESPEAK, "-v", voice, "-w", str(path), text], check=True, capture_output=True)
    return path


def _tone(path: Path, seconds: float, sr: int = SR, freq: float = 220.0, channels: int = 1, amp: float = 0.4, fmt=None):
    t = np.arange(int(round(seconds * sr))) / sr
    x = amp * np.sin(2 * np.pi * freq * t * (1 + 0.2 * np.sin(2 * np.pi * 2 * t)))
    x = x * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    data = np.stack([x, 0.5 * x], axis=1) if channels == 2 else x
    sf.write(path, data.astype(np.float32), sr, format=fmt)
    return path


def _expected_frames(path: Path) -> int:
    x, sr = sf.read(path, dtype="float32", always_2d=True)
    return math.ceil(len(resample(x.mean(axis=1), sr, SR)) / SPF)


def _prepare(inp, out, codec_dir, codec=None, **kw) -> PrepareResult:
    """The component with the tiny codec: a CodecSpec naming its folder, or ``codec`` loaded."""
    kw.setdefault("progress", False)
    kw.setdefault("num_workers", 2)
    options = PrepareOptions(input=str(inp), output=str(out), **kw)
    return prepare_dataset(options, codec if codec is not None else CodecSpec(kind="nanocodec", weights=str(codec_dir)))


def _load(out):
    from datasets import load_from_disk

    return load_from_disk(str(out))


def _rejected(out) -> dict[str, str]:
    with open(Path(out) / "rejected.csv", newline="") as f:
        return {r["source"]: r["reason"] for r in csv.DictReader(f)}


def _assert_codec_dataset(ds, codec_size=4032):
    """Exactly the codec-dataset format the training data step reads."""
    from datasets import List, Value

    assert ds.features["text"] == Value("string")
    for i in range(1, 5):
        assert ds.features[f"nano_layer_{i}"] == List(Value("int64"))
    assert ds.features["encoded_len"] == Value("int64")
    assert ds.features["duration_sec"] == Value("float64")
    assert ds.features["source"] == Value("string")
    for row in ds:
        n = row["encoded_len"]
        assert n == math.ceil(round(row["duration_sec"] * SR) / SPF)
        for i in range(1, 5):
            layer = row[f"nano_layer_{i}"]
            assert len(layer) == n
            assert all(0 <= c < codec_size for c in layer)


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ljs_folder(tmp_path_factory):
    """LJSpeech-style folder: espeak speech in several formats plus every kind of broken file."""
    if ESPEAK is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    root = tmp_path_factory.mktemp("ljs")
    wavs = root / "wavs"
    wavs.mkdir()
    _espeak(wavs / "s1.wav", SENTENCES[0], "en-us")
    _espeak(wavs / "s2.wav", SENTENCES[1], "en-us+f3")
    base, _ = sf.read(_espeak(root / "tmp.wav", SENTENCES[2], "en-us"), dtype="float32")
    (root / "tmp.wav").unlink()
    sf.write(wavs / "s3.flac", base, SR)
    sf.write(wavs / "s4.ogg", base, SR, format="OGG", subtype="VORBIS")
    sf.write(wavs / "s5.mp3", base, SR, format="MP3")
    sf.write(wavs / "stereo.wav", np.stack([resample(base, SR, 44100)] * 2, axis=1), 44100)
    sf.write(wavs / "low.wav", resample(base, SR, 8000), 8000)
    whole = (wavs / "s1.wav").read_bytes()
    (wavs / "trunc.wav").write_bytes(whole[: len(whole) // 2])  # cut in the middle of the data
    (wavs / "zero.wav").write_bytes(b"")
    (wavs / "text.wav").write_text("this is a text file, not audio\n" * 20)
    sf.write(wavs / "silent.wav", np.zeros(SR, np.float32), SR)
    _tone(wavs / "short.wav", 0.1)
    (wavs / "notext.wav").write_bytes((wavs / "s1.wav").read_bytes())
    lines = [
        f"s1|{SENTENCES[0]}|{SENTENCES[0]}",
        f"s2|{SENTENCES[1]}",
        f"s3|{SENTENCES[2]}|please call stella",
        f"s4|{SENTENCES[2]}",
        f"s5|{SENTENCES[2]}",
        f"stereo|{SENTENCES[2]}",
        f"low|{SENTENCES[2]}",
        "trunc|truncated",
        "zero|zero length",
        "text|a text file",
        "silent|nothing here",
        "short|too short",
        "ghost|no such file",
        "notext|  ",
    ]
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    """The same sentences in two espeak voices, listed in a CSV manifest with speakers."""
    if ESPEAK is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    root = tmp_path_factory.mktemp("voices")
    rows = []
    for voice, speaker in (("en-us", "adam"), ("en-us+f3", "eve")):
        for i, text in enumerate(SENTENCES[:2]):
            name = f"{speaker}_{i}.wav"
            _espeak(root / name, text, voice)
            rows.append({"path": name, "text": text, "speaker": speaker})
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "text", "speaker"])
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture
def tones(tmp_path):
    """Six synthetic clips of 0.4 to 0.9 s in a JSONL manifest (no espeak needed)."""
    root = tmp_path / "tones"
    root.mkdir()
    with open(root / "manifest.jsonl", "w") as f:
        for i in range(6):
            _tone(root / f"t{i}.wav", 0.4 + 0.1 * i, freq=150 + 40 * i)
            f.write(json.dumps({"path": f"t{i}.wav", "text": f"clip number {i}"}) + "\n")
    return root / "manifest.jsonl"


# --- the two input kinds --------------------------------------------------------------------


@needs_espeak
def test_folder_with_broken_files(ljs_folder, tiny_codec_dir, tmp_path):
    out = tmp_path / "out"
    result = _prepare(ljs_folder, out, tiny_codec_dir, max_batch_size=8)
    ds = _load(out)
    _assert_codec_dataset(ds)
    assert "speaker" not in ds.column_names  # nobody named one
    assert ds["source"] == [
        f"wavs/{n}" for n in ("s1.wav", "s2.wav", "s3.flac", "s4.ogg", "s5.mp3", "stereo.wav", "low.wav")
    ]
    texts = dict(zip(ds["source"], ds["text"]))
    assert texts["wavs/s3.flac"] == "please call stella"  # the normalized column when present
    assert texts["wavs/s2.wav"] == SENTENCES[1]
    for source, n in zip(ds["source"], ds["encoded_len"]):
        assert n == _expected_frames(ljs_folder / source), source
    assert _rejected(out) == {
        "wavs/trunc.wav": "unreadable",
        "wavs/zero.wav": "unreadable",
        "wavs/text.wav": "unreadable",
        "wavs/silent.wav": "silent",
        "wavs/short.wav": "too short",
        "ghost": "missing audio",
        "wavs/notext.wav": "empty text",
    }
    assert (result.rows, result.items, result.rejected) == (7, 14, 7)
    assert result.rejected_by_reason == {
        "unreadable": 3, "silent": 1, "too short": 1, "missing audio": 1, "empty text": 1
    }
    summary = result.summary()
    assert "7 rows" in summary and "rejected 7 of 14" in summary and "rejected.csv" in summary
    assert not Path(str(out) + ".partial").exists()
    info = json.loads((out / "kanitts_prepare.json").read_text())
    assert info["manifest"]["codec"]["kind"] == "nanocodec" and info["rows"] == 7


@needs_espeak
def test_max_duration_and_text_field(ljs_folder, tiny_codec_dir, tmp_path):
    out = tmp_path / "out"
    result = _prepare(ljs_folder, out, tiny_codec_dir, max_duration=3.0, text_field="text")
    ds = _load(out)
    assert all(d <= 3.0 for d in ds["duration_sec"])
    assert "too long" in result.rejected_by_reason
    assert dict(zip(ds["source"], ds["text"])).get("wavs/s3.flac", SENTENCES[2]) == SENTENCES[2]


@needs_espeak
def test_manifest_with_two_voices(voices, tiny_codec_dir, tmp_path):
    out = tmp_path / "out"
    _prepare(voices / "manifest.csv", out, tiny_codec_dir)
    ds = _load(out)
    _assert_codec_dataset(ds)
    assert ds["speaker"] == ["adam", "adam", "eve", "eve"]
    by_key = {(r["speaker"], r["text"]): r for r in ds}
    # same sentence, different voice: different codes
    for text in SENTENCES[:2]:
        a, e = by_key[("adam", text)], by_key[("eve", text)]
        assert any(a[f"nano_layer_{i}"] != e[f"nano_layer_{i}"] for i in range(1, 5))
    # --speaker names one speaker for everything
    out2 = tmp_path / "out2"
    _prepare(voices / "manifest.csv", out2, tiny_codec_dir, speaker="narrator")
    assert set(_load(out2)["speaker"]) == {"narrator"}


@needs_espeak
def test_hf_audio_dataset(voices, tiny_codec_dir, tmp_path):
    from datasets import Audio, Dataset, DatasetDict, Features, Value

    with open(voices / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # built as a struct and cast to Audio: datasets 5 needs torchcodec to *encode* Audio examples
    struct = {"bytes": Value("binary"), "path": Value("string")}
    features = Features({"wav": struct, "sentence": Value("string"), "spk": Value("string")})
    ds = Dataset.from_dict(
        {
            "wav": [{"bytes": (voices / r["path"]).read_bytes(), "path": None} for r in rows],
            "sentence": [r["text"] for r in rows],
            "spk": [r["speaker"] for r in rows],
        },
        features=features,
    ).cast_column("wav", Audio())
    assert isinstance(ds.features["wav"], Audio)
    hf_dir = tmp_path / "hf"
    DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(hf_dir))

    out = tmp_path / "out"
    result = _prepare(hf_dir, out, tiny_codec_dir, audio_column="wav", text_column="sentence", speaker_column="spk",
                      max_batch_size=8, batch_seconds=30)
    out_ds = _load(out)
    _assert_codec_dataset(out_ds)
    assert result.rows == 4
    assert out_ds["source"] == ["train[0]", "train[1]", "train[2]", "train[3]"]
    assert out_ds["speaker"] == [r["speaker"] for r in rows]
    assert out_ds["text"] == [r["text"] for r in rows]
    # the file-based run of the same audio, one clip per call, gives the same codes
    ref = tmp_path / "ref"
    _prepare(voices / "manifest.csv", ref, tiny_codec_dir, max_batch_size=1)
    for i in range(1, 5):
        assert _load(ref)[f"nano_layer_{i}"] == out_ds[f"nano_layer_{i}"]

    out_test = tmp_path / "out_test"
    _prepare(hf_dir, out_test, tiny_codec_dir, split="test", audio_column="wav", text_column="sentence")
    assert len(_load(out_test)) == 1 and "speaker" not in _load(out_test).column_names
    with pytest.raises(UserError, match="no audio column 'audio'"):
        _prepare(hf_dir, tmp_path / "x", tiny_codec_dir, text_column="sentence")
    with pytest.raises(UserError, match="no split 'dev'"):
        _prepare(hf_dir, tmp_path / "y", tiny_codec_dir, split="dev", audio_column="wav")


def test_output_loads_in_the_training_data_step(tones, tiny_codec_dir, tmp_path, tiny_tts, tiny_tokenizer):
    out = tmp_path / "out"
    _prepare(tones, out, tiny_codec_dir, speaker="alice")
    ds = _load(out)
    _assert_codec_dataset(ds)
    sequences = pytest.importorskip("kanitts.sequences")
    from kanitts.config import DatasetConfig

    cfg = DatasetConfig.model_validate(
        {"hf_datasets": [{"reponame": str(out), "speaker_id": "alice"}], "cache_dir": str(tmp_path / "cache")}
    )
    train, _report = sequences.build_training_dataset(cfg, tiny_tts[1], tiny_tokenizer, num_proc=1)
    assert len(train) == len(ds) == 6
    assert {"input_ids", "labels", "attention_mask"} <= set(train.column_names)
    # "clip number 0" in 0.4 s is 32.5 characters per second: suspect, and filtered out as docs/prepare.md shows
    assert ds["warnings"][0].startswith("text too long") and ds["warnings"][1:] == [""] * 5
    entry = {
        "reponame": str(out), "speaker_id": "alice", "categorical_filter": {"column_name": "warnings", "value": ""}
    }
    cfg = DatasetConfig.model_validate({"hf_datasets": [entry], "cache_dir": str(tmp_path / "cache2")})
    clean, _ = sequences.build_training_dataset(cfg, tiny_tts[1], tiny_tokenizer, num_proc=1)
    assert len(clean) == 5


# --- run control ------------------------------------------------------------------------------


def test_refuses_existing_output_then_overwrites(tones, tiny_codec_dir, tmp_path):
    out = tmp_path / "out"
    _prepare(tones, out, tiny_codec_dir, speaker="alice")
    with pytest.raises(UserError, match="already exists"):
        _prepare(tones, out, tiny_codec_dir, speaker="alice")
    again = _prepare(tones, out, tiny_codec_dir, speaker="alice", resume=True)
    assert again.already_complete and again.rows == 6
    with pytest.raises(UserError, match="different inputs or options"):
        _prepare(tones, out, tiny_codec_dir, speaker="bob", resume=True)
    _prepare(tones, out, tiny_codec_dir, speaker="bob", overwrite=True)
    assert set(_load(out)["speaker"]) == {"bob"}
    with pytest.raises(UserError, match="exclude each other"):
        _prepare(tones, out, tiny_codec_dir, resume=True, overwrite=True)
    # an output folder not made by kanitts is never touched by --resume
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not written by kanitts"):
        _prepare(tones, foreign, tiny_codec_dir, resume=True)
    assert (foreign / "keep.txt").read_text() == "mine"


class _Interrupt(Exception):
    pass


def _flaky_codec(codec_dir, fail_after_clips: int | None):
    """A fresh tiny codec that counts the clips it encodes and raises once it has encoded
    `fail_after_clips` of them (a crash half way through a run)."""
    codec = load_codec("nanocodec", codec_dir, device="cpu")
    real = codec.encode
    codec.clips = 0

    def encode(waves, lengths=None):
        if fail_after_clips is not None and codec.clips >= fail_after_clips:
            raise _Interrupt("simulated crash")
        codec.clips += len(waves)
        return real(waves, lengths)

    codec.encode = encode
    return codec


def test_resume_continues_from_finished_shards(tones, tiny_codec_dir, tmp_path):
    out = tmp_path / "out"
    opts = dict(shard_size=2, speaker="alice")
    with pytest.raises(_Interrupt):
        _prepare(tones, out, tiny_codec_dir, **opts, codec=_flaky_codec(tiny_codec_dir, 4))
    partial = Path(str(out) + ".partial")
    assert not out.exists()
    assert sorted(p.name for p in (partial / "shards").iterdir()) == ["shard-00000", "shard-00001"]

    with pytest.raises(UserError, match="interrupted run"):
        _prepare(tones, out, tiny_codec_dir, **opts)
    with pytest.raises(UserError, match="cannot resume"):
        _prepare(tones, out, tiny_codec_dir, shard_size=2, speaker="bob", resume=True)
    with pytest.raises(UserError, match="cannot resume"):
        _prepare(tones, out, tiny_codec_dir, shard_size=3, speaker="alice", resume=True)

    # a stray shard from some other run in the folder is never picked up
    stray = partial / "shards" / "shard-00099"
    shutil.copytree(partial / "shards" / "shard-00000", stray)

    codec = _flaky_codec(tiny_codec_dir, None)
    result = _prepare(tones, out, tiny_codec_dir, resume=True, **opts, codec=codec)
    assert codec.clips == 2  # only the third shard was encoded
    assert result.shards_resumed == 2 and result.rows == 6
    resumed = _load(out)

    fresh = tmp_path / "fresh"
    _prepare(tones, fresh, tiny_codec_dir, **opts)
    assert resumed.to_list() == _load(fresh).to_list()


def test_stale_rows_never_mix_into_another_run(tones, tiny_codec_dir, tmp_path):
    """The reference pipeline's bug: a second speaker's run picked up the first one's shards."""
    out = tmp_path / "out"
    with pytest.raises(_Interrupt):  # alice's run dies half way
        _prepare(tones, out, tiny_codec_dir, shard_size=2, speaker="alice", codec=_flaky_codec(tiny_codec_dir, 2))
    with pytest.raises(UserError, match="cannot resume"):
        _prepare(tones, out, tiny_codec_dir, shard_size=2, speaker="bob", resume=True)
    _prepare(tones, out, tiny_codec_dir, shard_size=2, speaker="bob", overwrite=True)
    ds = _load(out)
    assert len(ds) == 6 and set(ds["speaker"]) == {"bob"}


def test_ranks_split_the_shards_and_rank0_merges(tones, tiny_codec_dir, tmp_path):
    out = tmp_path / "out"
    r1 = _prepare(tones, out, tiny_codec_dir, shard_size=2, rank=1, world_size=2)
    assert not r1.assembled and r1.shards_done_here == 1  # shard 1 of 0..2
    r0 = _prepare(tones, out, tiny_codec_dir, shard_size=2, rank=0, world_size=2, resume=True)
    assert r0.assembled and r0.shards_done_here == 2 and r0.rows == 6
    single = tmp_path / "single"
    _prepare(tones, single, tiny_codec_dir, shard_size=2)
    assert _load(out).to_list() == _load(single).to_list()


def test_each_rank_encodes_on_its_own_gpu(monkeypatch, tmp_path):
    """Under torchrun, `--device cuda` means this rank's GPU, not cuda:0 for every rank."""
    import torch

    from kanitts.prepare.distributed import Ranks

    chosen = []
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    ranks = Ranks(rank=1, world_size=2)
    assert ranks.device("cuda") == "cuda:1" and ranks.device(None) == "cuda:1" and chosen == [1, 1]
    assert ranks.device("cuda:0") == "cuda:0" and ranks.device("cpu") == "cpu"  # a named device stays
    monkeypatch.setenv("LOCAL_RANK", "3")  # more processes than GPUs: they share round-robin
    assert Ranks(rank=3, world_size=4).device("cuda") == "cuda:1"


def test_everything_rejected_is_an_error(tmp_path, tiny_codec_dir):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "a.wav").write_text("not audio")
    sf.write(root / "b.wav", np.zeros(SR, np.float32), SR)
    (root / "metadata.csv").write_text("a|one\nb|two\n")
    with pytest.raises(UserError, match="none of the 2 items could be used"):
        _prepare(root, tmp_path / "out", tiny_codec_dir)
    assert (tmp_path / "out.partial" / "rejected.csv").is_file()


def test_audio_options(tmp_path, tiny_codec_dir):
    root = tmp_path / "in"
    root.mkdir()
    t = np.arange(SR // 2) / SR
    tone = (0.05 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    silence = np.zeros(SR // 2, np.float32)
    sf.write(root / "a.wav", np.concatenate([silence, tone, silence]), SR)
    (root / "metadata.csv").write_text("a|hello\n")
    plain = _prepare(root, tmp_path / "plain", tiny_codec_dir)
    assert plain.rows == 1 and _load(tmp_path / "plain")["duration_sec"] == [1.5]
    _prepare(root, tmp_path / "trim", tiny_codec_dir, trim_silence=True, normalize="loudness")
    trimmed = _load(tmp_path / "trim")
    assert 0.5 <= trimmed["duration_sec"][0] <= 0.65
    assert trimmed["encoded_len"][0] == math.ceil(round(trimmed["duration_sec"][0] * SR) / SPF)
    _prepare(root, tmp_path / "peak", tiny_codec_dir, normalize="peak")
    with pytest.raises(UserError, match="normalize"):
        _prepare(root, tmp_path / "x", tiny_codec_dir, normalize="loud")


def test_push_to_hub_after_writing(tones, tiny_codec_dir, tmp_path, monkeypatch):
    from datasets import Dataset

    pushed = {}
    monkeypatch.setattr(
        Dataset, "push_to_hub",
        lambda self, repo, private=False, **kw: pushed.update(repo=repo, private=private, rows=len(self)),
    )
    result = _prepare(tones, tmp_path / "out", tiny_codec_dir, push_to_hub="me/tones", private=True)
    assert pushed == {"repo": "me/tones", "private": True, "rows": 6}
    assert result.pushed_to == "me/tones"


def test_cli_prepare(tones, tiny_codec_dir, tmp_path, capsys):
    from kanitts.cli import main

    out = tmp_path / "out"
    argv = [
        "prepare", str(tones), str(out), "--codec-model", str(tiny_codec_dir), "--no-progress", "--speaker", "alice"
    ]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(argv) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["prepare", str(tones), "--output", str(out), "--codec-model", str(tiny_codec_dir)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["prepare", str(tmp_path / "nowhere"), str(tmp_path / "o2"), "--codec-model", str(tiny_codec_dir)]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_cli_prepare_takes_the_codec_model_config_names(tones, tiny_codec_dir, tmp_path):
    import json

    from kanitts.cli import main

    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "model_config.yaml").write_text(f"codec: {{kind: nanocodec, weights: {tiny_codec_dir}}}\n")
    out = tmp_path / "out"
    assert main(["prepare", str(tones), str(out), "--config-dir", str(config_dir), "--no-progress"]) == 0
    manifest = json.dumps(json.loads((out / "kanitts_prepare.json").read_text()))
    assert str(tiny_codec_dir) in manifest


def test_recipe_from_python_and_the_cli_make_the_same_dataset(tones, tiny_codec_dir, tmp_path, capsys):
    """The codec model_config.yaml names reaches the Python API as it reaches the CLI."""
    from kanitts.cli import main
    from kanitts.recipes import prepare

    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "model_config.yaml").write_text(f"codec: {{kind: nanocodec, weights: {tiny_codec_dir}}}\n")
    from_python, from_cli = tmp_path / "python", tmp_path / "cli"
    options = PrepareOptions(input=str(tones), output=str(from_python), speaker="alice", progress=False)
    assert prepare.run(options, config_dir=config_dir) == 0
    assert f"wrote {from_python}" in capsys.readouterr().out
    assert main(["prepare", str(tones), str(from_cli), "--speaker", "alice", "--no-progress",
                 "--config-dir", str(config_dir)]) == 0
    a, b = _load(from_python), _load(from_cli)
    assert a.column_names == b.column_names and a.features == b.features
    assert a.to_list() == b.to_list()
    summaries = [json.loads((out / "kanitts_prepare.json").read_text())["manifest"] for out in (from_python, from_cli)]
    assert summaries[0]["codec"] == summaries[1]["codec"]
    assert summaries[0]["codec"]["name_or_path"] == str(tiny_codec_dir)
    assert summaries[0]["fingerprint"] == summaries[1]["fingerprint"]
    # the spec the recipe makes: the config's codec unless the caller names one
    assert prepare.resolve_codec(config_dir) == CodecSpec(kind="nanocodec", weights=str(tiny_codec_dir))
    assert prepare.resolve_codec(config_dir, weights="other").weights == "other"


def test_prepare_warns_that_the_codec_model_name_is_not_used(tmp_path, capsys):
    """A reference-era codec.model_name does not pick the codec: kind + weights do, and prepare says so."""
    from kanitts.recipes import prepare

    (tmp_path / "model_config.yaml").write_text("codec: {model_name: nvidia/other-codec, weights: some/weights}\n")
    assert prepare.resolve_codec(tmp_path) == CodecSpec(kind="nanocodec", weights="some/weights")
    assert (f"warning: {tmp_path / 'model_config.yaml'}: codec.model_name ('nvidia/other-codec') is not used: "
            "the codec is codec.kind + codec.weights (nanocodec, some/weights); remove it") in capsys.readouterr().err


def _two_ranks(cmd: list[str], tmp_path: Path) -> list[tuple[str, str]]:
    """Run ``cmd`` as ranks 0 and 1 of one gloo job (what torchrun sets up); their (stdout, stderr)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = str(Path(__file__).resolve().parents[1] / "src")
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
        procs.append(
            subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    outputs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    return outputs


@pytest.mark.slow
def test_two_processes_with_torch_distributed(tones, tiny_codec_dir, tmp_path):
    """What `torchrun --nproc_per_node 2 -m kanitts prepare ...` does, on CPU with gloo."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "kanitts", "prepare", str(tones), str(out), "--codec-model",
           str(tiny_codec_dir), "--shard-size", "2", "--no-progress", "--device", "cpu"]
    outputs = _two_ranks(cmd, tmp_path)
    assert "wrote" in outputs[0][0]
    ds = _load(out)
    assert len(ds) == 6 and ds["source"] == [f"t{i}.wav" for i in range(6)]


RECIPE_IN_A_RANK = """
import sys
from pathlib import Path

import torch.distributed as dist

from kanitts.prepare.options import PrepareOptions
from kanitts.recipes import prepare

tones, out, codec_dir = sys.argv[1:]
options = PrepareOptions(input=tones, output=out, shard_size=2, progress=False)
code = prepare.run(options, config_dir=Path("no-config"), codec_model=codec_dir, device="cpu")
print("group after the run:", dist.is_initialized())
sys.exit(code)
"""


@pytest.mark.slow
def test_the_process_group_prepare_makes_is_destroyed_after_the_run(tones, tiny_codec_dir, tmp_path):
    """A script or notebook that goes on after prepare is not left holding a gloo group."""
    out = tmp_path / "out"
    outputs = _two_ranks([sys.executable, "-c", RECIPE_IN_A_RANK, str(tones), str(out), str(tiny_codec_dir)], tmp_path)
    assert [o[0].strip().splitlines()[-1] for o in outputs] == ["group after the run: False"] * 2
    assert len(_load(out)) == 6


def test_length_bucketing():
    from kanitts.prepare.cleaning import Clip
    from kanitts.prepare.encoding import length_buckets

    clips = [Clip(item=i, audio=np.zeros(n, np.float32)) for i, n in enumerate([100, 95, 92, 50, 48, 10, 99])]
    batches = length_buckets(clips, budget_samples=10_000, max_batch=64)
    assert [[c.item for c in b] for b in batches] == [[0, 6, 1, 2], [3, 4], [5]]
    small = length_buckets(clips, budget_samples=200, max_batch=64)  # two 100-sample clips per batch
    assert all(len(b) * len(b[0].audio) <= 200 for b in small)
    assert sum(len(b) for b in small) == len(clips)
    assert all(len(b) <= 2 for b in length_buckets(clips, 10_000, max_batch=2))


def test_source_errors_and_malformed_lines(tones, tiny_codec_dir, tmp_path):
    from kanitts.prepare.sources import open_source

    def source(given, kind="auto"):
        return open_source(PrepareOptions(input=str(given), output="unused", input_kind=kind))

    with pytest.raises(UserError, match="cannot load the dataset 'nobody/nothing'"):
        source("nobody/nothing", "hf")  # offline in tests: a clear error, not a traceback
    with pytest.raises(UserError, match="does not exist"):
        source(tmp_path / "nowhere")
    with pytest.raises(UserError, match=r"input clips\.csv does not exist \(a Hub dataset id is owner/name\)"):
        source("clips.csv")  # a relative file name that is missing, not a Hub dataset
    (tmp_path / "bad.csv").write_text("file,transcript\na.wav,hello\n")
    with pytest.raises(UserError, match="missing path, text"):
        source(tmp_path / "bad.csv")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(UserError, match="cannot load the dataset"):
        source(tmp_path / "empty_dir")  # a folder without metadata.csv is read as an HF dataset
    with pytest.raises(UserError, match=r"no metadata\.csv"):
        source(tones.parent)  # audio files but no transcripts

    lines = tones.read_text().splitlines()[:1] + [
        "{not json", json.dumps({"path": "t1.wav"}), json.dumps({"path": "gone.wav", "text": "x"})
    ]
    manifest = tones.with_name("mixed.jsonl")
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    result = _prepare(manifest, out, tiny_codec_dir)
    assert result.rows == 1
    assert _rejected(out) == {"mixed.jsonl:2": "malformed", "mixed.jsonl:3": "malformed", "gone.wav": "missing audio"}


# --- transcript encodings ---------------------------------------------------------------------


@pytest.fixture
def two_tones(tmp_path):
    root = tmp_path / "enc"
    root.mkdir()
    for name in ("a", "b"):
        _tone(root / f"{name}.wav", 0.8)
    return root


def test_manifest_in_another_encoding_is_named_then_read_with_encoding(two_tones, tiny_codec_dir, tmp_path):
    from kanitts.cli import main

    manifest = two_tones / "manifest.csv"
    manifest.write_bytes("path,text\na.wav,un café noir\nb.wav,déjà vu again\n".encode("cp1252"))
    out = tmp_path / "out"
    with pytest.raises(UserError) as err:
        _prepare(manifest, out, tiny_codec_dir)
    message = str(err.value)
    assert str(manifest) in message and "line 2, byte 13 of that line (byte 23 of the file) is 0xE9" in message
    assert "--encoding cp1252" in message and "iconv -f cp1252 -t utf-8" in message
    assert not out.exists() and not Path(str(out) + ".partial").exists()  # refused before anything is written

    _prepare(manifest, out, tiny_codec_dir, encoding="cp1252")
    assert _load(out)["text"] == ["un café noir", "déjà vu again"]

    # UTF-16 with a byte-order mark is recognised without --encoding
    manifest.write_text("path,text\na.wav,un café noir\nb.wav,déjà vu again\n", encoding="utf-16")
    _prepare(manifest, tmp_path / "u16", tiny_codec_dir)
    assert _load(tmp_path / "u16")["text"] == ["un café noir", "déjà vu again"]
    # ... without one it is named, with the codec to pass
    manifest.write_text("path,text\na.wav,tea\n", encoding="utf-16-le")
    with pytest.raises(UserError, match=r"line 1 holds a NUL byte.*--encoding utf-16-le"):
        _prepare(manifest, tmp_path / "x", tiny_codec_dir)

    # metadata.csv of a folder, through the CLI
    (two_tones / "manifest.csv").unlink()
    (two_tones / "metadata.csv").write_bytes("a|Grüße\nb|naïve\n".encode("latin-1"))
    argv = ["prepare", str(two_tones), str(tmp_path / "meta"), "--codec-model", str(tiny_codec_dir), "--no-progress"]
    assert main(argv) == 1
    assert main([*argv, "--encoding", "latin-1"]) == 0
    assert _load(tmp_path / "meta")["text"] == ["Grüße", "naïve"]
    with pytest.raises(UserError, match="--encoding 'klingon' is not a text encoding"):
        _prepare(two_tones, tmp_path / "y", tiny_codec_dir, encoding="klingon")


def test_cli_names_the_undecodable_metadata_line(two_tones, tiny_codec_dir, tmp_path, capsys):
    from kanitts.cli import main

    (two_tones / "metadata.csv").write_bytes(b"a|fine\nb|caf\xe9\n")
    assert main(["prepare", str(two_tones), str(tmp_path / "o"), "--codec-model", str(tiny_codec_dir)]) == 1
    err = capsys.readouterr().err
    assert "metadata.csv: line 2, byte 6 of that line" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


# --- suspect clips ------------------------------------------------------------------------------


@pytest.fixture
def suspects(tmp_path):
    """A good clip, a clipped one, a float file past full scale, and two whose transcripts do not
    fit their length."""
    root = tmp_path / "suspects"
    root.mkdir()
    _tone(root / "ok.wav", 1.0)
    t = np.arange(SR) / SR
    sf.write(root / "clipped.wav", np.clip(3.0 * np.sin(2 * np.pi * 180 * t), -1, 1), SR, subtype="PCM_16")
    sf.write(root / "hot.wav", (1.6 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), SR, subtype="FLOAT")
    _tone(root / "rush.wav", 0.5)
    _tone(root / "sparse.wav", 3.0)
    lines = [
        "ok|a normal sentence",
        "clipped|a loud sentence",
        "hot|a float sentence",
        "rush|" + "far too many words for half a second of audio, " * 2,
        "sparse|hm",
    ]
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def test_suspect_clips_are_kept_with_warnings(suspects, tiny_codec_dir, tmp_path):
    out = tmp_path / "out"
    result = _prepare(suspects, out, tiny_codec_dir)
    ds = _load(out)
    warnings = dict(zip(ds["source"], ds["warnings"]))
    assert warnings["ok.wav"] == ""
    assert warnings["clipped.wav"].startswith("clipped: ")
    assert "% of the samples at full scale" in warnings["clipped.wav"]
    assert warnings["hot.wav"].startswith("over full scale: peak 1.6 (+4.1 dBFS)")
    assert warnings["rush.wav"] == "text too long: 93 characters in 0.50 s (186.0/s > 30/s)"
    assert warnings["sparse.wav"] == "text too short: 2 characters in 3.00 s (0.7/s < 2/s)"
    assert result.rows == 5 and result.rejected == 0 and result.warned == 4
    assert result.warnings_by_kind == {"clipped": 1, "over full scale": 1, "text too long": 1, "text too short": 1}
    summary = result.summary()
    assert "kept 4 suspect clip(s) with warnings" in summary
    for source in ("clipped.wav", "hot.wav", "rush.wav", "sparse.wav"):
        assert f"  {source}: {warnings[source]}" in summary
    info = json.loads((out / "kanitts_prepare.json").read_text())
    assert info["warned"] == 4 and info["warnings_by_kind"]["clipped"] == 1

    # thresholds are options: a permissive run warns about nothing
    loose = _prepare(suspects, tmp_path / "loose", tiny_codec_dir, max_clipped_fraction=1.0,
                                  min_chars_per_second=0, max_chars_per_second=500)
    assert loose.warned == 1 and loose.warnings_by_kind == {"over full scale": 1}  # a fact, not a threshold


def test_suspect_clips_can_be_rejected(suspects, tiny_codec_dir, tmp_path):
    out = tmp_path / "out"
    result = _prepare(suspects, out, tiny_codec_dir, suspect_clips="reject")
    assert _load(out)["source"] == ["ok.wav"] and _load(out)["warnings"] == [""]
    assert _rejected(out) == {
        "clipped.wav": "clipped", "hot.wav": "over full scale", "rush.wav": "text too long",
        "sparse.wav": "text too short",
    }
    assert result.rejected == 4 and result.warned == 0
    with open(out / "rejected.csv", newline="") as f:
        details = {r["source"]: r["detail"] for r in csv.DictReader(f)}
    assert details["rush.wav"].startswith("text too long: 93 characters")


def test_suspect_clip_options_are_checked(suspects, tiny_codec_dir, tmp_path):
    with pytest.raises(UserError, match=r"characters per second must satisfy 0 <= min \(40\) < max \(30\)"):
        _prepare(suspects, tmp_path / "a", tiny_codec_dir, min_chars_per_second=40)
    with pytest.raises(UserError, match="--suspect-clips must be warn or reject"):
        _prepare(suspects, tmp_path / "b", tiny_codec_dir, suspect_clips="drop")
    with pytest.raises(UserError, match=r"--clip-level must lie in \(0, 1\]"):
        _prepare(suspects, tmp_path / "c", tiny_codec_dir, clip_level=1.5)
