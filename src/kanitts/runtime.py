"""Where and how a process computes: decided once here for every command and both packages.

- **Device**: :func:`resolve_device`, the one rule behind every ``--device`` and ``device_map``.
- **Precision**: :func:`resolve_dtype` and :data:`DTYPE_NAMES`, one vocabulary for every place a
  user types a dtype (CLI flags, YAML): the torch names (``bfloat16``) and the short ones
  (``bf16``) mean the same everywhere.
- **Rank**: :func:`process_rank`, what ``torchrun`` / ``accelerate launch`` put in the environment.
- **Seeding**: :func:`scoped_seed`, torch's generators seeded for a block and given back as the
  caller had them, so no library call leaves global random state behind.
- **Memory**: :func:`release_memory`, between two models in one process.

Torch is imported inside the functions: config validation reads :data:`DTYPE_NAMES` without it.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from kanitts.errors import UserError

if TYPE_CHECKING:
    import torch

_DEVICE = re.compile(r"cpu|mps|cuda(:\d+)?")

#: Every dtype name a user may type, and the one it means. ``auto`` is decided by the device.
DTYPE_NAMES: dict[str, str] = {
    "auto": "auto",
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}

#: The same names as a type, for schemas (pydantic lists them in its error).
DtypeName = Literal["auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"]


def dtype_choices() -> str:
    """The accepted names as an error message lists them: ``auto, float32 (fp32), ...``."""
    short = {long: name for name, long in DTYPE_NAMES.items() if name != long}
    names = dict.fromkeys(DTYPE_NAMES.values())
    return ", ".join(f"{name} ({short[name]})" if name in short else name for name in names)


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


def canonical_dtype(name: str, where: str = "dtype") -> str:
    """The torch spelling of a user's dtype name (``bf16`` -> ``bfloat16``); ``where`` names the
    flag or key in the error for a name that is none of :data:`DTYPE_NAMES`."""
    try:
        return DTYPE_NAMES[str(name).lower()]
    except KeyError:
        raise UserError(f"{where}: unknown dtype {name!r}; use one of {dtype_choices()}") from None


def resolve_dtype(name: str | torch.dtype | None, device: str | torch.device) -> torch.dtype:
    """The torch dtype to compute in on ``device``.

    ``auto`` (or None) is half precision where the device computes in it and float32 elsewhere:
    bfloat16 on a CUDA GPU, float16 on a CUDA GPU without bfloat16, float32 on the CPU and MPS
    (where half precision is slower, not faster). A named dtype is that dtype on any device,
    except bfloat16 on a CUDA GPU that cannot run it, which becomes float16 (the nearest that
    runs). A ``torch.dtype`` passes through.
    """
    import torch

    if isinstance(name, torch.dtype):
        return name
    canonical = "auto" if name is None else canonical_dtype(name)
    on_cuda = torch.device(device).type == "cuda"
    if canonical in ("auto", "bfloat16") and on_cuda:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if canonical == "auto":
        return torch.float32
    return getattr(torch, canonical)


@dataclass(frozen=True)
class ProcessRank:
    """This process's place in a multi-process launch (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int | None = None  # None when the launcher did not set LOCAL_RANK

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def process_rank() -> ProcessRank:
    """``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as ``torchrun`` and ``accelerate launch`` set
    them, read before any process group exists; a value that is not a whole number is named."""
    values: dict[str, int | None] = {}
    for key, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", None)):
        raw = os.environ.get(key)
        if raw is None or raw.strip() == "":
            values[key] = default
            continue
        try:
            values[key] = int(raw)
        except ValueError:
            raise UserError(f"environment variable {key}={raw!r} is not a whole number (set by the launcher)") from None
    return ProcessRank(rank=values["RANK"], world_size=values["WORLD_SIZE"], local_rank=values["LOCAL_RANK"])


@contextlib.contextmanager
def scoped_seed(seed: int | None = None, device: str | torch.device | None = None) -> Iterator[None]:
    """Inside the block torch's global generator is seeded with ``seed`` (kept as it was when
    None); after it, the CPU generator and that of ``device``'s GPU are as the caller had them.

    For code that must draw from the global generator (``generate`` takes no
    ``torch.Generator``, and building a module draws from it) without changing what the caller's
    next draw gives. numpy's and Python's generators are not touched.
    """
    import torch

    gpus = []
    if device is not None and torch.device(device).type == "cuda":
        gpus = [torch.device(device).index or 0]
    with torch.random.fork_rng(devices=gpus):
        if seed is not None:
            torch.manual_seed(seed)
        yield


def release_memory() -> None:
    """Give the memory of models just dropped back before the next one loads, and start the
    next peak-memory measurement from here (CUDA keeps freed blocks cached otherwise)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


@functools.lru_cache(maxsize=1)
def flash_attention_functions():
    """``(flash_attn_func, flash_attn_varlen_func)``, or None where flash-attn does not import."""
    try:
        from flash_attn import flash_attn_func, flash_attn_varlen_func  # type: ignore
    except Exception:  # ImportError, or a build for another torch whose CUDA extension fails to load
        return None
    return flash_attn_func, flash_attn_varlen_func


def flash_attention_importable() -> bool:
    """Whether ``flash-attn`` imports: installed *and* built for this torch (a wheel built for
    another torch is found by ``find_spec`` but fails to load its CUDA extension)."""
    return flash_attention_functions() is not None


def flash_attention_supports(device: str | torch.device, dtype: torch.dtype) -> bool:
    """The one rule for flash-attn 2, in LoRA training and in the tokenizer's attention: a
    working install, a CUDA device and fp16/bf16 activations (its kernels take no others)."""
    import torch

    half_precision = dtype in (torch.float16, torch.bfloat16)
    return torch.device(device).type == "cuda" and half_precision and flash_attention_importable()
