import shutil
from pathlib import Path

import pytest

from kanitts.cli import main
from kanitts.config import CONFIG_FILES, load_configs, translate_trainer_args
from kanitts.errors import ConfigError
from kanitts.recipes.check import check_config_dir

from conftest import REPO_ROOT

REFERENCE = REPO_ROOT / "tests" / "data" / "reference_configs"


@pytest.mark.parametrize("folder", ["config", "examples/config", "examples/config-kanade"])
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
        (f"{f}: experiments[1].trainer_args.learning_rte: not a TrainingArguments field of the installed "
         "transformers (did you mean 'learning_rate'?)"),
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
    problems = _errors(
        tmp_path, model="special_tokens: {end_of_ai: 64405}\ncodec: {codebook_size: 5000, audio_tokens_start: 64300}\n"
    )
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


def test_keys_the_reference_sets_but_nothing_uses_are_shown_by_check_config(tmp_path, capsys):
    """codec.model_name and processing.num_proc load as before; check-config names each as unused."""
    shutil.copytree(REFERENCE, tmp_path, dirs_exist_ok=True)
    assert main(["check-config", "--config-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (f"warning: {tmp_path / 'model_config.yaml'}: codec.model_name "
            "('nvidia/nemo-nano-codec-22khz-0.6kbps-12.5fps') is not used: the codec is codec.kind + codec.weights "
            "(nanocodec, nineninesix/nemo-nano-codec-22khz-0.6kbps-12.5fps-pytorch); remove it") in out
    assert (f"warning: {tmp_path / 'eval_config.yaml'}: processing.num_proc is ignored (eval needs no process pool); "
            "remove it") in out
    configs = load_configs(tmp_path, kinds=("model",))
    assert configs.model.codec.model_name == "nvidia/nemo-nano-codec-22khz-0.6kbps-12.5fps"
    assert "model_name" not in configs.model.model_dump()["codec"]  # a dump does not carry it on
    assert load_configs(REPO_ROOT / "config", kinds=("model", "eval")).warnings == []


def test_missing_file_is_named(tmp_path):
    _config_dir(tmp_path)
    (tmp_path / "inference_config.yaml").unlink()
    with pytest.raises(ConfigError) as info:
        load_configs(tmp_path)
    assert info.value.problems == [f"{tmp_path / 'inference_config.yaml'}: file not found"]


def test_empty_speaker_id_is_an_error(tmp_path):
    problems = _errors(tmp_path, dataset="hf_datasets:\n  - reponame: x\n    speaker_id: ''\n")
    assert problems == [
        (f"{tmp_path / 'dataset_config.yaml'}: hf_datasets[0].speaker_id: must not be empty "
         "(leave the key out, or use null, for none)")
    ]


# --- numbers as people write them -----------------------------------------------------------

NUMBERS = """
base_model: some/model
experiments:
  - base: {model_id: 1e3, run_name: 007}
    lora_args: {r: 8, lora_alpha: 1.6E1, lora_dropout: 5e-2, task_type: CAUSAL_LM}
    trainer_args:
      learning_rate: 5e-5
      weight_decay: 1e-3
      adam_epsilon: -2e-5
      max_steps: 1E4
      num_train_epochs: 2
      warmup_ratio: 1e-1
      lr_scheduler_type: cosine
      hub_model_id: 2e5
      lr_scheduler_kwargs: {min_lr: 1e-6}
    training: {max_tokens_per_batch: 1.6E4}
"""


def test_exponent_numbers_are_numbers_everywhere(tmp_path):
    configs = load_configs(_config_dir(
        tmp_path, experiments=NUMBERS,
        dataset="max_duration_sec: 1.2e1\nhf_datasets:\n  - {reponame: 1e5, speaker_id: 007}\n",
        inference="generation: {top_p: 9.5e-1, temperature: 6E-1}\n",
    ))
    exp = configs.experiments.experiments[0]
    args = exp.trainer_args
    assert args["learning_rate"] == 5e-5 and args["weight_decay"] == 1e-3 and args["adam_epsilon"] == -2e-5
    assert args["max_steps"] == 10000 and type(args["max_steps"]) is int  # an int field: 1E4 is 10000
    assert args["num_train_epochs"] == 2 and type(args["num_train_epochs"]) is int  # an int where a float is declared
    assert args["warmup_ratio"] == 0.1 and args["lr_scheduler_kwargs"] == {"min_lr": 1e-6}
    assert all(type(v) in (int, float, str, dict) for v in args.values())  # plain values, ready to dump
    assert exp.lora_args.lora_alpha == 16.0 and exp.lora_args.lora_dropout == 0.05
    assert exp.training.max_tokens_per_batch == 16000
    assert configs.dataset.max_duration_sec == 12.0
    assert (configs.inference.generation.top_p, configs.inference.generation.temperature) == (0.95, 0.6)
    # where text is expected, what was typed stays text
    assert (exp.model_id, exp.base.run_name, args["hub_model_id"]) == ("1e3", "007", "2e5")
    assert (configs.dataset.hf_datasets[0].reponame, configs.dataset.hf_datasets[0].speaker_id) == ("1e5", "007")


def test_a_quoted_number_where_text_is_expected_stays_text(tmp_path):
    configs = load_configs(_config_dir(tmp_path, eval_set='eval_set:\n  - "5e-5": "alice: 5e-5 is a small number."\n'))
    assert configs.eval_set.sentences[0].sentence_id == "5e-5"


PASS_THROUGH_BROKEN = """
base_model: some/model
experiments:
  - base: {model_id: one}
    lora_args: {bias: nonee, task_type: CAUSAL, use_dora: maybe}
    trainer_args:
      learning_rate: fast
      num_train_epochs: two
      lr_scheduler_type: cosyne
      optim: adamw_torh
      save_steps: true
      eval_strategy: no
      seed: -1
      data_seed: -7
"""


def test_pass_through_values_are_checked_against_the_libraries_field_types(tmp_path, capsys):
    problems = _errors(tmp_path, experiments=PASS_THROUGH_BROKEN)
    f = f"{tmp_path / 'experiments.yaml'}: experiments[0]"
    by_key = {p.split(": ")[1]: p.split(": ", 2)[2] for p in problems}
    assert by_key["experiments[0].trainer_args.learning_rate"] == "expected a number, got 'fast'"
    assert by_key["experiments[0].trainer_args.num_train_epochs"] == "expected a number, got 'two'"
    assert by_key["experiments[0].trainer_args.lr_scheduler_type"].startswith("expected one of: linear, cosine, ")
    assert by_key["experiments[0].trainer_args.lr_scheduler_type"].endswith("got 'cosyne' (did you mean 'cosine'?)")
    assert "got 'adamw_torh' (did you mean 'adamw_torch'?)" in by_key["experiments[0].trainer_args.optim"]
    assert by_key["experiments[0].trainer_args.save_steps"] == "expected a number, got True"
    assert by_key["experiments[0].trainer_args.eval_strategy"].startswith(
        "expected one of: no, steps, epoch, got False"
    )
    assert "put the text in quotes" in by_key["experiments[0].trainer_args.eval_strategy"]
    for seed in ("seed", "data_seed"):
        assert "expected an integer from 0 to 4294967295" in by_key[f"experiments[0].trainer_args.{seed}"]
    assert by_key["experiments[0].lora_args.bias"] == (
        "expected one of: none, all, lora_only, got 'nonee' (did you mean 'none'?)"
    )
    assert "got 'CAUSAL' (did you mean 'CAUSAL_LM'?)" in by_key["experiments[0].lora_args.task_type"]
    assert by_key["experiments[0].lora_args.use_dora"] == "expected true or false, got 'maybe'"
    assert len(problems) == 11 and all(p.startswith(f) for p in problems)

    assert main(["check-config", "--config-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"error: {f}.trainer_args.learning_rate: expected a number, got 'fast'" in out


def test_every_declared_field_type_of_the_libraries_can_be_checked():
    """Each TrainingArguments / LoraConfig annotation maps to a type pydantic validates with."""
    from kanitts.config.library_checks import accepted_type, lora_config_types, training_argument_types, type_adapter

    for declared in (*training_argument_types().values(), *lora_config_types().values()):
        type_adapter(accepted_type(declared))


# --- problems of the files themselves --------------------------------------------------------


def test_a_key_given_twice_names_the_key_path_and_both_lines(tmp_path):
    text = (
        "base_model: x\nexperiments:\n  - base: {model_id: a}\n"
        "    trainer_args:\n      learning_rate: 1e-4\n      learning_rate: 5e-5\n"
    )
    problems = _errors(tmp_path, experiments=text, inference="generation: {top_p: 2}\n")
    assert (
        f"{tmp_path / 'experiments.yaml'}: experiments[0].trainer_args.learning_rate: given twice in one mapping, "
        "on lines 5 and 6; keep one (the last would silently win)"
    ) in problems
    assert any("inference_config.yaml: generation.top_p" in p for p in problems)  # the other files are still checked


def test_merge_keys_may_override(tmp_path):
    text = ("defaults: &d {learning_rate: 1e-4, max_steps: 10}\nbase_model: x\nexperiments:\n"
            "  - base: {model_id: a}\n    trainer_args:\n      <<: *d\n      learning_rate: 5e-5\n")
    with pytest.raises(ConfigError) as info:  # `defaults` is not a key of experiments.yaml, nothing else is wrong
        load_configs(_config_dir(tmp_path, experiments=text))
    assert [p.split(": ", 2)[1:] for p in info.value.problems] == [["defaults", "unknown key"]]


def test_a_file_that_is_not_utf8_is_named_with_its_byte(tmp_path):
    _config_dir(tmp_path)
    (tmp_path / "eval_set.yaml").write_bytes("eval_set:\n  - a: \"alice: Jos\u00e9\"\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_configs(tmp_path)
    assert info.value.problems == [
        f"{tmp_path / 'eval_set.yaml'}:2:19: not UTF-8 text (byte 0xe9 at byte offset 28); save the file as UTF-8"]


def test_control_bytes_are_named_with_line_and_byte(tmp_path):
    _config_dir(tmp_path)
    (tmp_path / "eval_set.yaml").write_bytes(b"\xef\xbb\xbfeval_set:\n  - a: \"alice: hi\x00\"\n")
    with pytest.raises(ConfigError) as info:
        load_configs(tmp_path)
    assert info.value.problems == [
        (f"{tmp_path / 'eval_set.yaml'}:2:18: control character U+0000 (byte offset 30) is not allowed in YAML; "
         "delete it (tabs and line breaks are fine)")]


def test_several_sequences_need_sampling(tmp_path):
    problems = _errors(tmp_path, inference="generation: {do_sample: false, num_return_sequences: 3}\n")
    assert problems == [
        (f"{tmp_path / 'inference_config.yaml'}: generation.num_return_sequences: 3 sequences per prompt need "
         "do_sample: true (without sampling they would all be the same); "
         "set do_sample: true or num_return_sequences: 1")]
    configs = load_configs(_config_dir(tmp_path, inference="generation: {do_sample: true, num_return_sequences: 3}\n"))
    assert configs.inference.generation.num_return_sequences == 3


def test_negative_seeds_are_errors(tmp_path):
    problems = _errors(tmp_path, dataset="seed: -1\nhf_datasets:\n  - reponame: x\n")
    assert problems == [f"{tmp_path / 'dataset_config.yaml'}: seed: expected an integer >= 0, got -1"]
