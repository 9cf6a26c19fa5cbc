"""`kanitts train`: every experiment of experiments.yaml on one base model, one after another.

The seed's workflow (data processed once, then LoRA + merge + save per experiment), made safe
to leave running:

- **isolation**: an experiment that fails is reported with its traceback and the next one
  runs; the summary lists every experiment and the exit code says whether any failed;
- **nothing half-written looks finished**: a checkpoint is written to a temporary sibling folder
  and renamed to ``<checkpoints_dir>/<model_id>`` when complete, so that folder existing means
  done, and a re-run skips it (unless ``force``);
- **resume**: intermediate checkpoints go to ``<checkpoints_dir>/.runs/<model_id>/`` (every
  ``save_steps``, and on Ctrl-C); a re-run continues from the newest complete one, provided the
  experiment, base model and data are unchanged;
- GPU memory is released between experiments.

Everything is a function: ``run_experiments`` is what the CLI calls and what tests call.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import resource
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml

from kanitts.atomic import remove_leftovers, write_atomically
from kanitts.config import ConfigSet, Experiment, ExperimentsConfig, translate_trainer_args, training_argument_names
from kanitts.errors import UserError
from kanitts.locks import RunLock
from kanitts.redact import redact_secrets
from kanitts.tokens import TokenLayout
from kanitts.training.tracking import finish_active_runs

RUNS_FOLDER = ".runs"
EXPERIMENT_FILE = "experiment.yaml"
METRICS_FILE = "metrics.json"
# What a run folder records about the run it holds, to refuse resuming a different one.
RUN_STAMP = "kanitts_run.json"

Status = Literal["done", "skipped", "failed", "interrupted", "not run"]

# TrainingArguments this runner sets unless the experiment does: frequent loss logging for the
# loss curve in metrics.json, and a bounded number of intermediate checkpoints.
RUNNER_DEFAULTS: dict[str, Any] = {"logging_steps": 10, "save_total_limit": 2}


@dataclass
class ExperimentResult:
    """How one experiment went, for the summary table, the exit code and callers in Python."""

    model_id: str
    status: Status
    seconds: float = 0.0
    final_loss: float | None = None
    path: Path | None = None
    error: str | None = None
    resumed_from: str | None = None
    notes: list[str] = field(default_factory=list)


def is_main_process() -> bool:
    """Rank 0 under `accelerate launch` / torchrun (set before any process group exists); else True."""
    return int(os.environ.get("RANK", "0")) == 0


def say(message: str) -> None:
    """Prints from the main process only, so `accelerate launch` shows each line once."""
    if is_main_process():
        print(message, flush=True)


def select_experiments(config: ExperimentsConfig, only: Sequence[str] | None) -> list[Experiment]:
    """The experiments named in ``only`` (all when None), in file order; unknown names are an error."""
    if not only:
        return list(config.experiments)
    known = {exp.model_id: exp for exp in config.experiments}
    unknown = [name for name in only if name not in known]
    if unknown:
        raise UserError(
            f"--only: no experiment with model_id {', '.join(map(repr, unknown))} in experiments.yaml; "
            f"it has {', '.join(known)}"
        )
    return [exp for exp in config.experiments if exp.model_id in set(only)]


def run_fingerprint(experiment: Experiment, base_model: str, dataset_fingerprint: str) -> str:
    """Identifies what a run trains, so a checkpoint is only resumed by the same run."""
    payload = json.dumps(
        # redacted: a rotated token is the same run
        {"experiment": redact_secrets(experiment.model_dump(mode="json")), "base_model": base_model, "data": dataset_fingerprint},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def last_complete_checkpoint(run_dir: Path) -> Path | None:
    """The newest ``checkpoint-N`` with its trainer_state.json (written last); partial ones are removed."""
    if not run_dir.is_dir():
        return None
    found = []
    for path in run_dir.glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if not (path.is_dir() and step.isdigit()):
            continue
        if (path / "trainer_state.json").is_file():
            found.append((int(step), path))
        else:
            shutil.rmtree(path, ignore_errors=True)
    return max(found)[1] if found else None


def training_finished(checkpoint: Path) -> bool:
    """Whether the checkpoint's trainer_state.json has reached the run's last step."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return 0 < int(state.get("max_steps") or 0) <= int(state.get("global_step") or 0)


def restore_finished_training(trainer: Any, checkpoint: Path) -> None:
    """The adapter weights and trainer state of a checkpoint whose training is complete."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights
    from transformers import TrainerState

    set_peft_model_state_dict(trainer.model, load_peft_weights(str(checkpoint), device="cpu"))
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))


def prepare_run_dir(run_dir: Path, fingerprint: str, force: bool) -> tuple[Path | None, list[str]]:
    """Makes the run folder ready; returns the checkpoint to resume from, if any, and notes."""
    notes = []
    stamp = run_dir / RUN_STAMP
    if run_dir.exists():
        recorded = json.loads(stamp.read_text())["fingerprint"] if stamp.is_file() else None
        if force or recorded != fingerprint:
            if not force:
                notes.append("the experiment, base model or data changed since the last run: starting afresh")
            shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"fingerprint": fingerprint}))
    return last_complete_checkpoint(run_dir), notes


def peak_memory() -> tuple[int, str]:
    """Peak memory of this process so far: CUDA allocations on a GPU, else resident set size."""
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated()), "cuda_max_memory_allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process_max_rss"


def release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def training_arguments(
    experiment: Experiment,
    run_dir: Path,
    report_to: list[str],
    project_name: str | None,
) -> tuple[Any, Any, list[str]]:
    """TrainingArguments for one experiment (every ``trainer_args`` key, translated, plus ours).

    Also returns the dtype to load the base model in, which follows the precision chosen.
    """
    import torch
    from transformers import TrainingArguments

    from kanitts.training.model_loading import choose_precision

    args, notes = translate_trainer_args(experiment.trainer_args)
    args, dtype, precision_notes = choose_precision(args)
    notes += precision_notes
    names = training_argument_names()
    for key, value in RUNNER_DEFAULTS.items():
        args.setdefault(key, value)
    if project_name and "project" in names:
        args.setdefault("project", project_name)
    if experiment.training.group_by_length and not experiment.training.packing:
        if "train_sampling_strategy" in names:
            args.setdefault("train_sampling_strategy", "group_by_length")
        else:
            args.setdefault("group_by_length", True)
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        # CPU only: transformers wants use_cpu for bf16 there, and it makes DDP use gloo
        args.setdefault("use_cpu", True)
        args.setdefault("dataloader_pin_memory", False)
    args.update(
        output_dir=str(run_dir),
        run_name=experiment.base.run_name or experiment.model_id,
        report_to=report_to,
        remove_unused_columns=False,
    )
    return TrainingArguments(**args), dtype, notes


@dataclass
class TrainingRun:
    """What every experiment of one `kanitts train` shares: base model, tokenizer, data, folders."""

    base_model: str
    project_name: str | None
    tokenizer: Any
    layout: TokenLayout
    dataset: Any
    dataset_fingerprint: str
    checkpoints_dir: Path
    callbacks: Sequence[Any] = ()

    def train(self, experiment: Experiment, force: bool = False) -> ExperimentResult:
        """Train, merge and save one experiment under its lock (callers catch its exceptions).

        A run of the same experiment in another process is refused (UserError naming it). The
        main process takes the lock for all processes of an `accelerate launch`, and tells
        them whether it got it, so a refusal stops every process instead of leaving some
        waiting. One that another process finished meanwhile is skipped.
        """
        from accelerate import PartialState
        from accelerate.utils import broadcast_object_list

        lock = RunLock(
            self.checkpoints_dir / RUNS_FOLDER / f"{experiment.model_id}.lock",
            f"experiment {experiment.model_id!r} (checkpoints in {self.checkpoints_dir})",
        )
        outcome: list[Any] = [None, None]  # refusal, takeover note
        if PartialState().is_main_process:
            try:
                outcome[1] = lock.acquire()
            except UserError as exc:
                outcome[0] = str(exc)
        refusal, takeover = broadcast_object_list(outcome)
        if refusal:
            raise UserError(refusal)
        try:
            final = self.checkpoints_dir / experiment.model_id
            if final.is_dir() and not force:
                say(f"{experiment.model_id}: trained meanwhile by another run ({final}), skipping")
                return ExperimentResult(experiment.model_id, "skipped", path=final)
            return self._train_locked(experiment, force, [takeover] if takeover else [])
        finally:
            lock.release()

    def _train_locked(self, experiment: Experiment, force: bool, notes: list[str]) -> ExperimentResult:
        import torch
        from accelerate import PartialState
        from transformers.trainer_utils import enable_full_determinism, set_seed

        from kanitts.training.batching import PackingCollator, PaddingCollator
        from kanitts.training.lora import choose_attention, load_base_model, wrap_with_lora
        from kanitts.training.packing import disable_exact_packing, enable_exact_packing
        from kanitts.training.trainer import ExperimentTrainer, GracefulInterrupt
        from kanitts.training.tracking import resolve_tracking

        start = time.perf_counter()
        options = experiment.training
        run_dir = self.checkpoints_dir / RUNS_FOLDER / experiment.model_id
        fingerprint = run_fingerprint(experiment, self.base_model, self.dataset_fingerprint)
        with PartialState().main_process_first():  # one process cleans the run folder, the others see it clean
            resume_from, run_notes = prepare_run_dir(run_dir, fingerprint, force)
        notes += run_notes

        tracking = resolve_tracking(experiment.trainer_args.get("report_to"), self.project_name)
        tracking.apply_environment()
        notes += tracking.notes
        args, dtype, arg_notes = training_arguments(experiment, run_dir, tracking.report_to, self.project_name)
        notes += arg_notes
        compute = torch.float16 if args.fp16 else dtype  # fp16 trains fp32 weights under fp16 autocast
        attention, attention_notes = choose_attention(options.attn_implementation, compute)
        # The Trainer seeds only once it exists, after the LoRA weights are drawn: seeded here,
        # the same seed gives the same adapter and so the same model.
        if args.full_determinism:
            enable_full_determinism(args.seed)
        else:
            set_seed(args.seed)
        model = load_base_model(self.base_model, attention, dtype)
        if options.packing:
            packed_attention = enable_exact_packing(model)
            if packed_attention != attention:
                attention_notes = [
                    f"attention: {packed_attention}, SDPA on each packed sequence alone "
                    f"(flash-attn 2 does this natively when installed)"
                ]
                attention = packed_attention
            collator = PackingCollator(start_of_ai=self.layout.start_of_ai, loss_on=options.loss_on)
        else:
            collator = PaddingCollator(
                pad_token_id=self.layout.pad, start_of_ai=self.layout.start_of_ai, loss_on=options.loss_on
            )
        notes += attention_notes
        for note in notes:
            say(f"  note: {note}")
        model = wrap_with_lora(model, experiment.lora_args)
        interrupt = GracefulInterrupt()
        trainer = ExperimentTrainer(
            model=model,
            args=args,
            train_dataset=self.dataset,
            data_collator=collator,
            callbacks=[*self.callbacks, interrupt],
            max_tokens_per_batch=options.max_tokens_per_batch if options.packing else None,
            chunked_loss=options.chunked_loss,
        )
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        if resume_from is not None and training_finished(resume_from):
            # Killed during the final save: every step is in the checkpoint. transformers would
            # take one more step from it (it checks max_steps after a step, not before).
            notes.append(f"training had finished at {resume_from.name}; saving it without further steps")
            restore_finished_training(trainer, resume_from)
            global_step, mean_loss, runtime = trainer.state.global_step, None, 0.0
        else:
            result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
            global_step, mean_loss = result.global_step, result.training_loss
            runtime = float(result.metrics.get("train_runtime", 0.0))
        tokens = trainer.total_tokens_trained()
        resumed = resume_from.name if resume_from else None
        if interrupt.interrupted:
            return ExperimentResult(
                experiment.model_id, "interrupted", time.perf_counter() - start, resumed_from=resumed, notes=notes
            )

        memory, memory_kind = peak_memory()
        losses = [{"step": e["step"], "loss": e["loss"]} for e in trainer.state.log_history if "loss" in e]
        metrics = {
            "loss_history": losses,
            "final_loss": losses[-1]["loss"] if losses else mean_loss,
            "mean_train_loss": mean_loss,
            "global_step": global_step,
            "train_runtime": runtime,
            "tokens_trained": tokens,
            "tokens_per_second": tokens / runtime if runtime else None,
            "peak_memory_bytes": memory,
            "peak_memory_kind": memory_kind,
            "dataset_fingerprint": self.dataset_fingerprint,
            "num_sequences": len(self.dataset),
            "attn_implementation": attention,
            "packing": options.packing,
            "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
            "resumed_from": resumed,
            "notes": notes,
        }
        final = self.checkpoints_dir / experiment.model_id
        if trainer.is_world_process_zero():
            if options.packing:
                disable_exact_packing(model.get_base_model())
            write_atomically(final, lambda folder: self._save(model, experiment, metrics, run_dir, folder))
            shutil.rmtree(run_dir, ignore_errors=True)
        trainer.accelerator.wait_for_everyone()
        return ExperimentResult(
            experiment.model_id,
            "done",
            time.perf_counter() - start,
            final_loss=metrics["final_loss"],
            path=final,
            resumed_from=resumed,
            notes=notes,
        )

    def _save(self, model, experiment: Experiment, metrics: dict[str, Any], run_dir: Path, folder: Path) -> None:
        """Merged model (safetensors), tokenizer, experiment.yaml, metrics.json; the adapter if asked.

        TensorBoard event files, written under the run folder while training, move along into
        ``logs/`` so they outlive the run folder.
        """
        if experiment.training.keep_adapter:
            model.save_pretrained(str(folder / "adapter"))
        merged = model.merge_and_unload()
        merged.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))
        record = {
            "base_model": self.base_model,
            "model_id": experiment.model_id,
            "project_name": self.project_name,
            "experiment": redact_secrets(experiment.model_dump(mode="json")),
        }
        (folder / EXPERIMENT_FILE).write_text(yaml.safe_dump(record, sort_keys=False))
        (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        if (run_dir / "runs").is_dir():
            shutil.copytree(run_dir / "runs", folder / "logs")


def run_experiments(
    configs: ConfigSet,
    *,
    only: Sequence[str] | None = None,
    force: bool = False,
    checkpoints_dir: Path | str | None = None,
    train_dataset: Any = None,
    callbacks: Sequence[Any] = (),
) -> list[ExperimentResult]:
    """Runs the selected experiments one after another; never lets one failure stop the rest.

    ``configs`` needs experiments and model (and dataset unless ``train_dataset`` is given).
    ``checkpoints_dir`` defaults to eval_config's ``paths.checkpoints_dir``, else ./checkpoints.
    A Ctrl-C saves a resumable checkpoint, marks the interrupted experiment and the ones after
    it, and returns (see :func:`exit_code`).
    """
    from transformers import AutoTokenizer

    from kanitts.files import check_output_folder
    from kanitts.training.model_loading import check_base_model

    experiments_cfg = configs.experiments
    if experiments_cfg is None or configs.model is None:
        raise UserError("training needs experiments.yaml and model_config.yaml")
    selected = select_experiments(experiments_cfg, only)
    if checkpoints_dir is None:
        checkpoints_dir = configs.eval.paths.checkpoints_dir if configs.eval is not None else "checkpoints"
    checkpoints_dir = Path(checkpoints_dir)
    if is_main_process():
        remove_leftovers(checkpoints_dir)  # a merged model a kill left half-written is a gigabyte

    results: list[ExperimentResult] = []
    pending = []
    for experiment in selected:
        final = checkpoints_dir / experiment.model_id
        if final.is_dir() and not force:
            say(f"{experiment.model_id}: already trained ({final}), skipping (--force trains it again)")
            results.append(ExperimentResult(experiment.model_id, "skipped", path=final))
        else:
            pending.append(experiment)
    if not pending:
        return results
    check_output_folder(checkpoints_dir, "checkpoints folder")

    base_model = experiments_cfg.base_model
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_model)
    except (OSError, ValueError) as exc:
        raise UserError(f"experiments.yaml: base_model {base_model!r}: its tokenizer could not be loaded: {exc}") from exc
    check_base_model(base_model, TokenLayout.from_config(configs.model))
    if train_dataset is None:
        train_dataset, fingerprint = _build_dataset(configs, tokenizer)
    else:
        fingerprint = getattr(train_dataset, "_fingerprint", None) or "unknown"
    run = TrainingRun(
        base_model=base_model,
        project_name=experiments_cfg.project_name,
        tokenizer=tokenizer,
        layout=TokenLayout.from_config(configs.model),
        dataset=train_dataset,
        dataset_fingerprint=fingerprint,
        checkpoints_dir=checkpoints_dir,
        callbacks=callbacks,
    )
    for position, experiment in enumerate(pending):
        say(f"\n=== {experiment.model_id} ({position + 1}/{len(pending)}) ===")
        start = time.perf_counter()
        try:
            result = run.train(experiment, force=force)
        except KeyboardInterrupt:
            result = ExperimentResult(experiment.model_id, "interrupted", time.perf_counter() - start)
        except Exception as exc:  # one experiment's failure must not cost the others
            message = str(exc) if isinstance(exc, UserError) else traceback.format_exc()
            print(f"{experiment.model_id} FAILED:\n{message}", flush=True)
            result = ExperimentResult(experiment.model_id, "failed", time.perf_counter() - start, error=message)
        finally:
            finish_active_runs()
            release_memory()
        results.append(result)
        if result.status == "interrupted":
            results.extend(ExperimentResult(e.model_id, "not run") for e in pending[position + 1:])
            break
    return results


def _build_dataset(configs: ConfigSet, tokenizer) -> tuple[Any, str]:
    """The training sequences and their fingerprint, built once for every experiment.

    Under ``accelerate launch`` the main process builds (or loads the cache) first, the other
    processes then read its cache.
    """
    from accelerate import PartialState

    from kanitts.sequences import build_training_dataset

    if configs.dataset is None:
        raise UserError("training needs dataset_config.yaml (or a prepared training dataset)")
    with PartialState().main_process_first():
        dataset, report = build_training_dataset(configs.dataset, configs.model, tokenizer)
    say(report.format())
    return dataset, report.fingerprint


def summary_table(results: Sequence[ExperimentResult]):
    """A rich table: experiment, status, time, final loss, path."""
    from rich.table import Table

    colours = {"done": "green", "skipped": "cyan", "failed": "red", "interrupted": "yellow", "not run": "dim"}
    table = Table(title="Training summary")
    for column in ("experiment", "status", "time", "final loss", "path"):
        table.add_column(column)
    for r in results:
        minutes, seconds = divmod(int(round(r.seconds)), 60)
        table.add_row(
            r.model_id,
            f"[{colours[r.status]}]{r.status}[/]",
            f"{minutes}m{seconds:02d}s" if r.seconds else "-",
            f"{r.final_loss:.4f}" if r.final_loss is not None else "-",
            str(r.path) if r.path else "-",
        )
    return table


def exit_code(results: Sequence[ExperimentResult]) -> int:
    """0 when nothing failed; 130 when interrupted (like a shell), 1 when an experiment failed."""
    if any(r.status == "interrupted" for r in results):
        return 130
    return 1 if any(r.status == "failed" for r in results) else 0


def train_command(
    config_dir: Path | str,
    *,
    only: Sequence[str] | None = None,
    force: bool = False,
    checkpoints_dir: Path | str | None = None,
) -> int:
    """`kanitts train`: load the configs, run the experiments, print the summary; the exit code."""
    from rich.console import Console

    from kanitts.config import CONFIG_FILES, load_configs

    kinds = ("dataset", "experiments", "model")
    if (Path(config_dir) / CONFIG_FILES["eval"]).is_file():  # only for its checkpoints_dir
        kinds += ("eval",)
    configs = load_configs(config_dir, kinds=kinds)
    for warning in configs.warnings:
        say(f"warning: {warning}")
    results = run_experiments(configs, only=only, force=force, checkpoints_dir=checkpoints_dir)
    if is_main_process():
        Console().print(summary_table(results))
    code = exit_code(results)
    if code == 130:
        say("Interrupted: run the same command again to resume from the last checkpoint.")
    return code
