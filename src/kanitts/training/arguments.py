"""The TrainingArguments of one experiment: its ``trainer_args`` (translated), plus the runner's choices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kanitts.config import Experiment, training_argument_names, translate_trainer_args
from kanitts.errors import UserError

# TrainingArguments this runner sets unless the experiment does: frequent loss logging for the
# loss curve in metrics.json, and a bounded number of intermediate checkpoints.
RUNNER_DEFAULTS: dict[str, Any] = {"logging_steps": 10, "save_total_limit": 2}
# With held-out rows: the validation loss at every `eval_steps` (transformers: logging_steps when unset).
VALIDATION_DEFAULTS: dict[str, Any] = {"eval_strategy": "steps"}
# What needs held-out rows to evaluate on.
_NEEDS_VALIDATION = ("eval_strategy", "load_best_model_at_end", "metric_for_best_model")


def training_arguments(
    experiment: Experiment,
    run_dir: Path,
    report_to: list[str],
    project_name: str | None,
    has_validation: bool = False,
) -> tuple[Any, Any, list[str]]:
    """TrainingArguments for one experiment (every ``trainer_args`` key, translated, plus ours).

    Also returns the dtype to load the base model in, which follows the precision chosen. With
    ``has_validation`` (held-out rows to evaluate on) the validation loss is computed every
    ``eval_steps`` unless the experiment says otherwise; without, asking for evaluation is an
    error that says how to hold rows out. TrainingArguments' own refusals (a save strategy
    that does not match the evaluation one under ``load_best_model_at_end``) name the experiment.
    """
    import torch
    from transformers import TrainingArguments

    from kanitts.training.model_loading import choose_precision

    args, notes = translate_trainer_args(experiment.trainer_args)
    where = f"experiments.yaml: {experiment.model_id}"
    if has_validation:
        for key, value in VALIDATION_DEFAULTS.items():
            args.setdefault(key, value)
        if experiment.training.early_stopping_patience is not None:
            args.setdefault("metric_for_best_model", "eval_loss")
    else:
        asked = [f"trainer_args.{k}" for k in _NEEDS_VALIDATION if args.get(k) not in (None, False, "no")]
        if experiment.training.early_stopping_patience is not None:
            asked.append("training.early_stopping_patience")
        if asked:
            raise UserError(
                f"{where}: {', '.join(asked)} needs held-out rows to evaluate on, and no dataset holds any out: "
                "set validation_fraction or validation_rows on a dataset in dataset_config.yaml"
            )
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
    args.setdefault("label_names", ["labels"])  # a PEFT wrapper hides them from the Trainer's own guess
    try:
        return TrainingArguments(**args), dtype, notes
    except ValueError as exc:
        raise UserError(f"{where}: trainer_args: {exc}") from None
