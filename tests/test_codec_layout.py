"""The codec owns its data layout: column names, number of codebooks and codebook size come from
the codec registry and model_config.yaml, and nothing downstream assumes NanoCodec's four."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import yaml

from kanitts.codecs import registry
from kanitts.config import DatasetConfig, ModelConfig, load_config, load_configs
from kanitts.errors import ConfigError, UserError
from kanitts.sequences import build_training_dataset
from kanitts.tokens import TokenLayout


def config(tmp_path, entries):
    return DatasetConfig.model_validate({"hf_datasets": entries, "cache_dir": str(tmp_path / "cache")})


@pytest.fixture
def two_codebook_codec(monkeypatch):
    """A codec kind with two codebooks whose dataset columns are code_1 and code_2 (registry only)."""
    monkeypatch.setitem(registry._REGISTRY, "fake2", registry.CodecEntry("fake.module:Fake2", column_prefix="code_"))
    return "fake2"


@pytest.fixture
def two_codebook_model(tmp_path, tiny_tts, two_codebook_codec):
    """model_config.yaml of the tiny model with the two-codebook codec, read back from the file."""
    raw = tiny_tts[1].model_dump(exclude={"codec_layers"})
    raw["codec"].update(kind=two_codebook_codec, num_codebooks=2, codebook_size=16)
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "model_config.yaml").write_text(yaml.safe_dump(raw))
    return load_config("model", folder)


def test_codec_layers_default_to_what_the_codec_declares(two_codebook_model):
    assert ModelConfig().codec_layers == ["nano_layer_1", "nano_layer_2", "nano_layer_3", "nano_layer_4"]
    assert ModelConfig(codec={"num_codebooks": 2}).codec_layers == ["nano_layer_1", "nano_layer_2"]
    assert two_codebook_model.codec_layers == ["code_1", "code_2"]


def test_two_codebooks_go_through_the_sequence_steps(tmp_path, two_codebook_model, tiny_tokenizer):
    layout = TokenLayout.from_config(two_codebook_model)
    assert layout.num_codebooks == 2 and layout.codebook_size == 16
    codes = [np.array([[1, 1, 5], [2, 2, 6]]), np.array([[15, 0], [3, 3]])]  # (2, frames); a repeat in the first
    rows = [
        {"text": "first", "code_1": c[0].tolist(), "renamed_2": c[1].tolist(), "encoded_len": c.shape[1]}
        for c in codes
    ]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "codes"))
    cfg = config(tmp_path, [{"reponame": str(tmp_path / "codes"), "codebook_columns": {"code_2": "renamed_2"}}])

    out, report = build_training_dataset(cfg, two_codebook_model, tiny_tokenizer, num_proc=1)

    expected = sorted(
        layout.training_ids(tiny_tokenizer.encode("first"), layout.frames_to_ids(c)) for c in codes
    )
    assert sorted(out["input_ids"]) == expected
    assert report.datasets[0].rows_kept == 2 and report.datasets[0].frames_removed_as_repeats == 1
    first = layout.frames_to_ids(codes[0])
    assert first.tolist() == [1 + layout.audio_tokens_start, 2 + layout.audio_tokens_start + 16,
                              5 + layout.audio_tokens_start, 6 + layout.audio_tokens_start + 16]
    decoded = layout.ids_to_frames([layout.start_of_speech, *first.tolist(), layout.end_of_speech])
    assert decoded.codes.tolist() == [[1, 5], [2, 6]] and not decoded.problems


def test_a_missing_codebook_column_names_the_codec_column(tmp_path, two_codebook_model, tiny_tokenizer):
    datasets.Dataset.from_list([{"text": "x", "code_1": [1], "encoded_len": 1}]).save_to_disk(str(tmp_path / "c"))
    with pytest.raises(UserError, match=r"column 'code_2' \(code_2\) not found"):
        cfg = config(tmp_path, [{"reponame": str(tmp_path / "c")}])
        build_training_dataset(cfg, two_codebook_model, tiny_tokenizer)


def test_a_column_key_for_a_codebook_the_codec_lacks_is_an_error(tmp_path, tiny_tts, tiny_tokenizer):
    model = ModelConfig.model_validate({**tiny_tts[1].model_dump(exclude={"codec_layers"}),
                                        "codec": {**tiny_tts[1].codec.model_dump(), "num_codebooks": 2}})
    cfg = config(tmp_path, [{"reponame": str(tmp_path / "nowhere"), "nano_layer_3": "codes_2"}])
    with pytest.raises(UserError) as caught:
        build_training_dataset(cfg, model, tiny_tokenizer)
    assert str(caught.value) == (
        f"dataset {tmp_path / 'nowhere'}: nano_layer_3 names no codebook of the codec; "
        "model_config.yaml codec_layers: ['nano_layer_1', 'nano_layer_2']"
    )


def test_one_codebook_named_twice_is_a_config_error():
    from kanitts.config import DatasetEntry

    with pytest.raises(ValueError, match="codebook_columns renames nano_layer_1, which is also set as its own key"):
        DatasetEntry(reponame="x", nano_layer_1="a", codebook_columns={"nano_layer_1": "b"})


def test_a_codec_kind_without_an_implementation_is_a_config_error(tmp_path, two_codebook_codec):
    (tmp_path / "model_config.yaml").write_text("codec:\n  kind: mimi\n")
    with pytest.raises(ConfigError) as caught:
        load_configs(tmp_path, kinds=("model",))
    assert caught.value.problems == [
        (f"{tmp_path / 'model_config.yaml'}: codec.kind: no codec 'mimi' is implemented; "
         "implemented: fake2, kanade, nanocodec")
    ]
    (tmp_path / "model_config.yaml").write_text("codec:\n  kind: nanocodex\n")
    hint = r"codec\.kind: no codec 'nanocodex' is implemented \(did you mean 'nanocodec'\?\)"
    with pytest.raises(ConfigError, match=hint):
        load_configs(tmp_path, kinds=("model",))
