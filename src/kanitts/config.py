"""Typed schemas of the pipeline's six YAML files, their loading, and the checks across them.

Configs written for the reference KaniTTS pipeline load unchanged: every key it knows keeps its
name and meaning. Keys this project adds are optional and default to the reference behaviour.

Validation happens once, here, at the edge. Every problem is collected (not just the first) and
reported as ``<file>: <key path>: <problem>``, with a did-you-mean suggestion for unknown keys,
since a typo is the commonest config bug. Everything past this module receives typed objects.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import re
import types
import typing
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from kanitts.errors import ConfigError

CONFIG_FILES = {
    "dataset": "dataset_config.yaml",
    "experiments": "experiments.yaml",
    "eval": "eval_config.yaml",
    "eval_set": "eval_set.yaml",
    "model": "model_config.yaml",
    "inference": "inference_config.yaml",
}


class YamlInt(int):
    """An integer read from a config file, with the text it was written as (`007`, `1_000`)."""

    text = ""


class YamlFloat(float):
    """A number read from a config file, with the text it was written as (`5e-5`, `1E4`)."""

    text = ""


def _number_as_text(value: Any) -> Any:
    """Where text is expected, a number keeps the characters the user typed: a speaker `007`
    or a run named `1e3` stays that text, not `7` or `1000.0`."""
    return value.text if isinstance(value, (YamlInt, YamlFloat)) and value.text else value


Text = Annotated[str, BeforeValidator(_number_as_text)]


class _Strict(BaseModel):
    """Base of every schema: unknown keys are errors, values are not silently coerced from text."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- model_config.yaml ----------------------------------------------------------------------


class TokenizerSection(_Strict):
    vocab_size: PositiveInt = 64400


class SpecialTokens(_Strict):
    start_of_text: int = Field(1, ge=0)
    end_of_text: int = Field(2, ge=0)
    start_of_speech: int = Field(64401, ge=0)
    end_of_speech: int = Field(64402, ge=0)
    start_of_human: int = Field(64403, ge=0)
    end_of_human: int = Field(64404, ge=0)
    start_of_ai: int = Field(64405, ge=0)
    end_of_ai: int = Field(64406, ge=0)
    pad_token: int = Field(64407, ge=0)


class CodecSection(_Strict):
    model_name: Text = "nvidia/nemo-nano-codec-22khz-0.6kbps-12.5fps"
    sample_rate: PositiveInt = 22050
    fps: PositiveFloat = 12.5
    num_codebooks: PositiveInt = 4
    codebook_size: PositiveInt = 4032
    audio_tokens_start: int = Field(64410, ge=0)
    # Added here: which codec implementation decodes the tokens, and where its weights live.
    kind: Text = "nanocodec"
    weights: Text = "nineninesix/nemo-nano-codec-22khz-0.6kbps-12.5fps-pytorch"

    @field_validator("kind")
    @classmethod
    def _implemented(cls, value: str) -> str:
        from kanitts.codecs.registry import available_codecs  # the one list of implemented kinds

        if value not in available_codecs():
            raise ValueError(
                f"no codec {value!r} is implemented{suggest(value, available_codecs())}; "
                f"implemented: {', '.join(available_codecs())}"
            )
        return value


class ModelConfig(_Strict):
    tokenizer: TokenizerSection = TokenizerSection()
    special_tokens: SpecialTokens = SpecialTokens()
    codec: CodecSection = CodecSection()
    # The dataset column of each codebook, in codebook order (the names dataset_config.yaml's
    # column keys map from). Left out, it is what the codec writes: nano_layer_1..N for NanoCodec.
    codec_layers: list[Text] | None = None

    @model_validator(mode="after")
    def _codec_layers_of_the_codec(self) -> ModelConfig:
        if self.codec_layers is None:
            from kanitts.codecs.registry import code_columns

            object.__setattr__(self, "codec_layers", code_columns(self.codec.kind, self.codec.num_codebooks))
        return self


def token_space_problems(cfg: ModelConfig) -> list[str]:
    """Overlaps in the token space that would silently corrupt training data, as `key: problem`."""
    problems = []
    codec = cfg.codec
    audio_end = codec.audio_tokens_start + codec.num_codebooks * codec.codebook_size
    seen: dict[int, str] = {}
    for name, value in cfg.special_tokens.model_dump().items():
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


# --- dataset_config.yaml --------------------------------------------------------------------


class CategoricalFilter(_Strict):
    column_name: Text
    value: Union[str, int, float, bool]


class DatasetEntry(_Strict):
    """One source dataset. `reponame` is a Hub id, a save_to_disk folder, or parquet/jsonl/csv files."""

    reponame: Text
    name: Text | None = None
    split: Text = "train"
    text_col_name: Text = "text"
    # The reference's keys, one per NanoCodec codebook: the column of this dataset holding it.
    nano_layer_1: Text | None = None
    nano_layer_2: Text | None = None
    nano_layer_3: Text | None = None
    nano_layer_4: Text | None = None
    # Any codec: codebook column (model_config.yaml codec_layers) -> the column of this dataset.
    codebook_columns: dict[Text, Text] = {}
    encoded_len: Text = "encoded_len"
    speaker_id: Text | None = Field(None, min_length=1)
    max_len: PositiveInt | None = None
    categorical_filter: CategoricalFilter | None = None

    @model_validator(mode="after")
    def _one_name_per_codebook(self) -> DatasetEntry:
        twice = [k for k in self.codebook_columns if k in _NANO_KEYS and getattr(self, k) is not None]
        if twice:
            raise ValueError(f"codebook_columns renames {', '.join(twice)}, which is also set as its own key")
        return self

    @property
    def label(self) -> str:
        """How messages name this dataset."""
        return self.reponame if self.name is None else f"{self.reponame} ({self.name})"

    def column_renames(self) -> dict[str, str]:
        """Codebook column -> this dataset's column, for the codebooks whose column is named here."""
        nano = {key: getattr(self, key) for key in _NANO_KEYS if getattr(self, key) is not None}
        return {**nano, **self.codebook_columns}

    def layer_columns(self, codec_layers: Sequence[str]) -> list[str]:
        """This dataset's column of each codebook of `codec_layers` (model_config.yaml), in order."""
        renames = self.column_renames()
        return [renames.get(name, name) for name in codec_layers]


_NANO_KEYS = tuple(k for k in DatasetEntry.model_fields if k.startswith("nano_layer_"))


class DatasetConfig(_Strict):
    max_duration_sec: PositiveFloat | None = None
    hf_datasets: list[DatasetEntry] = Field(min_length=1)
    # Added here (the reference has none of these as config keys):
    # the process count under the reference's name for it (an argument there); num_proc wins
    n_shards_per_dataset: PositiveInt | None = None
    num_proc: PositiveInt | None = None
    seed: int = Field(42, ge=0)
    cache_dir: Text = ".cache/kanitts/sequences"
    # The reference drops each codec frame equal to the one before it (shortens silences);
    # false keeps every frame, so the model learns true durations.
    dedup_frames: bool = True


# --- experiments.yaml -----------------------------------------------------------------------

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ExperimentBase(_Strict):
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


class TrainingOptions(_Strict):
    """What this project adds per experiment; the defaults reproduce the reference behaviour."""

    packing: bool = False
    max_tokens_per_batch: PositiveInt = 16384
    loss_on: Literal["all", "audio"] = "all"
    group_by_length: bool = True
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager", "flex_attention"] = "auto"
    keep_adapter: bool = False
    # The same loss as transformers', computed chunk by chunk without the (tokens x vocab) logits.
    chunked_loss: bool = True


class Experiment(_Strict):
    base: ExperimentBase
    lora_args: LoraArgs = LoraArgs()
    trainer_args: dict[Text, Any] = {}
    training: TrainingOptions = TrainingOptions()

    @property
    def model_id(self) -> str:
        return self.base.model_id


class ExperimentsConfig(_Strict):
    base_model: Text
    project_name: Text | None = None
    experiments: list[Experiment] = Field(min_length=1)


# --- eval_config.yaml -----------------------------------------------------------------------


class EvalPaths(_Strict):
    audio_output_dir: Text = "./audio_samples"
    checkpoints_dir: Text = "./checkpoints"
    report_dir: Text = "./report"


class EvalHub(_Strict):
    upload_dataset: bool = False
    repo_name: Text | None = None
    private: bool = True

    @model_validator(mode="after")
    def _repo_when_uploading(self) -> EvalHub:
        if self.upload_dataset and not self.repo_name:
            raise ValueError("repo_name is required when upload_dataset is true")
        return self


class EvalProcessing(_Strict):
    """The reference's ``processing`` section, of which nothing is used here.

    Its ``num_proc`` sized a process pool for dataset work; here eval generates on one device and
    measures a sample in milliseconds, so there is no pool to size. Files that set it load as
    before; :attr:`notes` says that it is ignored (``kanitts eval`` prints it as a warning).
    """

    _ignored: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="wrap")
    @classmethod
    def _drop_num_proc(cls, data: Any, handler) -> EvalProcessing:
        ignored: tuple[str, ...] = ()
        if isinstance(data, dict) and "num_proc" in data:
            try:  # a wrong value is still an error, named at its key
                TypeAdapter(PositiveInt).validate_python(data["num_proc"])
            except ValidationError as exc:
                errors = [{"type": e["type"], "loc": ("num_proc", *e["loc"]), "input": e["input"],
                           **({"ctx": e["ctx"]} if "ctx" in e else {})} for e in exc.errors()]
                raise ValidationError.from_exception_data(cls.__name__, errors) from None
            data = {k: v for k, v in data.items() if k != "num_proc"}
            ignored = ("num_proc",)
        model = handler(data)
        model._ignored = ignored
        return model

    @property
    def notes(self) -> list[str]:
        return [f"processing.{key} is ignored (eval needs no process pool); remove it" for key in self._ignored]


class SpeakerSimilarity(_Strict):
    """Reference recordings per speaker prefix, for the speaker-similarity metric."""

    references: dict[Text, list[Text]] = {}
    # A name from kanitts.evaluation.speaker (`mfcc-stats` works offline with no weights;
    # `kanade:<folder or Hub id>` uses the Kanade tokenizer's global embedding).
    embedder: Text = "mfcc-stats"


class EvalConfig(_Strict):
    paths: EvalPaths = EvalPaths()
    huggingface: EvalHub = EvalHub()
    processing: EvalProcessing = EvalProcessing()
    speaker_similarity: SpeakerSimilarity | None = None


# --- eval_set.yaml --------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalSentence:
    sentence_id: str
    text: str

    @property
    def speaker(self) -> str | None:
        """The `speaker: ` prefix the seed's prompts carry, if any."""
        head, sep, _ = self.text.partition(":")
        if sep and head.strip() and " " not in head.strip():
            return head.strip()
        return None

    @property
    def spoken_text(self) -> str:
        """The words to be said: the text without its speaker prefix."""
        return self.text.partition(":")[2].strip() if self.speaker else self.text.strip()


class EvalSetConfig(_Strict):
    eval_set: list[dict[Text, Text]] = Field(min_length=1)

    @field_validator("eval_set")
    @classmethod
    def _one_sentence_per_item(cls, items: list[dict[str, str]]) -> list[dict[str, str]]:
        seen = set()
        for index, item in enumerate(items):
            if len(item) != 1:
                raise ValueError(f"item [{index}] must be one `id: sentence` pair, got {len(item)} keys")
            (key, text), = item.items()
            if key in seen:
                raise ValueError(f"item [{index}]: duplicate sentence id {key!r}")
            if not text.strip():
                raise ValueError(f"item [{index}] ({key}): empty sentence")
            sentence = EvalSentence(key, text)
            if not sentence.spoken_text:
                raise ValueError(
                    f"item [{index}] ({key}): only the speaker prefix {sentence.speaker + ':'!r}, nothing to say after it"
                )
            seen.add(key)
        return items

    @property
    def sentences(self) -> list[EvalSentence]:
        return [EvalSentence(*next(iter(item.items()))) for item in self.eval_set]


# --- inference_config.yaml ------------------------------------------------------------------


class InferenceModel(_Strict):
    device_map: Text | None = "auto"
    torch_dtype: Literal["bfloat16", "float16", "float32", "auto"] = "bfloat16"


class GenerationSection(_Strict):
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


class InferenceConfig(_Strict):
    model: InferenceModel = InferenceModel()
    generation: GenerationSection = GenerationSection()


SCHEMAS: dict[str, type[BaseModel]] = {
    "dataset": DatasetConfig,
    "experiments": ExperimentsConfig,
    "eval": EvalConfig,
    "eval_set": EvalSetConfig,
    "model": ModelConfig,
    "inference": InferenceConfig,
}


# --- error formatting -----------------------------------------------------------------------


def format_key_path(loc: tuple[Any, ...]) -> str:
    """('experiments', 1, 'lora_args', 'r') -> 'experiments[1].lora_args.r'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _schema_at(schema: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that owns the last key of `loc`, for did-you-mean suggestions."""
    current: Any = schema
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        info = current.model_fields.get(part)
        if info is None:
            return None
        current = _unwrap_model(info.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap_model(annotation: Any) -> type[BaseModel] | None:
    """The model class inside an annotation such as `list[Experiment]` or `Filter | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


def suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _expected_number(owner: type[BaseModel] | None, key: Any, ctx: dict[str, Any]) -> str:
    """'a positive integer', 'an integer >= 0', 'a number', ... read off the field's constraints."""
    info = owner.model_fields.get(key) if owner and isinstance(key, str) else None
    annotation = repr(info.annotation) + repr(info.metadata) if info else ""
    integer = "int" in annotation
    noun = "an integer" if integer else "a number"
    if ctx.get("gt") == 0 or "gt=0" in annotation:
        return f"a positive {'integer' if integer else 'number'}"
    if "ge" in ctx:
        return f"{noun} >= {ctx['ge']}"
    return noun


# YAML 1.1 (PyYAML) reads these words unquoted as booleans: `speaker_id: no` is false.
_QUOTE_BOOL_TEXT = " (unquoted yes, no, on, off, true and false are booleans in YAML: put the text in quotes)"


def _describe(error: dict[str, Any], schema: type[BaseModel]) -> str:
    kind = error["type"]
    value = error.get("input")
    loc = error["loc"]
    owner = _schema_at(schema, loc)
    if kind == "extra_forbidden":
        known = list(owner.model_fields) if owner else []
        return f"unknown key{suggest(str(loc[-1]), known)}"
    if kind == "missing":
        return "required key is missing"
    if kind in {"greater_than", "greater_than_equal", "int_parsing", "int_type", "int_from_float",
                "float_parsing", "float_type"}:
        expected = _expected_number(owner, loc[-1] if loc else None, error.get("ctx", {}))
        return f"expected {expected}, got {value!r}"
    if kind in {"bool_parsing", "bool_type"}:
        return f"expected true or false, got {value!r}"
    if kind == "literal_error":
        hint = _QUOTE_BOOL_TEXT if isinstance(value, bool) else ""
        return f"expected one of {error['ctx']['expected']}, got {value!r}{hint}"
    if kind in {"string_type"}:
        return f"expected text, got {value!r}{_QUOTE_BOOL_TEXT if isinstance(value, bool) else ''}"
    if kind in {"list_type"}:
        return f"expected a list, got {value!r}"
    if kind in {"dict_type", "model_type", "model_attributes_type"}:
        return f"expected a mapping of keys, got {value!r}"
    if kind == "too_short" and not isinstance(value, str):
        return "expected at least one entry"
    if kind in {"string_too_short", "too_short"}:
        return "must not be empty (leave the key out, or use null, for none)"
    message = error["msg"]
    return message.removeprefix("Value error, ")


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _is_union_tag(part: Any) -> bool:
    """Pydantic names the union member an error came from inside `loc` ('list[str]', 'int', ...)."""
    return isinstance(part, str) and (not part.isidentifier() or part in _TYPE_TAGS)


def validation_problems(filename: str, schema: type[BaseModel], exc: ValidationError) -> list[str]:
    """One `file: key.path: problem` line per key; a union's members would report one each."""
    problems = []
    seen: set[tuple[Any, ...]] = set()
    for error in exc.errors():
        loc = tuple(p for p in error["loc"] if not _is_union_tag(p))
        if loc in seen:
            continue
        seen.add(loc)
        problems.append(f"{filename}: {format_key_path(loc)}: {_describe({**error, 'loc': loc}, schema)}")
    return problems


# --- loading --------------------------------------------------------------------------------


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading numbers as people write them and keeping what they typed.

    PyYAML implements YAML 1.1, where a float needs a dot: `5e-5` (how learning rates are
    written, in the reference pipeline's own README too) would be the *string* "5e-5" and
    fail an hour into training. Here any decimal number with an exponent, or `-.5`, is a
    float, as in YAML 1.2. Numbers come back as :class:`YamlInt` / :class:`YamlFloat`, which
    remember their text for fields that expect text.
    """


def _construct_int(loader: ConfigLoader, node: yaml.ScalarNode) -> YamlInt:
    value = YamlInt(loader.construct_yaml_int(node))
    value.text = node.value
    return value


def _construct_float(loader: ConfigLoader, node: yaml.ScalarNode) -> YamlFloat:
    value = YamlFloat(loader.construct_yaml_float(node))
    value.text = node.value
    return value


# YAML 1.2's float forms PyYAML's (1.1) pattern lacks: an exponent without a dot or without a
# sign (`5e-5`, `1E4`, `1.0e5`) and a signed leading dot (`-.5`).
_YAML12_FLOAT = re.compile(
    r"""^(?:[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+
    |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?)$""",
    re.VERBOSE,
)
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML12_FLOAT, list("-+0123456789."))
ConfigLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
ConfigLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)

_MERGE_TAG = "tag:yaml.org,2002:merge"


def _line_and_column(text: str | bytes, offset: int) -> tuple[int, int]:
    newline = "\n" if isinstance(text, str) else b"\n"
    line_start = text.rfind(newline, 0, offset) + 1
    return text.count(newline, 0, offset) + 1, offset - line_start + 1


_UTF8_BOM = b"\xef\xbb\xbf"


def _decode(path: Path, data: bytes) -> str:
    """The file as text; anything but UTF-8 (a UTF-8 byte-order mark is fine) is named by byte."""
    skip = len(_UTF8_BOM) if data.startswith(_UTF8_BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = skip + exc.start
        line, column = _line_and_column(data, offset)
        raise ConfigError([
            f"{path}:{line}:{column}: not UTF-8 text (byte 0x{data[offset]:02x} at byte offset {offset}); "
            "save the file as UTF-8"
        ]) from None


def _duplicate_keys(loader: ConfigLoader, node: yaml.Node, path: Path) -> list[str]:
    """Keys given twice in one mapping, which PyYAML resolves silently in favour of the last.

    Walks the composed node tree (before any value is built) so each problem has its key
    path and both line numbers. Merge keys (`<<: *defaults`) are meant to be overridden and
    are left out.
    """
    problems: list[str] = []
    visited: set[int] = set()

    def walk(node: yaml.Node, loc: tuple[Any, ...]) -> None:
        if id(node) in visited:  # an alias: its anchor was walked already
            return
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, (*loc, index))
        elif isinstance(node, yaml.MappingNode):
            lines: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = loader.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if key in lines:
                    where = f"twice on line {line}" if lines[key] == line else f"on lines {lines[key]} and {line}"
                    problems.append(
                        f"{path}: {format_key_path((*loc, key_node.value))}: given twice in one mapping, "
                        f"{where}; keep one (the last would silently win)"
                    )
                else:
                    lines[key] = line
                walk(value_node, (*loc, key_node.value))

    walk(node, ())
    return problems


def read_yaml(path: Path) -> Any:
    """Parse one config file; every problem of the file itself becomes a ConfigError naming it.

    Problems: not UTF-8, characters YAML forbids (control bytes), syntax errors (line and
    column) and keys given twice.
    """
    if not path.is_file():
        raise ConfigError([f"{path}: file not found"])
    data = path.read_bytes()
    text = _decode(path, data)
    try:
        loader = ConfigLoader(text)
    except yaml.reader.ReaderError as exc:
        line, column = _line_and_column(text, exc.position)
        byte = len(text[: exc.position].encode("utf-8")) + (len(_UTF8_BOM) if data.startswith(_UTF8_BOM) else 0)
        kind = "control character" if unicodedata.category(chr(exc.character)) == "Cc" else "character"
        raise ConfigError([
            f"{path}:{line}:{column}: {kind} U+{exc.character:04X} (byte offset {byte}) is not allowed "
            "in YAML; delete it (tabs and line breaks are fine)"
        ]) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        duplicates = _duplicate_keys(loader, node, path)
        if duplicates:
            raise ConfigError(duplicates)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        raise ConfigError([f"{where}: YAML syntax error: {what}"]) from None
    finally:
        loader.dispose()


def parse_config(kind: str, data: Any, filename: str) -> BaseModel:
    """Validate already-parsed YAML data against the schema of `kind` (see CONFIG_FILES).

    experiments.yaml is also checked against the installed transformers, peft and LFM2, and
    its pass-through values come back converted as those libraries take them.
    """
    schema = SCHEMAS[kind]
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{filename}: expected a mapping of keys at the top level, got {type(data).__name__}"])
    problems = []
    if kind == "experiments":
        data, library_problems = check_experiments(data)
        problems.extend(f"{filename}: {p}" for p in library_problems)
    try:
        parsed = schema.model_validate(data)
    except ValidationError as exc:
        problems.extend(validation_problems(filename, schema, exc))
    if problems:
        raise ConfigError(problems)
    return parsed


def load_config(kind: str, config_dir: Path | str = "config") -> BaseModel:
    path = Path(config_dir) / CONFIG_FILES[kind]
    return parse_config(kind, read_yaml(path), str(path))


@dataclass
class ConfigSet:
    """The configs one command needs, validated and cross-checked."""

    config_dir: Path
    dataset: DatasetConfig | None = None
    experiments: ExperimentsConfig | None = None
    eval: EvalConfig | None = None
    eval_set: EvalSetConfig | None = None
    model: ModelConfig | None = None
    inference: InferenceConfig | None = None
    warnings: list[str] = field(default_factory=list)


def load_configs(config_dir: Path | str = "config", kinds: tuple[str, ...] = tuple(CONFIG_FILES)) -> ConfigSet:
    """Load `kinds` from `config_dir`; raise one ConfigError listing every problem in all files.

    Schema errors, checks against the installed libraries and checks across files are all
    collected before anything is raised, so one run shows the user everything to fix.
    """
    config_dir = Path(config_dir)
    configs = ConfigSet(config_dir=config_dir)
    problems: list[str] = []
    for kind in kinds:
        path = config_dir / CONFIG_FILES[kind]
        try:
            raw = read_yaml(path)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        try:
            parsed = parse_config(kind, raw, str(path))
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if kind == "model":
            problems.extend(f"{path}: {p}" for p in token_space_problems(parsed))
        setattr(configs, kind, parsed)
    errors, warnings = cross_check(configs)
    problems.extend(errors)
    configs.warnings.extend(warnings)
    if problems:
        raise ConfigError(problems)
    return configs


# --- arguments passed through to transformers and peft --------------------------------------

# numpy's seed range: transformers' set_seed hands the seed to np.random.seed.
_SEED = Annotated[int, annotated_types.Interval(ge=0, lt=2**32)]


def _declared_types(cls: type) -> dict[str, Any]:
    """Field name -> declared type of a library's config dataclass, read off the installed class."""
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation naming something only imported for type checkers
        hints = {}
    return {
        f.name: hints.get(f.name, Any if isinstance(f.type, str) else f.type)
        for f in dataclasses.fields(cls)
        if f.init
    }


def _is_enum(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, enum.Enum)


def _accepted_type(declared: Any, seed: bool = False) -> Any:
    """The type a config value is checked against, for a field a library declares as ``declared``.

    Follows what the library does with the value, which its annotation alone does not say:
    an `Enum | str` field (`lr_scheduler_type`, `optim`, `task_type`) is turned into the enum,
    so only the enum's values are accepted; a text field keeps a YAML number's text; a config
    object (a dataclass) can only be written as a mapping; a Literal with a placeholder (peft's
    `pissa_niter_[number of iters]`) cannot be checked by listing and accepts any text; a seed
    is what numpy accepts.
    """
    origin, args = get_origin(declared), get_args(declared)
    if origin is Union or origin is types.UnionType:
        if str in args and any(_is_enum(a) for a in args):
            args = tuple(a for a in args if a is not str)
        return Union[tuple(_accepted_type(a, seed) for a in args)]
    if origin is Literal:
        return Text if any("[" in str(a) for a in args) else declared
    if origin in (list, tuple, set, frozenset, dict):
        return origin[tuple(_accepted_type(a) for a in args)] if args else origin
    if declared is str:
        return Text
    if declared is int:
        return _SEED if seed else int
    if declared in (float, bool, type(None), list, dict, Ellipsis) or _is_enum(declared):
        return declared
    if dataclasses.is_dataclass(declared):
        return dict
    return Any


def _leaf_types(t: Any) -> list[Any]:
    """Every member type of a (nested) annotation; Literal members are their values."""
    args = get_args(t)
    if get_origin(t) is Literal:
        return list(args)
    if get_origin(t) is Annotated:
        return _leaf_types(args[0])
    if get_origin(t) is Union or get_origin(t) is types.UnionType:
        return [leaf for a in args for leaf in _leaf_types(a)]
    return [t]


def _describe_type(t: Any) -> str:
    """How a message names what a field takes: 'a number', 'one of: cosine, linear', ..."""
    origin, args = get_origin(t), get_args(t)
    if origin is Annotated:
        bounds = {k: getattr(m, k) for m in args[1:] for k in ("ge", "lt") if getattr(m, k, None) is not None}
        if args[0] is int and bounds.keys() == {"ge", "lt"}:
            return f"an integer from {bounds['ge']} to {bounds['lt'] - 1}"
        return _describe_type(args[0])
    if origin is Union or origin is types.UnionType:
        parts = list(dict.fromkeys(_describe_type(a) for a in args))
        return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} or {parts[-1]}"
    if origin is Literal or _is_enum(t):
        choices = args if origin is Literal else [member.value for member in t]
        return "one of: " + ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in choices)
    if t in (list, tuple, set, frozenset) or origin in (list, tuple, set, frozenset):
        return "a list"
    if t is dict or origin is dict:
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "text", type(None): "null"}
    return names.get(t, "anything")


def _choices(t: Any) -> list[str]:
    """The text values an enum or Literal member of ``t`` allows, for did-you-mean."""
    found = []
    for leaf in _leaf_types(t):
        if isinstance(leaf, str):
            found.append(leaf)
        elif _is_enum(leaf):
            found.extend(str(member.value) for member in leaf)
    return found


@lru_cache(maxsize=None)
def _adapter(accepted: Any) -> TypeAdapter:
    return TypeAdapter(accepted)


def _plain(value: Any) -> Any:
    """Library-ready values: enum members as their text, YAML numbers as plain int / float."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def coerce_library_args(args: dict[str, Any], declared: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """``args`` converted the way the library accepts them, and `{key: problem}` for the rest.

    ``declared`` maps field names to the types the library declares (:func:`_declared_types`).
    `num_train_epochs: 2` stays 2 where a float is declared, `max_steps: 1e3` becomes 1000 where
    an int is; text where a number is declared is converted when it reads as one (`"5e-5"`)
    and a problem when not (`fast`), as is true/false where neither is a bool. Keys the library
    does not declare are kept as they are: they are reported elsewhere, with suggestions.
    """
    out: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for key, value in args.items():
        if key not in declared:
            out[key] = value
            continue
        accepted = _accepted_type(declared[key], seed=key == "seed" or str(key).endswith("_seed"))
        leaves = _leaf_types(accepted)
        try:
            if isinstance(value, bool) and not any(leaf is bool or leaf is Any or isinstance(leaf, bool) for leaf in leaves):
                raise ValueError
            result = _adapter(accepted).validate_python(value)
        except (ValidationError, ValueError):
            if isinstance(value, str):
                hint = suggest(value, _choices(accepted))
            elif isinstance(value, bool) and (_choices(accepted) or str in leaves):
                hint = _QUOTE_BOOL_TEXT
            else:
                hint = ""
            problems[key] = f"expected {_describe_type(accepted)}, got {value!r}{hint}"
            out[key] = value
            continue
        if type(result) is float and isinstance(value, int) and not isinstance(value, bool):
            result = value  # an int where a float is declared is what the user wrote and fine
        out[key] = _plain(result)
    return out, problems


# --- checks across files --------------------------------------------------------------------

# TrainingArguments keys that older transformers releases (which reference configs were written
# for) accept and newer ones renamed or dropped: old key -> (new key or None, how to translate).
LEGACY_TRAINER_ARGS: dict[str, tuple[str | None, str]] = {
    "warmup_ratio": ("warmup_steps", "a float below 1 in warmup_steps is a ratio of total steps"),
    "evaluation_strategy": ("eval_strategy", "renamed"),
    "no_cuda": ("use_cpu", "renamed"),
    "overwrite_output_dir": (None, "checkpoints are always written to a fresh folder"),
    "logging_dir": (None, "logs go under the experiment's output folder"),
    "group_by_length": (None, "set `training.group_by_length` on the experiment instead"),
}


def translate_trainer_args(args: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Map reference-era TrainingArguments keys onto the installed transformers' names.

    Returns the translated arguments and one note per key that was renamed or dropped, so a
    config written for the reference pipeline trains unchanged and the user learns why.
    """
    fields = training_argument_names()
    out: dict[str, Any] = {}
    notes: list[str] = []
    for key, value in args.items():
        if key in fields or key not in LEGACY_TRAINER_ARGS:
            out[key] = value
            continue
        new_key, why = LEGACY_TRAINER_ARGS[key]
        if new_key is None:
            notes.append(f"trainer_args.{key} is not used by this transformers release ({why})")
        elif new_key in args:
            notes.append(f"trainer_args.{key} ignored: {new_key} is also set")
        else:
            out[new_key] = value
            notes.append(f"trainer_args.{key} -> {new_key} ({why})")
    return out, notes


@lru_cache(maxsize=1)
def training_argument_types() -> dict[str, Any]:
    """The declared type of every TrainingArguments field of the installed transformers."""
    from transformers import TrainingArguments

    return _declared_types(TrainingArguments)


@lru_cache(maxsize=1)
def lora_config_types() -> dict[str, Any]:
    """The declared type of every LoraConfig field of the installed peft."""
    from peft import LoraConfig

    return _declared_types(LoraConfig)


def training_argument_names() -> frozenset[str]:
    return frozenset(training_argument_types())


def lora_config_field_names() -> frozenset[str]:
    return frozenset(lora_config_types())


@lru_cache(maxsize=1)
def lfm2_module_names() -> frozenset[str]:
    """Names LoRA can target in an LFM2 model (both layer kinds), read off transformers' own class.

    Only Linear and Embedding leaves: `conv` names both the short-convolution block and its
    depthwise kernel, which LFM2 applies by reading the weight directly, so an adapter there
    would never act (PEFT refuses the name).
    """
    import torch
    from torch import nn
    from transformers import Lfm2Config, Lfm2ForCausalLM

    config = Lfm2Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, layer_types=["conv", "full_attention"],
    )
    with torch.device("meta"):
        model = Lfm2ForCausalLM(config)
    targetable = (nn.Linear, nn.Embedding)
    return frozenset(
        name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, targetable)
    )


def cross_check(configs: ConfigSet) -> tuple[list[str], list[str]]:
    """Checks that need more than one file or the installed libraries. Returns (errors, warnings)."""
    errors: list[str] = []
    warnings: list[str] = []
    d = configs.config_dir
    if configs.experiments is not None:
        filename = str(d / CONFIG_FILES["experiments"])
        for i, exp in enumerate(configs.experiments.experiments):
            for note in translate_trainer_args(exp.trainer_args)[1]:
                warnings.append(f"{filename}: experiments[{i}].{note}")
    if configs.eval_set is not None and configs.dataset is not None:
        speakers = {e.speaker_id.lower() for e in configs.dataset.hf_datasets if e.speaker_id}
        for s in configs.eval_set.sentences:
            prefix = s.speaker
            if speakers and (prefix is None or prefix.lower() not in speakers):
                warnings.append(
                    f"{d / CONFIG_FILES['eval_set']}: {s.sentence_id}: prompt "
                    + (f"uses speaker {prefix!r}" if prefix else "has no speaker prefix")
                    + f", but the datasets define {sorted(speakers)}"
                )
    if configs.inference is not None and configs.model is not None:
        # start_of_ai, start_of_speech and one code per codebook (TokenLayout.min_new_tokens)
        needed = 2 + configs.model.codec.num_codebooks
        budget = configs.inference.generation.max_new_tokens
        if budget < needed:
            errors.append(
                f"{d / CONFIG_FILES['inference']}: generation.max_new_tokens: {budget} is too small to hold one "
                f"audio frame, which takes {needed} tokens (start_of_ai, start_of_speech and the "
                f"{configs.model.codec.num_codebooks} codes of {d / CONFIG_FILES['model']}'s codec)"
            )
    return errors, warnings


def check_experiments(raw: Any) -> tuple[Any, list[str]]:
    """experiments.yaml against the installed transformers, peft and LFM2.

    Returns the data with every ``trainer_args`` and ``lora_args`` value converted as the
    library takes it (see :func:`coerce_library_args`), and the problems as `key.path: problem`.
    Runs on the raw YAML data so that these problems are reported together with schema errors
    in the same file, not only after those are fixed.
    """
    experiments = raw.get("experiments") if isinstance(raw, dict) else None
    if not isinstance(experiments, list):
        return raw, []
    problems = []
    trainer_fields = training_argument_types()
    # A reference-era key's value is checked as the field it is translated to.
    trainer_types = {
        **{old: trainer_fields[new] for old, (new, _) in LEGACY_TRAINER_ARGS.items() if new in trainer_fields},
        **trainer_fields,
    }
    # LoraArgs types some fields itself (ranges, LFM2 module names); the rest, `bias` and
    # `task_type` among them, are checked against the choices the installed peft declares.
    lora_types = {
        name: declared for name, declared in lora_config_types().items()
        if name not in LoraArgs.model_fields or LoraArgs.model_fields[name].annotation is str
    }
    modules = lfm2_module_names()
    seen_ids: dict[str, int] = {}
    checked = []
    for i, exp in enumerate(experiments):
        if not isinstance(exp, dict):
            checked.append(exp)
            continue
        where = f"experiments[{i}]"
        exp = dict(exp)
        base = exp.get("base")
        model_id = _number_as_text(base.get("model_id")) if isinstance(base, dict) else None
        if isinstance(model_id, str):
            if model_id.lower() in seen_ids:
                problems.append(
                    f"{where}.base.model_id: {model_id!r} is already used by experiments[{seen_ids[model_id.lower()]}]"
                    " (model ids name checkpoint folders and must be unique)"
                )
            seen_ids.setdefault(model_id.lower(), i)
        trainer_args = exp.get("trainer_args")
        if isinstance(trainer_args, dict):
            for key in translate_trainer_args(trainer_args)[0]:
                if key not in trainer_fields:
                    problems.append(
                        f"{where}.trainer_args.{key}: not a TrainingArguments field of the installed "
                        f"transformers{suggest(str(key), sorted(trainer_fields))}"
                    )
            exp["trainer_args"], wrong = coerce_library_args(trainer_args, trainer_types)
            problems.extend(f"{where}.trainer_args.{key}: {problem}" for key, problem in wrong.items())
        lora_args = exp.get("lora_args")
        if isinstance(lora_args, dict):
            problems.extend(_lora_problems(where, lora_args, modules))
            exp["lora_args"], wrong = coerce_library_args(lora_args, lora_types)
            problems.extend(f"{where}.lora_args.{key}: {problem}" for key, problem in wrong.items())
        checked.append(exp)
    return {**raw, "experiments": checked}, problems


def _lora_problems(where: str, lora_args: dict[str, Any], modules: frozenset[str]) -> list[str]:
    """Unknown LoraConfig keys and `target_modules` that LFM2 does not have."""
    problems = []
    lora_fields = lora_config_field_names()
    for key in lora_args:
        if key not in lora_fields:
            problems.append(f"{where}.lora_args.{key}: not a LoraConfig field{suggest(str(key), sorted(lora_fields))}")
    targets = lora_args.get("target_modules")
    if isinstance(targets, list):
        for j, name in enumerate(targets):
            if isinstance(name, str) and name not in modules:
                problems.append(
                    f"{where}.lora_args.target_modules[{j}]: LFM2 has no module {name!r}"
                    f"{suggest(name, sorted(modules))}; it has {', '.join(sorted(modules))}"
                )
    elif isinstance(targets, str) and targets != "all-linear" and not any(
        re.fullmatch(targets, name) for name in modules
    ):
        problems.append(f"{where}.lora_args.target_modules: pattern {targets!r} matches no LFM2 module")
    return problems


@dataclass
class CheckReport:
    checked: list[str]
    errors: list[str]
    warnings: list[str]


def check_config_dir(config_dir: Path | str = "config") -> CheckReport:
    """What `kanitts check-config` reports: every file, every problem, never a traceback."""
    config_dir = Path(config_dir)
    try:
        configs = load_configs(config_dir)
    except ConfigError as exc:
        return CheckReport(checked=[], errors=exc.problems, warnings=[])
    return CheckReport(
        checked=[str(config_dir / name) for name in CONFIG_FILES.values()],
        errors=[],
        warnings=configs.warnings,
    )
