"""Codec dataset sources: save_to_disk folders, parquet / jsonl / csv files, Hub ids, and their errors."""

from __future__ import annotations

import gzip
import json

import datasets
import pytest

from kanitts.config import DatasetEntry, ModelConfig
from kanitts.errors import UserError
from kanitts.sequences.sources import load_source

LAYERS = ModelConfig().codec_layers  # NanoCodec: nano_layer_1..4

ROWS = [
    {"text": "Hello.", "nano_layer_1": [1, 2], "nano_layer_2": [3, 4], "nano_layer_3": [5, 6],
     "nano_layer_4": [7, 8], "encoded_len": 2, "speaker": "alice"},
    {"text": "Bye.", "nano_layer_1": [9], "nano_layer_2": [10], "nano_layer_3": [11],
     "nano_layer_4": [12], "encoded_len": 1, "speaker": "bob"},
]


def table():
    return datasets.Dataset.from_list(ROWS)


def rows_of(ds):
    return [{k: ds[i][k] for k in ROWS[0]} for i in range(len(ds))]


def test_save_to_disk_folder(tmp_path):
    table().save_to_disk(str(tmp_path / "ds"))
    assert rows_of(load_source(DatasetEntry(reponame=str(tmp_path / "ds")), LAYERS)) == ROWS


def test_dataset_dict_folder_takes_the_split_and_names_the_ones_it_has(tmp_path):
    datasets.DatasetDict({"train": table(), "test": table().select([1])}).save_to_disk(str(tmp_path / "dd"))
    assert rows_of(load_source(DatasetEntry(reponame=str(tmp_path / "dd"), split="test"), LAYERS)) == ROWS[1:]
    with pytest.raises(UserError, match=r"split 'dev' not found in .*dd; it has \['test', 'train'\]"):
        load_source(DatasetEntry(reponame=str(tmp_path / "dd"), split="dev"), LAYERS)


def test_parquet_file_and_glob(tmp_path):
    table().to_parquet(str(tmp_path / "a.parquet"))
    table().select([1]).to_parquet(str(tmp_path / "b.parquet"))
    assert rows_of(load_source(DatasetEntry(reponame=str(tmp_path / "a.parquet")), LAYERS)) == ROWS
    assert rows_of(load_source(DatasetEntry(reponame=str(tmp_path / "*.parquet")), LAYERS)) == ROWS + ROWS[1:]


def test_folder_of_gzipped_jsonl_shards(tmp_path):
    # The layout the NanoCodec dataset pipeline writes: <prefix>-workerNN-NNNNN.jsonl.gz
    folder = tmp_path / "out"
    folder.mkdir()
    for i, r in enumerate(ROWS):
        with gzip.open(folder / f"ds-worker00-{i:05d}.jsonl.gz", "wt") as f:
            f.write(json.dumps(r) + "\n")
    assert rows_of(load_source(DatasetEntry(reponame=str(folder)), LAYERS)) == ROWS


def test_csv_lists_are_parsed_back(tmp_path):
    path = tmp_path / "codes.csv"
    table().to_csv(str(path))
    loaded = load_source(DatasetEntry(reponame=str(path)), LAYERS)
    assert rows_of(loaded) == ROWS
    assert loaded.features["nano_layer_1"].feature.dtype == "int64"


def test_csv_with_a_broken_list_names_the_row(tmp_path):
    path = tmp_path / "codes.csv"
    path.write_text('text,nano_layer_1,nano_layer_2,nano_layer_3,nano_layer_4,encoded_len\n'
                    'a,"[1]","[2]","[3]","[4]",1\nb,"[1","[2]","[3]","[4]",1\n')
    with pytest.raises(UserError, match=r"row 1: column 'nano_layer_1' is not a list of codes: '\[1'"):
        load_source(DatasetEntry(reponame=str(path)), LAYERS)


@pytest.mark.parametrize("reponame, message", [
    ("{tmp}/missing.parquet", "no file matches"),
    ("./not/here", "looks like a local path but does not exist"),
    ("not-here", "looks like a local path but does not exist"),
    ("a/b/c", "looks like a local path but does not exist"),
    ("{tmp}", "is neither a save_to_disk folder nor holds data files"),
])
def test_local_paths_that_do_not_hold_data(tmp_path, reponame, message):
    with pytest.raises(UserError, match=message):
        load_source(DatasetEntry(reponame=reponame.format(tmp=tmp_path)), LAYERS)


def test_hub_id_offline_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError, match=r"dataset someone/no-such-codec-set: cannot load .*offline mode is on"):
        load_source(DatasetEntry(reponame="someone/no-such-codec-set"), LAYERS)
