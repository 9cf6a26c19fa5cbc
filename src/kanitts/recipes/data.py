"""`kanitts data`: build (or find cached) the training sequences of a config folder, print the summary.

`kanitts train` builds the same sequences with the same cache, so running this first shows what
the filters keep and drop before any GPU time is spent.
"""

from __future__ import annotations

from pathlib import Path

from kanitts.config import load_configs
from kanitts.errors import UserError
from kanitts.sequences import build_training_dataset


def run(
    config_dir: Path | str,
    *,
    tokenizer_name: str | None = None,
    rebuild: bool = False,
    num_proc: int | None = None,
) -> int:
    """The tokenizer is the base model's from experiments.yaml unless `tokenizer_name` (a folder
    or Hub id) is given; then experiments.yaml is not needed."""
    from transformers import AutoTokenizer

    kinds = ("dataset", "model") if tokenizer_name else ("dataset", "model", "experiments")
    configs = load_configs(config_dir, kinds=kinds)
    for warning in configs.warnings:
        print(f"warning: {warning}")
    name = tokenizer_name or configs.experiments.base_model
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise UserError(f"tokenizer {name!r} could not be loaded (a model folder or Hub id): {exc}") from None
    _, report = build_training_dataset(configs.dataset, configs.model, tokenizer, rebuild=rebuild, num_proc=num_proc)
    print(report.format())
    return 0
