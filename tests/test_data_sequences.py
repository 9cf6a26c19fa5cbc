"""Training sequences: parity with the reference algorithm, bad data, drop reports and the cache."""

from __future__ import annotations

import copy
import json

import datasets
import numpy as np
import pytest

from kanitts.config import DatasetConfig
from kanitts.errors import UserError
from kanitts.sequences import build, build_training_dataset, cache, steps
from kanitts.sequences.summary import RowStatus, TrainingDataReport

from reference import data_processing as reference  # the oracle, shared with benchmarks/bench_data.py

CODEBOOK = 4032


def frames(*columns):
    """Codes (4, F) from a list of frames given as 4-tuples."""
    return np.array(columns, dtype=np.int64).T


def row(text, codes, speaker="alice", encoded_len=None, layers=None):
    layers = layers if layers is not None else [list(c) for c in codes]
    return {
        "text": text,
        **{f"nano_layer_{k + 1}": [int(v) for v in layers[k]] for k in range(4)},
        "encoded_len": codes.shape[1] if encoded_len is None else encoded_len,
        "speaker": speaker,
    }


def clean_rows():
    """Hand-made rows: repeated frames inside a row and across rows, two speakers, various lengths."""
    rng = np.random.default_rng(1)
    rows = [
        row("Hello there.", frames((1, 2, 3, 4), (1, 2, 3, 4), (1, 2, 3, 4), (5, 6, 7, 8))),
        row("The quick brown fox.", frames((5, 6, 7, 8), (5, 6, 7, 9), (5, 6, 7, 9), (5, 6, 7, 8)), speaker="bob"),
        row("One frame.", frames((0, 0, 0, 0))),
        row("All the same.", frames(*[(4031, 4031, 4031, 4031)] * 6), speaker="bob"),
    ]
    for i in range(16):
        count = int(rng.integers(1, 60))  # up to 4.8 s at 12.5 fps
        codes = rng.integers(0, CODEBOOK, size=(4, count))
        if count > 4:
            codes[:, 2:4] = codes[:, [1]]
        rows.append(row(f"Sentence number {i}, café!", codes, speaker="alice" if i % 3 else "bob"))
    return rows


def save(rows, path):
    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return str(path)


def config(tmp_path, entries, **extra):
    return DatasetConfig.model_validate({"hf_datasets": entries, "cache_dir": str(tmp_path / "cache"), **extra})


def assert_same_as_reference(cfg, tiny_tts, tokenizer, **kwargs):
    folder, model_cfg = tiny_tts
    ours, report = build_training_dataset(cfg, model_cfg, tokenizer, **kwargs)
    expected = reference.reference_training_dataset(
        cfg, model_cfg, str(folder), final_shuffle_seed=cfg.seed, max_len_seed=cfg.seed
    )
    assert len(ours) == len(expected) > 0
    assert reference.same_sequences(expected, ours)
    assert ours.column_names == build.OUTPUT_COLUMNS
    assert ours["length"] == [len(ids) for ids in ours["input_ids"]]
    return ours, report


@pytest.mark.parametrize(
    "entries, extra",
    [
        pytest.param([{"speaker_id": "Alice"}], {}, id="speaker-no-filters"),
        pytest.param([{}], {"max_duration_sec": 3.0}, id="no-speaker-duration-filter"),
        pytest.param(
            [
                {
                    "speaker_id": "Alice", "max_len": 5,
                    "categorical_filter": {"column_name": "speaker", "value": "alice"},
                },
                {"speaker_id": "bob", "categorical_filter": {"column_name": "speaker", "value": "bob"}},
                {"max_len": 7},
            ],
            {"max_duration_sec": 4.0, "seed": 7},
            id="three-datasets-categorical-max-len-seed",
        ),
    ],
)
def test_matches_the_reference_token_for_token(tmp_path, tiny_tts, tiny_tokenizer, entries, extra):
    source = save(clean_rows(), tmp_path / "codec")
    cfg = config(tmp_path, [{"reponame": source, **e} for e in entries], **extra)
    ours, report = assert_same_as_reference(cfg, tiny_tts, tiny_tokenizer)
    assert report.rows == len(ours)


def test_worker_processes_keep_row_order(tmp_path, tiny_tts, tiny_tokenizer, monkeypatch):
    monkeypatch.setattr(build, "MIN_ROWS_PER_PROCESS", 4)
    monkeypatch.setattr(build, "MAP_BATCH_SIZE", 3)
    source = save(clean_rows(), tmp_path / "codec")
    cfg = config(tmp_path, [{"reponame": source, "speaker_id": "x", "max_len": 12}], max_duration_sec=4.0)
    assert_same_as_reference(cfg, tiny_tts, tiny_tokenizer, num_proc=2)


def test_large_outputs_are_gathered_from_disk_with_the_same_result(tmp_path, tiny_tts, tiny_tokenizer, monkeypatch):
    monkeypatch.setattr(build, "IN_MEMORY_GATHER_BYTES", 0)
    source = save(clean_rows(), tmp_path / "codec")
    cfg = config(tmp_path, [{"reponame": source, "speaker_id": "x", "max_len": 12}, {"reponame": source}])
    assert_same_as_reference(cfg, tiny_tts, tiny_tokenizer)


def test_sequence_layout_and_columns(tmp_path, tiny_tts, tiny_tokenizer, tiny_layout):
    codes = frames((1, 2, 3, 4), (1, 2, 3, 4), (9, 9, 9, 9))
    cfg = config(tmp_path, [{"reponame": save([row("Hi", codes, speaker="z")], tmp_path / "c"), "speaker_id": "Carol"}])
    out, _ = build_training_dataset(cfg, tiny_tts[1], tiny_tokenizer)
    text_ids = tiny_tokenizer.encode("carol: Hi", add_special_tokens=True)
    expected = tiny_layout.training_ids(text_ids, tiny_layout.frames_to_ids(codes))
    assert out[0]["input_ids"] == expected == out[0]["labels"]
    assert out[0]["attention_mask"] == [1] * len(expected)
    assert (out[0]["speaker"], out[0]["dataset"], out[0]["length"]) == (
        "Carol", cfg.hf_datasets[0].label, len(expected)
    )
    assert out.features["input_ids"].feature.dtype == "int32" and out.features["labels"].feature.dtype == "int64"


def test_dedup_frames_off_keeps_every_frame(tmp_path, tiny_tts, tiny_tokenizer, tiny_layout):
    codes = frames((1, 2, 3, 4), (1, 2, 3, 4), (1, 2, 3, 4), (9, 9, 9, 9))
    source = save([row("Hi", codes)], tmp_path / "c")
    cfg = config(tmp_path, [{"reponame": source}], dedup_frames=False)
    out, report = build_training_dataset(cfg, tiny_tts[1], tiny_tokenizer)
    text_ids = tiny_tokenizer.encode("Hi", add_special_tokens=True)
    assert out[0]["input_ids"] == tiny_layout.training_ids(text_ids, tiny_layout.frames_to_ids(codes, dedup=False))
    assert report.datasets[0].frames_removed_as_repeats == 0
    deduped, report = build_training_dataset(config(tmp_path, [{"reponame": source}]), tiny_tts[1], tiny_tokenizer)
    assert len(deduped[0]["input_ids"]) == len(out[0]["input_ids"]) - 8
    assert report.datasets[0].frames_removed_as_repeats == 2


def test_batched_tokenization_equals_per_row_encode(tiny_tokenizer):
    prompts = ["alice: Hello there.", "Ünïcödé and  double  spaces ", "x", "bob: 12:30, numbers 3.14!", "a" * 300,
               "text with <|endoftext|> inside"]
    expected = [tiny_tokenizer.encode(p, add_special_tokens=True) for p in prompts]
    assert steps.encode_prompts(tiny_tokenizer, prompts) == expected

    class WithoutFastPath:  # a tokenizer seen only through its __call__
        def __call__(self, texts, **kwargs):
            return tiny_tokenizer(texts, **kwargs)

    assert steps.encode_prompts(WithoutFastPath(), prompts) == expected

    truncating = copy.deepcopy(tiny_tokenizer)  # saved with truncation on: transformers turns it off
    truncating.backend_tokenizer.enable_truncation(max_length=3)
    assert steps.encode_prompts(truncating, prompts) == expected


@pytest.mark.parametrize("rows, max_len", [(10, 4), (10, 10), (1, 1), (57, 20)])
def test_max_len_sample_is_the_one_datasets_shuffle_draws(rows, max_len):
    table = datasets.Dataset.from_dict({"i": list(range(rows))})
    expected = table.shuffle(seed=42).select(range(max_len))["i"]
    kept = np.arange(rows) * 3  # any increasing row indices
    status = np.zeros(rows * 3, dtype=np.int8)
    chosen, notes = steps.apply_max_len(kept, status, max_len, seed=42)
    assert (chosen // 3).tolist() == expected
    assert int((status == RowStatus.OVER_MAX_LEN).sum()) == rows - max_len
    assert notes == []


def test_max_len_above_the_row_count_keeps_all_and_says_so():
    status = np.zeros(5, dtype=np.int8)
    chosen, notes = steps.apply_max_len(np.arange(5), status, 8, seed=42)
    assert sorted(chosen.tolist()) == [0, 1, 2, 3, 4]
    assert "max_len 8" in notes[0] and "5 rows" in notes[0]


# --- bad data ----------------------------------------------------------------------------------


def bad_rows():
    good = frames((1, 2, 3, 4), (5, 6, 7, 8))
    return [
        row("Good one.", good),                                                         # 0
        row("Layers differ.", good, layers=[[1, 5], [2, 6], [3], [4, 8]]),              # 1
        row("Wrong length.", good, encoded_len=4),                                      # 2
        row("Code too big.", frames((1, 2, 3, 4), (5, 6, CODEBOOK, 8))),                # 3
        row("Negative code.", frames((1, -1, 3, 4))),                                   # 4
        row("", good),                                                                  # 5
        row("   ", good),                                                               # 6
        row("No audio.", np.zeros((4, 0), dtype=np.int64)),                            # 7
        row("Another good one.", frames((7, 7, 7, 7))),                                 # 8
        row("Layers differ again.", good, layers=[[1, 5], [2, 6], [3, 7], []]),         # 9
    ]


def test_bad_rows_are_skipped_counted_and_reported_with_an_example(tmp_path, tiny_tts, tiny_tokenizer):
    cfg = config(tmp_path, [{"reponame": save(bad_rows(), tmp_path / "bad"), "speaker_id": "alice"}])
    out, report = build_training_dataset(cfg, tiny_tts[1], tiny_tokenizer)
    dropped = {k: (d.count, d.example_row) for k, d in report.datasets[0].dropped.items()}
    assert dropped == {
        "layer_lengths_differ": (2, 1),
        "encoded_len_mismatch": (1, 2),
        "code_out_of_range": (2, 3),
        "empty_text": (2, 5),
        "no_audio": (1, 7),
    }
    assert (report.datasets[0].rows_in, report.rows, len(out)) == (10, 2, 2)
    summary = report.format()
    assert "codec layers differ in length (bad data) (e.g. row 1)" in summary
    assert "codes outside [0, codebook_size) (bad data) (e.g. row 3)" in summary

    # What survives is exactly what the reference makes of the good rows alone.
    good = save([bad_rows()[i] for i in (0, 8)], tmp_path / "good")
    clean = config(tmp_path, [{"reponame": good, "speaker_id": "alice"}])
    expected = reference.reference_training_dataset(clean, tiny_tts[1], str(tiny_tts[0]), final_shuffle_seed=42)
    assert reference.same_sequences(expected, out)


def test_encoded_len_one_frame_off_is_kept_and_counted_as_the_reference_keeps_it(tmp_path, tiny_tts, tiny_tokenizer):
    """The reference never compares encoded_len with the layers: it filters on encoded_len and
    trains on the layers. One frame off (another padding rule) is kept and trained the same way."""
    rng = np.random.default_rng(3)
    rows = [row(f"Row {i}.", rng.integers(0, CODEBOOK, size=(4, n))) for i, n in enumerate((5, 9, 38, 12))]
    rows[1]["encoded_len"] = 10  # one more than the layers
    rows[2]["encoded_len"] = 37  # one less: 2.96 s passes max_duration_sec 3.0, its 38 layer frames would not
    rows.append(row("Far off.", rng.integers(0, CODEBOOK, size=(4, 6)), encoded_len=8))  # 4
    cfg = config(tmp_path, [{"reponame": save(rows, tmp_path / "off"), "speaker_id": "alice"}], max_duration_sec=3.0)
    out, report = build_training_dataset(cfg, tiny_tts[1], tiny_tokenizer)
    summary = report.datasets[0]
    off_by_one = summary.encoded_len_off_by_one
    assert (summary.rows_kept, off_by_one.count, off_by_one.example_row) == (4, 2, 1)
    assert {k: (d.count, d.example_row) for k, d in summary.dropped.items()} == {"encoded_len_mismatch": (1, 4)}
    text = report.format()
    assert (
        "2 kept row(s) with encoded_len one frame off the layers, trained on the layers as the reference does "
        "(e.g. row 1)"
    ) in text
    assert "encoded_len more than one frame off the layers (bad data) (e.g. row 4)" in text
    assert TrainingDataReport.from_json(report.to_json()) == report
    kept = config(
        tmp_path, [{"reponame": save(rows[:4], tmp_path / "kept"), "speaker_id": "alice"}], max_duration_sec=3.0
    )
    expected = reference.reference_training_dataset(kept, tiny_tts[1], str(tiny_tts[0]), final_shuffle_seed=42)
    assert len(expected) == 4 and reference.same_sequences(expected, out)


def test_missing_column_names_dataset_column_and_what_it_has(tmp_path, tiny_tts, tiny_tokenizer):
    source = save([{k: v for k, v in row("x", frames((1, 1, 1, 1))).items() if k != "nano_layer_3"}], tmp_path / "c")
    cfg = config(tmp_path, [{"reponame": source, "text_col_name": "transcript"}])
    with pytest.raises(UserError) as err:
        build_training_dataset(cfg, tiny_tts[1], tiny_tokenizer)
    message = str(err.value)
    assert f"dataset {source}: column 'transcript' (text_col_name) not found" in message
    assert "column 'nano_layer_3' (nano_layer_3) not found" in message
    columns = "['text', 'nano_layer_1', 'nano_layer_2', 'nano_layer_4', 'encoded_len', 'speaker']"
    assert f"it has columns {columns}" in message


def test_wrong_column_type_is_named(tmp_path, tiny_tts, tiny_tokenizer):
    source = save([{**row("x", frames((1, 1, 1, 1))), "nano_layer_2": "1"}], tmp_path / "c")
    expected = r"column 'nano_layer_2' \(nano_layer_2\) holds string, expected lists of integer codes"
    with pytest.raises(UserError, match=expected):
        build_training_dataset(config(tmp_path, [{"reponame": source}]), tiny_tts[1], tiny_tokenizer)


@pytest.mark.parametrize(
    "entry, extra, expected",
    [
        (
            {"categorical_filter": {"column_name": "speaker", "value": "carol"}},
            {},
            (
                r"no rows left after categorical_filter \(speaker == 'carol'\): it matches none of the 20 rows; "
                r"values in column 'speaker' include \['alice', 'bob'\]"
            ),
        ),
        (
            {}, {"max_duration_sec": 0.01},
            r"no rows left after max_duration_sec: 0.01 \(20 of 20 .*shortest clip is 0.1 s",
        ),
    ],
)
def test_a_dataset_emptied_by_a_filter_names_the_filter(tmp_path, tiny_tts, tiny_tokenizer, entry, extra, expected):
    source = save(clean_rows(), tmp_path / "c")
    cfg = config(tmp_path, [{"reponame": source, "speaker_id": "a"}, {"reponame": source, **entry}], **extra)
    with pytest.raises(UserError, match=rf"dataset {source}( #2)?: {expected}"):
        build_training_dataset(cfg, tiny_tts[1], tiny_tokenizer)


def test_a_dataset_of_only_bad_rows_lists_the_reasons(tmp_path, tiny_tts, tiny_tokenizer):
    source = save([bad_rows()[i] for i in (1, 3)], tmp_path / "c")
    expected = r"after the bad-data checks.*1 codec layers differ in length .*e\.g\. row 0\), 1 codes outside"
    with pytest.raises(UserError, match=expected):
        build_training_dataset(config(tmp_path, [{"reponame": source}]), tiny_tts[1], tiny_tokenizer)


# --- report and cache --------------------------------------------------------------------------


def test_report_per_speaker_and_saved_next_to_the_cache(tmp_path, tiny_tts, tiny_tokenizer):
    source = save(clean_rows(), tmp_path / "c")
    cfg = config(tmp_path, [{"reponame": source}], max_duration_sec=3.0)
    out, report = build_training_dataset(cfg, tiny_tts[1], tiny_tokenizer)
    dataset = report.datasets[0]
    assert [s.name for s in dataset.speakers] == ["alice", "bob"]
    assert sum(s.rows_kept for s in dataset.speakers) == dataset.rows_kept == len(out)
    assert sum(s.rows_in for s in dataset.speakers) == dataset.rows_in == 20
    assert dataset.tokens == sum(out["length"])
    by_speaker = {s.name: s.dropped["too_long"].count for s in dataset.speakers}
    assert sum(by_speaker.values()) == dataset.dropped["too_long"].count
    assert f"  of which speaker bob: {by_speaker['bob']} too_long" in report.format()
    assert dataset.lengths.max == max(out["length"]) and dataset.lengths.percentiles["p50"] > 0
    frames_kept = sum(r["encoded_len"] for r in clean_rows() if r["encoded_len"] / 12.5 <= 3.0)
    assert dataset.audio_hours == pytest.approx(frames_kept / 12.5 / 3600)
    folder = tmp_path / "cache" / report.fingerprint
    assert sorted(p.name for p in folder.iterdir()) == ["lengths.png", "sequences.arrow", "summary.json"]
    assert (folder / "lengths.png").read_bytes()[:4] == b"\x89PNG"
    assert TrainingDataReport.from_json((folder / "summary.json").read_text()) == report
    assert json.loads(report.to_json())["datasets"][0]["dropped"]["too_long"]["count"] == 20 - len(out)


def test_second_run_reuses_the_cache_and_inputs_invalidate_it(tmp_path, tiny_tts, tiny_tokenizer, monkeypatch):
    source = save(clean_rows(), tmp_path / "c")
    cfg = config(tmp_path, [{"reponame": source, "speaker_id": "alice"}])
    first, report = build_training_dataset(cfg, tiny_tts[1], tiny_tokenizer)
    assert not report.from_cache

    def must_not_run(*args, **kwargs):
        raise AssertionError("rebuilt although cached")

    monkeypatch.setattr(build, "_build", must_not_run)
    again, cached = build_training_dataset(cfg, tiny_tts[1], tiny_tokenizer)
    assert cached.from_cache and cached.fingerprint == report.fingerprint
    assert again["input_ids"] == first["input_ids"]
    assert cached.format().endswith(f"reused training sequences (cached in {tmp_path / 'cache' / report.fingerprint})")
    monkeypatch.undo()

    changed = [
        config(tmp_path, [{"reponame": source, "speaker_id": "bob"}]),
        config(tmp_path, [{"reponame": source, "speaker_id": "alice"}], seed=1),
        config(tmp_path, [{"reponame": source, "speaker_id": "alice"}], dedup_frames=False),
    ]
    keys = {cache.cache_key(c, tiny_tts[1], tiny_tokenizer, [datasets.load_from_disk(source)]) for c in changed}
    assert len(keys | {report.fingerprint}) == 4
    save(clean_rows()[:5], tmp_path / "c2")
    other_cfg = config(tmp_path, [{"reponame": str(tmp_path / "c2"), "speaker_id": "alice"}])
    _, other = build_training_dataset(other_cfg, tiny_tts[1], tiny_tokenizer)
    assert other.fingerprint != report.fingerprint
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_rebuild_ignores_the_cache(tmp_path, tiny_tts, tiny_tokenizer):
    cfg = config(tmp_path, [{"reponame": save(clean_rows(), tmp_path / "c")}])
    build_training_dataset(cfg, tiny_tts[1], tiny_tokenizer)
    out, report = build_training_dataset(cfg, tiny_tts[1], tiny_tokenizer, rebuild=True)
    assert not report.from_cache and len(out) == 20


def test_a_failed_build_leaves_no_cache(tmp_path, tiny_tts, tiny_tokenizer, monkeypatch):
    cfg = config(tmp_path, [{"reponame": save(clean_rows(), tmp_path / "c")}])

    def broken_histogram(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(build, "save_length_histogram", broken_histogram)
    with pytest.raises(RuntimeError):
        build_training_dataset(cfg, tiny_tts[1], tiny_tokenizer)
    assert list((tmp_path / "cache").iterdir()) == []


def test_cli_data_builds_then_reuses(tmp_path, tiny_tts, tiny_tokenizer, capsys):
    import yaml

    from kanitts.cli import main

    source = save(clean_rows(), tmp_path / "codec")
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "dataset_config.yaml").write_text(yaml.safe_dump(
        {"hf_datasets": [{"reponame": source, "speaker_id": "alice"}], "cache_dir": str(tmp_path / "cache")}
    ))
    (config_dir / "model_config.yaml").write_text(yaml.safe_dump(tiny_tts[1].model_dump()))
    argv = ["data", "--config-dir", str(config_dir), "--tokenizer", str(tiny_tts[0])]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "built training sequences" in first and "\n  alice " in first
    assert main(argv) == 0
    assert "reused training sequences" in capsys.readouterr().out
    assert main(argv[:3] + ["--tokenizer", str(tmp_path / "nowhere")]) == 1
    assert "tokenizer" in capsys.readouterr().err


def test_rewriting_a_parquet_source_in_place_invalidates_the_cache(tmp_path, tiny_tts, tiny_tokenizer):
    import os
    import time

    path = tmp_path / "codes.parquet"
    datasets.Dataset.from_list(clean_rows()).to_parquet(str(path))
    cfg = config(tmp_path, [{"reponame": str(path)}])
    _, first = build_training_dataset(cfg, tiny_tts[1], tiny_tokenizer)
    datasets.Dataset.from_list(clean_rows()[:7]).to_parquet(str(path))
    later = time.time() + 5
    os.utime(path, (later, later))  # a new modification time even on coarse-grained file systems
    out, second = build_training_dataset(cfg, tiny_tts[1], tiny_tokenizer)
    assert second.fingerprint != first.fingerprint and not second.from_cache
    assert len(out) == 7


def test_null_cells_are_bad_rows_and_an_empty_file_is_named(tmp_path, tiny_tts, tiny_tokenizer):
    features = datasets.Features({
        "text": datasets.Value("string"),
        **{f"nano_layer_{k}": datasets.List(datasets.Value("int64")) for k in range(1, 5)},
        "encoded_len": datasets.Value("int64"),
    })
    columns = {"text": [None, "Fine.", "No layers."], "encoded_len": [1, 2, None],
               **{f"nano_layer_{k}": [[1], [1, 2], None] for k in range(1, 5)}}
    nulls = tmp_path / "nulls.parquet"
    datasets.Dataset.from_dict(columns, features=features).to_parquet(str(nulls))
    out, report = build_training_dataset(config(tmp_path, [{"reponame": str(nulls)}]), tiny_tts[1], tiny_tokenizer)
    assert len(out) == 1
    dropped = report.datasets[0].dropped
    assert {k: d.example_row for k, d in dropped.items()} == {"empty_text": 0, "encoded_len_mismatch": 2}

    empty = tmp_path / "empty.parquet"
    datasets.Dataset.from_dict({k: [] for k in features}, features=features).to_parquet(str(empty))
    with pytest.raises(UserError, match=rf"dataset {empty}: cannot read parquet files .*no data"):
        build_training_dataset(config(tmp_path, [{"reponame": str(empty)}]), tiny_tts[1], tiny_tokenizer)
