"""Loading the base model of an experiment: attention kernel, precision, the checks and the load.

The reference pipeline hard-coded flash-attention 2 and bf16 and, where either was missing,
failed every experiment behind a bare "ERROR WITH ...". Here each choice is made from what the
machine has, and every fallback is said out loud as a note.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kanitts.errors import UserError
from kanitts.files import check_model_weights, corrupt_download, is_hub_id
from kanitts.runtime import flash_attention_importable, flash_attention_supports
from kanitts.tokens import TokenLayout


def flash_attention_available(dtype: torch.dtype = torch.bfloat16) -> bool:
    """flash-attn 2 can run a ``dtype`` training here: the rule the Kanade tokenizer's attention
    uses too (the package imports, a CUDA GPU, fp16/bf16)."""
    return torch.cuda.is_available() and flash_attention_supports("cuda", dtype)


def _flash_missing(dtype: torch.dtype) -> str:
    if not torch.cuda.is_available():
        return "no CUDA GPU is available"
    if not flash_attention_importable():
        return "flash_attn does not import (not installed, or built for another torch)"
    if dtype not in (torch.float16, torch.bfloat16):
        name = str(dtype).replace("torch.", "")
        return f"flash-attn 2 runs only in fp16/bf16, this experiment trains in {name} (trainer_args.bf16: true)"
    return "flash-attn 2 cannot run here"


def choose_attention(requested: str, dtype: torch.dtype = torch.float32) -> tuple[str, list[str]]:
    """The attention implementation to load the model with, and notes on the choice.

    ``dtype`` is what the layers compute in (bf16/fp16 training, else fp32). ``auto`` takes
    flash_attention_2 when it can run that, else PyTorch's sdpa. An explicit choice is honoured,
    but flash_attention_2 where it cannot run is a clear error, not a crash at the first forward.
    """
    if requested == "auto":
        if flash_attention_available(dtype):
            return "flash_attention_2", []
        return "sdpa", [f"attention: sdpa ({_flash_missing(dtype)})"]
    if requested == "flash_attention_2" and not flash_attention_available(dtype):
        raise UserError(
            "training.attn_implementation: flash_attention_2 was asked for, but "
            + _flash_missing(dtype)
            + "; use `auto` (flash-attn when it can run, else sdpa) or `sdpa`"
        )
    return requested, []


def bf16_supported() -> bool:
    """bfloat16 runs natively here: an Ampere-or-later GPU, or a CPU with AVX512-BF16 or AMX."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def choose_precision(trainer_args: dict[str, Any]) -> tuple[dict[str, Any], torch.dtype, list[str]]:
    """TrainingArguments with bf16/fp16 kept only where the hardware runs them; the weights' dtype.

    Returns the adjusted arguments, the dtype to load the base model in (bf16 when training in
    bf16, as the reference does, else fp32), and a note for every precision that was dropped.
    """
    args = dict(trainer_args)
    notes = []
    if args.get("bf16") and not bf16_supported():
        args["bf16"] = False
        where = "this GPU" if torch.cuda.is_available() else "this CPU"
        notes.append(f"bf16: {where} has no native bfloat16, training in fp32 instead")
    if args.get("fp16") and not torch.cuda.is_available():
        args["fp16"] = False
        notes.append("fp16: needs a CUDA GPU, training in fp32 instead")
    dtype = torch.bfloat16 if args.get("bf16") else torch.float32
    return args, dtype, notes


def load_base_model(name_or_path: str, attn_implementation: str, dtype: torch.dtype):
    """The base causal LM from a Hub id or a local folder, as a UserError when it cannot be read."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    _check_base_model_name(name_or_path)
    check_model_weights(name_or_path, f"experiments.yaml: base_model {name_or_path!r}")
    try:
        return AutoModelForCausalLM.from_pretrained(
            name_or_path, attn_implementation=attn_implementation, dtype=dtype
        )
    except SafetensorError as exc:
        raise corrupt_download(name_or_path, exc, "experiments.yaml: base_model") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"experiments.yaml: base_model {name_or_path!r} could not be loaded: {exc}") from exc


def fit_vocabulary(model, layout: TokenLayout) -> tuple[list[int], list[str]]:
    """Grow a base model's vocabulary to hold every id of ``layout``: the new ids and a note.

    A base model smaller than the layout (an LFM2 text model under a codec's audio ids, or a
    KaniTTS model under Kanade's when its audio range ends lower) gets new embedding rows drawn
    around the existing ones (transformers' ``mean_resizing``: their mean and covariance), so the
    new tokens start as plausible inputs and outputs rather than zeros or noise; LoRA then trains
    exactly these rows (peft's ``trainable_token_indices``), as the adapters cannot reach them.
    """
    have = int(model.get_input_embeddings().weight.shape[0])
    want = layout.vocab_size
    if have >= want:
        return [], []
    model.resize_token_embeddings(want, mean_resizing=True)
    note = (
        f"vocabulary: the base model has {have} token embeddings, the token layout uses {want}; "
        f"added {want - have} rows initialised from the mean of the existing ones, trained with LoRA"
    )
    return list(range(have, want)), [note]


def check_base_model(name_or_path: str, layout: TokenLayout) -> None:
    """Refuse, before any data is built, a base model whose weights do not read.

    A vocabulary below the token layout's highest id is grown at training time
    (:func:`fit_vocabulary`), so it is not an error here."""
    from transformers import AutoConfig

    _check_base_model_name(name_or_path)
    check_model_weights(name_or_path, f"experiments.yaml: base_model {name_or_path!r}")
    try:
        AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise UserError(f"experiments.yaml: base_model {name_or_path!r} could not be loaded: {exc}") from None


def _check_base_model_name(name_or_path: str) -> None:
    """A local-looking base model that is not there is said as such, not as the Hub's
    "repository not found" for a name that was never a repo id."""
    if not Path(name_or_path).expanduser().exists() and not is_hub_id(name_or_path):
        raise UserError(
            f"experiments.yaml: base_model {name_or_path!r} is not a folder here and not a Hub id "
            "owner/name; give the folder of a model or its Hub id"
        )
