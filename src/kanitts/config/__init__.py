"""The pipeline's six YAML files as typed objects: the one public surface of configuration.

Everything past this package receives typed objects; nothing else reads a config file. Where
each part lives:

- ``schemas/``: one module per file kind (model, dataset, experiments, eval, eval_set, inference)
- ``yaml_loading``: reading one file (YAML 1.2 numbers, keys given twice, encodings, line/column)
- ``formatting``: validation errors as ``<file>: <key path>: <problem>`` with did-you-mean
- ``library_checks``: experiments.yaml against the installed transformers, peft and LFM2
- ``sweep_checks``: an experiment's ``sweep:`` section (search spaces against the libraries' fields)
- ``cross_checks``: what needs more than one file
- ``loading``: :func:`load_config`, :func:`load_configs` and :class:`ConfigSet`

The names below are the ones the rest of the code uses; import them from ``kanitts.config``.
"""

from kanitts.config.formatting import format_key_path, suggest
from kanitts.config.library_checks import (
    LEGACY_TRAINER_ARGS,
    lfm2_module_names,
    lora_config_field_names,
    training_argument_names,
    translate_trainer_args,
)
from kanitts.config.loading import ConfigSet, load_config, load_configs, parse_config
from kanitts.config.schemas import CONFIG_FILES, SCHEMAS
from kanitts.config.schemas.dataset import CategoricalFilter, DatasetConfig, DatasetEntry
from kanitts.config.schemas.eval_set import EvalSentence, EvalSetConfig
from kanitts.config.schemas.evaluation import EvalConfig, EvalHub, EvalPaths, EvalProcessing, SpeakerSimilarity
from kanitts.config.schemas.experiments import (
    Experiment,
    ExperimentBase,
    ExperimentsConfig,
    LoraArgs,
    TrainingOptions,
)
from kanitts.config.schemas.inference import (
    TORCH_DTYPE_NAMES,
    GenerationSection,
    InferenceConfig,
    InferenceModel,
    TorchDtypeName,
)
from kanitts.config.schemas.model import (
    CodecSection,
    ModelConfig,
    SpecialTokens,
    TokenizerSection,
    token_space_problems,
)
from kanitts.config.schemas.server import ServerSection
from kanitts.config.schemas.sweep import Sweep, point_model_id
from kanitts.config.yaml_loading import ConfigLoader, read_yaml

__all__ = [
    "CONFIG_FILES",
    "LEGACY_TRAINER_ARGS",
    "SCHEMAS",
    "TORCH_DTYPE_NAMES",
    "CategoricalFilter",
    "CodecSection",
    "ConfigLoader",
    "ConfigSet",
    "DatasetConfig",
    "DatasetEntry",
    "EvalConfig",
    "EvalHub",
    "EvalPaths",
    "EvalProcessing",
    "EvalSentence",
    "EvalSetConfig",
    "Experiment",
    "ExperimentBase",
    "ExperimentsConfig",
    "GenerationSection",
    "InferenceConfig",
    "InferenceModel",
    "LoraArgs",
    "ModelConfig",
    "ServerSection",
    "SpeakerSimilarity",
    "SpecialTokens",
    "Sweep",
    "TokenizerSection",
    "TorchDtypeName",
    "TrainingOptions",
    "format_key_path",
    "lfm2_module_names",
    "load_config",
    "load_configs",
    "lora_config_field_names",
    "parse_config",
    "point_model_id",
    "read_yaml",
    "suggest",
    "token_space_problems",
    "training_argument_names",
    "translate_trainer_args",
]
