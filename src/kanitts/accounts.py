"""Logging in to the Hugging Face Hub and Weights & Biases, for `make login` / `kanitts login`.

Tokens come from HF_TOKEN / WANDB_API_KEY when set, otherwise from a hidden prompt. They are
handed to each library's own credential store and never printed.
"""

from __future__ import annotations

import getpass
import os
import sys
from dataclasses import dataclass


@dataclass
class LoginResult:
    service: str
    ok: bool
    detail: str


def _token(env_var: str, prompt: str, interactive: bool) -> str | None:
    token = os.environ.get(env_var, "").strip()
    if token:
        return token
    if not interactive or not sys.stdin.isatty():
        return None
    token = getpass.getpass(f"{prompt} (input hidden, empty to skip): ").strip()
    return token or None


def login_huggingface(interactive: bool = True) -> LoginResult:
    from huggingface_hub import login, whoami

    token = _token("HF_TOKEN", "Hugging Face token (https://huggingface.co/settings/tokens)", interactive)
    if token is None:
        return LoginResult("Hugging Face", False, "skipped: set HF_TOKEN or run interactively")
    try:
        login(token=token, add_to_git_credential=False)
        name = whoami(token=token).get("name", "?")
    except Exception as exc:  # network errors, invalid tokens: report, never show the token
        return LoginResult("Hugging Face", False, f"failed: {type(exc).__name__}: {exc}".replace(token, "***"))
    return LoginResult("Hugging Face", True, f"logged in as {name}")


def login_wandb(interactive: bool = True) -> LoginResult:
    try:
        import wandb
    except ImportError:
        return LoginResult("Weights & Biases", False, "skipped: wandb is not installed (pip install 'kanitts[tracking]')")
    key = _token("WANDB_API_KEY", "W&B API key (https://wandb.ai/authorize)", interactive)
    if key is None:
        return LoginResult("Weights & Biases", False, "skipped: set WANDB_API_KEY or run interactively; training runs without W&B")
    try:
        ok = wandb.login(key=key, relogin=True, verify=True)
    except Exception as exc:
        return LoginResult("Weights & Biases", False, f"failed: {type(exc).__name__}: {exc}".replace(key, "***"))
    return LoginResult("Weights & Biases", bool(ok), "logged in" if ok else "key rejected")


def login_all(interactive: bool = True) -> list[LoginResult]:
    return [login_huggingface(interactive), login_wandb(interactive)]
