import shutil
from pathlib import Path

import pytest

from kanitts.cli import main
from kanitts.config import CONFIG_FILES, check_config_dir, load_configs, translate_trainer_args
from kanitts.errors import ConfigError

from conftest import REPO_ROOT

REFERENCE = REPO_ROOT / "tests" / "data" / "reference_configs"


@pytest.mark.parametrize("folder", ["config", "examples/config"])
def test_shipped_configs_are_valid(folder):
    report = check_config_dir(REPO_ROOT / folder)
    assert report.errors == [] and report.warnings == []
    assert len(report.checked) == 6


def test_reference_pipeline_configs_load_unchanged():
    configs = load_configs(REFERENCE)
    assert [e.model_id for e in configs.experiments.experiments] == [
        "alice-tts-v1-lora16", "model_name_to_save_local_exp.0.0.2"]
    assert configs.dataset.hf_datasets[0].categorical_filter.value == "speaker_001"
    assert configs.eval_set.sentences[2].speaker == "bob"
    # warmup_ratio was renamed in newer transformers: translated, with a note
    assert any("warmup_ratio -> warmup_steps" in w for w in configs.warnings)


def test_translate_trainer_args():
    args, notes = translate_trainer_args({"warmup_ratio": 0.1, "learning_rate": 1e-4, "overwrite_output_dir": True})
    assert args == {"warmup_steps": 0.1, "learning_rate": 1e-4}
    assert len(notes) == 2


def _config_dir(tmp_path: Path, **overrides: str) -> Path:
    for name in CONFIG_FILES.values():
        shutil.copy(REPO_ROOT / "config" / name, tmp_path / name)
    for kind, text in overrides.items():
        (tmp_path / CONFIG_FILES[kind]).write_text(text)
    return tmp_path


def _errors(tmp_path, **overrides) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_configs(_config_dir(tmp_path, **overrides))
    return info.value.problems


EXPERIMENTS_BROKEN = """
base_model: some/model
experiments:
  - base: {model_id: good}
    lora_args: {r: 8}
  - base: {model_id: second}
    lora_args: {r: sixteen, lora_alpah: 8, target_modules: [q_proj, qkv_proj, conv]}
    trainer_args: {learning_rte: 1.0e-4}
  - base: {model_id: "bad/name", run_nam: x}
  - base: {model_id: Good}
"""


def test_every_experiment_error_is_reported_with_its_key_path(tmp_path):
    problems = _errors(tmp_path, experiments=EXPERIMENTS_BROKEN)
    f = str(tmp_path / "experiments.yaml")
    expected = [
        f"{f}: experiments[1].lora_args.r: expected a positive integer, got 'sixteen'",
        f"{f}: experiments[1].lora_args.lora_alpah: not a LoraConfig field (did you mean 'lora_alpha'?)",
        f"{f}: experiments[1].trainer_args.learning_rte: not a TrainingArguments field of the installed transformers (did you mean 'learning_rate'?)",
        f"{f}: experiments[2].base.run_nam: unknown key (did you mean 'run_name'?)",
    ]
    for line in expected:
        assert line in problems
    assert any("experiments[1].lora_args.target_modules[1]: LFM2 has no module 'qkv_proj'" in p for p in problems)
    assert any("experiments[1].lora_args.target_modules[2]: LFM2 has no module 'conv'" in p for p in problems)
    assert any("experiments[2].base.model_id" in p and "not safe as a folder name" in p for p in problems)
    assert any("experiments[3].base.model_id" in p and "already used by experiments[0]" in p for p in problems)


def test_errors_of_all_files_are_collected_together(tmp_path):
    problems = _errors(
        tmp_path,
        dataset="max_duration_sec: twelve\nhf_datasets:\n  - reponame: x\n    nano_layr_1: a\n",
        inference="generation: {top_p: 2}\n",
        eval="huggingface: {upload_dataset: true}\n",
    )
    text = "\n".join(problems)
    assert "dataset_config.yaml: max_duration_sec: expected a positive number, got 'twelve'" in text
    assert "dataset_config.yaml: hf_datasets[0].nano_layr_1: unknown key (did you mean 'nano_layer_1'?)" in text
    assert "inference_config.yaml: generation.top_p" in text
    assert "eval_config.yaml: huggingface: repo_name is required when upload_dataset is true" in text


def test_yaml_syntax_error_has_line_and_column(tmp_path):
    problems = _errors(tmp_path, eval_set="eval_set:\n  - a: \"fine\"\n  - b: [unclosed\n")
    assert len(problems) == 1
    assert "eval_set.yaml:4:1: YAML syntax error" in problems[0]


def test_token_space_overlaps_are_errors(tmp_path):
    problems = _errors(tmp_path, model="special_tokens: {end_of_ai: 64405}\ncodec: {codebook_size: 5000, audio_tokens_start: 64300}\n")
    text = "\n".join(problems)
    assert "special_tokens.end_of_ai: id 64405 is already used by special_tokens.start_of_ai" in text
    assert "special_tokens.start_of_speech: id 64401 lies inside the audio range" in text
    assert "codec.audio_tokens_start: 64300 overlaps the text vocabulary" in text


def test_eval_set_shape_and_speaker_warning(tmp_path):
    problems = _errors(tmp_path, eval_set="eval_set:\n  - a: x\n    b: y\n")
    assert "must be one `id: sentence` pair" in problems[0]
    configs = load_configs(_config_dir(tmp_path, eval_set="eval_set:\n  - a: 'carol: hi'\n  - b: 'no prefix here'\n"))
    assert len(configs.warnings) == 2 and "'carol'" in configs.warnings[0]


def test_check_config_cli_exit_codes(tmp_path, capsys):
    assert main(["check-config", "--config-dir", str(REPO_ROOT / "config")]) == 0
    broken = _config_dir(tmp_path, experiments=EXPERIMENTS_BROKEN)
    assert main(["check-config", "--config-dir", str(broken)]) == 1
    out = capsys.readouterr().out
    assert "experiments[1].lora_args.r" in out and "Traceback" not in out


def test_missing_file_is_named(tmp_path):
    _config_dir(tmp_path)
    (tmp_path / "inference_config.yaml").unlink()
    with pytest.raises(ConfigError) as info:
        load_configs(tmp_path)
    assert info.value.problems == [f"{tmp_path / 'inference_config.yaml'}: file not found"]


def test_empty_speaker_id_is_an_error(tmp_path):
    problems = _errors(tmp_path, dataset="hf_datasets:\n  - reponame: x\n    speaker_id: ''\n")
    assert problems == [f"{tmp_path / 'dataset_config.yaml'}: hf_datasets[0].speaker_id: must not be empty (leave the key out, or use null, for none)"]
