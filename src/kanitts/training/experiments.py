"""Every experiment of experiments.yaml on one base model, one after another.

The reference pipeline's workflow (data processed once, then LoRA + merge + save per
experiment), made safe to leave running:

- **isolation**: an experiment that fails is reported with its traceback and the next one
  runs; the results list every experiment (the recipe turns them into the summary and the
  exit code);
- **nothing half-written looks finished**: a checkpoint is written to a temporary sibling folder
  and renamed to ``<checkpoints_dir>/<model_id>`` when complete, so that folder existing means
  done, and a re-run skips it (unless ``force``);
- **resume**: intermediate checkpoints go to the run folder (:mod:`kanitts.training.run_folder`);
  a re-run continues from the newest complete one, provided the experiment, base model and
  data are unchanged;
- GPU memory is released between experiments.

Read top to bottom: :func:`run_experiments` (the whole job), then :class:`TrainingRun` (one
experiment: lock, arguments, model, trainer, save), then the helpers they use.
"""

from __future__ import annotations

import json
import resource
import shutil
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from kanitts.atomic import remove_leftovers, write_atomically
from kanitts.config import ConfigSet, Experiment, ExperimentsConfig
from kanitts.errors import UserError
from kanitts.locks import RunLock
from kanitts.redact import redact_secrets
from kanitts.runtime import process_rank, release_memory
from kanitts.tokens import TokenLayout
from kanitts.training.arguments import training_arguments
from kanitts.training.run_folder import (
    RUNS_FOLDER,
    prepare_run_dir,
    restore_finished_training,
    run_fingerprint,
    training_finished,
)
from kanitts.training.tracking import finish_active_runs

EXPERIMENT_FILE = "experiment.yaml"
METRICS_FILE = "metrics.json"

Status = Literal["done", "skipped", "failed", "interrupted", "not run"]

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
    it, and returns (see :func:`kanitts.recipes.train.exit_code`).
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
        raise UserError(
            f"experiments.yaml: base_model {base_model!r}: its tokenizer could not be loaded: {exc}"
        ) from exc
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
        from accelerate import PartialState

        from kanitts.training.tracking import resolve_tracking

        start = time.perf_counter()
        run_dir = self.checkpoints_dir / RUNS_FOLDER / experiment.model_id
        fingerprint = run_fingerprint(experiment, self.base_model, self.dataset_fingerprint)
        with PartialState().main_process_first():  # one process cleans the run folder, the others see it clean
            resume_from, run_notes = prepare_run_dir(run_dir, fingerprint, force)
        notes += run_notes

        tracking = resolve_tracking(experiment.trainer_args.get("report_to"), self.project_name)
        notes += tracking.notes
        with tracking.applied():  # the trackers read it while training; gone afterwards
            return self._train_tracked(experiment, run_dir, resume_from, tracking.report_to, notes, start)

    def _train_tracked(
        self,
        experiment: Experiment,
        run_dir: Path,
        resume_from: Path | None,
        report_to: list[str],
        notes: list[str],
        start: float,
    ) -> ExperimentResult:
        import torch
        from transformers.trainer_utils import enable_full_determinism, set_seed

        from kanitts.training.batching import PackingCollator, PaddingCollator
        from kanitts.training.lora import wrap_with_lora
        from kanitts.training.model_loading import choose_attention, fit_vocabulary, load_base_model
        from kanitts.training.packing import disable_exact_packing, enable_exact_packing
        from kanitts.training.trainer import ExperimentTrainer, GracefulInterrupt

        options = experiment.training
        args, dtype, arg_notes = training_arguments(experiment, run_dir, report_to, self.project_name)
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
        lora_args = experiment.lora_args
        new_tokens, vocab_notes = fit_vocabulary(model, self.layout)
        notes += vocab_notes
        if new_tokens and "trainable_token_indices" not in lora_args.model_dump():
            lora_args = lora_args.model_copy(update={"trainable_token_indices": {"embed_tokens": new_tokens}})
        conditioning = slot = None
        if options.speaker_conditioning == "embedding":
            from kanitts.conditioning import PROJECTION

            conditioning, slot = self._speaker_slot(model, args.seed)
            saved = list(lora_args.modules_to_save or [])
            lora_args = lora_args.model_copy(update={"modules_to_save": [*saved, PROJECTION]})
        if options.packing:
            packed_attention = enable_exact_packing(model)
            if packed_attention != attention:
                attention_notes = [
                    (f"attention: {packed_attention}, SDPA on each packed sequence alone "
                     "(flash-attn 2 does this natively when installed)")
                ]
                attention = packed_attention
            collator = PackingCollator(start_of_ai=self.layout.start_of_ai, loss_on=options.loss_on, speaker_slot=slot)
        else:
            collator = PaddingCollator(
                pad_token_id=self.layout.pad, start_of_ai=self.layout.start_of_ai, loss_on=options.loss_on,
                speaker_slot=slot,
            )
        notes += attention_notes
        for note in notes:
            say(f"  note: {note}")
        model = wrap_with_lora(model, lora_args)
        interrupt = GracefulInterrupt()
        trainer = ExperimentTrainer(
            model=model,
            args=args,
            train_dataset=self.dataset,
            data_collator=collator,
            callbacks=[*self.callbacks, interrupt],
            max_tokens_per_batch=options.max_tokens_per_batch if options.packing else None,
            chunked_loss=options.chunked_loss,
            speaker_conditioning=conditioning,
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

    def _speaker_slot(self, model, seed: int):
        """The projection and slot of ``speaker_conditioning: embedding``, sized by the data's embeddings."""
        from kanitts.conditioning import SpeakerConditioning
        from kanitts.training.batching import SpeakerSlot

        columns = getattr(self.dataset, "column_names", [])
        first = None
        if "speaker_embedding" in columns and len(self.dataset):
            first = self.dataset[0]["speaker_embedding"]
        if not first:
            raise UserError(
                "experiments.yaml: training.speaker_conditioning: embedding needs a global embedding per clip, "
                "and the training data has none: prepare it with codec.kind: kanade in model_config.yaml "
                "(its datasets carry global_embedding)"
            )
        conditioning = SpeakerConditioning.attach(model, len(first), self.layout.speaker_slot, seed=seed)
        return conditioning, SpeakerSlot(start_of_human=self.layout.start_of_human, slot=self.layout.speaker_slot)

    def _save(self, model, experiment: Experiment, metrics: dict[str, Any], run_dir: Path, folder: Path) -> None:
        """Merged model (safetensors), tokenizer, experiment.yaml, metrics.json; the adapter if asked;
        the speaker projection and the training speakers' mean embeddings when there are any.

        TensorBoard event files, written under the run folder while training, move along into
        ``logs/`` so they outlive the run folder.
        """
        from kanitts.conditioning import SpeakerConditioning, save_speaker_means, speaker_means

        if experiment.training.keep_adapter:
            model.save_pretrained(str(folder / "adapter"))
        merged = model.merge_and_unload()
        conditioning = SpeakerConditioning.of(merged)
        if conditioning is not None:
            conditioning.save(merged, folder)
        save_speaker_means(speaker_means(self.dataset), folder)
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


def peak_memory() -> tuple[int, str]:
    """Peak memory of this process so far: CUDA allocations on a GPU, else resident set size."""
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated()), "cuda_max_memory_allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process_max_rss"


def is_main_process() -> bool:
    """Rank 0 under `accelerate launch` / torchrun (set before any process group exists); else True."""
    return process_rank().is_main


def say(message: str) -> None:
    """Prints from the main process only, so `accelerate launch` shows each line once."""
    if is_main_process():
        print(message, flush=True)
