"""Vocos vocoder in pure PyTorch, weight-compatible with ``charactr/vocos-mel-24khz``.

Vocos (Siuzdak, 2023) predicts an STFT frame by frame and turns it into audio with an inverse
STFT, so every layer runs at the mel frame rate. Three parts, each under the attribute name (and
so the state-dict prefix) the released checkpoint uses:

* ``feature_extractor`` (:class:`~kanade_tokenizer.modules.mel.MelSpectrogramFeatures`): audio ->
  log-mel, the input format
  (only needed for copy-synthesis; its window and filterbank are buffers in the checkpoint:
  ``feature_extractor.mel_spec.spectrogram.window`` and ``feature_extractor.mel_spec.mel_scale.fb``).
* ``backbone`` (:class:`~kanade_tokenizer.modules.convnext.ConvNeXtBackbone`): ``embed``
  Conv1d(n_mels -> dim, k7), ``norm`` LayerNorm, ``convnext.{i}`` ConvNeXt blocks (``dwconv``,
  ``norm``, ``pwconv1``, ``pwconv2``, ``gamma``), ``final_layer_norm``.
* ``head`` (:class:`ISTFTHead`): ``out`` Linear(dim -> n_fft + 2) giving log-magnitude and phase,
  then ``istft`` (buffer ``head.istft.window``).

The checkpoint folder layout is Vocos's: ``config.yaml`` (``feature_extractor`` / ``backbone`` /
``head`` sections, each ``{class_path, init_args}``) plus ``pytorch_model.bin`` (a plain state
dict). ``model.safetensors`` is accepted as well.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from kanade_tokenizer.modules.convnext import ConvNeXtBackbone
from kanade_tokenizer.modules.mel import MelSpectrogramFeatures

Padding = Literal["center", "same"]

CONFIG_NAME = "config.yaml"
WEIGHTS_NAMES = ("pytorch_model.bin", "model.safetensors")

# class_path values of the original package, written into config.yaml for compatibility.
_FEATURES_CLASS = "vocos.feature_extractors.MelSpectrogramFeatures"
_BACKBONE_CLASS = "vocos.models.VocosBackbone"
_HEAD_CLASS = "vocos.heads.ISTFTHead"


class VocosLoadError(ValueError):
    """A Vocos folder, config or checkpoint that cannot be used (message names the file)."""


@dataclass
class VocosConfig:
    """Hyper-parameters of a mel Vocos; the defaults are those of ``charactr/vocos-mel-24khz``."""

    sample_rate: int = 24000
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 100
    padding: Padding = "center"
    dim: int = 512
    intermediate_dim: int = 1536
    num_layers: int = 8
    layer_scale_init_value: float | None = None
    head_n_fft: int = 1024
    head_hop_length: int = 256
    head_padding: Padding = "center"

    @classmethod
    def from_yaml_dict(cls, data: dict[str, Any], source: str = "config.yaml") -> VocosConfig:
        """Read Vocos's config.yaml layout (sections feature_extractor, backbone, head)."""
        try:
            fe, bb, hd = data["feature_extractor"], data["backbone"], data["head"]
        except (KeyError, TypeError) as e:
            raise VocosLoadError(
                f"{source}: not a Vocos config (needs feature_extractor, backbone and head sections)"
            ) from e
        for section, name, expected in (
            (fe, "feature_extractor", "MelSpectrogramFeatures"),
            (bb, "backbone", "VocosBackbone"),
            (hd, "head", "ISTFTHead"),
        ):
            class_name = str(section.get("class_path", "")).rsplit(".", 1)[-1]
            if class_name != expected:
                raise VocosLoadError(
                    f"{source}: {name}.class_path is {section.get('class_path')!r}; only "
                    f"{expected} is supported (mel-input Vocos with an ISTFT head)"
                )
        fa, ba, ha = fe.get("init_args", {}) or {}, bb.get("init_args", {}) or {}, hd.get("init_args", {}) or {}
        known = {
            "feature_extractor": {"sample_rate", "n_fft", "hop_length", "n_mels", "padding"},
            "backbone": {"input_channels", "dim", "intermediate_dim", "num_layers", "layer_scale_init_value",
                         "adanorm_num_embeddings"},
            "head": {"dim", "n_fft", "hop_length", "padding"},
        }
        for name, args in (("feature_extractor", fa), ("backbone", ba), ("head", ha)):
            extra = set(args) - known[name]
            if extra:
                raise VocosLoadError(f"{source}: unsupported {name}.init_args {sorted(extra)}")
        if ba.get("adanorm_num_embeddings") is not None:
            raise VocosLoadError(f"{source}: conditional (AdaLayerNorm) backbones are not supported")
        defaults = cls()
        cfg = cls(
            sample_rate=int(fa.get("sample_rate", 24000)),
            n_fft=int(fa.get("n_fft", 1024)),
            hop_length=int(fa.get("hop_length", 256)),
            n_mels=int(fa.get("n_mels", 100)),
            padding=fa.get("padding", "center"),
            dim=int(ba.get("dim", defaults.dim)),
            intermediate_dim=int(ba.get("intermediate_dim", defaults.intermediate_dim)),
            num_layers=int(ba.get("num_layers", defaults.num_layers)),
            layer_scale_init_value=ba.get("layer_scale_init_value"),
            head_n_fft=int(ha.get("n_fft", defaults.head_n_fft)),
            head_hop_length=int(ha.get("hop_length", defaults.head_hop_length)),
            head_padding=ha.get("padding", "same"),  # ISTFTHead's own default
        )
        if int(ba.get("input_channels", cfg.n_mels)) != cfg.n_mels:
            raise VocosLoadError(
                f"{source}: backbone.input_channels ({ba.get('input_channels')}) differs from "
                f"feature_extractor.n_mels ({cfg.n_mels})"
            )
        if int(ha.get("dim", cfg.dim)) != cfg.dim:
            raise VocosLoadError(f"{source}: head.dim ({ha.get('dim')}) differs from backbone.dim ({cfg.dim})")
        for name in ("padding", "head_padding"):
            if getattr(cfg, name) not in ("center", "same"):
                raise VocosLoadError(f"{source}: {name} must be 'center' or 'same', got {getattr(cfg, name)!r}")
        return cfg

    def to_yaml_dict(self) -> dict[str, Any]:
        """The config.yaml layout of the original package (loadable by ``vocos.Vocos.from_hparams``)."""
        backbone_args: dict[str, Any] = {
            "input_channels": self.n_mels,
            "dim": self.dim,
            "intermediate_dim": self.intermediate_dim,
            "num_layers": self.num_layers,
        }
        if self.layer_scale_init_value is not None:
            backbone_args["layer_scale_init_value"] = self.layer_scale_init_value
        return {
            "feature_extractor": {
                "class_path": _FEATURES_CLASS,
                "init_args": {
                    "sample_rate": self.sample_rate,
                    "n_fft": self.n_fft,
                    "hop_length": self.hop_length,
                    "n_mels": self.n_mels,
                    "padding": self.padding,
                },
            },
            "backbone": {"class_path": _BACKBONE_CLASS, "init_args": backbone_args},
            "head": {
                "class_path": _HEAD_CLASS,
                "init_args": {
                    "dim": self.dim,
                    "n_fft": self.head_n_fft,
                    "hop_length": self.head_hop_length,
                    "padding": self.head_padding,
                },
            },
        }


class ISTFT(nn.Module):
    """Inverse STFT with a periodic Hann window (buffer ``window``).

    ``padding="center"``: ``torch.istft(center=True)``, giving ``hop · (T - 1)`` samples.
    ``padding="same"``: overlap-add of all frames, trimmed by ``(win - hop) // 2`` on both sides
    and divided by the overlap-added squared window, giving ``hop · T`` samples (torch.istft
    refuses this case because the window envelope vanishes at the untrimmed edges).
    """

    def __init__(self, n_fft: int, hop_length: int, win_length: int | None = None, padding: Padding = "same") -> None:
        super().__init__()
        if padding not in ("center", "same"):
            raise ValueError(f"padding must be 'center' or 'same', got {padding!r}")
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.win_length = win_length or n_fft
        self.padding = padding
        self.register_buffer("window", torch.hann_window(self.win_length, periodic=True))

    def num_samples(self, num_frames: int) -> int:
        if self.padding == "center":
            return self.hop_length * (num_frames - 1)
        return self.hop_length * num_frames

    def forward(self, spec: torch.Tensor) -> torch.Tensor:  # (B, n_fft // 2 + 1, T) complex
        if self.padding == "center":
            return torch.istft(
                spec, self.n_fft, self.hop_length, self.win_length, self.window, center=True
            )
        if spec.dim() != 3:
            raise ValueError(f"expected a (B, freq, frames) spectrogram, got shape {tuple(spec.shape)}")
        frames = spec.shape[-1]
        trim = (self.win_length - self.hop_length) // 2
        window = self.window.to(spec.real.dtype)
        segments = torch.fft.irfft(spec, n=self.n_fft, dim=1)[:, : self.win_length] * window[None, :, None]
        total = (frames - 1) * self.hop_length + self.win_length
        fold = dict(output_size=(1, total), kernel_size=(1, self.win_length), stride=(1, self.hop_length))
        audio = F.fold(segments, **fold)[:, 0, 0, trim : total - trim]
        envelope = F.fold(
            window.square()[None, :, None].expand(1, -1, frames), **fold
        )[0, 0, 0, trim : total - trim]
        if bool((envelope <= 1e-11).any()):
            raise RuntimeError("ISTFT window envelope vanishes; hop is too large for the window")
        return audio / envelope


class ISTFTHead(nn.Module):
    """(B, T, dim) -> Linear -> log-magnitude and phase -> ISTFT -> (B, samples)."""

    def __init__(self, dim: int, n_fft: int, hop_length: int, padding: Padding = "same") -> None:
        super().__init__()
        self.out = nn.Linear(dim, n_fft + 2)
        self.istft = ISTFT(n_fft=n_fft, hop_length=hop_length, win_length=n_fft, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_mag, phase = self.out(x).transpose(1, 2).float().chunk(2, dim=1)
        magnitude = torch.clamp(torch.exp(log_mag), max=1e2)  # guard against huge magnitudes
        return self.istft(torch.polar(magnitude, phase))


class Vocos(nn.Module):
    """Mel Vocos: ``decode(mel (B, n_mels, T)) -> (B, samples)``; ``forward(audio)`` resynthesises."""

    def __init__(self, config: VocosConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or VocosConfig()
        self.feature_extractor = MelSpectrogramFeatures(
            config.sample_rate, config.n_fft, config.hop_length, config.n_mels, config.padding,
            persistent_buffers=True,
        )
        self.backbone = ConvNeXtBackbone(
            config.n_mels, config.dim, config.intermediate_dim, config.num_layers,
            layer_scale_init_value=config.layer_scale_init_value,
        )
        self.head = ISTFTHead(config.dim, config.head_n_fft, config.head_hop_length, config.head_padding)

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def hop_length(self) -> int:
        return self.config.head_hop_length

    def num_samples(self, num_frames: int) -> int:
        """Waveform length produced from ``num_frames`` mel frames."""
        return self.head.istft.num_samples(num_frames)

    def decode(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, T) log-mel -> (B, samples) waveform."""
        if mel.dim() != 3 or mel.shape[1] != self.config.n_mels:
            raise ValueError(
                f"expected a mel of shape (batch, {self.config.n_mels}, frames), got {tuple(mel.shape)}"
            )
        return self.head(self.backbone(mel.transpose(1, 2)))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.decode(self.feature_extractor(audio))

    # --- persistence -----------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str], revision: str | None = None) -> Vocos:
        """Load from a local folder or a Hugging Face repo id (like ``vocos.Vocos.from_pretrained``).

        Hub downloads honour ``HF_HUB_OFFLINE`` and the Hugging Face cache.
        """
        path = Path(name_or_path).expanduser()
        if path.is_dir():
            return cls.from_folder(path)
        repo_id = os.fspath(name_or_path)
        from huggingface_hub import hf_hub_download

        try:
            config_path = hf_hub_download(repo_id, CONFIG_NAME, revision=revision)
        except Exception as e:  # offline and not cached, unknown repo, network error, ...
            raise VocosLoadError(
                f"cannot get {CONFIG_NAME} of the vocoder {repo_id!r} from the Hugging Face Hub "
                f"({type(e).__name__}: {e}). Offline? Download it once, or pass a local folder."
            ) from e
        problems = []
        for filename in WEIGHTS_NAMES:
            try:
                weights_path = hf_hub_download(repo_id, filename, revision=revision)
            except Exception as e:
                problems.append(f"{filename}: {type(e).__name__}")
                continue
            return cls.from_files(config_path, weights_path)
        raise VocosLoadError(f"cannot get the weights of the vocoder {repo_id!r} ({'; '.join(problems)})")

    @classmethod
    def from_folder(cls, folder: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Vocos:
        """Load a folder holding config.yaml and pytorch_model.bin (or model.safetensors)."""
        folder = Path(folder)
        config_path = folder / CONFIG_NAME
        if not config_path.is_file():
            raise VocosLoadError(
                f"{folder}: no {CONFIG_NAME} (expected a Vocos folder: config.yaml + pytorch_model.bin)"
            )
        weights = next((folder / n for n in WEIGHTS_NAMES if (folder / n).is_file()), None)
        if weights is None:
            raise VocosLoadError(f"{folder}: no weights file (looked for {', '.join(WEIGHTS_NAMES)})")
        return cls.from_files(config_path, weights, map_location=map_location)

    @classmethod
    def from_files(
        cls, config_path: str | os.PathLike[str], weights_path: str | os.PathLike[str],
        map_location: str | torch.device = "cpu",
    ) -> Vocos:
        config_path, weights_path = Path(config_path), Path(weights_path)
        try:
            with open(config_path, encoding="utf-8") as f:
                data = yaml.safe_load(f)
        except (OSError, yaml.YAMLError) as e:
            raise VocosLoadError(f"{config_path}: cannot read the Vocos config: {e}") from e
        model = cls(VocosConfig.from_yaml_dict(data, source=str(config_path)))
        model.load_checkpoint(read_state_dict(weights_path, map_location=map_location), source=str(weights_path))
        return model.eval()

    def load_checkpoint(self, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Strict load, except that the fixed buffers (mel window/filterbank, ISTFT window) may be absent."""
        own = self.state_dict()
        optional = {k for k in own if k.endswith(".window") or k.endswith("mel_scale.fb")}
        missing = sorted(set(own) - set(state_dict) - optional)
        unexpected = sorted(set(state_dict) - set(own))
        if missing or unexpected:
            raise VocosLoadError(
                f"{source}: checkpoint does not match the config: "
                f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
                f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
            )
        wrong = [
            f"{k}: {tuple(v.shape)} != {tuple(own[k].shape)}" for k, v in state_dict.items() if v.shape != own[k].shape
        ]
        if wrong:
            raise VocosLoadError(f"{source}: tensor shapes differ from the config: {wrong[:8]}")
        self.load_state_dict(state_dict, strict=False)

    def save_pretrained(self, folder: str | os.PathLike[str], safe_serialization: bool = False) -> Path:
        """Write config.yaml and pytorch_model.bin (or model.safetensors) in Vocos's layout."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / CONFIG_NAME, "w", encoding="utf-8") as f:
            yaml.safe_dump(self.config.to_yaml_dict(), f, sort_keys=False)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        if safe_serialization:
            from safetensors.torch import save_file

            save_file(state, str(folder / "model.safetensors"))
        else:
            torch.save(state, folder / "pytorch_model.bin")
        return folder


def read_state_dict(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A flat state dict from .safetensors or a torch pickle (loaded with weights_only=True)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device=str(map_location))
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt file, pickle with non-tensor objects, ...
        raise VocosLoadError(f"{path}: cannot read the weights: {e}") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise VocosLoadError(f"{path}: not a state dict of tensors")
    return state


__all__ = [
    "ISTFT",
    "ISTFTHead",
    "MelSpectrogramFeatures",
    "Vocos",
    "VocosConfig",
    "VocosLoadError",
    "read_state_dict",
]
