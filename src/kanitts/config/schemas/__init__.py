"""The typed schema of each of the pipeline's six YAML files, one module per file.

Configs written for the reference KaniTTS pipeline load unchanged: every key it knows keeps its
name and meaning. Keys this project adds are optional and default to the reference behaviour.
"""

from __future__ import annotations

from pydantic import BaseModel

from kanitts.config.schemas.dataset import DatasetConfig
from kanitts.config.schemas.eval_set import EvalSetConfig
from kanitts.config.schemas.evaluation import EvalConfig
from kanitts.config.schemas.experiments import ExperimentsConfig
from kanitts.config.schemas.inference import InferenceConfig
from kanitts.config.schemas.model import ModelConfig

# kind -> the file of that kind in a config folder
CONFIG_FILES = {
    "dataset": "dataset_config.yaml",
    "experiments": "experiments.yaml",
    "eval": "eval_config.yaml",
    "eval_set": "eval_set.yaml",
    "model": "model_config.yaml",
    "inference": "inference_config.yaml",
}

SCHEMAS: dict[str, type[BaseModel]] = {
    "dataset": DatasetConfig,
    "experiments": ExperimentsConfig,
    "eval": EvalConfig,
    "eval_set": EvalSetConfig,
    "model": ModelConfig,
    "inference": InferenceConfig,
}
