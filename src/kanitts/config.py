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
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Union, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
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
    model_name: str = "nvidia/nemo-nano-codec-22khz-0.6kbps-12.5fps"
    sample_rate: PositiveInt = 22050
    fps: PositiveFloat = 12.5
    num_codebooks: PositiveInt = 4
    codebook_size: PositiveInt = 4032
    audio_tokens_start: int = Field(64410, ge=0)
    # Added here: which codec implementation decodes the tokens, and where its weights live.
    kind: Literal["nanocodec", "kanade"] = "nanocodec"
    weights: str = "nineninesix/nemo-nano-codec-22khz-0.6kbps-12.5fps-pytorch"


class ModelConfig(_Strict):
    tokenizer: TokenizerSection = TokenizerSection()
    special_tokens: SpecialTokens = SpecialTokens()
    codec: CodecSection = CodecSection()
    codec_layers: list[str] = ["nano_layer_1", "nano_layer_2", "nano_layer_3", "nano_layer_4"]


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
    column_name: str
    value: Union[str, int, float, bool]


class DatasetEntry(_Strict):
    """One source dataset. `reponame` is a Hub id, a save_to_disk folder, or parquet/jsonl/csv files."""

    reponame: str
    name: str | None = None
    split: str = "train"
    text_col_name: str = "text"
    nano_layer_1: str = "nano_layer_1"
    nano_layer_2: str = "nano_layer_2"
    nano_layer_3: str = "nano_layer_3"
    nano_layer_4: str = "nano_layer_4"
    encoded_len: str = "encoded_len"
    speaker_id: str | None = Field(None, min_length=1)
    max_len: PositiveInt | None = None
    categorical_filter: CategoricalFilter | None = None

    @property
    def label(self) -> str:
        """How messages name this dataset."""
        return self.reponame if self.name is None else f"{self.reponame} ({self.name})"

    def layer_columns(self) -> list[str]:
        return [self.nano_layer_1, self.nano_layer_2, self.nano_layer_3, self.nano_layer_4]


class DatasetConfig(_Strict):
    max_duration_sec: PositiveFloat | None = None
    hf_datasets: list[DatasetEntry] = Field(min_length=1)
    # Added here (the reference has none of these as config keys):
    n_shards_per_dataset: PositiveInt | None = None
    num_proc: PositiveInt | None = None
    seed: int = 42
    cache_dir: str = ".cache/kanitts/sequences"
    # The reference drops each codec frame equal to the one before it (shortens silences);
    # false keeps every frame, so the model learns true durations.
    dedup_frames: bool = True


# --- experiments.yaml -----------------------------------------------------------------------

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ExperimentBase(_Strict):
    model_id: str
    run_name: str | None = None
    desc: str | None = None

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
    """The common LoraConfig fields, typed; any other LoraConfig field passes through."""

    model_config = ConfigDict(extra="allow", frozen=True)

    r: PositiveInt = 16
    lora_alpha: PositiveFloat = 16
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | str = ["q_proj", "v_proj"]
    bias: Literal["none", "all", "lora_only"] = "none"
    modules_to_save: list[str] | None = None
    task_type: str = "CAUSAL_LM"
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
    trainer_args: dict[str, Any] = {}
    training: TrainingOptions = TrainingOptions()

    @property
    def model_id(self) -> str:
        return self.base.model_id


class ExperimentsConfig(_Strict):
    base_model: str
    project_name: str | None = None
    experiments: list[Experiment] = Field(min_length=1)


# --- eval_config.yaml -----------------------------------------------------------------------


class EvalPaths(_Strict):
    audio_output_dir: str = "./audio_samples"
    checkpoints_dir: str = "./checkpoints"
    report_dir: str = "./report"


class EvalHub(_Strict):
    upload_dataset: bool = False
    repo_name: str | None = None
    private: bool = True

    @model_validator(mode="after")
    def _repo_when_uploading(self) -> EvalHub:
        if self.upload_dataset and not self.repo_name:
            raise ValueError("repo_name is required when upload_dataset is true")
        return self


class EvalProcessing(_Strict):
    num_proc: PositiveInt = 1


class SpeakerSimilarity(_Strict):
    """Reference recordings per speaker prefix, for the speaker-similarity metric."""

    references: dict[str, list[str]] = {}
    # A name from kanitts.evaluation.speaker (`mfcc-stats` works offline with no weights;
    # `kanade:<folder or Hub id>` uses the Kanade tokenizer's global embedding).
    embedder: str = "mfcc-stats"


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
    eval_set: list[dict[str, str]] = Field(min_length=1)

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
    device_map: str | None = "auto"
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
        return f"expected one of {error['ctx']['expected']}, got {value!r}"
    if kind in {"string_type"}:
        return f"expected text, got {value!r}"
    if kind in {"list_type"}:
        return f"expected a list, got {value!r}"
    if kind in {"dict_type", "model_type", "model_attributes_type"}:
        return f"expected a mapping of keys, got {value!r}"
    if kind == "too_short":
        return "expected at least one entry"
    if kind == "string_too_short":
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


def read_yaml(path: Path) -> Any:
    """Parse YAML; a syntax error becomes a ConfigError with line and column."""
    if not path.is_file():
        raise ConfigError([f"{path}: file not found"])
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        raise ConfigError([f"{where}: YAML syntax error: {what}"]) from None


def parse_config(kind: str, data: Any, filename: str) -> BaseModel:
    """Validate already-parsed YAML data against the schema of `kind` (see CONFIG_FILES)."""
    schema = SCHEMAS[kind]
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{filename}: expected a mapping of keys at the top level, got {type(data).__name__}"])
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_problems(filename, schema, exc)) from None


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
        if kind == "experiments":
            problems.extend(f"{path}: {p}" for p in experiment_problems(raw))
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
def training_argument_names() -> frozenset[str]:
    from transformers import TrainingArguments

    return frozenset(f.name for f in dataclasses.fields(TrainingArguments) if f.init)


@lru_cache(maxsize=1)
def lora_config_field_names() -> frozenset[str]:
    from peft import LoraConfig

    return frozenset(f.name for f in dataclasses.fields(LoraConfig))


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


def experiment_problems(raw: Any) -> list[str]:
    """Checks of experiments.yaml against the installed transformers, peft and LFM2.

    Runs on the raw YAML data so that these problems are reported together with schema errors
    in the same file, not only after those are fixed.
    """
    experiments = raw.get("experiments") if isinstance(raw, dict) else None
    if not isinstance(experiments, list):
        return []
    problems = []
    trainer_fields = training_argument_names()
    lora_fields = lora_config_field_names()
    modules = lfm2_module_names()
    seen_ids: dict[str, int] = {}
    for i, exp in enumerate(experiments):
        if not isinstance(exp, dict):
            continue
        where = f"experiments[{i}]"
        base = exp.get("base")
        model_id = base.get("model_id") if isinstance(base, dict) else None
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
                        f"transformers{suggest(key, sorted(trainer_fields))}"
                    )
        lora_args = exp.get("lora_args")
        if not isinstance(lora_args, dict):
            continue
        for key in lora_args:
            if key not in lora_fields:
                problems.append(f"{where}.lora_args.{key}: not a LoraConfig field{suggest(key, sorted(lora_fields))}")
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
