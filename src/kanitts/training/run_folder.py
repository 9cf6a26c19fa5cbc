"""The folder an experiment trains in, ``<checkpoints_dir>/.runs/<model_id>/``, and resuming from it.

Intermediate checkpoints go there (every ``save_steps``, and on Ctrl-C). A stamp records what
the folder's run trains (the experiment, base model and data), so a re-run resumes only the
same run, from its newest complete checkpoint; anything else starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from kanitts.config import Experiment
from kanitts.redact import redact_secrets

RUNS_FOLDER = ".runs"
# What a run folder records about the run it holds, to refuse resuming a different one.
RUN_STAMP = "kanitts_run.json"


def run_fingerprint(experiment: Experiment, base_model: str, dataset_fingerprint: str) -> str:
    """Identifies what a run trains, so a checkpoint is only resumed by the same run."""
    record = {
        "experiment": redact_secrets(experiment.model_dump(mode="json")),  # a rotated token is the same run
        "base_model": base_model,
        "data": dataset_fingerprint,
    }
    payload = json.dumps(record, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


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
