"""The TrainingArguments of one experiment: its ``trainer_args`` (translated), plus the runner's choices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kanitts.config import Experiment, training_argument_names, translate_trainer_args

# TrainingArguments this runner sets unless the experiment does: frequent loss logging for the
# loss curve in metrics.json, and a bounded number of intermediate checkpoints.
RUNNER_DEFAULTS: dict[str, Any] = {"logging_steps": 10, "save_total_limit": 2}


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
