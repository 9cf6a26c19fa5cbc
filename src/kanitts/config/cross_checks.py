"""Checks that need more than one config file: each finds what no single schema can see.

Problems (the configs cannot work together) and warnings (they can, but probably not as meant)
are kept apart, so loading raises on the one and reports the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kanitts.config.library_checks import translate_trainer_args
from kanitts.config.schemas import CONFIG_FILES
from kanitts.config.sweep_checks import OBJECTIVE_PATTERN

if TYPE_CHECKING:
    from kanitts.config.loading import ConfigSet


def cross_file_problems(configs: ConfigSet) -> list[str]:
    """What makes the loaded files unusable together, as `file: key.path: problem`."""
    problems: list[str] = []
    d = configs.config_dir
    if configs.inference is not None and configs.model is not None:
        # start_of_ai, start_of_speech and one code per codebook (TokenLayout.min_new_tokens)
        needed = 2 + configs.model.codec.num_codebooks
        budget = configs.inference.generation.max_new_tokens
        if budget < needed:
            problems.append(
                f"{d / CONFIG_FILES['inference']}: generation.max_new_tokens: {budget} is too small to hold one "
                f"audio frame, which takes {needed} tokens (start_of_ai, start_of_speech and the "
                f"{configs.model.codec.num_codebooks} codes of {d / CONFIG_FILES['model']}'s codec)"
            )
    if configs.experiments is not None and configs.dataset is not None and not any(
        e.validation_fraction or e.validation_rows for e in configs.dataset.hf_datasets
    ):
        for i, exp in enumerate(configs.experiments.experiments):
            if exp.sweep is not None:
                problems.append(
                    f"{d / CONFIG_FILES['experiments']}: experiments[{i}].sweep: trials are scored on held-out "
                    f"rows, and no dataset of {d / CONFIG_FILES['dataset']} holds any out: set "
                    "validation_fraction or validation_rows on one"
                )
    if configs.experiments is not None and configs.eval is not None:
        # the model that scores an eval-set objective (kanitts.sweeps.scoring), as `kanitts eval`
        # would (speaker similarity needs only references, which may come from the held-out rows)
        needs = {"wer": ("intelligibility", configs.eval.intelligibility),
                 "cer": ("intelligibility", configs.eval.intelligibility),
                 "mos": ("naturalness", configs.eval.naturalness)}
        for i, exp in enumerate(configs.experiments.experiments):
            if exp.sweep is not None and exp.sweep.objective in needs and not needs[exp.sweep.objective][1]:
                key = needs[exp.sweep.objective][0]
                problems.append(
                    f"{d / CONFIG_FILES['experiments']}: experiments[{i}].sweep.objective: {exp.sweep.objective} "
                    f"is scored with {d / CONFIG_FILES['eval']}'s {key}, which is not set (see docs/evaluation.md)"
                )
    if configs.experiments is not None and configs.model is not None:
        codebooks = configs.model.codec.num_codebooks
        for i, exp in enumerate(configs.experiments.experiments):
            match = OBJECTIVE_PATTERN.fullmatch(exp.sweep.objective) if exp.sweep is not None else None
            if match and match.group(3) and int(match.group(3)) > codebooks:
                problems.append(
                    f"{d / CONFIG_FILES['experiments']}: experiments[{i}].sweep.objective: {exp.sweep.objective} "
                    f"names codebook {match.group(3)}, and the codec of {d / CONFIG_FILES['model']} has "
                    f"{codebooks}"
                )
    return problems


def cross_file_warnings(configs: ConfigSet) -> list[str]:
    """What works but is likely not what was meant: reference-era trainer keys translated, frame
    dedup on one-codebook (Kanade) data, and eval prompts whose speaker no dataset defines."""
    warnings: list[str] = []
    d = configs.config_dir
    if configs.experiments is not None:
        filename = str(d / CONFIG_FILES["experiments"])
        for i, exp in enumerate(configs.experiments.experiments):
            for note in translate_trainer_args(exp.trainer_args)[1]:
                warnings.append(f"{filename}: experiments[{i}].{note}")
    if configs.dataset is not None and configs.model is not None and configs.dataset.dedup_frames \
            and configs.model.codec.num_codebooks == 1:
        warnings.append(
            f"{d / CONFIG_FILES['dataset']}: dedup_frames: true (the default) drops every token equal to the one "
            f"before it, and with the one-token frames of {d / CONFIG_FILES['model']}'s {configs.model.codec.kind} "
            "codec a repeat is a held sound, not a silence: set dedup_frames: false (docs/codecs.md)"
        )
    if configs.eval_set is not None and configs.dataset is not None:
        speakers = {e.speaker_id.lower() for e in configs.dataset.hf_datasets if e.speaker_id}
        for s in configs.eval_set.sentences:
            prefix = s.speaker
            if speakers and (prefix is None or prefix.lower() not in speakers):
                warnings.append(
                    f"{d / CONFIG_FILES['eval_set']}: {s.sentence_id}: prompt "
                    + (f"uses speaker {prefix!r}" if prefix else "has no speaker prefix")
                    + f", but the datasets define {sorted(speakers)}"
                )
    return warnings
