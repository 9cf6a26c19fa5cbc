"""Sweeps: grid expansion and names, config errors, Optuna with pruning, top-k checkpoints,
kill -9 and resume, two processes on one study, Ctrl-C and resume."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from sweep_project import build_base, experiment, write_project
from transformers import TrainerCallback

from kanitts.config import Sweep, load_configs, parse_config, point_model_id
from kanitts.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_base(tmp_path_factory.mktemp("sweep_base"))


def test_a_grid_expands_into_every_combination_with_readable_names():
    sweep = Sweep.model_validate({"method": "grid", "parameters": {
        "lora_args.r": [8, 16, 32], "trainer_args.learning_rate": [2e-5, 5e-5]}})
    names = [point_model_id("alice", point) for point in sweep.grid_points()]
    assert names == ["alice-r8-lr2e-05", "alice-r8-lr5e-05", "alice-r16-lr2e-05", "alice-r16-lr5e-05",
                     "alice-r32-lr2e-05", "alice-r32-lr5e-05"]
    assert point_model_id("bob", {"training.loss_on": "audio", "lora_args.target_modules": ["q_proj", "v_proj"]}) == (
        "bob-loss_on-audio-target_modules-q_proj_v_proj")


def _problems(sweep, extra=None):
    data = {"base_model": "m", "experiments": [{"base": {"model_id": "alice"}, "sweep": sweep},
                                               *(extra or [])]}
    with pytest.raises(ConfigError) as caught:
        parse_config("experiments", data, "config/experiments.yaml")
    return caught.value.problems


def test_sweep_mistakes_are_reported_with_file_and_key_path():
    where = "config/experiments.yaml: experiments[0].sweep"
    assert _problems({"method": "grid", "parameters": {}}) == [
        f"{where}.parameters: empty: name at least one key to vary (e.g. lora_args.r: [8, 16])"]
    problems = _problems({"method": "optuna", "n_trial": 3, "parameters": {
        "trainer_args.learnig_rate": {"low": 1e-5, "high": 1e-3},
        "lora_args.r": {"low": 32, "high": 8},
        "lora_args.lora_dropout": {"lo": 0.0, "high": 0.2},
        "trainer_args.warmup_steps": {"choices": []},
        "trainer_args.lr_scheduler_type": ["cosin"],
        "base.model_id": ["x"],
    }})
    assert (f"{where}.parameters.trainer_args.learnig_rate: not a TrainingArguments field of the installed "
            "transformers (did you mean 'learning_rate'?)") in problems
    assert f"{where}.parameters.lora_args.r: low (32) must be below high (8)" in problems
    assert any(p.startswith(f"{where}.parameters.lora_args.lora_dropout.lo: unknown key in a search space "
                            "(did you mean 'low'?)") for p in problems)
    assert f"{where}.parameters.trainer_args.warmup_steps.choices: empty: give at least one value" in problems
    assert any(p.startswith(f"{where}.parameters.trainer_args.lr_scheduler_type[0]: expected one of: linear")
               and p.endswith("(did you mean 'cosine'?)") for p in problems)
    assert any(p.startswith(f"{where}.parameters.base.model_id: not a key a sweep can vary") for p in problems)
    assert f"{where}.n_trial: unknown key (did you mean 'n_trials'?)" in problems
    # caught before any trial trains: an objective no evaluation logs, a bound that is no number,
    # a key the runner sets itself
    problems = _problems({"method": "optuna", "objective": "eval_los", "parameters": {
        "trainer_args.learning_rate": {"low": float("nan"), "high": 1e-3},
        "trainer_args.output_dir": ["a", "b"]}})
    assert problems == [
        (f"{where}.objective: 'eval_los' is not a metric the validation pass logs (eval_loss, eval_audio_loss, "
         "eval_audio_accuracy, eval_codebook<k>_loss, eval_codebook<k>_accuracy) nor a score of the eval set "
         "(wer, cer, speaker_similarity, mos) (did you mean 'eval_loss'?)"),
        f"{where}.parameters.trainer_args.learning_rate.low: expected a finite number, got nan",
        (f"{where}.parameters.trainer_args.output_dir: set by the runner, not by a sweep (every trial writes to "
         "checkpoints/.runs/<its model_id>)"),
    ]
    assert _problems({"method": "optuna", "objective": "speaker_similarity", "pruner": "median",
                      "parameters": {"lora_args.r": [4, 8]}}) == [
        (f"{where}.pruner: the median pruner compares the validation loss, which falls as a trial gets better, "
         "and speaker_similarity is maximized: it would stop the best trials; set pruner: none")]
    assert _problems({"method": "grid", "parameters": {"lora_args.r": [0, 4]}}) == [
        f"{where}.parameters.lora_args.r[0]: input should be greater than 0, got 0"]
    assert _problems({"method": "grid", "parameters": {"lora_args.r": [4]}},
                     [{"base": {"model_id": "alice-r4"}}]) == [
        f"{where}: its grid trial 'alice-r4' has the model_id of experiments[1]"]


def test_a_sweep_objective_the_other_configs_cannot_measure_is_a_config_error(base, tmp_path):
    sweeps = [{"method": "grid", "objective": "eval_codebook5_accuracy", "parameters": {"lora_args.r": [4, 8]}},
              {"method": "grid", "objective": "wer", "parameters": {"lora_args.r": [4, 8]}}]
    config_dir = write_project(tmp_path, base, [experiment(name, sweep=sweep) for name, sweep in zip("ab", sweeps)],
                               validation={})
    with pytest.raises(ConfigError) as caught:
        load_configs(config_dir, kinds=("dataset", "experiments", "model", "eval"))
    experiments = config_dir / "experiments.yaml"
    assert caught.value.problems == [
        *(f"{experiments}: experiments[{i}].sweep: trials are scored on held-out rows, and no dataset of "
          f"{config_dir / 'dataset_config.yaml'} holds any out: set validation_fraction or validation_rows on one"
          for i in (0, 1)),
        (f"{experiments}: experiments[1].sweep.objective: wer is scored with {config_dir / 'eval_config.yaml'}'s "
         "intelligibility, which is not set (see docs/evaluation.md)"),
        (f"{experiments}: experiments[0].sweep.objective: eval_codebook5_accuracy names codebook 5, and the codec "
         f"of {config_dir / 'model_config.yaml'} has 4"),
    ]


def _sweep_project(root, base, sweep, steps=3, **trainer):
    return write_project(root, base, [experiment("alice", steps=steps, sweep=sweep, trainer=trainer or None),
                                      experiment("plain", steps=1)])


def _study(root, name="alice"):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{root / 'sweeps' / name}.db")


def test_a_grid_sweep_trains_every_point_keeps_the_best_and_reports(base, tmp_path, monkeypatch, capsys):
    from kanitts.cli import main

    monkeypatch.chdir(tmp_path)
    config_dir = _sweep_project(tmp_path, base, {"method": "grid", "keep_top_k": 1,
                                                 "parameters": {"trainer_args.learning_rate": [1e-6, 3e-2]}})
    assert main(["sweep", "--config-dir", str(config_dir)]) == 0
    out = capsys.readouterr().out
    study = _study(tmp_path)
    trials = sorted(study.trials, key=lambda t: t.params["trainer_args.learning_rate"])
    assert [t.user_attrs["model_id"] for t in trials] == ["alice-lr1e-06", "alice-lr0.03"]
    assert all(t.state.name == "COMPLETE" for t in trials)
    # the faster learning rate wins; the other checkpoint is deleted once it is worse
    assert study.best_trial.user_attrs["model_id"] == "alice-lr0.03"
    assert (tmp_path / "ck" / "alice-lr0.03" / "model.safetensors").is_file()
    assert not (tmp_path / "ck" / "alice-lr1e-06").exists()
    assert f"deleted {tmp_path / 'ck' / 'alice-lr1e-06'} (trial" in out and "not among the best 1" in out
    assert "best: trial" in out and "trainer_args.learning_rate=0.03" in out
    report = tmp_path / "sweeps" / "alice"
    html = (report / "index.html").read_text()
    assert "alice-lr0.03" in html
    for plot in ("history.png", "intermediate.png", "importance.png"):  # optimisation history, importance
        assert f"src='{plot}'" in html and (report / plot).stat().st_size > 1000, plot
    assert json.loads((report / "best.json").read_text())["model_id"] == "alice-lr0.03"
    # `kanitts train` leaves the sweep to `kanitts sweep` and trains the rest
    assert main(["train", "--config-dir", str(config_dir)]) == 0
    assert "alice: has a sweep (grid)" in capsys.readouterr().out and (tmp_path / "ck" / "plain").is_dir()


def test_an_optuna_study_prunes_hopeless_trials(base, tmp_path, monkeypatch):
    from kanitts.recipes import sweep as sweep_recipe

    monkeypatch.chdir(tmp_path)
    config_dir = _sweep_project(tmp_path, base, {
        # seeded: 0.03 twice, then 1e-6, which learns nothing in its first step and is pruned there
        "method": "optuna", "sampler": "random", "n_trials": 3, "seed": 6, "pruner_startup_trials": 1,
        "pruner_warmup_evaluations": 0, "parameters": {"trainer_args.learning_rate": {"choices": [3e-2, 1e-6]}}},
        steps=4)
    assert sweep_recipe.run(config_dir) == 0
    study = _study(tmp_path)
    states = {t.user_attrs["model_id"]: (t.state.name, t.params["trainer_args.learning_rate"]) for t in study.trials}
    assert states == {"alice-t000": ("COMPLETE", 3e-2), "alice-t001": ("COMPLETE", 3e-2),
                      "alice-t002": ("PRUNED", 1e-6)}
    pruned = ["alice-t002"]
    for model_id in pruned:  # stopped after one evaluation, nothing saved or left to resume
        trial = next(t for t in study.trials if t.user_attrs["model_id"] == model_id)
        assert list(trial.intermediate_values) == [1]
        assert not (tmp_path / "ck" / model_id).exists() and not (tmp_path / "ck" / ".runs" / model_id).exists()
    assert study.best_trial.params["trainer_args.learning_rate"] == 3e-2


# A sweep process for the kill and two-process test: with STALL_AT set, the second trial stops
# at that step (its checkpoint of the step before saved) and waits to be killed; with WAIT_FOR
# set, it imports everything first and starts its sweep once that file exists. Separate
# processes, not forks of this one: the suite's threads make a fork hang now and then.
WORKER = """
import os, sys, time
from pathlib import Path
from transformers import TrainerCallback
from kanitts.config import load_configs
from kanitts.sweeps import run_sweeps

class Stall(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if args.output_dir.endswith("-t001") and state.global_step == int(os.environ["STALL_AT"]):
            Path("stalled").write_text(args.output_dir)
            time.sleep(300)

while os.environ.get("WAIT_FOR") and not Path(os.environ["WAIT_FOR"]).exists():
    time.sleep(0.05)
configs = load_configs(sys.argv[1], kinds=("dataset", "experiments", "model", "eval"))
run_sweeps(configs, callbacks=[Stall()] if os.environ.get("STALL_AT") else [])
"""


# Plain processes, this one included: no launcher variables (a DDP test earlier in the suite may
# leave some behind, and the sweep would wait for a process group).
LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK",
                      "MASTER_ADDR", "MASTER_PORT")


def _worker(root: Path, config_dir: Path, **env: str) -> subprocess.Popen:
    environment = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    environment.update(PYTHONPATH=f"{REPO / 'src'}{os.pathsep}{REPO / 'tests'}", **env)
    log = (root / f"worker-{len(list(root.glob('worker-*.log')))}.log").open("w")
    return subprocess.Popen([sys.executable, "-c", WORKER, str(config_dir)], cwd=root, env=environment,
                            stdout=log, stderr=subprocess.STDOUT)


def _wait_for(condition, what: str, seconds: float = 120):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            logs = "\n".join(f"{p.name}: ...{p.read_text()[-3000:]}" for p in sorted(Path().glob("worker-*.log")))
            pytest.fail(f"timed out waiting for {what}; the workers said:\n{logs}")
        time.sleep(0.1)


def test_a_killed_sweep_resumes_and_two_processes_share_the_study(base, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    config_dir = _sweep_project(tmp_path, base, {
        "method": "optuna", "n_trials": 3, "pruner": "none",
        "parameters": {"trainer_args.learning_rate": {"low": 1e-4, "high": 3e-2, "log": True}}},
        steps=3, save_steps=1)
    first = _worker(tmp_path, config_dir, STALL_AT="2")
    second = _worker(tmp_path, config_dir, WAIT_FOR="go")  # imports meanwhile
    try:
        _wait_for(lambda: (tmp_path / "stalled").exists(), "the second trial to stall")
        first.send_signal(signal.SIGKILL)
        assert first.wait() == -signal.SIGKILL
        _check_killed_and_resume(tmp_path, config_dir, second)
    finally:
        for process in (first, second):
            process.kill()
            process.wait()


def _check_killed_and_resume(tmp_path: Path, config_dir: Path, second: subprocess.Popen) -> None:
    from kanitts.sweeps import run_sweeps

    study = _study(tmp_path)
    before = {t.number: (t.state.name, t.value) for t in study.trials}
    assert before[0][0] == "COMPLETE" and before[1] == ("RUNNING", None)
    assert (tmp_path / "ck" / ".runs" / "alice-t001" / "checkpoint-1" / "trainer_state.json").is_file()

    # two processes resume the study together: another one, and this one
    (tmp_path / "go").touch()
    _wait_for(lambda: any(t.user_attrs.get("pid") == second.pid for t in _study(tmp_path).trials),
              "the other process to start a trial")
    run_sweeps(load_configs(config_dir, kinds=("dataset", "experiments", "model", "eval")))
    assert second.wait(timeout=120) == 0

    trials = _study(tmp_path).trials
    assert trials[0].value == before[0][1]  # the finished trial is kept as it was
    assert trials[1].state.name == "FAIL"  # the killed one, retried under its model_id
    finished = [t for t in trials if t.state.name == "COMPLETE"]
    model_ids = [t.user_attrs["model_id"] for t in finished]
    assert len(finished) == 3 and len(set(model_ids)) == 3 and "alice-t001" in model_ids
    retry = next(t for t in finished if t.user_attrs["model_id"] == "alice-t001")
    assert retry.params == trials[1].params and retry.system_attrs["retry_history"] == [1]
    metrics = json.loads((tmp_path / "ck" / "alice-t001" / "metrics.json").read_text())
    assert metrics["resumed_from"] == "checkpoint-1" and metrics["global_step"] == 3
    assert {t.user_attrs["pid"] for t in finished[1:]} >= {second.pid, os.getpid()}
    assert yaml.safe_load((tmp_path / "ck" / "alice-t001" / "experiment.yaml").read_text())["model_id"] == "alice-t001"


class _Interrupt(TrainerCallback):
    """Ctrl-C during the first run of the first trial, once its first step is saved."""

    def __init__(self):
        self.sent = False

    def on_step_end(self, args, state, control, **kwargs):
        if not self.sent and state.global_step == 1:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_a_ctrl_c_keeps_the_trial_to_resume_without_a_traceback(base, tmp_path, monkeypatch):
    from kanitts.sweeps import run_sweeps

    monkeypatch.chdir(tmp_path)
    sweep = {"method": "grid", "parameters": {"trainer_args.learning_rate": [1e-3]}}
    config_dir = _sweep_project(tmp_path, base, sweep, steps=2, save_steps=1)
    configs = load_configs(config_dir, kinds=("dataset", "experiments", "model", "eval"))
    optuna_log, records = logging.getLogger("optuna"), _Records()
    optuna_log.addHandler(records)
    try:
        [outcome] = run_sweeps(configs, callbacks=[_Interrupt()])
    finally:
        optuna_log.removeHandler(records)
    assert outcome.interrupted
    assert "trial 0 (alice-lr0.001) interrupted: the next run resumes it" in outcome.messages
    assert [r.getMessage() for r in records.records if r.exc_info or "failed" in r.getMessage()] == []
    assert [t.state.name for t in _study(tmp_path).trials] == ["FAIL", "WAITING"]

    [outcome] = run_sweeps(configs)
    trials = _study(tmp_path).trials
    assert not outcome.interrupted and [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].user_attrs["model_id"] == "alice-lr0.001"
    metrics = json.loads((tmp_path / "ck" / "alice-lr0.001" / "metrics.json").read_text())
    assert metrics["resumed_from"] == "checkpoint-1" and metrics["global_step"] == 2


def test_an_eval_set_objective_scores_each_trained_trial_as_kanitts_eval_does(tiny_codec_dir, tmp_path, monkeypatch,
                                                                            capsys):
    from kanitts.audio import write_wav
    from kanitts.recipes import sweep as sweep_recipe
    from kanitts.sweeps.scoring import SCORES_FILE, EvalSetScorer

    monkeypatch.chdir(tmp_path)
    base = build_base(tmp_path / "base", codebook_size=4032, codec_weights=str(tiny_codec_dir))
    sweep = {"method": "grid", "objective": "speaker_similarity",
             "parameters": {"trainer_args.learning_rate": [3e-2]}}
    config_dir = write_project(tmp_path, base, [experiment("alice", steps=1, sweep=sweep)])
    tone = np.sin(np.linspace(0, 2000 * np.pi, 22050)).astype(np.float32) * 0.3
    write_wav(tmp_path / "alice.wav", tone, 22050)
    eval_config = yaml.safe_load((config_dir / "eval_config.yaml").read_text())
    eval_config["speaker_similarity"] = {"references": {"alice": [str(tmp_path / "alice.wav")]}}
    (config_dir / "eval_config.yaml").write_text(yaml.safe_dump(eval_config))
    (config_dir / "eval_set.yaml").write_text(yaml.safe_dump({"eval_set": [{"one": "alice: Hello there."},
                                                                            {"two": "alice: Good day."}]}))
    (config_dir / "inference_config.yaml").write_text(yaml.safe_dump({
        "model": {"torch_dtype": "float32"},
        "generation": {"max_new_tokens": 26, "constrained_decoding": True, "batch_size": 2}}))
    assert sweep_recipe.run(config_dir) == 0
    study = _study(tmp_path)
    assert study.direction.name == "MAXIMIZE" and [t.state.name for t in study.trials] == ["COMPLETE"]
    assert "alice-lr0.03: speaker_similarity " in capsys.readouterr().out
    report = tmp_path / "sweeps" / "alice"
    assert (report / SCORES_FILE).is_file() and "the mean over the eval set" in (report / "index.html").read_text()
    # the value is the trained model's, reproducibly: scoring the kept checkpoint again gives it
    configs = load_configs(config_dir, kinds=("dataset", "experiments", "model", "eval", "eval_set", "inference"))
    best = study.best_trial
    again, samples = EvalSetScorer(configs)(Path(best.user_attrs["checkpoint"]), "speaker_similarity",
                                            tmp_path / "rescore")
    assert samples == 2 and again == pytest.approx(best.value) and -1 <= best.value <= 1


def test_a_study_resumed_with_other_experiment_settings_says_what_changed(tmp_path):
    from kanitts.config import Experiment
    from kanitts.sweeps.study import open_study, settings_changes

    sweep = {"method": "grid", "parameters": {"trainer_args.learning_rate": [1e-3, 1e-2]}}
    first = Experiment.model_validate(experiment("alice", sweep=sweep))
    study = open_study(first.sweep, "alice", f"sqlite:///{tmp_path / 'alice.db'}")
    assert settings_changes(study, first) == []  # recorded
    varied = {"learning_rate": 5.0, "max_steps": 8}  # the swept key is the study's to vary
    later = Experiment.model_validate({**experiment("alice", sweep=sweep, trainer=varied), "base": {
        "model_id": "alice", "desc": "a new description changes nothing"}})
    assert settings_changes(study, later) == ["trainer_args.max_steps: 3 -> 8"]
    assert settings_changes(study, first) == []


def test_top_k_cleanup_deletes_failed_trials_checkpoints_but_never_one_to_resume(tmp_path):
    import optuna
    from optuna.trial import TrialState

    from kanitts.sweeps.checkpoints import keep_best_checkpoints

    study = optuna.create_study(direction="minimize")

    def trial(model_id, state, value=None, error=None, retry_history=None):
        folder = tmp_path / model_id
        (folder / "model.safetensors").parent.mkdir(exist_ok=True)
        (folder / "model.safetensors").write_bytes(b"weights")
        attrs = {"model_id": model_id, "checkpoint": str(folder), **({"error": error} if error else {})}
        system = {"retry_history": retry_history} if retry_history is not None else {}
        study.add_trial(optuna.create_trial(state=state, value=value, user_attrs=attrs, system_attrs=system))

    trial("best", TrialState.COMPLETE, 1.0)
    trial("worse", TrialState.COMPLETE, 2.0)
    trial("unscored", TrialState.FAIL, error="the transcriber could not be loaded")  # scoring failed: for good
    trial("killed", TrialState.FAIL)  # killed while scoring: retried below, which resumes its checkpoint
    trial("killed", TrialState.WAITING, retry_history=[3])
    trial("interrupted", TrialState.FAIL)  # a Ctrl-C whose retry is about to be queued
    for history in ([], [6], [6, 7], [6, 7, 8]):  # killed while scoring, retried, killed again, ...
        trial("given_up", TrialState.FAIL, retry_history=history)
    trial("scoring", TrialState.RUNNING)  # another process scores it now
    trial("retried", TrialState.FAIL)  # killed, then its retry finished among the best
    trial("retried", TrialState.COMPLETE, 0.5, retry_history=[11])

    assert keep_best_checkpoints(study, 2, "wer", max_retries=3) == [
        f"deleted {tmp_path / 'worse'} (trial 1, wer 2.0000: not among the best 2)",
        (f"deleted {tmp_path / 'unscored'} (trial 2, failed (the transcriber could not be loaded): it has no value "
         "to be among the best)"),
        (f"deleted {tmp_path / 'given_up'} (trial 9, failed (interrupted, and retried 3 times): it has no value to "
         "be among the best)"),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "interrupted", "killed", "retried", "scoring"]
    assert all((tmp_path / name / "model.safetensors").is_file() for name in ("best", "killed", "retried"))
    assert keep_best_checkpoints(study, 2, "wer", max_retries=3) == []  # nothing said twice


def test_a_trial_whose_scoring_fails_loses_its_checkpoint_and_says_why(base, tmp_path, monkeypatch):
    from kanitts.errors import UserError
    from kanitts.sweeps.study import SweepStudy
    from kanitts.training.experiments import default_checkpoints_dir, training_run

    monkeypatch.chdir(tmp_path)
    sweep = {"method": "grid", "parameters": {"trainer_args.learning_rate": [1e-3]}}
    config_dir = _sweep_project(tmp_path, base, sweep, steps=1)
    configs = load_configs(config_dir, kinds=("dataset", "experiments", "model", "eval"))
    swept = configs.experiments.experiments[0]
    swept = swept.model_copy(update={"sweep": swept.sweep.model_copy(update={"objective": "wer"})})
    scored = []

    def scorer(checkpoint, objective, folder):
        scored.append((checkpoint, objective))
        raise UserError("eval_config.yaml: intelligibility: the transcriber could not be loaded")

    run = training_run(configs, default_checkpoints_dir(configs, None))
    outcome = SweepStudy(swept, run, None, scorer).optimize()
    checkpoint = tmp_path / "ck" / "alice-lr0.001"
    assert scored == [(checkpoint, "wer")] and not checkpoint.exists()
    assert (f"deleted {checkpoint} (trial 0, failed (eval_config.yaml: intelligibility: the transcriber could not "
            "be loaded): it has no value to be among the best)") in outcome.messages
    [trial] = _study(tmp_path).trials
    assert trial.state.name == "FAIL" and not (tmp_path / "ck" / ".runs" / "alice-lr0.001").exists()
