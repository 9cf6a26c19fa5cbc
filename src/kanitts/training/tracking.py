"""Where training metrics go: W&B when it can, otherwise offline or nowhere, and say which.

The reference pipeline always reported to W&B and failed without a login. Here a missing
package or login never stops training: W&B falls back to offline mode (``wandb sync`` uploads
later) or is left out, and the user is told. ``report_to`` may also name tensorboard, trackio or
``none``, as in TrainingArguments.
"""

from __future__ import annotations

import contextlib
import importlib.util
import netrc
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# The reference pipeline's tracker, used when trainer_args has no report_to.
DEFAULT_REPORT_TO = ("wandb",)

_PACKAGES = {"wandb": ("wandb",), "tensorboard": ("tensorboard", "tensorboardX"), "trackio": ("trackio",)}


@dataclass(frozen=True)
class Tracking:
    """The resolved ``report_to``, environment variables the trackers read, and what changed."""

    report_to: list[str]
    environment: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The trackers' variables set for the block, and the previous values restored after it.

        An experiment's choices (offline W&B, its project) must not leak into the next
        experiment's resolution, nor into the caller's process once training returns.
        """
        previous = {key: os.environ.get(key) for key in self.environment}
        os.environ.update(self.environment)
        try:
            yield
        finally:
            for key, value in previous.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _installed(tracker: str) -> bool:
    return any(importlib.util.find_spec(name) is not None for name in _PACKAGES.get(tracker, (tracker,)))


def wandb_logged_in() -> bool:
    """An API key in WANDB_API_KEY or in the netrc file that ``wandb login`` writes."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return netrc.netrc(str(path)).authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_tracking(requested: str | list[str] | None, project_name: str | None) -> Tracking:
    """Decide the trackers for one experiment from trainer_args' ``report_to``."""
    if requested is None:
        wanted = list(DEFAULT_REPORT_TO)
    elif isinstance(requested, str):
        wanted = [requested]
    else:
        wanted = list(requested)
    if wanted in (["none"], []):
        return Tracking(report_to=["none"])
    report_to: list[str] = []
    environment: dict[str, str] = {}
    notes: list[str] = []
    for tracker in wanted:
        if tracker in _PACKAGES and not _installed(tracker):
            notes.append(f"{tracker} is not installed, training without it (pip install {_PACKAGES[tracker][0]})")
            continue
        if tracker == "wandb":
            mode = os.environ.get("WANDB_MODE", "")
            if mode == "disabled":
                notes.append("W&B is disabled by WANDB_MODE=disabled, training without it")
                continue
            if project_name and "WANDB_PROJECT" not in os.environ:
                environment["WANDB_PROJECT"] = project_name
            if mode != "offline" and not wandb_logged_in():
                environment["WANDB_MODE"] = "offline"
                notes.append(
                    "not logged in to W&B: logging offline to ./wandb (`make login`, then `wandb sync` uploads)"
                )
            elif mode == "offline":
                notes.append("W&B runs offline (WANDB_MODE=offline)")
        report_to.append(tracker)
    return Tracking(report_to=report_to or ["none"], environment=environment, notes=notes)


def finish_active_runs() -> None:
    """Closes the W&B run of the experiment that just ended, so the next experiment gets its own.

    transformers' W&B callback logs into whatever run is active, so without this every experiment
    of one `kanitts train` would land in the first one's run.
    """
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
