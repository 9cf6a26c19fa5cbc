"""Export the inference weights of a training checkpoint to the released safetensors layout.

    python -m kanade_tokenizer.scripts.export_safetensors CKPT [-o OUT.safetensors]
        [--include-modules feature_decoder conv_upsample ...] [--dtype float32|bfloat16|float16 (or fp32|bf16|fp16)]
        [--trust-checkpoint] [--quiet]

What it does (the original export script's rules):

1. Reads a Lightning ``.ckpt`` (its ``state_dict``), a plain ``.pt``/``.pth`` state dict or a
   ``.safetensors`` file, told apart by their content (a ``torch.save`` file named
   ``.safetensors`` is read as what it is). Pickles are opened with ``torch.load(weights_only=True)``; a Lightning
   checkpoint whose hyper-parameters hold custom classes needs ``--trust-checkpoint`` (only for
   files you made yourself).
2. Keeps the KanadeModel's tensors: keys under ``model.`` lose that prefix; ``discriminator.*``
   and other pipeline-level tensors are dropped; ``_orig_mod.`` (added by ``torch.compile``) is
   removed wherever it appears.
3. Drops the training-only modules ``ssl_feature_extractor`` (WavLM, loaded separately),
   ``feature_decoder`` and ``conv_upsample`` unless they are listed in ``--include-modules``.
   Including ``feature_decoder`` without ``conv_upsample`` is refused when the model has a
   ``conv_downsample`` (the decoder needs it).
4. Writes the tensors (contiguous, CPU) to ``OUT`` (default: the checkpoint path with the suffix
   ``.safetensors``), first to a temporary name, then renamed; the file is readable as any file
   the user creates (0666 less the umask).

The result has the key set of the released ``model.safetensors`` files (282 tensors for the
12.5 Hz and 25 Hz models) and loads with ``KanadeModel.from_pretrained(config, weights_path=OUT)``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from kanade_tokenizer.files import atomic_path, describe_weights_file
from kanitts.runtime import DTYPE_NAMES, canonical_dtype

#: Modules left out of the export unless asked for.
TRAINING_ONLY_MODULES = ("ssl_feature_extractor", "feature_decoder", "conv_upsample")

#: The dtypes a checkpoint can be cast to, in kanitts' one vocabulary (bf16 = bfloat16, ...).
_DTYPES = tuple(name for name in DTYPE_NAMES if name != "auto")


class ExportError(ValueError):
    """The checkpoint cannot be exported (unreadable, no model weights, bad options)."""


def read_checkpoint(path: str | os.PathLike[str], trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """The raw tensor dict of a .ckpt / .pt / .pth / .safetensors file (Lightning's ``state_dict`` if present).

    The format is told by the content, not the suffix, so a ``torch.save`` file named
    ``model.safetensors`` converts too.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such checkpoint")
    what = describe_weights_file(path)
    if what is None:
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise ExportError(f"{path}: not a readable safetensors file ({e})") from e
    if "PyTorch" not in what and "pickle" not in what:
        raise ExportError(f"{path} is {what}")
    try:
        with open(path, "rb") as f:  # a file object: torch.load would go by a .safetensors suffix
            raw = torch.load(f, map_location="cpu", weights_only=not trust_checkpoint)
    except Exception as e:
        hint = "" if trust_checkpoint else (
            " If this is a Lightning checkpoint you made yourself whose hyper-parameters hold custom "
            "objects, pass --trust-checkpoint (it unpickles arbitrary objects)."
        )
        raise ExportError(f"{path}: cannot read the checkpoint ({type(e).__name__}: {e}).{hint}") from e
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict):
        raise ExportError(f"{path}: holds a {type(raw).__name__}, not a state dict")
    tensors = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ExportError(f"{path}: holds no tensors")
    return tensors


def model_state_dict(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """KanadeModel keys from a pipeline (``model.*``) or a bare model state dict; ``_orig_mod.`` removed."""
    if any(k.startswith("model.") for k in tensors):
        tensors = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        clean = key.replace("_orig_mod.", "")
        if clean in out:
            raise ExportError(f"two tensors map to {clean!r} after removing '_orig_mod.'")
        out[clean] = value
    return out


def select_weights(state_dict: dict[str, torch.Tensor], include_modules: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """Drop the training-only modules that are not in ``include_modules``."""
    include = set(include_modules)
    unknown = include - set(TRAINING_ONLY_MODULES)
    if unknown:
        raise ExportError(
            f"--include-modules takes {', '.join(TRAINING_ONLY_MODULES)}; got {', '.join(sorted(unknown))}"
        )
    has_downsample = any(k.startswith("conv_downsample.") for k in state_dict)
    if "feature_decoder" in include and "conv_upsample" not in include and has_downsample:
        raise ExportError("including feature_decoder needs conv_upsample too (the model downsamples with a conv)")
    for module in include:
        if not any(k.startswith(module + ".") for k in state_dict):
            raise ExportError(f"asked to include {module}, but the checkpoint has no {module}.* tensors")
    dropped = [m for m in TRAINING_ONLY_MODULES if m not in include]
    return {k: v for k, v in state_dict.items() if not any(k.startswith(m + ".") for m in dropped)}


def export_safetensors(
    ckpt_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str] | None = None,
    include_modules: Sequence[str] = (),
    *,
    dtype: str | torch.dtype | None = None,
    trust_checkpoint: bool = False,
) -> tuple[Path, dict[str, torch.Tensor]]:
    """Export ``ckpt_path``; returns the output path and the exported tensors."""
    from safetensors.torch import save_file

    ckpt_path = Path(ckpt_path)
    output = Path(output_path) if output_path is not None else ckpt_path.with_suffix(".safetensors")
    if output.resolve() == ckpt_path.resolve():
        raise ExportError(f"{output}: would overwrite the input; pass -o")
    weights = select_weights(model_state_dict(read_checkpoint(ckpt_path, trust_checkpoint)), include_modules)
    if not weights:
        raise ExportError(f"{ckpt_path}: no model tensors left to export")
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ExportError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        dtype = getattr(torch, canonical_dtype(dtype))
    tensors = {}
    for key, value in weights.items():
        value = value.detach().to("cpu")
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[key] = value.contiguous().clone()  # clone: safetensors refuses shared storage
    with atomic_path(output) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    return output, tensors


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kanade_tokenizer.scripts.export_safetensors",
        description="Export the inference weights of a Kanade training checkpoint to safetensors.",
    )
    parser.add_argument("ckpt", help="Lightning .ckpt, .pt/.pth state dict or .safetensors")
    parser.add_argument("-o", "--output", default=None, help="output file (default: CKPT with .safetensors)")
    parser.add_argument("--include-modules", "--include_modules", nargs="*", default=[],
                        choices=TRAINING_ONLY_MODULES, help="training-only modules to keep")
    parser.add_argument("--dtype", choices=_DTYPES, default=None, help="cast floating tensors")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow full unpickling (only for checkpoints you trust)")
    parser.add_argument("--quiet", action="store_true", help="do not list the exported keys")
    args = parser.parse_args(argv)
    try:
        output, tensors = export_safetensors(
            args.ckpt, args.output, args.include_modules, dtype=args.dtype, trust_checkpoint=args.trust_checkpoint
        )
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not args.quiet:
        for key, value in tensors.items():
            print(f"{key}\t{tuple(value.shape)}\t{str(value.dtype).replace('torch.', '')}")
    n_params = sum(v.numel() for v in tensors.values())
    print(f"wrote {len(tensors)} tensors ({n_params:,} values) to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
