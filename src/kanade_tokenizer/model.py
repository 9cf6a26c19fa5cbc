"""Kanade speech tokenizer: model, config, loading, encoding and decoding.

Data flow (see docs/kanade.md):

- encode: waveform (24 kHz) -> symmetric zero padding -> WavLM (16 kHz, 50 Hz frames) ->
  local features (mean of layers 6 and 9, standardised per utterance) -> local encoder
  (local-window Transformer) -> strided conv downsampling -> FSQ -> content tokens/embedding;
  global features (mean of layers 1, 2[, 3, 4]) -> ConvNeXt + attentive statistics pooling ->
  global embedding.
- decode: tokens -> FSQ codes -> proj_out -> mel prenet -> transposed-conv upsampling -> linear
  interpolation to the mel length -> mel decoder (AdaLN-Zero on the global embedding) -> postnet.

Everything takes batches with per-item lengths; ``encode``/``decode`` are the one-utterance
wrappers of the original API and ``encode_batch``/``decode_batch`` the batched ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .files import atomic_path, describe_weights_file, hub_error
from .modules.fsq import FiniteScalarQuantizer
from .modules.global_encoder import GlobalEncoder
from .modules.postnet import PostNet
from .modules.ssl import SSLFeatureExtractor
from .modules.transformer import Transformer
from .modules.utils import lengths_to_mask

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.yaml"
WEIGHTS_NAME = "model.safetensors"

#: sub-modules that the released exports leave out on purpose (their keys may be missing)
OPTIONAL_WEIGHT_PREFIXES = ("ssl_feature_extractor.", "feature_decoder.", "conv_upsample.")

#: component name in config.yaml -> class; class_path is resolved by its last component, so both
#: the original ``kanade_tokenizer.module.*`` paths and ours (``kanade_tokenizer.modules.*``) load
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


class KanadeConfigError(ValueError):
    """A Kanade config file or dict is malformed (the message names the key)."""


class KanadeWeightsError(RuntimeError):
    """Checkpoint keys or shapes do not match the model (the message names every key)."""


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

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> "KanadeModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise KanadeConfigError(f"{where}: unknown field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["local_ssl_layers"] = list(self.local_ssl_layers)
        out["global_ssl_layers"] = list(self.global_ssl_layers)
        return out


@dataclass
class KanadeFeatures:
    """Output of ``encode``: one utterance, no batch axis.

    content_embedding: (T, C) float32 (the FSQ ``proj_out`` output); content_token_indices: (T,)
    int64 in [0, 12800); global_embedding: (G,) float32. Fields not requested are None.
    """

    content_embedding: Tensor | None = None
    content_token_indices: Tensor | None = None
    global_embedding: Tensor | None = None


@dataclass
class LoadReport:
    """What ``load_weights`` did: keys left at their current values, ignored, or skipped."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    optional_missing: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# config files


def read_config(source: str | os.PathLike | dict) -> dict[str, Any]:
    """Read a Kanade config (released config.yaml format) and return its ``init_args`` dict.

    Accepts the full jsonargparse layout (``model: {class_path, init_args: {...}}``), a bare
    ``{class_path, init_args}`` or the ``init_args`` mapping itself.
    """
    import yaml

    where = "config"
    if isinstance(source, dict):
        data = source
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"Kanade config not found: {path}")
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


def _component_class(section: Any, name: str) -> tuple[type[nn.Module], dict[str, Any]]:
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


def _instantiate(cls: type[nn.Module], init_args: dict[str, Any], name: str) -> nn.Module:
    try:
        return cls(**init_args)
    except TypeError as exc:
        raise KanadeConfigError(f"{name}.init_args: {exc}") from exc


# --------------------------------------------------------------------------------------------
# the model


class KanadeModel(nn.Module):
    """Kanade tokenizer: waveform -> (content tokens, global embedding) -> mel spectrogram.

    Build it with ``from_pretrained`` (weights) or ``from_config`` (random init). The SSL model
    (WavLM) loads its own pretrained weights; the ``feature_decoder`` (training-only SSL
    reconstruction branch) is built only when asked and never runs at inference.

    ``mixed_precision`` controls autocast around the trainable modules (the SSL model always
    runs in fp32): "auto" = bf16 on CUDA (what the released models were run with) and fp32
    elsewhere; "bf16"/"fp16" = that dtype on any device; "fp32" = no autocast.
    """

    def __init__(
        self,
        config: KanadeModelConfig,
        ssl_feature_extractor: SSLFeatureExtractor,
        local_encoder: Transformer,
        local_quantizer: FiniteScalarQuantizer,
        global_encoder: GlobalEncoder,
        mel_prenet: Transformer,
        mel_decoder: Transformer,
        mel_postnet: PostNet,
        feature_decoder: Transformer | None = None,
        mixed_precision: str | None = "auto",
    ):
        super().__init__()
        self.config = config
        self.mixed_precision = mixed_precision
        n_ssl = ssl_feature_extractor.output_layer
        needed = max(config.local_ssl_layers + config.global_ssl_layers)
        if needed > n_ssl:
            raise KanadeConfigError(f"config uses SSL layer {needed} but the extractor stops at {n_ssl}")
        # registration order follows the released checkpoints' key order
        self.ssl_feature_extractor = ssl_feature_extractor
        self.local_encoder = local_encoder
        self.local_quantizer = local_quantizer
        self.feature_decoder = feature_decoder
        f = config.downsample_factor
        dim = local_quantizer.output_dim
        self.conv_downsample = None
        self.conv_upsample = None
        if f > 1 and config.use_conv_downsample:
            self.conv_downsample = nn.Conv1d(local_encoder.output_dim, local_encoder.output_dim, f, stride=f)
            if feature_decoder is not None:
                self.conv_upsample = nn.ConvTranspose1d(dim, dim, f, stride=f)
        self.global_encoder = global_encoder
        self.mel_prenet = mel_prenet
        self.mel_decoder = mel_decoder
        self.mel_postnet = mel_postnet
        u = config.mel_upsample_factor
        c = mel_prenet.output_dim
        self.mel_conv_upsample = nn.ConvTranspose1d(c, c, u, stride=u) if u > 1 else None
        self._config_sections: dict[str, dict[str, Any]] = {}

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        config: str | os.PathLike | dict,
        *,
        ssl_model: nn.Module | None = None,
        ssl_config: Any = None,
        load_ssl_weights: bool | None = None,
        build_feature_decoder: bool = False,
        mixed_precision: str | None = "auto",
    ) -> "KanadeModel":
        """Build a randomly initialised model (apart from the SSL model) from a config.

        Args:
            config: path to a config.yaml (released format) or its parsed dict.
            ssl_model: a ready ``WavLMModel`` to use instead of building one (no download).
            ssl_config: a ``WavLMConfig`` (or its kwargs) for a randomly initialised SSL model.
            load_ssl_weights: False builds the SSL model with random weights instead of loading
                ``microsoft/wavlm-base-plus``; None follows the config (``pretrained``, default True).
            build_feature_decoder: also build the training-only feature decoder and conv_upsample.
            mixed_precision: see the class docstring.
        """
        sections = read_config(config)
        try:
            model_config = KanadeModelConfig.from_dict(dict(sections["config"] or {}), "config")
        except TypeError as exc:
            raise KanadeConfigError(f"config: {exc}") from exc
        modules: dict[str, nn.Module] = {}
        stored: dict[str, dict[str, Any]] = {}
        for name in COMPONENTS:
            if name not in sections or sections[name] is None:
                continue
            if name == "feature_decoder" and not build_feature_decoder:
                stored[name] = sections[name]
                continue
            klass, init_args = _component_class(sections[name], name)
            if name == "ssl_feature_extractor":
                if ssl_model is not None:
                    init_args["model"] = ssl_model
                elif ssl_config is not None:
                    init_args["pretrained"] = False
                    init_args["model_config"] = ssl_config
                elif load_ssl_weights is False:
                    init_args["pretrained"] = False
                elif load_ssl_weights is True and not init_args.get("pretrained", True):
                    init_args["pretrained"] = True
            modules[name] = _instantiate(klass, init_args, name)
            stored[name] = sections[name]
        model = cls(model_config, mixed_precision=mixed_precision, **modules)
        model._config_sections = stored
        return model

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
    ) -> "KanadeModel":
        """Load a Kanade model in eval mode.

        ``name_or_path`` is one of: a config.yaml path (then pass ``weights_path``), a local folder
        holding config.yaml + model.safetensors, or a Hugging Face repo id such as
        ``frothywater/kanade-12.5hz`` (both files are downloaded; honours HF_HUB_OFFLINE and the HF
        cache). The original's keywords (``repo_id``, ``config_path``, ``weights_path``,
        ``revision``) work too.

        Loading is strict: any missing, unexpected or mis-shaped key raises
        ``KanadeWeightsError`` naming it, except the modules that exports leave out on purpose
        (SSL model, feature decoder, conv_upsample). ``strict=False`` logs them instead.
        The SSL model loads its own pretrained weights unless the checkpoint carries them, an
        ``ssl_model``/``ssl_config`` is given, or ``load_ssl_weights=False``.
        """
        config_file, weights_file = _resolve_files(
            name_or_path, repo_id, revision, config_path, weights_path, cache_dir, token
        )
        from safetensors import safe_open
        from safetensors.torch import load_file

        _check_weights_file(Path(weights_file))
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
        return model.eval()

    # --- weights ------------------------------------------------------------------------------

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

    def load_weights(self, state_dict: dict[str, Tensor], strict: bool = True, source: str = "checkpoint") -> LoadReport:
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
            if key.startswith("ssl_feature_extractor.") and not ssl_given:
                report.optional_missing.append(key)
            elif key.startswith(("feature_decoder.", "conv_upsample.")):
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
            section = self._config_sections.get(name)
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
        return {"pretrained": False, "model_config": _plain(self._ssl_architecture())}

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
                {"pretrained": False, "model_config": _plain(self._ssl_architecture())}
            )
        with atomic_path(folder / WEIGHTS_NAME) as tmp:
            save_file(weights, str(tmp), metadata={"format": "pt"})
        with atomic_path(folder / CONFIG_NAME) as tmp:
            tmp.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        return folder

    # --- settings -----------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def codebook_size(self) -> int:
        return self.local_quantizer.codebook_size

    @property
    def global_embedding_dim(self) -> int:
        """Size of the global (speaker) embedding (128 for the released models)."""
        return int(self.global_encoder.pooling.norm.normalized_shape[0])

    @property
    def token_rate(self) -> float:
        """Content tokens per second (12.5 or 25 for the released models)."""
        ssl = self.ssl_feature_extractor
        return ssl.ssl_sample_rate / ssl.hop_size / self.config.downsample_factor

    def set_attention_backend(self, backend: str) -> None:
        """Force an attention backend ("auto", "flash", "sdpa", "sdpa_dense", "sdpa_blocked")."""
        for module in self.modules():
            if isinstance(module, Transformer):
                module.set_attention_backend(backend)

    def _autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        mp = self.mixed_precision
        if mp in (None, "no", "fp32", "float32"):
            return None
        if mp == "auto":
            return torch.bfloat16 if device.type == "cuda" else None
        if mp in ("bf16", "bfloat16"):
            return torch.bfloat16
        if mp in ("fp16", "float16"):
            return torch.float16
        raise ValueError(f"mixed_precision must be 'auto', 'bf16', 'fp16' or 'fp32', got {mp!r}")

    def _autocast(self, device: torch.device):
        dtype = self._autocast_dtype(device)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)

    # --- length arithmetic --------------------------------------------------------------------

    def _expected_ssl_frames(self, audio_length: int) -> int:
        """WavLM frames the original expects for ``audio_length`` samples: ceil(L / sr * 16000 /
        hop), in floating point and in that order. That is ceil(L / 480) at 24 kHz except where the
        rounding of ``L / 24000 * 16000`` lands just above a whole number of frames (6 lengths
        under 30 s), where it is one more; the released checkpoints were trained on that."""
        ssl = self.ssl_feature_extractor
        return math.ceil(int(audio_length) / self.config.sample_rate * ssl.ssl_sample_rate / ssl.hop_size)

    def _calculate_waveform_padding(self, audio_length: int, ensure_recon_length: bool = False) -> int:
        """Zero samples added on *each* side so WavLM yields the expected frames.

        The original's floating-point arithmetic, operation for operation (kanade-reference.md
        §1.1): required = get_minimum_input_length(E) / 16000 * sr, p = ceil((required - L) / 2).
        Exact integer arithmetic would give about 3 % of lengths one sample less padding, and a
        different token count for the lengths :meth:`_expected_ssl_frames` names.
        """
        ssl = self.ssl_feature_extractor
        sr = self.config.sample_rate
        frames = self._expected_ssl_frames(audio_length)
        if ensure_recon_length and (remainder := frames % self.config.downsample_factor) != 0:
            frames += self.config.downsample_factor - remainder
        required = ssl.get_minimum_input_length(frames) / ssl.ssl_sample_rate * sr
        return max(0, math.ceil((required - int(audio_length)) / 2))

    def _calculate_original_audio_length(self, token_length: int) -> int:
        """Audio length estimated from a token count (used when decode gets no target length),
        in the original's floating-point order."""
        ssl = self.ssl_feature_extractor
        frames = int(token_length) * self.config.downsample_factor
        return math.ceil(ssl.get_minimum_input_length(frames) / ssl.ssl_sample_rate * self.config.sample_rate)

    def _calculate_target_mel_length(self, audio_length: int) -> int:
        c = self.config
        if c.padding == "center":
            return int(audio_length) // c.hop_length + 1
        if c.padding == "same":
            return int(audio_length) // c.hop_length
        return (int(audio_length) - c.n_fft) // c.hop_length + 1

    def num_tokens(self, audio_length: int) -> int:
        """Content tokens for ``audio_length`` samples: floor(E / f), E as in
        :meth:`_expected_ssl_frames` (ceil(L / 480) but for a few lengths)."""
        return self._expected_ssl_frames(audio_length) // self.config.downsample_factor

    def min_audio_length(self) -> int:
        """The fewest samples that give one content token (searched, not solved, so that it
        follows the floating-point formula of :meth:`num_tokens` exactly)."""
        lo, hi = 1, self.config.downsample_factor * self.config.sample_rate  # a frame is well under 1 s
        while lo < hi:
            mid = (lo + hi) // 2
            if self.num_tokens(mid) >= 1:
                hi = mid
            else:
                lo = mid + 1
        return lo

    # --- batched building blocks ----------------------------------------------------------------

    def _pad_waveforms(self, waveforms: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Pad each item symmetrically (Kanade's formula) and right-pad to a batch."""
        padded = []
        for wave in waveforms:
            p = self._calculate_waveform_padding(wave.size(-1))
            padded.append(F.pad(wave, (p, p)))
        lengths = torch.tensor([w.size(-1) for w in padded], dtype=torch.long, device=padded[0].device)
        batch = padded[0].new_zeros(len(padded), int(lengths.max()))
        for i, wave in enumerate(padded):
            batch[i, : wave.size(-1)] = wave
        return batch, lengths

    def forward_ssl_features(
        self, waveform: Tensor, lengths: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(B, S) already padded waveforms -> local features (normalised), global features, frame
        lengths. Runs in fp32 without gradients (the SSL model is frozen)."""
        with torch.no_grad():
            layers, frame_lengths = self.ssl_feature_extractor(waveform, lengths)
        local = torch.stack([layers[k - 1] for k in self.config.local_ssl_layers]).mean(0)
        global_ = torch.stack([layers[k - 1] for k in self.config.global_ssl_layers]).mean(0)
        if self.config.normalize_ssl_features:
            local = _standardise(local, frame_lengths)
        return local, global_, frame_lengths

    def forward_content(
        self, local_features: Tensor, frame_lengths: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(B, E, D) local SSL features -> content embedding (B, T, C) fp32, token indices (B, T),
        token lengths (B,). Call inside ``self._autocast`` for mixed precision."""
        B, E, _ = local_features.shape
        if frame_lengths is None:
            frame_lengths = torch.full((B,), E, dtype=torch.long, device=local_features.device)
        masked = bool((frame_lengths < E).any())
        x = self.local_encoder(local_features, lengths=frame_lengths if masked else None)
        f = self.config.downsample_factor
        if f > 1 and x.size(1) < f:  # shorter than one token (< 20 ms * f of audio)
            x = x[:, :0]
        elif f > 1:
            if self.conv_downsample is not None:
                x = self.conv_downsample(x.transpose(1, 2)).transpose(1, 2)
            else:
                x = F.avg_pool1d(x.transpose(1, 2), f, stride=f).transpose(1, 2)
        embedding, indices = self.local_quantizer.encode(x)
        return embedding.float(), indices, torch.div(frame_lengths, f, rounding_mode="floor")

    def forward_global(self, global_features: Tensor, frame_lengths: Tensor | None = None) -> Tensor:
        """(B, E, D) global SSL features -> (B, G) fp32 global embeddings (padding ignored)."""
        return self.global_encoder(global_features, lengths=frame_lengths).float()

    def forward_mel(
        self,
        content_embedding: Tensor,
        global_embedding: Tensor,
        mel_lengths: Sequence[int] | Tensor,
        token_lengths: Tensor | None = None,
    ) -> Tensor:
        """(B, T, C) content embeddings + (B, G) global embeddings -> (B, n_mels, max M) mels.

        Item i uses its first ``token_lengths[i]`` tokens and yields ``mel_lengths[i]`` frames
        (the rest is padding). Call inside ``self._autocast`` for mixed precision.
        """
        B, T, _ = content_embedding.shape
        device = content_embedding.device
        mel_lengths = torch.as_tensor(mel_lengths, dtype=torch.long, device=device).reshape(B)
        if token_lengths is None:
            token_lengths = torch.full((B,), T, dtype=torch.long, device=device)
        token_masked = bool((token_lengths < T).any())
        x = self.mel_prenet(content_embedding, lengths=token_lengths if token_masked else None)
        u = self.config.mel_upsample_factor
        if self.mel_conv_upsample is not None:
            x = self.mel_conv_upsample(x.transpose(1, 2)).transpose(1, 2)
            up_lengths = token_lengths * u
        else:
            up_lengths = token_lengths
        M = int(mel_lengths.max())
        mode = self.config.mel_interpolation_mode
        if not token_masked and bool((mel_lengths == M).all()):
            x = _interpolate(x, M, mode)
        else:
            items = []
            for i in range(B):
                xi = _interpolate(x[i : i + 1, : int(up_lengths[i])], int(mel_lengths[i]), mode)
                items.append(F.pad(xi, (0, 0, 0, M - xi.size(1))))
            x = torch.cat(items)
        mel_masked = bool((mel_lengths < M).any())
        x = self.mel_decoder(
            x, lengths=mel_lengths if mel_masked else None, condition=global_embedding[:, None, :]
        )
        x = x.transpose(1, 2)
        mask = lengths_to_mask(mel_lengths, M)[:, None, :].to(x.dtype) if mel_masked else None
        return self.mel_postnet(x, mask).float()

    # --- encoding -----------------------------------------------------------------------------

    def _encode_items(
        self, waveforms: Sequence[Tensor], return_content: bool, return_global: bool
    ) -> list[KanadeFeatures]:
        batch, lengths = self._pad_waveforms(waveforms)
        single = len(waveforms) == 1
        local, global_, frame_lengths = self.forward_ssl_features(batch, None if single else lengths)
        content = indices = token_lengths = embeddings = None
        with self._autocast(batch.device):
            if return_content:
                content, indices, token_lengths = self.forward_content(local, frame_lengths)
            if return_global:
                embeddings = self.forward_global(global_, None if single else frame_lengths)
        out = []
        for i in range(len(waveforms)):
            feats = KanadeFeatures()
            if return_content:
                n = int(token_lengths[i])
                feats.content_embedding = content[i, :n]
                feats.content_token_indices = indices[i, :n]
            if return_global:
                feats.global_embedding = embeddings[i]
            out.append(feats)
        return out

    @torch.inference_mode()
    def encode(self, waveform: Tensor, return_content: bool = True, return_global: bool = True) -> KanadeFeatures:
        """Encode one utterance: ``waveform`` (L,) at ``config.sample_rate`` (24 kHz).

        Returns ``KanadeFeatures`` with content_token_indices (T,), content_embedding (T, C) and
        global_embedding (G,), where T = floor(ceil(L / 480) / downsample_factor).
        """
        wave = _as_1d(waveform, "waveform").to(self.device, torch.float32)
        return self._encode_items([wave], return_content, return_global)[0]

    @torch.inference_mode()
    def encode_batch(
        self,
        waveforms: Sequence[Tensor] | Tensor,
        lengths: Sequence[int] | Tensor | None = None,
        *,
        return_content: bool = True,
        return_global: bool = True,
        batch_size: int | None = None,
        max_padding: float | None | str = "auto",
    ) -> list[KanadeFeatures]:
        """Encode several utterances in padded batches; item i equals ``encode(waveforms[i])``.

        ``waveforms`` is a list of 1-D tensors, or a right-padded (B, L) tensor with ``lengths``.
        Items are sorted by length and grouped into batches of at most ``batch_size`` items
        (None: no limit) whose padded size stays within ``(1 + max_padding)`` times their real
        size (None: no limit). ``max_padding="auto"`` is 0.1 on CPU, where padding is pure extra
        work and batching brings little, and no limit elsewhere. Results keep the input order.
        """
        items = _as_list(waveforms, lengths)
        items = [w.to(self.device, torch.float32) for w in items]
        if not items:
            return []
        if max_padding == "auto":
            max_padding = 0.1 if self.device.type == "cpu" else None
        groups = group_by_length([w.size(-1) for w in items], batch_size, max_padding)
        results: list[KanadeFeatures | None] = [None] * len(items)
        for group in groups:
            feats = self._encode_items([items[i] for i in group], return_content, return_global)
            for i, feat in zip(group, feats):
                results[i] = feat
        return results  # type: ignore[return-value]

    # --- decoding -----------------------------------------------------------------------------

    @torch.inference_mode()
    def decode_token_indices(self, indices: Tensor) -> Tensor:
        """Token indices (..., T) -> content embeddings (..., T, C) in fp32 (FSQ decode + proj_out)."""
        indices = torch.as_tensor(indices, device=self.device)
        return self.local_quantizer.decode(indices).float()

    @torch.inference_mode()
    def decode(
        self,
        global_embedding: Tensor,
        content_token_indices: Tensor | None = None,
        content_embedding: Tensor | None = None,
        target_audio_length: int | None = None,
    ) -> Tensor:
        """Decode one utterance to a mel spectrogram (n_mels, M).

        Give ``content_token_indices`` (T,) or ``content_embedding`` (T, C) (the embedding wins
        when both are given) and ``global_embedding`` (G,). ``target_audio_length`` (samples)
        sets M; by default it is estimated from T.
        """
        mels = self.decode_batch(
            [_as_1d(global_embedding, "global_embedding")],
            content_token_indices=None if content_token_indices is None else [content_token_indices],
            content_embeddings=None if content_embedding is None else [content_embedding],
            target_audio_lengths=None if target_audio_length is None else [target_audio_length],
        )
        return mels[0]

    @torch.inference_mode()
    def decode_batch(
        self,
        global_embeddings: Sequence[Tensor] | Tensor,
        content_token_indices: Sequence[Tensor] | None = None,
        content_embeddings: Sequence[Tensor] | None = None,
        target_audio_lengths: Sequence[int] | None = None,
    ) -> list[Tensor]:
        """Batched ``decode``: lists of per-item inputs -> list of (n_mels, M_i) mels."""
        device = self.device
        if content_embeddings is not None:
            contents = [torch.as_tensor(c, device=device).float() for c in content_embeddings]
            for c in contents:
                if c.dim() != 2:
                    raise ValueError(f"content_embedding must be (T, C), got {tuple(c.shape)}")
        elif content_token_indices is not None:
            contents = [self.decode_token_indices(_as_1d(t, "content_token_indices")) for t in content_token_indices]
        else:
            raise ValueError("give content_token_indices or content_embedding")
        globals_ = [_as_1d(torch.as_tensor(g), "global_embedding").to(device).float() for g in global_embeddings]
        if len(globals_) != len(contents):
            raise ValueError(f"{len(globals_)} global embeddings for {len(contents)} contents")
        if any(c.size(0) == 0 for c in contents):
            raise ValueError("cannot decode an empty token sequence")
        if target_audio_lengths is None:
            target_audio_lengths = [self._calculate_original_audio_length(c.size(0)) for c in contents]
        mel_lengths = [self._calculate_target_mel_length(n) for n in target_audio_lengths]
        token_lengths = torch.tensor([c.size(0) for c in contents], dtype=torch.long, device=device)
        T = int(token_lengths.max())
        content = torch.stack([F.pad(c, (0, 0, 0, T - c.size(0))) for c in contents])
        with self._autocast(device):
            mel = self.forward_mel(content, torch.stack(globals_), mel_lengths, token_lengths)
        return [mel[i, :, :m] for i, m in enumerate(mel_lengths)]

    @torch.inference_mode()
    def voice_conversion(self, source_waveform: Tensor, reference_waveform: Tensor) -> Tensor:
        """Content of ``source_waveform`` spoken with the voice of ``reference_waveform``.

        Returns a mel (n_mels, M) with M matching the source length.
        """
        source = _as_1d(source_waveform, "source_waveform")
        content = self.encode(source, return_global=False)
        reference = self.encode(reference_waveform, return_content=False)
        return self.decode(
            reference.global_embedding,
            content_embedding=content.content_embedding,
            target_audio_length=source.size(-1),
        )


# --------------------------------------------------------------------------------------------
# helpers


def group_by_length(
    lengths: Sequence[int], batch_size: int | None = None, max_padding: float | None = None
) -> list[list[int]]:
    """Indices grouped into batches: longest first, at most ``batch_size`` per batch, and the
    padded size (longest x count) at most ``(1 + max_padding)`` x the real size."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i in order:
        if current:
            full = batch_size is not None and len(current) >= batch_size
            padded = lengths[current[0]] * (len(current) + 1)
            wasteful = max_padding is not None and padded > (1 + max_padding) * (total + lengths[i])
            if full or wasteful:
                groups.append(current)
                current, total = [], 0
        current.append(i)
        total += lengths[i]
    if current:
        groups.append(current)
    return groups


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively (yaml.safe_dump cannot write tuples)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _standardise(x: Tensor, lengths: Tensor) -> Tensor:
    """Per-item, per-channel (x - mean_t) / (std_t + 1e-8) over the valid frames (unbiased std;
    one-frame items get std 0 instead of the original's NaN)."""
    B, E, _ = x.shape
    mask = lengths_to_mask(lengths.to(x.device), E)[..., None].to(x.dtype)  # (B, E, 1)
    n = lengths.to(x.device, x.dtype)[:, None, None]
    mean = (x * mask).sum(1, keepdim=True) / n
    var = (((x - mean) * mask) ** 2).sum(1, keepdim=True) / (n - 1).clamp_min(1)
    return (x - mean) / (var.sqrt() + 1e-8) * mask


def _interpolate(x: Tensor, size: int, mode: str) -> Tensor:
    """(B, T, C) -> (B, size, C) along time."""
    kwargs = {"align_corners": False} if mode in ("linear", "bilinear", "bicubic", "trilinear") else {}
    y = F.interpolate(x.transpose(1, 2), size=size, mode=mode, **kwargs)
    return y.transpose(1, 2)


def _as_1d(x: Any, name: str) -> Tensor:
    x = torch.as_tensor(x)
    if x.dim() == 2 and x.size(0) == 1:
        x = x[0]
    if x.dim() != 1:
        raise ValueError(
            f"{name} must be 1-D (one utterance), got shape {tuple(x.shape)}; "
            "use encode_batch / decode_batch for batches"
        )
    return x


def _as_list(waveforms: Sequence[Tensor] | Tensor, lengths: Sequence[int] | Tensor | None) -> list[Tensor]:
    if isinstance(waveforms, Tensor):
        if waveforms.dim() == 1:
            waveforms = waveforms[None]
        if waveforms.dim() == 3 and waveforms.size(1) == 1:
            waveforms = waveforms[:, 0]
        if waveforms.dim() != 2:
            raise ValueError(f"padded waveforms must be (B, L), got {tuple(waveforms.shape)}")
        if lengths is None:
            return list(waveforms)
        lengths = [int(n) for n in torch.as_tensor(lengths).reshape(-1).tolist()]
        if len(lengths) != waveforms.size(0):
            raise ValueError(f"{len(lengths)} lengths for {waveforms.size(0)} waveforms")
        return [waveforms[i, :n] for i, n in enumerate(lengths)]
    items = [_as_1d(w, f"waveforms[{i}]") for i, w in enumerate(waveforms)]
    if lengths is not None:
        lengths = [int(n) for n in torch.as_tensor(lengths).reshape(-1).tolist()]
        items = [w[:n] for w, n in zip(items, lengths)]
    return items


def _check_weights_file(path: Path) -> None:
    """Refuse weights that are not safetensors, saying what they are and how to convert them
    (safetensors' own error, "header too large", says neither)."""
    what = describe_weights_file(path)
    if what is None:
        return
    hint = ""
    if "PyTorch" in what or "pickle" in what:
        out = path.with_name(path.stem + "-converted.safetensors") if path.suffix == ".safetensors" else path.with_suffix(".safetensors")
        hint = (
            f"; convert it with `python -m kanade_tokenizer.scripts.export_safetensors {path} -o {out}` "
            "(add --trust-checkpoint for a Lightning checkpoint you made yourself) and load that"
        )
    raise KanadeWeightsError(f"{path} is {what}{hint}")


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _resolve_files(name_or_path, repo_id, revision, config_path, weights_path, cache_dir, token) -> tuple[Path, Path]:
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
    elif _REPO_ID.match(str(name_or_path)) and not str(name_or_path).endswith((".yaml", ".yml")):
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
        raise FileNotFoundError(f"no such file or folder, and not a Hugging Face repo id: {name_or_path}")
    for f in (config_file, weights_file):
        if not f.is_file():
            raise FileNotFoundError(f"missing {f.name} in {f.parent}" if path.is_dir() else f"not found: {f}")
    return config_file, weights_file
