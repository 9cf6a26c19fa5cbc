"""Errors a user can cause (configs, data, files), reported without a traceback.

Everything that is the user's to fix raises :class:`UserError` (or a subclass) with a message
that names where the problem is and what to do; the CLI prints it and exits 1. Anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in the user's input: config, dataset, audio file, model folder."""


class ConfigError(UserError):
    """One or more problems in the config files, each already formatted with file and key path."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))
