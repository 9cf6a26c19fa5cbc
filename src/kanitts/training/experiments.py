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
- GPU memory is released between experiments;
- **held-out rows** (dataset_config.yaml's validation split) are the eval_dataset of every
  experiment: the validation loss and per-codebook audio metrics at every ``eval_steps`` go
  into metrics.json, and ``load_best_model_at_end`` / early stopping work as in transformers.

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

Status = Literal["done", "skipped", "failed", "interrupted", "not run", "pruned"]

@dataclass
class ExperimentResult:
    """How one experiment went, for the summary table, the exit code and callers in Python."""

    model_id: str
    status: Status
    seconds: float = 0.0
    final_loss: float | None = None
    # the saved model's validation loss (the best one's under load_best_model_at_end)
    eval_loss: float | None = None
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
    eval_dataset: Any = None,
    callbacks: Sequence[Any] = (),
) -> list[ExperimentResult]:
    """Runs the selected experiments one after another; never lets one failure stop the rest.

    ``configs`` needs experiments and model (and dataset unless ``train_dataset`` is given;
    then ``eval_dataset`` holds the held-out rows, if any).
    ``checkpoints_dir`` defaults to eval_config's ``paths.checkpoints_dir``, else ./checkpoints.
    A Ctrl-C saves a resumable checkpoint, marks the interrupted experiment and the ones after
    it, and returns (see :func:`kanitts.recipes.train.exit_code`).
    """
    from kanitts.files import check_output_folder

    experiments_cfg = configs.experiments
    if experiments_cfg is None or configs.model is None:
        raise UserError("training needs experiments.yaml and model_config.yaml")
    selected = select_experiments(experiments_cfg, only)
    checkpoints_dir = default_checkpoints_dir(configs, checkpoints_dir)
    if is_main_process():
        remove_leftovers(checkpoints_dir)  # a merged model a kill left half-written is a gigabyte

    results: list[ExperimentResult] = []
    pending = []
    for experiment in selected:
        if experiment.sweep is not None:
            say(f"{experiment.model_id}: has a sweep ({experiment.sweep.method}): `kanitts sweep` trains it, skipping")
            results.append(ExperimentResult(experiment.model_id, "skipped", notes=["sweep: run `kanitts sweep`"]))
            continue
        final = checkpoints_dir / experiment.model_id
        if final.is_dir() and not force:
            say(f"{experiment.model_id}: already trained ({final}), skipping (--force trains it again)")
            results.append(already_trained(experiment.model_id, final))
        else:
            pending.append(experiment)
    if not pending:
        return results
    check_output_folder(checkpoints_dir, "checkpoints folder")

    run = training_run(configs, checkpoints_dir, train_dataset, eval_dataset, callbacks)
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


def default_checkpoints_dir(configs: ConfigSet, checkpoints_dir: Path | str | None) -> Path:
    """``checkpoints_dir``, else eval_config's ``paths.checkpoints_dir``, else ./checkpoints."""
    if checkpoints_dir is None:
        checkpoints_dir = configs.eval.paths.checkpoints_dir if configs.eval is not None else "checkpoints"
    return Path(checkpoints_dir)


def training_run(
    configs: ConfigSet,
    checkpoints_dir: Path,
    train_dataset: Any = None,
    eval_dataset: Any = None,
    callbacks: Sequence[Any] = (),
) -> TrainingRun:
    """What every experiment shares: the base model's tokenizer, checked, and the data, built once."""
    from transformers import AutoTokenizer

    from kanitts.training.model_loading import check_base_model

    base_model = configs.experiments.base_model
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_model)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"experiments.yaml: base_model {base_model!r}: its tokenizer could not be loaded: {exc}"
        ) from exc
    check_base_model(base_model, TokenLayout.from_config(configs.model))
    if train_dataset is None:
        train_dataset, eval_dataset, fingerprint = _build_dataset(configs, tokenizer)
    else:
        fingerprint = getattr(train_dataset, "_fingerprint", None) or "unknown"
    return TrainingRun(
        base_model=base_model,
        project_name=configs.experiments.project_name,
        tokenizer=tokenizer,
        layout=TokenLayout.from_config(configs.model),
        dataset=train_dataset,
        dataset_fingerprint=fingerprint,
        checkpoints_dir=checkpoints_dir,
        callbacks=callbacks,
        eval_dataset=eval_dataset,
        # unknown when the data comes without its dataset_config.yaml: nothing is recorded then
        prompt_prefixes=prompt_prefixes(configs.dataset) if configs.dataset is not None else {},
    )


def prompt_prefixes(dataset_cfg: Any) -> dict[str, list[str]]:
    """The prompt prefixes the datasets train, lower-cased as the prompts have them: the
    language tags (KaniTTS-2) and the speaker ids (KaniTTS v1 prefixes)."""
    entries = dataset_cfg.hf_datasets if dataset_cfg is not None else []
    return {
        "language_tags": sorted({e.language_tag.lower() for e in entries if e.language_tag}),
        "speakers": sorted({e.speaker_id.lower() for e in entries if e.speaker_id}),
    }


def upstream_prompt_settings(config: Any, prefixes: dict[str, list[str]], kanitts2: bool) -> None:
    """Set the config.json keys the upstream ``kani-tts`` packages read to list a model's
    prompt prefixes (kanitts-reference §2.6): ``language_settings`` (kani-tts-2) for a KaniTTS-2
    model or language-tagged data, ``speaker_settings`` (kani-tts) for speaker-prefixed data.
    Tags a base model already lists are kept."""
    tags = prefixes.get("language_tags") or []
    if kanitts2 or tags:
        before = getattr(config, "language_settings", None)
        listed = before.get("language_tags_list") if isinstance(before, dict) else None
        tags = sorted({*tags, *(t for t in listed or [] if isinstance(t, str))})
        config.language_settings = {"status": "available_language_tags" if tags else "no_language_tags",
                                    "language_tags_list": tags}
    speakers = prefixes.get("speakers") or []
    if speakers:
        config.speaker_settings = {"status": "multispeaker" if len(speakers) > 1 else "singlspeaker",
                                   "speaker_list": speakers}


def _build_dataset(configs: ConfigSet, tokenizer) -> tuple[Any, Any, str]:
    """The training sequences, the held-out ones (or None) and their fingerprint, built once.

    Under ``accelerate launch`` the main process builds (or loads the cache) first, the other
    processes then read its cache.
    """
    from accelerate import PartialState

    from kanitts.sequences import build_training_dataset, load_validation

    if configs.dataset is None:
        raise UserError("training needs dataset_config.yaml (or a prepared training dataset)")
    with PartialState().main_process_first():
        dataset, report = build_training_dataset(configs.dataset, configs.model, tokenizer)
    say(report.format())
    return dataset, load_validation(report), report.fingerprint


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
    eval_dataset: Any = None
    prompt_prefixes: dict[str, list[str]] = field(default_factory=dict)

    def train(
        self, experiment: Experiment, force: bool = False, callbacks: Sequence[Any] = ()
    ) -> ExperimentResult:
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
                return already_trained(experiment.model_id, final)
            return self._train_locked(experiment, force, [takeover] if takeover else [], callbacks)
        finally:
            lock.release()

    def _train_locked(
        self, experiment: Experiment, force: bool, notes: list[str], callbacks: Sequence[Any]
    ) -> ExperimentResult:
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
            return self._train_tracked(
                experiment, run_dir, resume_from, tracking.report_to, notes, start, callbacks
            )

    def _train_tracked(
        self,
        experiment: Experiment,
        run_dir: Path,
        resume_from: Path | None,
        report_to: list[str],
        notes: list[str],
        start: float,
        extra_callbacks: Sequence[Any] = (),
    ) -> ExperimentResult:
        import torch
        from transformers.trainer_utils import enable_full_determinism, set_seed

        from kanitts.training.batching import PackingCollator, PaddingCollator
        from kanitts.training.lora import wrap_with_lora
        from kanitts.training.model_loading import choose_attention, fit_vocabulary, load_base_model
        from kanitts.training.packing import disable_exact_packing, enable_exact_packing
        from kanitts.training.trainer import ExperimentTrainer, GracefulInterrupt

        options = experiment.training
        has_validation = self.eval_dataset is not None and len(self.eval_dataset) > 0
        args, dtype, arg_notes = training_arguments(
            experiment, run_dir, report_to, self.project_name, has_validation=has_validation
        )
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
        kanitts2 = getattr(model, "kanitts2", None)
        dataset, eval_dataset = self.dataset, self.eval_dataset if has_validation else None
        notes += _unused_option_notes(options, kanitts2)
        if kanitts2 is not None:
            from kanitts.conditioning import PROJECTION
            from kanitts.models.kanitts2 import rope_scale_modules

            conditioning, slot = self._kanitts2_slot(model)
            saved = list(lora_args.modules_to_save or [])
            lora_args = lora_args.model_copy(
                update={"modules_to_save": [*saved, PROJECTION, *rope_scale_modules(model)]}
            )
        elif options.speaker_conditioning == "embedding":
            from kanitts.conditioning import PROJECTION

            conditioning, slot = self._speaker_slot(model, args.seed)
            saved = list(lora_args.modules_to_save or [])
            lora_args = lora_args.model_copy(update={"modules_to_save": [*saved, PROJECTION]})
        elif options.speaker_embedding == "speaker_mean":
            raise UserError(
                f"experiments.yaml: experiment {experiment.model_id!r}: training.speaker_embedding: speaker_mean "
                "chooses the embedding of a speaker-conditioned model, and this one reads none: set "
                "training.speaker_conditioning: embedding, or use a KaniTTS-2 base model"
            )
        if options.speaker_embedding == "speaker_mean":
            dataset, eval_dataset = with_speaker_means(dataset, eval_dataset)
        if options.packing:
            packed_attention = enable_exact_packing(model)
            if packed_attention != attention:
                attention_notes = [
                    (f"attention: {packed_attention}, SDPA on each packed sequence alone "
                     "(flash-attn 2 does this natively when installed)")
                ]
                attention = packed_attention
            positions = None
            if kanitts2 is not None:
                from kanitts.models.kanitts2 import FramePositions

                positions = FramePositions(kanitts2)
            collator = PackingCollator(
                start_of_ai=self.layout.start_of_ai, loss_on=options.loss_on, speaker_slot=slot, positions=positions
            )
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
        callbacks = [*self.callbacks, *extra_callbacks, interrupt]
        if options.early_stopping_patience is not None:
            from transformers import EarlyStoppingCallback

            callbacks.append(EarlyStoppingCallback(options.early_stopping_patience, options.early_stopping_threshold))
        trainer = ExperimentTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            eval_dataset=eval_dataset,
            data_collator=collator,
            callbacks=callbacks,
            max_tokens_per_batch=options.max_tokens_per_batch if options.packing else None,
            chunked_loss=options.chunked_loss,
            speaker_conditioning=conditioning,
            lr_ratios={"alpha_weight": options.alpha_lr_ratio} if kanitts2 is not None else None,
            layout=self.layout,
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
        discarded = [cb for cb in extra_callbacks if getattr(cb, "discard_run", False)]
        if discarded:
            # a callback stopped this run for good (a sweep's pruner): nothing worth saving or resuming
            trainer.accelerator.wait_for_everyone()
            if trainer.is_world_process_zero():
                shutil.rmtree(run_dir, ignore_errors=True)
            return ExperimentResult(
                experiment.model_id, "pruned", time.perf_counter() - start, resumed_from=resumed,
                notes=[*notes, *(str(cb.discard_run) for cb in discarded)],
            )
        if interrupt.interrupted:
            return ExperimentResult(
                experiment.model_id, "interrupted", time.perf_counter() - start, resumed_from=resumed, notes=notes
            )

        memory, memory_kind = peak_memory()
        losses = [{"step": e["step"], "loss": e["loss"]} for e in trainer.state.log_history if "loss" in e]
        validation = validation_metrics(trainer, args) if has_validation else {}
        metrics = {
            "loss_history": losses,
            **validation,
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
            eval_loss=(validation.get("eval") or {}).get("eval_loss"),
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

    def _kanitts2_slot(self, model):
        """A KaniTTS-2 base model's own slot (it is always speaker-conditioned), checked against
        the token layout and the data's embeddings."""
        from kanitts.models.kanitts2 import layout_problems
        from kanitts.training.batching import SpeakerSlot

        settings = model.kanitts2
        problems = layout_problems(settings, self.layout, f"experiments.yaml: base_model {self.base_model!r}")
        if problems:
            raise UserError("; ".join(problems))
        columns = getattr(self.dataset, "column_names", [])
        first = self.dataset[0]["speaker_embedding"] if "speaker_embedding" in columns and len(self.dataset) else None
        if not first:
            raise UserError(
                f"experiments.yaml: base_model {self.base_model!r} is a KaniTTS-2 model, which reads a speaker "
                "embedding per clip, and the training data has none: prepare it with a speaker embedder "
                "(model_config.yaml speaker_embedder, or kanitts prepare --speaker-embedder), or name the "
                "embedding column of each dataset (dataset_config.yaml speaker_emb)"
            )
        if len(first) != settings.speaker_emb_dim:
            raise UserError(
                f"the training data's speaker embeddings have {len(first)} values, the KaniTTS-2 model "
                f"{self.base_model!r} reads {settings.speaker_emb_dim} (config.json speaker_emb_dim): "
                "compute them with the embedder the model was trained with"
            )
        slot = SpeakerSlot(start_of_human=self.layout.start_of_human, slot=self.layout.speaker_slot)
        return model.speaker, slot

    def _save(self, model, experiment: Experiment, metrics: dict[str, Any], run_dir: Path, folder: Path) -> None:
        """Merged model (safetensors), tokenizer, experiment.yaml, metrics.json; the adapter if asked;
        the speaker projection and the training speakers' mean embeddings when there are any; the
        prompt prefixes the data trained in config.json.

        TensorBoard event files, written under the run folder while training, move along into
        ``logs/`` so they outlive the run folder.
        """
        from kanitts.conditioning import SpeakerConditioning, save_speaker_means, speaker_means

        if experiment.training.keep_adapter:
            model.save_pretrained(str(folder / "adapter"))
        merged = model.merge_and_unload()
        conditioning = SpeakerConditioning.of(merged)
        if conditioning is not None and getattr(merged, "kanitts2", None) is None:
            conditioning.save(merged, folder)  # a KaniTTS-2 checkpoint holds its projection itself
        save_speaker_means(speaker_means(self.dataset), folder)
        upstream_prompt_settings(merged.config, self.prompt_prefixes, getattr(merged, "kanitts2", None) is not None)
        if self.prompt_prefixes:  # what inference prefixes prompts with (kanitts.inference.prompt_text)
            from kanitts.inference import PROMPT_PREFIXES

            setattr(merged.config, PROMPT_PREFIXES, self.prompt_prefixes)
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


def with_speaker_means(dataset, eval_dataset=None):
    """The training sequences with each clip's embedding replaced by its speaker's mean
    (speakerless clips: the mean of all), as KaniTTS-2's speaker-averaged ``grouped_sp_emb``
    data; and the held-out ones (if any) with the same training means, so the validation loss
    measures the voices the model is trained and later speaks with (eval and ``--speaker`` use
    these means too), not each held-out clip's own embedding."""
    from kanitts.conditioning import MEAN_KEY, speaker_means

    means = {key: value.tolist() for key, value in speaker_means(dataset).items()}

    def replaced(sequences):
        if sequences is None or "speaker_embedding" not in sequences.column_names:
            return sequences
        values = [means.get(f"speaker:{name}", means[MEAN_KEY]) if name else means[MEAN_KEY]
                  for name in sequences["speaker"]]
        feature = sequences.features["speaker_embedding"]
        return sequences.remove_columns("speaker_embedding").add_column("speaker_embedding", values, feature=feature)

    return replaced(dataset), replaced(eval_dataset)


def _unused_option_notes(options: Any, kanitts2: Any) -> list[str]:
    """Notes for KaniTTS-2 options set on a model they do nothing for (said, not silently dropped)."""
    if options.alpha_lr_ratio != 1.0 and (kanitts2 is None or not kanitts2.use_learnable_rope):
        return [(f"training.alpha_lr_ratio {options.alpha_lr_ratio} has no effect: the base model has no "
                 "learnable RoPE scales (a KaniTTS-2 config.json with use_learnable_rope: true)")]
    return []


def already_trained(model_id: str, final: Path) -> ExperimentResult:
    """A skipped experiment with the losses its metrics.json recorded, so the summary of a
    re-run still compares every model (a checkpoint without a readable metrics.json shows none)."""
    try:
        metrics = json.loads((final / METRICS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        metrics = {}
    if not isinstance(metrics, dict):
        metrics = {}
    saved = metrics.get("eval") if isinstance(metrics.get("eval"), dict) else {}

    def number(value: Any) -> float | None:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    return ExperimentResult(model_id, "skipped", final_loss=number(metrics.get("final_loss")),
                            eval_loss=number(saved.get("eval_loss")), path=final)


def validation_metrics(trainer: Any, args: Any) -> dict[str, Any]:
    """metrics.json's validation part: the curve, every evaluation, the best and the saved model's.

    ``eval`` holds the metrics of the model that is saved: the best evaluation's under
    ``load_best_model_at_end``, else the last step's (evaluated once more when the last
    evaluation came before it). ``best_eval`` is the best evaluation by
    ``metric_for_best_model`` (eval_loss unless set), whichever model is saved.
    """
    state = trainer.state
    if not any(e.get("step") == state.global_step and "eval_loss" in e for e in state.log_history) and (
        not args.load_best_model_at_end
    ):
        trainer.evaluate()  # logged at the last step like the others
    timing = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")
    evaluations = [
        {k: v for k, v in e.items() if k == "step" or (k.startswith("eval_") and k not in timing)}
        for e in state.log_history if "eval_loss" in e
    ]
    metric = args.metric_for_best_model or "eval_loss"
    metric = metric if metric.startswith("eval_") else f"eval_{metric}"
    greater = bool(args.greater_is_better) if args.greater_is_better is not None else metric.endswith("accuracy")
    scored = [e for e in evaluations if metric in e]
    best = (max if greater else min)(scored, key=lambda e: e[metric]) if scored else None
    saved = best if args.load_best_model_at_end and best is not None else evaluations[-1] if evaluations else None
    return {
        "eval_loss_history": [{"step": e["step"], "loss": e["eval_loss"]} for e in evaluations],
        "eval_history": evaluations,
        "best_eval": {"metric": metric, "value": best[metric], "step": best["step"]} if best else None,
        "eval": saved,
        "stopped_early": bool(state.global_step < state.max_steps),
    }


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
