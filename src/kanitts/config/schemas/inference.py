"""inference_config.yaml: how the model is loaded for generation and the sampling settings."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, PositiveFloat, PositiveInt, ValidationInfo, field_validator

from kanitts.config.schemas.base import Strict, Text

# The dtype names a user may write for generation (torch's own names, as the reference's file
# has them); `auto` leaves the choice to the device. The one list of them, for whatever
# resolves a name to a torch dtype.
TorchDtypeName = Literal["bfloat16", "float16", "float32", "auto"]
TORCH_DTYPE_NAMES: tuple[str, ...] = get_args(TorchDtypeName)


class InferenceModel(Strict):
    device_map: Text | None = "auto"
    torch_dtype: TorchDtypeName = "bfloat16"


class GenerationSection(Strict):
    max_new_tokens: PositiveInt = 1200
    do_sample: bool = True
    temperature: PositiveFloat = 0.6
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    repetition_penalty: PositiveFloat = 1.1
    num_return_sequences: PositiveInt = 1
    # Added here: prompts generated together in one batch.
    batch_size: PositiveInt = 8
    # Added here: allow only the token the layout expects at each step (start_of_ai,
    # start_of_speech, then codebook 0..K-1 tokens, end_of_speech at frame boundaries).
    # Off by default, as in the reference; on, a stream can never be malformed.
    constrained_decoding: bool = False

    @field_validator("num_return_sequences")
    @classmethod
    def _several_need_sampling(cls, value: int, info: ValidationInfo) -> int:
        # Greedy decoding gives the same sequence every time; transformers refuses the request.
        if value > 1 and info.data.get("do_sample") is False:
            raise ValueError(
                f"{value} sequences per prompt need do_sample: true (without sampling they would all "
                "be the same); set do_sample: true or num_return_sequences: 1"
            )
        return value


class InferenceConfig(Strict):
    model: InferenceModel = InferenceModel()
    generation: GenerationSection = GenerationSection()
