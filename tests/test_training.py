"""`kanitts train` end to end on a tiny random LFM2: experiments, isolation, skip, resume, batching."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import yaml

from kanitts.config import ConfigSet, ExperimentsConfig
from kanitts.errors import UserError
from kanitts.recipes.train import exit_code, summary_table
from kanitts.training.experiments import (
    EXPERIMENT_FILE,
    METRICS_FILE,
    RUNS_FOLDER,
    run_experiments,
    select_experiments,
)

CODEBOOK_SIZE = 32  # keeps the vocabulary (and so every step) small


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices gain nothing from threads, and on a busy CPU the thread pool's waits dominate."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(folder, ModelConfig): tokenizer + hybrid LFM2 whose vocabulary fits a small codebook."""
    from kanitts.tiny import build_lfm2, build_tokenizer, tiny_model_config
    from kanitts.tokens import TokenLayout

    folder = tmp_path_factory.mktemp("train_base")
    tokenizer = build_tokenizer(folder)
    cfg = tiny_model_config(len(tokenizer), codebook_size=CODEBOOK_SIZE)
    layout = TokenLayout.from_config(cfg)
    build_lfm2(folder, vocab_size=layout.vocab_size, hidden_size=32, intermediate_size=64, tokenizer=tokenizer)
    return folder, cfg


@pytest.fixture(scope="module")
def dataset(base):
    """Training sequences with the columns the sequence builder produces."""
    import datasets
    from transformers import AutoTokenizer

    from kanitts.tokens import TokenLayout

    folder, cfg = base
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    layout = TokenLayout.from_config(cfg)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        text_ids = tokenizer(layout.text_prompt(f"sentence number {i}", "alice"))["input_ids"]
        codes = rng.integers(0, CODEBOOK_SIZE, size=(layout.num_codebooks, int(rng.integers(3, 16))))
        ids = layout.training_ids(text_ids, layout.frames_to_ids(codes))
        rows.append({"input_ids": ids, "labels": ids, "attention_mask": [1] * len(ids), "length": len(ids),
                     "speaker": "alice"})
    return datasets.Dataset.from_list(rows)


def experiment(model_id: str, *, steps: int = 3, targets=("q_proj", "v_proj", "in_proj"), trainer=None, **training):
    return {
        "base": {"model_id": model_id, "run_name": f"run-{model_id}"},
        "lora_args": {"r": 4, "lora_alpha": 8, "target_modules": list(targets)},
        "trainer_args": {"max_steps": steps, "learning_rate": 1e-3, "logging_steps": 1, **(trainer or {})},
        "training": training,
    }


def configs_for(base, *experiments) -> ConfigSet:
    folder, cfg = base
    experiments_cfg = ExperimentsConfig.model_validate(
        {"base_model": str(folder), "project_name": "tests", "experiments": list(experiments)}
    )
    return ConfigSet(config_dir=Path("."), experiments=experiments_cfg, model=cfg)


def test_two_experiments_train_save_and_are_skipped_on_rerun(base, dataset, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    configs = configs_for(
        base,
        experiment("packed", packing=True, max_tokens_per_batch=256, keep_adapter=True),
        experiment("padded-bs4", trainer={"per_device_train_batch_size": 4}, loss_on="audio"),
    )
    results = run_experiments(configs, checkpoints_dir=tmp_path, train_dataset=dataset)
    assert [(r.model_id, r.status) for r in results] == [("packed", "done"), ("padded-bs4", "done")]
    assert exit_code(results) == 0

    for result in results:
        folder = tmp_path / result.model_id
        assert result.path == folder
        for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json"):
            assert (folder / name).is_file(), name
        model = AutoModelForCausalLM.from_pretrained(str(folder))
        assert not any("lora" in name for name, _ in model.named_parameters())
        assert AutoTokenizer.from_pretrained(str(folder)).encode("hello")
        record = yaml.safe_load((folder / EXPERIMENT_FILE).read_text())
        assert record["base_model"] == str(base[0]) and record["model_id"] == result.model_id
        metrics = json.loads((folder / METRICS_FILE).read_text())
        assert [e["step"] for e in metrics["loss_history"]] == [1, 2, 3]
        assert metrics["final_loss"] == pytest.approx(result.final_loss)
        assert metrics["tokens_trained"] > 0 and metrics["tokens_per_second"] > 0
        assert metrics["peak_memory_bytes"] > 0
        assert metrics["dataset_fingerprint"] == dataset._fingerprint
    packed_metrics = json.loads((tmp_path / "packed" / METRICS_FILE).read_text())
    assert packed_metrics["packing"] is True and packed_metrics["attn_implementation"] == "kanitts_packed_sdpa"
    assert "kanitts" not in (tmp_path / "packed" / "config.json").read_text()
    assert (tmp_path / "packed" / "adapter" / "adapter_config.json").is_file()
    # batch size 4: every step trained on 4 sequences
    padded_metrics = json.loads((tmp_path / "padded-bs4" / METRICS_FILE).read_text())
    lengths = dataset["length"]
    assert 12 * min(lengths) <= padded_metrics["tokens_trained"] <= 12 * max(lengths)
    # nothing temporary is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == [RUNS_FOLDER, "packed", "padded-bs4"]
    assert sorted(p.name for p in (tmp_path / RUNS_FOLDER).iterdir()) == ["packed.lock", "padded-bs4.lock"]

    again = run_experiments(configs, checkpoints_dir=tmp_path, train_dataset=dataset)
    assert [r.status for r in again] == ["skipped", "skipped"]
    # the re-run's summary still shows each model's recorded loss
    assert [r.final_loss for r in again] == [pytest.approx(r.final_loss) for r in results]
    (tmp_path / "packed" / METRICS_FILE).write_text("{cut off")
    assert run_experiments(configs, checkpoints_dir=tmp_path, train_dataset=dataset)[0].final_loss is None
    only = run_experiments(configs, checkpoints_dir=tmp_path, train_dataset=dataset, only=["packed"], force=True)
    assert [(r.model_id, r.status) for r in only] == [("packed", "done")]


def test_a_bad_target_module_fails_alone(base, dataset, tmp_path, capsys):
    configs = configs_for(base, experiment("broken", targets=("q_projj",)), experiment("fine"))
    results = run_experiments(configs, checkpoints_dir=tmp_path, train_dataset=dataset)
    assert [(r.model_id, r.status) for r in results] == [("broken", "failed"), ("fine", "done")]
    assert "q_projj" in results[0].error and "Traceback" in results[0].error
    assert not (tmp_path / "broken").exists()
    assert (tmp_path / "fine" / "model.safetensors").is_file()
    assert exit_code(results) == 1
    from rich.console import Console

    Console(width=200).print(summary_table(results))
    table = capsys.readouterr().out
    assert "broken" in table and "failed" in table and str(tmp_path / "fine") in table


class InterruptAtStep:
    """Sends the process a Ctrl-C once training reaches `step`."""

    def __init__(self, step: int):
        self.step = step
        self.sent = False

    def __getattr__(self, name):  # the TrainerCallback events this test does not need
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)


def test_an_interrupted_run_resumes_where_it_stopped(base, dataset, tmp_path):
    configs = configs_for(
        base,
        experiment("resumable", steps=4, trainer={"save_steps": 100}, packing=True, max_tokens_per_batch=128),
        experiment("later"),
    )
    results = run_experiments(
        configs, checkpoints_dir=tmp_path, train_dataset=dataset, callbacks=[InterruptAtStep(2)]
    )
    assert [(r.model_id, r.status) for r in results] == [("resumable", "interrupted"), ("later", "not run")]
    assert exit_code(results) == 130
    assert not (tmp_path / "resumable").exists()
    run_dir = tmp_path / RUNS_FOLDER / "resumable"
    saved = sorted(p.name for p in run_dir.glob("checkpoint-*"))
    assert saved in (["checkpoint-2"], ["checkpoint-3"])

    resumed = run_experiments(configs, checkpoints_dir=tmp_path, train_dataset=dataset)
    assert [(r.model_id, r.status) for r in resumed] == [("resumable", "done"), ("later", "done")]
    assert resumed[0].resumed_from == saved[0]
    metrics = json.loads((tmp_path / "resumable" / METRICS_FILE).read_text())
    assert metrics["global_step"] == 4
    assert metrics["resumed_from"] == saved[0]


def test_a_changed_experiment_does_not_resume_an_old_checkpoint(base, dataset, tmp_path):
    from kanitts.training.run_folder import prepare_run_dir

    run_dir = tmp_path / "run"
    (run_dir / "checkpoint-5").mkdir(parents=True)
    (run_dir / "checkpoint-5" / "trainer_state.json").write_text("{}")
    (run_dir / "checkpoint-7").mkdir()  # no trainer_state.json: a save that never finished
    assert prepare_run_dir(run_dir, "abc", force=False)[0] is None  # no stamp: not ours
    (run_dir / "checkpoint-5").mkdir()
    (run_dir / "checkpoint-5" / "trainer_state.json").write_text("{}")
    (run_dir / "checkpoint-7").mkdir()
    resume, notes = prepare_run_dir(run_dir, "abc", force=False)
    assert resume == run_dir / "checkpoint-5" and notes == []
    assert not (run_dir / "checkpoint-7").exists()
    resume, notes = prepare_run_dir(run_dir, "changed", force=False)
    assert resume is None and "changed" in notes[0]


def test_only_selects_and_rejects_unknown_ids(base):
    configs = configs_for(base, experiment("a"), experiment("b"), experiment("c"))
    assert [e.model_id for e in select_experiments(configs.experiments, ["c", "a"])] == ["a", "c"]
    with pytest.raises(UserError, match=r"'zzz'.*it has a, b, c"):
        select_experiments(configs.experiments, ["zzz"])


def test_kanitts_train_cli_builds_the_data_and_trains(base, tmp_path, capsys):
    """From config files and a codec dataset on disk, as `make train` runs it."""
    import datasets

    from kanitts.cli import main

    folder, cfg = base
    rng = np.random.default_rng(1)
    rows = []
    for i in range(12):
        frames = int(rng.integers(3, 12))
        layers = rng.integers(0, CODEBOOK_SIZE, size=(4, frames)).tolist()
        rows.append({"text": f"Sentence {i}.", **{f"nano_layer_{k + 1}": layers[k] for k in range(4)},
                     "encoded_len": frames})
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "codec"))
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "model_config.yaml").write_text(yaml.safe_dump(cfg.model_dump()))
    (config_dir / "dataset_config.yaml").write_text(yaml.safe_dump({
        "max_duration_sec": None,
        "cache_dir": str(tmp_path / "cache"),
        "hf_datasets": [{"reponame": str(tmp_path / "codec"), "speaker_id": "alice"}],
    }))
    (config_dir / "experiments.yaml").write_text(yaml.safe_dump({
        "base_model": str(folder),
        "experiments": [experiment("cli-a", packing=True), experiment("cli-b", steps=2)],
    }))
    (config_dir / "eval_config.yaml").write_text(yaml.safe_dump({"paths": {"checkpoints_dir": str(tmp_path / "ck")}}))

    assert main(["train", "--config-dir", str(config_dir), "--only", "cli-b"]) == 0
    assert (tmp_path / "ck" / "cli-b" / "model.safetensors").is_file()
    assert not (tmp_path / "ck" / "cli-a").exists()
    assert main(["train", "--config-dir", str(config_dir)]) == 0
    out = capsys.readouterr().out
    assert "cli-b: already trained" in out and "Training summary" in out
    metrics = json.loads((tmp_path / "ck" / "cli-a" / METRICS_FILE).read_text())
    assert metrics["num_sequences"] == 12 and metrics["dataset_fingerprint"] != "unknown"


def test_each_experiment_gets_its_own_offline_wandb_run(base, dataset, tmp_path, monkeypatch):
    """Not logged in to W&B: training goes on offline, one W&B run per experiment."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_PROJECT", "kanitts-tests")  # restored afterwards, unlike what training sets
    configs = configs_for(base, experiment("wb-one", steps=1), experiment("wb-two", steps=1))
    results = run_experiments(configs, checkpoints_dir=tmp_path / "ck", train_dataset=dataset)
    assert [r.status for r in results] == ["done", "done"]
    assert "W&B runs offline" in results[0].notes[0]
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 2


def test_a_save_that_fails_leaves_no_checkpoint_behind(tmp_path):
    from kanitts.training.experiments import write_atomically

    final = tmp_path / "model"

    def crash(folder):
        (folder / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(final, crash)
    assert list(tmp_path.iterdir()) == []

    write_atomically(final, lambda folder: (folder / "v").write_text("1"))
    write_atomically(final, lambda folder: (folder / "v").write_text("2"))  # --force replaces it whole
    assert (final / "v").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]



def test_a_kill_during_the_final_save_resumes_to_exactly_max_steps(base, dataset, tmp_path, monkeypatch):
    """The kill leaves the checkpoint the Trainer writes at the last step and no final folder."""
    from kanitts.training.experiments import TrainingRun

    configs = configs_for(base, experiment("final-save", steps=4))  # 3 steps per epoch: 4 is mid-epoch
    real_save = TrainingRun._save

    def killed(self, model, experiment, metrics, run_dir, folder):
        (folder / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(TrainingRun, "_save", killed)
    results = run_experiments(configs, checkpoints_dir=tmp_path, train_dataset=dataset)
    assert results[0].status == "interrupted" and not (tmp_path / "final-save").exists()
    assert [p.name for p in (tmp_path / RUNS_FOLDER / "final-save").glob("checkpoint-*")] == ["checkpoint-4"]
    steps = []
    monkeypatch.setattr(TrainingRun, "_save", real_save)
    resumed = run_experiments(configs, checkpoints_dir=tmp_path, train_dataset=dataset, callbacks=[StepRecorder(steps)])
    assert [(r.status, r.resumed_from) for r in resumed] == [("done", "checkpoint-4")]
    assert steps == []  # not one step more
    metrics = json.loads((tmp_path / "final-save" / METRICS_FILE).read_text())
    assert metrics["global_step"] == 4 and [e["step"] for e in metrics["loss_history"]] == [1, 2, 3, 4]
    assert any("training had finished at checkpoint-4" in note for note in metrics["notes"])
    # the final checkpoint holds the trained adapter, merged: not the base model's weights
    from safetensors.numpy import load_file

    trained = load_file(tmp_path / "final-save" / "model.safetensors")
    untouched = load_file(base[0] / "model.safetensors")
    assert any(not np.array_equal(trained[k], untouched[k]) for k in untouched if "q_proj" in k)


class StepRecorder(InterruptAtStep):
    def __init__(self, steps: list[int]):
        self.steps = steps

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def test_a_second_run_of_an_experiment_is_refused_and_a_dead_runs_lock_taken_over(base, dataset, tmp_path):
    from test_locks import lock_held_elsewhere

    configs = configs_for(base, experiment("busy", steps=1), experiment("free", steps=1))
    with lock_held_elsewhere(tmp_path / RUNS_FOLDER / "busy.lock") as other:
        results = run_experiments(configs, checkpoints_dir=tmp_path, train_dataset=dataset)
    assert [(r.model_id, r.status) for r in results] == [("busy", "failed"), ("free", "done")]
    assert results[0].error.startswith(f"experiment 'busy' (checkpoints in {tmp_path}) is in use by another run: "
                                       f"pid {other.pid} on host ")
    assert not (tmp_path / "busy").exists() and not (tmp_path / RUNS_FOLDER / "busy").exists()
    # the other run was killed: its lock is taken over, and the summary says so
    again = run_experiments(configs, checkpoints_dir=tmp_path, train_dataset=dataset)
    assert [(r.model_id, r.status) for r in again] == [("free", "skipped"), ("busy", "done")]
    assert any("took over the lock of experiment 'busy'" in n and f"pid {other.pid}" in n for n in again[1].notes)


def _adapter(folder: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(folder / "adapter" / "adapter_model.safetensors")


def test_the_same_seed_gives_the_same_model(base, dataset, tmp_path):
    """The LoRA weights are drawn after the seed is set, so two runs are bitwise equal on a CPU."""
    configs = configs_for(base, *[
        experiment(name, steps=1, trainer={"seed": seed}, keep_adapter=True)
        for name, seed in (("seed-7", 7), ("seed-7-again", 7), ("seed-8", 8))
    ])
    assert [r.status for r in run_experiments(configs, checkpoints_dir=tmp_path, train_dataset=dataset)] == ["done"] * 3
    first, again, other = (_adapter(tmp_path / name) for name in ("seed-7", "seed-7-again", "seed-8"))
    assert first.keys() == again.keys() and all(np.array_equal(first[k], again[k]) for k in first)
    assert not all(np.array_equal(first[k], other[k]) for k in first)
    merged = [(tmp_path / name / "model.safetensors").read_bytes() for name in ("seed-7", "seed-7-again")]
    assert merged[0] == merged[1]


def test_secrets_in_trainer_args_never_reach_the_checkpoint(base, dataset, tmp_path):
    secret = "hf_" + "S3cr3t" * 6
    configs = configs_for(base, experiment("secretive", steps=1, trainer={"hub_token": secret}))
    assert run_experiments(configs, checkpoints_dir=tmp_path, train_dataset=dataset)[0].status == "done"
    record = yaml.safe_load((tmp_path / "secretive" / EXPERIMENT_FILE).read_text())
    assert record["experiment"]["trainer_args"]["hub_token"] == "<redacted>"
    for path in (tmp_path / "secretive").rglob("*"):
        assert not path.is_file() or secret.encode() not in path.read_bytes(), path
