"""Every change kanitts makes to another library's code, one module per library.

kanitts replaces or wraps a few internals of its dependencies where they are inexact or slow for
its use: :mod:`kanitts.patches.lfm2` (transformers' LFM2, for exact sequence packing) and
:mod:`kanitts.patches.nanocodec` (nanocodec-torch, for exact batching and fast decoding).
Internals change in any release, so every patch here:

- says in its docstring which upstream internal it relies on, why it exists and the versions it
  was tested with (those of ``requirements/lock.txt``);
- passes arguments through by name, reading the upstream signature at patch time instead of
  copying it, and forwards keyword arguments it does not use untouched;
- checks before it changes anything that the parameters and attributes it relies on are there,
  and otherwise raises :class:`UnsupportedVersion` naming the library, its version and what
  changed, so an unknown version fails loudly instead of computing something else.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from kanitts.errors import UserError


class UnsupportedVersion(UserError):
    """An installed library changed an internal that one of kanitts' patches relies on."""


def installed_version(distribution: str) -> str:
    """The installed version of a distribution, or "(not installed)"."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "(not installed)"


def unsupported(distribution: str, what_changed: str, tested: tuple[str, ...], remedy: str = "") -> UnsupportedVersion:
    """The error for a patch that does not understand the installed version of ``distribution``."""
    message = (
        f"{distribution} {installed_version(distribution)} is not supported: {what_changed}. "
        f"kanitts was tested with {distribution} {', '.join(tested)}; `make setup` installs the "
        "tested versions (requirements/lock.txt)"
    )
    return UnsupportedVersion(message + (f", or {remedy}" if remedy else ""))
