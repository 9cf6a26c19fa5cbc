"""The Kanade config format: the released ``config.yaml`` layout, its dataclass, and the
released configs shipped with the package.

A config is a jsonargparse document ``model: {class_path, init_args}`` whose ``init_args`` hold
``config`` (:class:`KanadeModelConfig`) and one ``{class_path, init_args}`` section per
component. ``class_path`` is resolved by its last name, so both the original package's
``kanade_tokenizer.module.*`` paths and ours (``kanade_tokenizer.modules.*``) load.

The released configs (``12hz``, ``25hz``, ``25hz_clean``) live in ``kanade_tokenizer/configs/``
inside the package, so an installed wheel finds them by name; ``config/kanade/model/`` in the
repository is a link to that folder.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from torch import nn

from .modules.fsq import FiniteScalarQuantizer
from .modules.global_encoder import GlobalEncoder
from .modules.postnet import PostNet
from .modules.ssl import SSLFeatureExtractor
from .modules.transformer import Transformer

#: component name in config.yaml -> class (looked up by the last part of ``class_path``)
COMPONENT_CLASSES: dict[str, type[nn.Module]] = {
    "SSLFeatureExtractor": SSLFeatureExtractor,
    "Transformer": Transformer,
    "FiniteScalarQuantizer": FiniteScalarQuantizer,
    "GlobalEncoder": GlobalEncoder,
    "PostNet": PostNet,
}
COMPONENTS = (
    "ssl_feature_extractor",
    "local_encoder",
    "local_quantizer",
    "feature_decoder",
    "global_encoder",
    "mel_prenet",
    "mel_decoder",
    "mel_postnet",
)
REQUIRED_COMPONENTS = tuple(c for c in COMPONENTS if c != "feature_decoder")

#: mel paddings the mel feature and the decoder's length rule know
MEL_PADDINGS = ("center", "same")


class KanadeConfigError(ValueError):
    """A Kanade config file or dict is malformed (the message names the key)."""


@dataclass
class KanadeModelConfig:
    """The ``config:`` section of a Kanade config.yaml (same fields as the original)."""

    # SSL features (1-based WavLM transformer layers)
    local_ssl_layers: tuple[int, ...] = (6, 9)
    global_ssl_layers: tuple[int, ...] = (1, 2)
    normalize_ssl_features: bool = True
    # down/up-sampling
    downsample_factor: int = 2
    mel_upsample_factor: int = 4
    use_conv_downsample: bool = True
    #: how the training-only SSL reconstruction is stretched back to the SSL frame rate when
    #: there is no ``conv_upsample`` (``use_conv_downsample: false``); a ``F.interpolate`` mode
    local_interpolation_mode: str = "linear"
    mel_interpolation_mode: str = "linear"
    # audio / mel
    sample_rate: int = 24000
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 100
    padding: str = "center"
    mel_fmin: float = 0
    mel_fmax: float | None = None
    bigvgan_style_mel: bool = False
    # vocoder
    vocoder_name: str = "vocos"

    def __post_init__(self):
        self.local_ssl_layers = tuple(int(x) for x in self.local_ssl_layers)
        self.global_ssl_layers = tuple(int(x) for x in self.global_ssl_layers)
        if min(self.local_ssl_layers + self.global_ssl_layers) < 1:
            raise KanadeConfigError("SSL layers are 1-based (layer k = output of the k-th transformer layer)")
        if self.padding not in MEL_PADDINGS:
            raise KanadeConfigError(f"config.padding must be one of {list(MEL_PADDINGS)}, got {self.padding!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> KanadeModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise KanadeConfigError(f"{where}: unknown field(s) {unknown}; known fields: {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise KanadeConfigError(f"{where}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["local_ssl_layers"] = list(self.local_ssl_layers)
        out["global_ssl_layers"] = list(self.global_ssl_layers)
        return out


# --------------------------------------------------------------------------------------------
# released configs


def released_config_names() -> list[str]:
    """Names of the configs shipped in the package (``12hz``, ``25hz``, ``25hz_clean``)."""
    folder = resources.files(__package__) / "configs"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def released_config(name: str) -> Path:
    """The path of a released config by name (``12hz``), from the installed package."""
    names = released_config_names()
    if name not in names:
        raise KanadeConfigError(f"no released Kanade config named {name!r}; known: {names}")
    resource = resources.files(__package__) / "configs" / f"{name}.yaml"
    # a package installed from a wheel or a source tree is a plain folder, so the path is real
    return Path(os.fspath(resource))


# --------------------------------------------------------------------------------------------
# reading


def read_config(source: str | os.PathLike | dict) -> dict[str, Any]:
    """Read a Kanade config (released config.yaml format) and return its ``init_args`` dict.

    ``source`` is a YAML path, the name of a released config (``12hz``) or a parsed dict in the
    full jsonargparse layout (``model: {class_path, init_args: {...}}``), a bare
    ``{class_path, init_args}`` or the ``init_args`` mapping itself.
    """
    import yaml

    where = "config"
    if isinstance(source, dict):
        data = source
    else:
        path = Path(source)
        if not path.exists() and isinstance(source, str) and source in released_config_names():
            path = released_config(source)
        where = str(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Kanade config not found: {path} (released configs by name: {released_config_names()})"
            )
        with open(path, encoding="utf-8") as f:
            try:
                data = yaml.safe_load(f)
            except yaml.YAMLError as exc:
                raise KanadeConfigError(f"{where}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise KanadeConfigError(f"{where}: expected a mapping at the top level")
    if "model" in data and isinstance(data["model"], dict):
        data = data["model"]
        where += ": model"
    if "init_args" in data:
        class_path = data.get("class_path", "")
        if class_path and not class_path.endswith("KanadeModel"):
            raise KanadeConfigError(f"{where}.class_path: expected a KanadeModel, got {class_path!r}")
        data = data["init_args"]
        where += ".init_args"
    if not isinstance(data, dict):
        raise KanadeConfigError(f"{where}: expected a mapping")
    missing = [c for c in ("config",) + REQUIRED_COMPONENTS if c not in data]
    if missing:
        raise KanadeConfigError(f"{where}: missing section(s) {missing}")
    unknown = sorted(set(data) - set(COMPONENTS) - {"config"})
    if unknown:
        raise KanadeConfigError(f"{where}: unknown section(s) {unknown}")
    return data


def component_class(section: Any, name: str) -> tuple[type[nn.Module], dict[str, Any]]:
    """The class and init_args of the component section ``name``."""
    if not isinstance(section, dict) or "class_path" not in section:
        raise KanadeConfigError(f"{name}: expected a mapping with class_path and init_args")
    class_path = str(section["class_path"])
    if not class_path.startswith("kanade_tokenizer."):
        raise KanadeConfigError(f"{name}.class_path: {class_path!r} is not a kanade_tokenizer class")
    cls = COMPONENT_CLASSES.get(class_path.rsplit(".", 1)[-1])
    if cls is None:
        raise KanadeConfigError(
            f"{name}.class_path: unknown class {class_path!r}; known: {sorted(COMPONENT_CLASSES)}"
        )
    init_args = dict(section.get("init_args") or {})
    return cls, init_args


def instantiate(cls: type[nn.Module], init_args: dict[str, Any], name: str) -> nn.Module:
    """``cls(**init_args)``, a wrong argument reported as a config error naming the section."""
    try:
        return cls(**init_args)
    except TypeError as exc:
        raise KanadeConfigError(f"{name}.init_args: {exc}") from exc


def plain(value: Any) -> Any:
    """Tuples -> lists, recursively (yaml.safe_dump cannot write tuples)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


__all__ = [
    "COMPONENTS", "COMPONENT_CLASSES", "KanadeConfigError", "KanadeModelConfig", "MEL_PADDINGS",
    "REQUIRED_COMPONENTS", "component_class", "instantiate", "plain", "read_config", "released_config",
    "released_config_names",
]
