"""The error of a user's input to the Kanade tools (files, folders, token files, models).

The ``kanade`` CLI prints it as one line, ``error: ...``, with exit status 1 (no traceback).
"""

from __future__ import annotations


class KanadeInputError(ValueError):
    """A problem the user can fix: a missing input, a bad token file, a model that will not load."""


__all__ = ["KanadeInputError"]
