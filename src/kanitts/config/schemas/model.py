"""model_config.yaml: the token space (text vocabulary, special tokens, audio ids) and the codec.

The codec section names which implementation decodes the tokens (`kind`, checked against
kanitts.codecs.registry) and where its weights live; `codec_layers` defaults to the codec's own
dataset column names. :func:`token_space_problems` finds overlaps that would corrupt training data.
"""

from __future__ import annotations

from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator

from kanitts.codecs.registry import available_codecs, code_columns, codec_entry
from kanitts.config.formatting import suggest
from kanitts.config.schemas.base import Strict, Text


class TokenizerSection(Strict):
    vocab_size: PositiveInt = 64400


class SpecialTokens(Strict):
    start_of_text: int = Field(1, ge=0)
    end_of_text: int = Field(2, ge=0)
    start_of_speech: int = Field(64401, ge=0)
    end_of_speech: int = Field(64402, ge=0)
    start_of_human: int = Field(64403, ge=0)
    end_of_human: int = Field(64404, ge=0)
    start_of_ai: int = Field(64405, ge=0)
    end_of_ai: int = Field(64406, ge=0)
    pad_token: int = Field(64407, ge=0)
    # Added here: the input slot where a speaker-conditioned model reads the projected speaker
    # embedding (training.speaker_conditioning); left out, the id after pad_token (64408, which
    # the reference leaves unused).
    speaker_embedding: int | None = Field(None, ge=0)


class CodecSection(Strict):
    """Which codec turns audio into the tokens and back, and the token-space facts of its codes.

    `model_name` is the reference pipeline's name for the NeMo checkpoint it loads. Here the
    codec is `kind` (an implementation in kanitts.codecs) with its `weights`; files that set
    `model_name` load as before, with a note (:attr:`notes`) that it is not used. It is left
    out of dumps, so nothing written from a loaded config carries it on.
    """

    model_name: Text | None = Field(None, exclude=True)
    sample_rate: PositiveInt = 22050
    fps: PositiveFloat = 12.5
    num_codebooks: PositiveInt = 4
    codebook_size: PositiveInt = 4032
    audio_tokens_start: int = Field(64410, ge=0)
    # Added here: which codec implementation decodes the tokens, and where its weights live.
    kind: Text = "nanocodec"
    weights: Text = codec_entry("nanocodec").default_weights  # the registry holds the one copy

    @model_validator(mode="before")
    @classmethod
    def _facts_of_the_kind(cls, data):
        """Keys left out take the values of the codec `kind` names (its default weights' facts),
        so `codec: {kind: kanade}` is a whole section."""
        if not isinstance(data, dict) or data.get("kind", "nanocodec") not in available_codecs():
            return data
        entry = codec_entry(data.get("kind", "nanocodec"))
        filled = {key: value for key, value in entry.facts if key not in data}
        if "weights" not in data and entry.default_weights is not None:
            filled["weights"] = entry.default_weights
        return {**data, **filled}

    @field_validator("kind")
    @classmethod
    def _implemented(cls, value: str) -> str:
        if value not in available_codecs():
            raise ValueError(
                f"no codec {value!r} is implemented{suggest(value, available_codecs())}; "
                f"implemented: {', '.join(available_codecs())}"
            )
        return value

    @property
    def notes(self) -> list[str]:
        if self.model_name is None:
            return []
        return [(f"model_name ({self.model_name!r}) is not used: the codec is codec.kind + codec.weights "
                 f"({self.kind}, {self.weights}); remove it")]


class ModelConfig(Strict):
    tokenizer: TokenizerSection = TokenizerSection()
    special_tokens: SpecialTokens = SpecialTokens()
    codec: CodecSection = CodecSection()
    # The dataset column of each codebook, in codebook order (the names dataset_config.yaml's
    # column keys map from). Left out, it is what the codec writes: nano_layer_1..N for NanoCodec.
    codec_layers: list[Text] | None = None

    @model_validator(mode="after")
    def _codec_layers_of_the_codec(self) -> ModelConfig:
        if self.codec_layers is None:
            object.__setattr__(self, "codec_layers", code_columns(self.codec.kind, self.codec.num_codebooks))
        return self

    @property
    def notes(self) -> list[str]:
        return [f"codec.{note}" for note in self.codec.notes]


def token_space_problems(cfg: ModelConfig) -> list[str]:
    """Overlaps in the token space that would silently corrupt training data, as `key: problem`."""
    problems = []
    codec = cfg.codec
    audio_end = codec.audio_tokens_start + codec.num_codebooks * codec.codebook_size
    seen: dict[int, str] = {}
    for name, value in cfg.special_tokens.model_dump().items():
        if value is None:
            continue
        if value in seen:
            problems.append(f"special_tokens.{name}: id {value} is already used by special_tokens.{seen[value]}")
        seen[value] = name
        if codec.audio_tokens_start <= value < audio_end:
            problems.append(
                f"special_tokens.{name}: id {value} lies inside the audio range "
                f"[{codec.audio_tokens_start}, {audio_end}) = audio_tokens_start + num_codebooks x codebook_size"
            )
    if codec.audio_tokens_start < cfg.tokenizer.vocab_size:
        problems.append(
            f"codec.audio_tokens_start: {codec.audio_tokens_start} overlaps the text vocabulary "
            f"(tokenizer.vocab_size: {cfg.tokenizer.vocab_size})"
        )
    if len(cfg.codec_layers) != codec.num_codebooks:
        problems.append(
            f"codec_layers: lists {len(cfg.codec_layers)} columns but codec.num_codebooks is {codec.num_codebooks}"
        )
    return problems
