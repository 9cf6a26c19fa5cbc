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


class NoToken(Exception):
    """No token in the environment and none typed; the message says why and what to do."""


def _token(env_var: str, prompt: str, interactive: bool, notebook_login: str) -> str:
    token = os.environ.get(env_var, "").strip()
    if token:
        return token
    if not interactive:
        raise NoToken(f"skipped: {env_var} is not set (--non-interactive never asks)")
    if sys.stdin is None or not sys.stdin.isatty():
        # A notebook, a pipe or CI: getpass would read a closed or foreign stdin, or hang.
        raise NoToken(f"skipped: {env_var} is not set and there is no terminal to ask in; set {env_var}, "
                      f"or run `make login` in a terminal (in a notebook: {notebook_login})")
    try:
        token = getpass.getpass(f"{prompt} (input hidden, empty to skip): ").strip()
    except EOFError:  # Ctrl-D: end the prompt's line, which getpass leaves open
        print(file=sys.stderr)
        raise NoToken(f"skipped: end of input; run `make login` again or set {env_var}") from None
    if not token:
        raise NoToken(f"skipped: no token entered; run `make login` again or set {env_var}")
    return token


def _failure(exc: Exception, secret: str) -> str:
    """One line for a failed login, with the secret blanked out wherever the library echoed it."""
    text = str(exc).strip().splitlines()
    return f"failed: {type(exc).__name__}: {text[0] if text else ''}".replace(secret, "***")


def login_huggingface(interactive: bool = True) -> LoginResult:
    from huggingface_hub import login, whoami

    try:
        token = _token("HF_TOKEN", "Hugging Face token (https://huggingface.co/settings/tokens)", interactive,
                       "huggingface_hub.notebook_login()")
    except NoToken as exc:
        return LoginResult("Hugging Face", False, str(exc))
    try:
        login(token=token, add_to_git_credential=False)
        name = whoami(token=token).get("name", "?")
    except Exception as exc:  # network errors, invalid tokens: report, never show the token
        return LoginResult("Hugging Face", False, _failure(exc, token))
    return LoginResult("Hugging Face", True, f"logged in as {name}")


def login_wandb(interactive: bool = True) -> LoginResult:
    try:
        import wandb
    except ImportError:
        return LoginResult(
            "Weights & Biases", False, "skipped: wandb is not installed (pip install 'kanitts[tracking]')"
        )
    try:
        key = _token("WANDB_API_KEY", "W&B API key (https://wandb.ai/authorize)", interactive, "wandb.login()")
    except NoToken as exc:
        return LoginResult("Weights & Biases", False, f"{exc}; training runs without W&B")
    try:
        ok = wandb.login(key=key, relogin=True, verify=True)
    except Exception as exc:
        return LoginResult("Weights & Biases", False, _failure(exc, key))
    return LoginResult("Weights & Biases", bool(ok), "logged in" if ok else "key rejected")


def login_all(interactive: bool = True) -> list[LoginResult]:
    return [login_huggingface(interactive), login_wandb(interactive)]
