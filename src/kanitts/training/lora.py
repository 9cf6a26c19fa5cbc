"""LoRA adapters on the base model: the one place that builds the adapter configuration."""

from __future__ import annotations

from kanitts.config import LoraArgs


def wrap_with_lora(model, lora_args: LoraArgs):
    """The model with LoRA adapters from ``lora_args`` (every LoraConfig field passes through)."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(**lora_args.as_kwargs()))
