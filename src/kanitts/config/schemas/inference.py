"""inference_config.yaml: how the model is loaded for generation and the sampling settings."""

from __future__ import annotations

from pydantic import Field, PositiveFloat, PositiveInt, ValidationInfo, field_validator

from kanitts.config.schemas.base import Strict, Text
from kanitts.config.schemas.server import ServerSection
from kanitts.runtime import DTYPE_NAMES, DtypeName

# The dtype names a user may write for generation: the one vocabulary of kanitts.runtime, torch's
# own names (as the reference's file has them) and the short ones (bf16); `auto` leaves the
# choice to the device.
TorchDtypeName = DtypeName
TORCH_DTYPE_NAMES: tuple[str, ...] = tuple(DTYPE_NAMES)


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
    # Added here: `kanitts serve` (see docs/serving.md).
    server: ServerSection = ServerSection()
