"""experiments.yaml: the base model and each experiment's LoRA, trainer and training options.

``lora_args`` and ``trainer_args`` pass through to peft and transformers; the keys typed here
carry this project's defaults and ranges. Everything else about them is checked against the
installed libraries (kanitts.config.library_checks) before these schemas see the data.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, field_validator

from kanitts.config.schemas.base import Strict, Text
from kanitts.config.schemas.sweep import Sweep

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ExperimentBase(Strict):
    model_id: Text
    run_name: Text | None = None
    desc: Text | None = None

    @field_validator("model_id")
    @classmethod
    def _safe_folder_name(cls, value: str) -> str:
        if not _SAFE_ID.match(value) or value in {".", ".."} or len(value) > 200:
            raise ValueError(
                f"{value!r} is not safe as a folder name: use letters, digits, '.', '_' and '-', "
                "starting with a letter or digit"
            )
        return value


class LoraArgs(BaseModel):
    """The common LoraConfig fields with this project's defaults and ranges; any other LoraConfig
    field passes through. Every key is also checked against LoraConfig's declared field types
    (``check_experiments``), which is where the choices of `bias` and `task_type` come from.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    r: PositiveInt = 16
    lora_alpha: PositiveFloat = 16
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[Text] | Text = ["q_proj", "v_proj"]
    bias: Text = "none"
    modules_to_save: list[Text] | None = None
    task_type: Text = "CAUSAL_LM"
    use_rslora: bool = False

    def as_kwargs(self) -> dict[str, Any]:
        return self.model_dump()


class TrainingOptions(Strict):
    """What this project adds per experiment; the defaults reproduce the reference behaviour."""

    packing: bool = False
    max_tokens_per_batch: PositiveInt = 16384
    loss_on: Literal["all", "audio"] = "all"
    group_by_length: bool = True
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager", "flex_attention"] = "auto"
    keep_adapter: bool = False
    # The same loss as transformers', computed chunk by chunk without the (tokens x vocab) logits.
    chunked_loss: bool = True
    # KaniTTS-2's speaker slot: each clip's global embedding (Kanade data), projected to the hidden
    # size, is one extra input after start_of_human (kanitts.conditioning); "none" trains without.
    speaker_conditioning: Literal["none", "embedding"] = "none"
    # KaniTTS-2 base models (always speaker-conditioned): which embedding a sequence's slot gets,
    # its clip's own or the mean over its speaker's clips; and the learning rate of the learnable
    # RoPE scales as a multiple of learning_rate (KaniTTS-2's alpha_lr_ratio; no weight decay).
    speaker_embedding: Literal["clip", "speaker_mean"] = "clip"
    alpha_lr_ratio: PositiveFloat = 1.0
    # Stop after this many evaluations without `metric_for_best_model` improving by more than
    # the threshold (transformers' EarlyStoppingCallback); needs held-out rows.
    early_stopping_patience: PositiveInt | None = None
    early_stopping_threshold: float = Field(0.0, ge=0.0)


class Experiment(Strict):
    base: ExperimentBase
    lora_args: LoraArgs = LoraArgs()
    trainer_args: dict[Text, Any] = {}
    training: TrainingOptions = TrainingOptions()
    # Added here: turns this experiment into a grid or an Optuna study (`kanitts sweep`).
    sweep: Sweep | None = None

    @property
    def model_id(self) -> str:
        return self.base.model_id

    def with_parameters(self, params: dict[str, Any], model_id: str) -> Experiment:
        """This experiment with a sweep's values set (``section.key`` -> value), named
        ``model_id``, without its sweep: one trial, trained like any experiment."""
        data = self.model_dump(exclude={"sweep"})
        data["base"]["model_id"] = model_id
        data["base"]["run_name"] = model_id if self.base.run_name is None else f"{self.base.run_name}-{model_id}"
        for key, value in params.items():
            section, name = key.split(".", 1)
            data[section][name] = value
        return Experiment.model_validate(data)


class ExperimentsConfig(Strict):
    base_model: Text
    project_name: Text | None = None
    experiments: list[Experiment] = Field(min_length=1)
