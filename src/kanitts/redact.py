"""Secrets never leave the machine in the settings we write or publish.

Settings travel far: ``trainer_args`` go into each checkpoint's experiment.yaml, the model card,
the eval results (JSON, CSV and the eval dataset, which can be pushed to the Hub) and the HTML
report. A ``hub_token`` set there would be published with the model. Every writer passes its
settings through :func:`redact_secrets`, which keeps each key (so one can see a token was set)
and replaces the value.

A key is secret when, lower-cased with ``-`` read as ``_``, its last word is ``token``, ``key``,
``password``, ``passwd``, ``secret``, ``credentials`` or ``apikey`` (``hub_token``,
``api_key``, ``wandb_key``, ``db_password``), or any word is ``password``, ``passwd`` or
``secret``. Counts such as ``max_tokens_per_batch`` or ids such as ``pad_token_id`` are not.
A string shaped like a Hugging Face token (``hf_`` and 30 or more letters and digits) is
replaced under any key.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "<redacted>"

_SECRET_LAST_WORDS = {"token", "key", "password", "passwd", "secret", "credentials", "apikey"}
_SECRET_WORDS = {"password", "passwd", "secret"}
_HF_TOKEN = re.compile(r"hf_[A-Za-z0-9]{30,}")


def is_secret_key(key: Any) -> bool:
    words = str(key).lower().replace("-", "_").split("_")
    return words[-1] in _SECRET_LAST_WORDS or not _SECRET_WORDS.isdisjoint(words)


def redact_secrets(value: Any) -> Any:
    """A copy of ``value`` (dicts, lists, scalars) with the value of every secret key replaced."""
    if isinstance(value, dict):
        return {
            k: (REDACTED if v is not None and is_secret_key(k) else redact_secrets(v)) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(redact_secrets(v) for v in value)
    if isinstance(value, str):
        return _HF_TOKEN.sub(REDACTED, value)
    return value
