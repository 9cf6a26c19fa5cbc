"""Which device a command runs on: one rule for every command that takes `--device`."""

from __future__ import annotations

import re

from kanitts.errors import UserError

_DEVICE = re.compile(r"cpu|mps|cuda(:\d+)?")


def resolve_device(device: object = None) -> str:
    """``None``/``"auto"``: the GPU when there is one, else the CPU; a named device is checked.

    Accepts a string or a ``torch.device``; returns the name (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
    An unknown name or a CUDA device PyTorch cannot see is a UserError, not a crash later on.
    """
    import torch

    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    name = str(device)
    if not _DEVICE.fullmatch(name):
        raise UserError(f"device {name!r} is not supported: use auto, cpu, cuda, cuda:N or mps")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} was asked for, but PyTorch sees no CUDA GPU")
    return name
