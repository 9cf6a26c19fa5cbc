"""An experiment's sweep as an Optuna study in a database: trials trained, scored, pruned, resumed.

Each trial is the experiment with the trial's values set (:meth:`Experiment.with_parameters`),
trained by the same :class:`~kanitts.training.experiments.TrainingRun` as `kanitts train`
(locks, run folders, atomic checkpoints), and scored on the held-out rows: the objective is
the best value of an eval metric over the trial's evaluations (``eval_loss`` by default, the
lowest), or, for an eval-set objective (``wer``, ``cer``, ``speaker_similarity``, ``mos``), the
mean score of the trained model speaking the eval set (:mod:`kanitts.sweeps.scoring`). The
median pruner sees the validation metric at every evaluation and stops hopeless trials early.

What survives a kill -9: the study lives in its database (``sweeps/<name>.db``, SQLite
through Optuna's RDB storage, or any RDB URL), each trial under a model_id of its own
(``<model_id>-t003`` for Optuna, ``alice-r16-lr5e-05`` for a grid point) with its
intermediate checkpoints in the run folder. On the next start, a trial left RUNNING by a dead
process of this machine is marked FAIL at once and retried with the same values and the same
model_id, so its training resumes from the last checkpoint; trials of other machines are
caught by Optuna's heartbeat (``heartbeat_seconds``) and retried the same way. Finished trials
are never trained again.

Several processes (one per GPU, or machines sharing an RDB URL) can run one study at once: each
asks the storage for its next trial, the experiment lock keeps two from training the same
model_id, and each stops once the study holds ``n_trials`` finished, pruned or running trials.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kanitts.atomic import pid_is_running
from kanitts.config import ConfigSet, Experiment, Sweep, point_model_id
from kanitts.config.schemas.sweep import SWEEPS_FOLDER
from kanitts.errors import UserError
from kanitts.runtime import release_memory
from kanitts.sweeps.checkpoints import CHECKPOINT_ATTR, ERROR_ATTR, keep_best_checkpoints
from kanitts.sweeps.pruning import TrialPruning
from kanitts.sweeps.space import grid_search_space, suggest_parameters
from kanitts.training.experiments import (
    METRICS_FILE,
    TrainingRun,
    default_checkpoints_dir,
    say,
    training_run,
)
from kanitts.training.tracking import finish_active_runs

if TYPE_CHECKING:
    from kanitts.sweeps.scoring import EvalSetScorer

# A trial retried after its process died is retried at most this often (then it stays failed).
MAX_RETRIES = 3
# Trials failing one after another (a broken setup, not a bad value): the sweep stops.
MAX_FAILURES_IN_A_ROW = 3


@dataclass
class SweepOutcome:
    """One study after this run: where it lives and what this run did to it."""

    name: str
    storage: str
    report_dir: Path
    interrupted: bool = False
    messages: list[str] = field(default_factory=list)


def sweep_experiments(configs: ConfigSet, only: Sequence[str] | None = None) -> list[Experiment]:
    """The experiments with a `sweep:` section (those named in ``only``, when given)."""
    swept = [e for e in configs.experiments.experiments if e.sweep is not None]
    if not swept:
        raise UserError(
            "experiments.yaml: no experiment has a sweep: section (see docs/sweeps.md); "
            "`kanitts train` trains the others"
        )
    if only:
        unknown = [name for name in only if name not in {e.model_id for e in swept}]
        if unknown:
            raise UserError(
                f"--only: no experiment with a sweep has model_id {', '.join(map(repr, unknown))}; "
                f"those with one: {', '.join(e.model_id for e in swept)}"
            )
        swept = [e for e in swept if e.model_id in set(only)]
    return swept


def storage_location(sweep: Sweep, name: str) -> tuple[str, Path]:
    """(RDB URL, report folder) of a study: ``storage`` as a URL, else a SQLite file, by default
    ``sweeps/<name>.db`` relative to where the command runs (as every path of the configs)."""
    if sweep.storage and "://" in sweep.storage:
        return sweep.storage, Path(SWEEPS_FOLDER) / name
    path = Path(sweep.storage or Path(SWEEPS_FOLDER) / f"{name}.db")
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path.resolve()}", path.with_suffix("")


def open_study(sweep: Sweep, name: str, url: str):
    """The study (created on first use) with the sampler and pruner of ``sweep``.

    SQLite waits up to a minute for a lock another process holds, instead of failing.
    """
    import optuna
    from optuna.storages import RDBStorage

    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = RDBStorage(
                url,
                engine_kwargs=engine,
                heartbeat_interval=sweep.heartbeat_seconds,
                grace_period=2 * sweep.heartbeat_seconds,
                heartbeat_stale_trial_callback=retry_callback(),
            )
    except Exception as exc:  # a URL or database the user got wrong: say which
        raise UserError(f"sweep {name}: storage {url!r} could not be opened: {exc}") from None
    if sweep.method == "grid":
        sampler = optuna.samplers.GridSampler(grid_search_space(sweep), seed=sweep.seed)
    elif sweep.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=sweep.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=sweep.seed, n_startup_trials=min(10, max(2, sweep.n_trials // 3)))
    if sweep.resolved_pruner == "median":
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=sweep.pruner_startup_trials, n_warmup_steps=0, n_min_trials=1
        )
    else:
        pruner = optuna.pruners.NopPruner()
    try:
        study = optuna.create_study(
            storage=storage, study_name=name, sampler=sampler, pruner=pruner,
            direction=sweep.resolved_direction, load_if_exists=True,
        )
    except ValueError as exc:  # a study of that name with the other direction
        raise UserError(f"sweep {name}: {exc}") from None
    return study


def retry_callback():
    """Queues a failed trial again with its values, model_id included (Optuna copies user attrs)."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)


def recover_dead_trials(study) -> list[str]:
    """Marks FAIL the RUNNING trials whose process on this machine is gone, and retries them.

    Optuna's heartbeat would catch them too, but only ``2 * heartbeat_seconds`` later; a kill
    on this machine is known at once. A trial whose retry another process already queued is
    left alone (only one process can mark a trial finished).
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    host = socket.gethostname()
    notes = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = trial.user_attrs.get("pid")
        if trial.user_attrs.get("host") != host or not isinstance(pid, int) or pid_is_running(pid):
            continue
        try:
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue
        retry_callback()(study, study._storage.get_trial(trial._trial_id))
        notes.append(
            f"trial {trial.number} ({trial.user_attrs.get('model_id')}) was left running by process {pid}, "
            "which is gone: marked failed, retried with the same values (its training resumes)"
        )
    return notes


SETTINGS_ATTR = "experiment_settings"


def settings_changes(study, experiment: Experiment) -> list[str]:
    """What the experiment changed since the study's first run, one ``key: old -> new`` each.

    The first run records the experiment's settings (all but its sweep, its description and
    the keys the sweep varies) on the study. A later run with other settings still adds its
    trials to the same study, but the earlier trials were trained with the old ones, so their
    scores are no fair comparison: worth a warning, not a refusal (a longer ``max_steps`` may be
    meant to extend the study).
    """
    varied = set(experiment.sweep.parameters) if experiment.sweep else set()
    current = {f"{section}.{key}": value
               for section, values in experiment.model_dump(mode="json", exclude={"sweep"}).items()
               for key, value in values.items()
               if (section, key) != ("base", "desc") and f"{section}.{key}" not in varied}
    recorded = study.user_attrs.get(SETTINGS_ATTR)
    if recorded is None:
        study.set_user_attr(SETTINGS_ATTR, current)
        return []
    return [f"{key}: {recorded.get(key)!r} -> {current.get(key)!r}"
            for key in sorted(set(recorded) | set(current)) if recorded.get(key) != current.get(key)]


def _counted(study) -> int:
    """Trials that count towards n_trials: finished, pruned, or running in some process now."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)))


def objective_value(metrics: dict[str, Any], objective: str, direction: str) -> float:
    """The best value of ``objective`` over a trained trial's evaluations (metrics.json).

    Names starting with ``eval_`` are what the validation pass logs; a metric of another kind
    (a WER of the trained model) would be read here from where it is written.
    """
    values = [e[objective] for e in metrics.get("eval_history") or [] if objective in e]
    if not values:
        logged = sorted({k for e in metrics.get("eval_history") or [] for k in e if k != "step"})
        raise UserError(
            f"the objective {objective} was not logged by the validation pass; it logs: "
            f"{', '.join(logged) or 'nothing (no held-out rows?)'}"
        )
    return max(values) if direction == "maximize" else min(values)


class _ReportedFailures(logging.Filter):
    """Drops Optuna's "Trial N failed" warnings, traceback included, for the trials whose failure
    the sweep reports itself: a mistake in the configs (a UserError, said in one line) and a
    Ctrl-C (a trial to resume, not a failure). A bug keeps Optuna's traceback."""

    def __init__(self):
        super().__init__()
        self.trials: set[int] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(message.startswith(f"Trial {number} failed") for number in self.trials)


class SweepStudy:
    """One experiment's study: its trials, trained by ``run``."""

    def __init__(self, experiment: Experiment, run: TrainingRun, n_trials: int | None,
                 scorer: EvalSetScorer | None = None):
        self.experiment = experiment
        self.sweep: Sweep = experiment.sweep
        self.run = run
        self.scorer = scorer  # for an eval-set objective
        self.name = self.sweep.study_label(experiment.model_id)
        if self.sweep.method == "grid":
            self.n_trials = len(self.sweep.grid_points()) if n_trials is None else n_trials
        else:
            self.n_trials = n_trials or self.sweep.n_trials
        self.url, self.report_dir = storage_location(self.sweep, self.name)
        self.interrupted = False
        self.failures_in_a_row = 0
        self.messages: list[str] = []
        self.reported = _ReportedFailures()

    def optimize(self) -> SweepOutcome:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = open_study(self.sweep, self.name, self.url)
        for note in recover_dead_trials(study):
            self._say(note)
        changes = settings_changes(study, self.experiment)
        if changes:
            self._say(
                f"warning: sweep {self.name}: the experiment changed since the study's first trials "
                f"({'; '.join(changes)}): those were trained with the old settings and are compared with the "
                "new ones; give the sweep another study_name to start a fresh study"
            )
        done = _counted(study)
        if done >= self.n_trials:
            self._say(f"sweep {self.name}: the study holds {done} of {self.n_trials} trials: nothing to run")
        else:
            self._say(f"sweep {self.name}: {done} of {self.n_trials} trials so far; study in {self.url}")
            optuna_log = logging.getLogger("optuna.study._optimize")
            optuna_log.addFilter(self.reported)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                try:
                    # each trial releases its memory itself (kanitts.runtime.release_memory)
                    study.optimize(self._objective, callbacks=[self._enough], catch=(Exception,))
                except KeyboardInterrupt:
                    self.interrupted = True
                    self._retry_own_failed(study)
                finally:
                    optuna_log.removeFilter(self.reported)
        return SweepOutcome(self.name, self.url, self.report_dir, self.interrupted, self.messages)

    def _enough(self, study, trial) -> None:
        """After every trial: drop checkpoints outside the top k, stop once the study is full
        (or when trials keep failing)."""
        from optuna.trial import TrialState

        for message in keep_best_checkpoints(study, self.sweep.keep_top_k, self.sweep.objective, MAX_RETRIES):
            self._say(message)
        self.failures_in_a_row = self.failures_in_a_row + 1 if trial.state == TrialState.FAIL else 0
        if trial.state == TrialState.FAIL:
            self._say(f"trial {trial.number} FAILED: {trial.user_attrs.get(ERROR_ATTR, 'see the message above')}")
        if self.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            self._say(f"sweep {self.name}: {self.failures_in_a_row} trials failed in a row: stopping")
            study.stop()
        elif _counted(study) >= self.n_trials:
            study.stop()

    def _retry_own_failed(self, study) -> None:
        """After a Ctrl-C: the trial this process was training, failed by Optuna, is queued again
        with its values and model_id, so the next run resumes its checkpoint."""
        from optuna.trial import TrialState

        retried = {n for t in study.get_trials(deepcopy=False) for n in t.system_attrs.get("retry_history", [])}
        for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if trial.user_attrs.get("pid") == os.getpid() and trial.number not in retried and (
                ERROR_ATTR not in trial.user_attrs
            ):
                retry_callback()(study, trial)
                self._say(f"trial {trial.number} ({trial.user_attrs.get('model_id')}) interrupted: "
                          "the next run resumes it")

    def _objective(self, trial) -> float:
        import optuna

        params = suggest_parameters(trial, self.sweep)
        model_id = trial.user_attrs.get("model_id") or (
            point_model_id(self.experiment.model_id, params) if self.sweep.method == "grid"
            else f"{self.experiment.model_id}-t{trial.number:03d}"
        )
        trial.set_user_attr("model_id", model_id)
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        shown = ", ".join(f"{k}={v}" for k, v in params.items())
        self._say(f"\n=== {self.name}: trial {trial.number} ({model_id}): {shown} ===")
        pruning = TrialPruning(trial, self.sweep.pruning_metric, self.sweep.pruner_warmup_evaluations)
        start = time.perf_counter()
        try:
            with self._failures_recorded(trial):
                result = self.run.train(self.experiment.with_parameters(params, model_id), callbacks=[pruning])
                if result.status == "failed":
                    raise RuntimeError(result.error)
        finally:
            finish_active_runs()
            release_memory()
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 1))
        if result.status == "pruned":
            self._say(f"{model_id}: {pruning.discard_run}")
            raise optuna.TrialPruned(pruning.discard_run)
        if result.status == "interrupted":
            self.interrupted = True
            self.reported.trials.add(trial.number)
            trial.study.stop()
            raise KeyboardInterrupt
        trial.set_user_attr(CHECKPOINT_ATTR, str(result.path))
        if self.sweep.scores_eval_set:
            try:  # a Ctrl-C here: the retry finds the training done and scores again
                with self._failures_recorded(trial):
                    value, samples = self.scorer(result.path, self.sweep.objective, self.report_dir)
            finally:
                release_memory()
            self._say(f"{model_id}: {self.sweep.objective} {value:.4f} (mean over {samples} eval-set sample(s))")
            return value
        with self._failures_recorded(trial):
            metrics = json.loads((result.path / METRICS_FILE).read_text())
            value = objective_value(metrics, self.sweep.objective, self.sweep.resolved_direction)
        self._say(f"{model_id}: {self.sweep.objective} {value:.4f}")
        return value

    @contextmanager
    def _failures_recorded(self, trial) -> Iterator[None]:
        """A Ctrl-C leaves the trial to resume (Optuna fails it, :meth:`_retry_own_failed` queues
        it again, without Optuna's traceback); any other exception is the trial's error, a failure
        for good (never retried; its checkpoint goes, see :mod:`kanitts.sweeps.checkpoints`)."""
        try:
            yield
        except KeyboardInterrupt:
            self.reported.trials.add(trial.number)
            raise
        except Exception as exc:
            self._failed(trial, exc)
            raise

    def _failed(self, trial, exc: Exception) -> None:
        trial.set_user_attr(ERROR_ATTR, str(exc).strip().splitlines()[-1][:500] if str(exc).strip() else repr(exc))
        if isinstance(exc, UserError):
            self.reported.trials.add(trial.number)

    def _say(self, message: str) -> None:
        self.messages.append(message.strip())
        say(message)


def run_sweeps(
    configs: ConfigSet,
    *,
    only: Sequence[str] | None = None,
    n_trials: int | None = None,
    checkpoints_dir: Path | str | None = None,
    train_dataset: Any = None,
    eval_dataset: Any = None,
    callbacks: Sequence[Any] = (),
) -> list[SweepOutcome]:
    """Runs the study of every experiment with a sweep (or those in ``only``), one after another.

    ``n_trials`` replaces each study's own target (a grid's: its point count). The data is
    built once for all; a sweep needs held-out rows to score its trials on. ``callbacks``
    (TrainerCallbacks) join every trial's training.
    """
    experiments = sweep_experiments(configs, only)
    checkpoints = default_checkpoints_dir(configs, checkpoints_dir)
    run = training_run(configs, checkpoints, train_dataset, eval_dataset, callbacks)
    if run.eval_dataset is None or len(run.eval_dataset) == 0:
        raise UserError(
            "a sweep scores its trials on held-out rows, and no dataset holds any out: set "
            "validation_fraction or validation_rows on a dataset in dataset_config.yaml"
        )
    scorer = None
    if any(e.sweep.scores_eval_set for e in experiments):
        if configs.eval_set is None or configs.inference is None or configs.eval is None:
            raise UserError("an eval-set objective (wer, cer, speaker_similarity, mos) needs eval_config.yaml, "
                            "eval_set.yaml and inference_config.yaml loaded with the training configs")
        from kanitts.sweeps.scoring import EvalSetScorer  # the evaluation stack, only when scored on it

        scorer = EvalSetScorer(configs)
    outcomes = []
    for experiment in experiments:
        outcome = SweepStudy(experiment, run, n_trials, scorer if experiment.sweep.scores_eval_set else None).optimize()
        outcomes.append(outcome)
        if outcome.interrupted:
            break
    return outcomes
