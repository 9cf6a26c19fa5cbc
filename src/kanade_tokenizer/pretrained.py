"""Released Kanade models on disk and on the Hub: where the files are, strict loading and
saving of weights, and the checks on a weights file.

The released layout is a folder (or Hub repo) holding ``config.yaml`` (see
:mod:`kanade_tokenizer.configuration`) and ``model.safetensors``. Loading is strict: a missing,
unexpected or mis-shaped key is an error naming every such key, except the modules that the
released exports leave out on purpose (SSL model, feature decoder, conv_upsample).

:class:`PretrainedMixin` gives :class:`~kanade_tokenizer.model.KanadeModel` its
``from_pretrained`` / ``save_pretrained`` / ``load_weights`` methods, as Hugging Face models get
theirs, so the model module holds only the network.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kanitts.files import is_hub_id

from .configuration import COMPONENTS, plain, released_config, released_config_names
from .files import atomic_path, describe_weights_file, hub_error

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.yaml"
WEIGHTS_NAME = "model.safetensors"

#: sub-modules that the released exports leave out on purpose (their keys may be missing)
OPTIONAL_WEIGHT_PREFIXES = ("ssl_feature_extractor.", "feature_decoder.", "conv_upsample.")



class KanadeWeightsError(RuntimeError):
    """Checkpoint keys or shapes do not match the model (the message names every key)."""


@dataclass
class LoadReport:
    """What ``load_weights`` did: keys left at their current values, ignored, or skipped."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    optional_missing: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def check_weights_file(path: Path) -> None:
    """Refuse weights that are not safetensors, saying what they are and how to convert them
    (safetensors' own error, "header too large", says neither)."""
    what = describe_weights_file(path)
    if what is None:
        return
    hint = ""
    if "PyTorch" in what or "pickle" in what:
        if path.suffix == ".safetensors":
            out = path.with_name(path.stem + "-converted.safetensors")
        else:
            out = path.with_suffix(".safetensors")
        hint = (
            f"; convert it with `python -m kanade_tokenizer.scripts.export_safetensors {path} -o {out}` "
            "(add --trust-checkpoint for a Lightning checkpoint you made yourself) and load that"
        )
    raise KanadeWeightsError(f"{path} is {what}{hint}")


def resolve_files(
    name_or_path: str | os.PathLike | None,
    *,
    repo_id: str | None = None,
    revision: str | None = None,
    config_path: str | os.PathLike | None = None,
    weights_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
) -> tuple[Path, Path]:
    """(config.yaml, model.safetensors) for what ``from_pretrained`` was given: a folder, a
    config file (+ ``weights_path``), a released config name (+ ``weights_path``) or a Hub repo id."""
    if repo_id is not None:
        if name_or_path is not None:
            raise ValueError("give either name_or_path or repo_id, not both")
        name_or_path = repo_id
    if config_path is not None:
        if name_or_path is not None:
            raise ValueError("give either name_or_path or config_path, not both")
        name_or_path = config_path
    if name_or_path is None:
        raise ValueError("from_pretrained needs a repo id, a local folder, or config_path + weights_path")
    path = Path(name_or_path)
    if not path.exists() and str(name_or_path) in released_config_names():
        path = released_config(str(name_or_path))
    if path.is_dir():
        config_file = path / CONFIG_NAME
        weights_file = Path(weights_path) if weights_path is not None else path / WEIGHTS_NAME
    elif path.is_file():
        config_file = path
        if weights_path is None:
            if (path.parent / WEIGHTS_NAME).is_file() and path.name == CONFIG_NAME:
                weights_file = path.parent / WEIGHTS_NAME
            else:
                raise ValueError(
                    f"{path} is a config file: pass weights_path=... (or use KanadeModel.from_config "
                    "for random weights)"
                )
        else:
            weights_file = Path(weights_path)
    elif is_hub_id(str(name_or_path)):  # kanitts.files: a name ending .yaml/.safetensors is a file
        from huggingface_hub import hf_hub_download

        kwargs = {"revision": revision, "cache_dir": cache_dir, "token": token}
        repo = str(name_or_path)
        try:
            config_file = Path(hf_hub_download(repo, CONFIG_NAME, **kwargs))
            weights_file = (
                Path(weights_path) if weights_path is not None else Path(hf_hub_download(repo, WEIGHTS_NAME, **kwargs))
            )
        except OSError as exc:  # offline and not cached, no network, no such repo or file (all OSErrors)
            raise hub_error(f"the Kanade model {repo}", repo, exc) from None
    else:
        raise FileNotFoundError(
            f"no such file or folder, not a released config ({', '.join(released_config_names())}) "
            f"and not a Hugging Face repo id: {name_or_path}"
        )
    for f in (config_file, weights_file):
        if not f.is_file():
            raise FileNotFoundError(f"missing {f.name} in {f.parent}" if path.is_dir() else f"not found: {f}")
    return config_file, weights_file


class PretrainedMixin:
    """Loading and saving in the released layout, for :class:`~kanade_tokenizer.model.KanadeModel`.

    Expects of the model: ``from_config``, ``config``, ``ssl_feature_extractor``,
    ``feature_decoder``, ``config_sections`` (the component sections it was built from) and the
    ``nn.Module`` state-dict methods.
    """

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike | None = None,
        *,
        repo_id: str | None = None,
        revision: str | None = None,
        config_path: str | os.PathLike | None = None,
        weights_path: str | os.PathLike | None = None,
        map_location: str | torch.device = "cpu",
        strict: bool = True,
        ssl_model: nn.Module | None = None,
        ssl_config: Any = None,
        load_ssl_weights: bool | None = None,
        build_feature_decoder: bool = False,
        mixed_precision: str | None = "auto",
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
    ):
        """Load a Kanade model in eval mode.

        ``name_or_path`` is one of: a config.yaml path or a released config name (``12hz``,
        ``25hz``, ``25hz_clean``; then pass ``weights_path``), a local folder holding config.yaml +
        model.safetensors, or a Hugging Face repo id such as ``frothywater/kanade-12.5hz`` (both
        files are downloaded; honours HF_HUB_OFFLINE and the HF cache). The original's keywords
        (``repo_id``, ``config_path``, ``weights_path``, ``revision``) work too.

        Loading is strict: any missing, unexpected or mis-shaped key raises
        ``KanadeWeightsError`` naming it, except the modules that exports leave out on purpose
        (SSL model, feature decoder, conv_upsample). ``strict=False`` logs them instead.
        The SSL model loads its own pretrained weights unless the checkpoint carries them, an
        ``ssl_model``/``ssl_config`` is given, or ``load_ssl_weights=False``.
        """
        config_file, weights_file = resolve_files(
            name_or_path, repo_id=repo_id, revision=revision, config_path=config_path,
            weights_path=weights_path, cache_dir=cache_dir, token=token,
        )
        from safetensors import safe_open
        from safetensors.torch import load_file

        check_weights_file(Path(weights_file))
        with safe_open(str(weights_file), framework="pt") as f:
            keys = list(f.keys())
        ssl_keys = [k for k in keys if k.startswith("ssl_feature_extractor.")]
        hf_layout = "ssl_feature_extractor.model.feature_projection.projection.weight" in keys
        if ssl_keys and hf_layout and ssl_model is None:
            load_ssl_weights = False  # the checkpoint brings them: skip the download
        model = cls.from_config(
            config_file,
            ssl_model=ssl_model,
            ssl_config=ssl_config,
            load_ssl_weights=load_ssl_weights,
            build_feature_decoder=build_feature_decoder,
            mixed_precision=mixed_precision,
        )
        state = load_file(str(weights_file), device=str(map_location))
        if ssl_keys and not hf_layout:
            # e.g. torchaudio-layout WavLM weights of an export made with the SSL included: the SSL
            # model is frozen during Kanade training, so its pretrained weights are the same
            logger.warning(
                "%s: ignoring %d SSL keys that are not in the transformers WavLM layout; "
                "the SSL model uses its own pretrained weights", weights_file, len(ssl_keys)
            )
            state = {k: v for k, v in state.items() if not k.startswith("ssl_feature_extractor.")}
        model.load_weights(state, strict=strict, source=str(weights_file))
        model.to(map_location)
        # where a vocoder file that belongs to the checkpoint (hift.pt) is looked for first
        model.checkpoint_folder = Path(weights_file).parent
        return model.eval()

    def weights_to_save(self, include_modules: Iterable[str] = ()) -> dict[str, Tensor]:
        """State dict of an export: without the SSL model, feature decoder and conv_upsample
        unless listed in ``include_modules`` (same rule as the original export script)."""
        include = tuple(f"{m}." for m in include_modules)
        out = {}
        for key, value in self.state_dict().items():
            if key.startswith(OPTIONAL_WEIGHT_PREFIXES) and not key.startswith(include):
                continue
            out[key] = value
        return out

    def load_weights(
        self, state_dict: dict[str, Tensor], strict: bool = True, source: str = "checkpoint"
    ) -> LoadReport:
        """Load an exported state dict (see ``from_pretrained`` for the strictness rules)."""
        state = {k.replace("_orig_mod.", ""): v for k, v in state_dict.items()}
        own = self.state_dict()
        report = LoadReport()
        n_ssl = self.ssl_feature_extractor.output_layer
        truncated_layer = re.compile(r"ssl_feature_extractor\.model\.encoder\.layers\.(\d+)\.")
        ssl_given = any(k.startswith("ssl_feature_extractor.") for k in state)
        for key in own:
            if key in state:
                continue
            ssl_absent = key.startswith("ssl_feature_extractor.") and not ssl_given
            if ssl_absent or key.startswith(("feature_decoder.", "conv_upsample.")):
                report.optional_missing.append(key)
            else:
                report.missing.append(key)
        to_load = {}
        for key, value in state.items():
            if key not in own:
                match = truncated_layer.match(key)
                if key.startswith(("feature_decoder.", "conv_upsample.")) or (
                    match and int(match.group(1)) >= n_ssl
                ):
                    report.ignored.append(key)  # modules this model does not build / run
                else:
                    report.unexpected.append(key)
                continue
            if tuple(value.shape) != tuple(own[key].shape):
                report.mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
                continue
            to_load[key] = value
        problems = []
        if report.missing:
            problems.append(f"missing keys ({len(report.missing)}): " + ", ".join(report.missing))
        if report.unexpected:
            problems.append(f"unexpected keys ({len(report.unexpected)}): " + ", ".join(report.unexpected))
        if report.mismatched:
            problems.append(
                "shape mismatches: "
                + ", ".join(f"{k} (checkpoint {a}, model {b})" for k, a, b in report.mismatched)
            )
        if problems:
            message = f"{source} does not match the model config: " + "; ".join(problems)
            if strict:
                raise KanadeWeightsError(message)
            logger.warning(message)
        if report.ignored:
            logger.info("ignored %d checkpoint keys of modules not built for inference", len(report.ignored))
        self.load_state_dict(to_load, strict=False)
        return report

    def to_config_dict(self) -> dict[str, Any]:
        """The released config.yaml layout (``model: {class_path, init_args}``) for this model."""
        init_args: dict[str, Any] = {"config": self.config.to_dict()}
        for name in COMPONENTS:
            module = getattr(self, name, None)
            section = self.config_sections.get(name)
            if section is None and module is not None:
                raise ValueError(f"{name} was built without a config section; build with from_config")
            if section is None:
                continue
            section = {"class_path": section["class_path"], "init_args": dict(section.get("init_args") or {})}
            if name == "ssl_feature_extractor":
                section["init_args"].update(self._ssl_config_args())
            init_args[name] = section
        return {"model": {"class_path": f"{type(self).__module__}.{type(self).__name__}", "init_args": init_args}}

    def _ssl_config_args(self) -> dict[str, Any]:
        """Extra SSL init_args for config.yaml: none when the SSL model is the pretrained one;
        otherwise its architecture, so a saved folder rebuilds it without a download."""
        ssl = self.ssl_feature_extractor
        if ssl.pretrained and not ssl.injected:
            return {}
        return {"pretrained": False, "model_config": plain(self._ssl_architecture())}

    def _ssl_architecture(self) -> dict[str, Any]:
        cfg = self.ssl_feature_extractor.model.config.to_diff_dict()
        for k in ("transformers_version", "architectures", "model_type", "_name_or_path", "dtype", "torch_dtype"):
            cfg.pop(k, None)
        return cfg

    def save_pretrained(self, folder: str | os.PathLike, include_ssl: bool | None = None) -> Path:
        """Write ``config.yaml`` + ``model.safetensors`` (the released layout) into ``folder``.

        ``include_ssl`` (default: only when the SSL model is not the pretrained one) also stores
        the SSL weights, so a randomly initialised or fine-tuned SSL model round-trips.
        Files are written under temporary names and renamed when complete.
        """
        import yaml
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        ssl_args = self._ssl_config_args()
        if include_ssl is None:
            include_ssl = bool(ssl_args)
        include = ["ssl_feature_extractor"] if include_ssl else []
        if self.feature_decoder is not None:
            include += ["feature_decoder", "conv_upsample"]
        weights = {k: v.detach().contiguous().cpu() for k, v in self.weights_to_save(include).items()}
        config = self.to_config_dict()
        if include_ssl and not ssl_args:
            # the folder carries the SSL weights: rebuild the architecture without downloading
            config["model"]["init_args"]["ssl_feature_extractor"]["init_args"].update(
                {"pretrained": False, "model_config": plain(self._ssl_architecture())}
            )
        with atomic_path(folder / WEIGHTS_NAME) as tmp:
            save_file(weights, str(tmp), metadata={"format": "pt"})
        with atomic_path(folder / CONFIG_NAME) as tmp:
            tmp.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        return folder


__all__ = [
    "CONFIG_NAME", "KanadeWeightsError", "LoadReport", "OPTIONAL_WEIGHT_PREFIXES", "PretrainedMixin",
    "WEIGHTS_NAME", "check_weights_file", "resolve_files",
]
