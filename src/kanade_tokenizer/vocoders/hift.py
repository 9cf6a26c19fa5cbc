"""HiFT vocoder (CosyVoice 2's HiFi-GAN with a neural source filter and an iSTFT head), in pure
PyTorch, weight-compatible with ``hift.pt`` of ``FunAudioLLM/CosyVoice2-0.5B``: the vocoder the
``kanade-25hz-clean`` model's 80-bin, hop-480 mels were made for.

Written here rather than taken from a package because the only implementation is inside the
CosyVoice repository (not installable as a library, and it pulls in torchaudio and the rest of
CosyVoice); this module needs nothing beyond torch.

The network, under the attribute names (and so the state-dict prefixes) of the released file:

* ``f0_predictor``: ``condnet`` = 5 x (weight-normed Conv1d k3 + ELU) and ``classifier``
  Linear(C -> 1); F0 in Hz per mel frame is the absolute value of its output.
* ``m_source``: harmonic source. F0 held per frame (480 samples), sines at 1..9 times F0 with
  amplitude ``nsf_alpha`` where F0 exceeds ``nsf_voiced_threshold`` (Gaussian noise of std
  ``nsf_sigma`` added there, ``nsf_alpha / 3`` where unvoiced), merged by ``l_linear``
  (9 -> 1) and tanh.
* ``conv_pre`` (k7), then per stage ``ups.{i}`` (weight-normed ConvTranspose1d, rates 8, 5, 3),
  plus the source's STFT (n_fft 16, hop 4) brought to that stage's rate by
  ``source_downs.{i}`` and ``source_resblocks.{i}``, then the mean of
  ``resblocks.{3i..3i+2}`` (kernels 3, 7, 11; dilations 1, 3, 5; Snake activations with a
  per-channel ``alpha``).
* ``conv_post`` -> log-magnitude and phase of 9 bins -> inverse STFT (periodic Hann 16, hop 4,
  centred) -> clamp to +-0.99. ``M`` mel frames give exactly ``480 * M`` samples.

Every conv except ``source_downs`` is weight-normed with
``torch.nn.utils.parametrizations.weight_norm``, so keys read
``<conv>.parametrizations.weight.original0`` (magnitude) / ``original1`` (direction); files in the
older ``weight_g`` / ``weight_v`` naming, and keys under a ``generator.`` prefix (CosyVoice's
training wrapper), are renamed on load. The released layout is 328 tensors, 20,821,295
parameters (``tests/data/hift_cosyvoice2_keys.txt``).

The source is random (noise in every sample), so two decodes of one mel differ slightly; pass a
``torch.Generator`` to :meth:`HiFTGenerator.decode` (or ``vocode(..., generator=)``) to make it
deterministic. The noise is drawn on the generator's device, so a CPU generator gives the same
noise whichever device the vocoder runs on.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from kanade_tokenizer.vocoders.vocos import VocosLoadError as VocoderLoadError
from kanade_tokenizer.vocoders.vocos import read_state_dict

logger = logging.getLogger(__name__)

#: the file name of the released weights (in FunAudioLLM/CosyVoice2-0.5B) and in a model folder
WEIGHTS_NAME = "hift.pt"
#: optional architecture beside ``hift.pt`` (absent: the released CosyVoice 2 shape)
CONFIG_NAME = "hift.yaml"
#: where ``load_hift()`` downloads the released weights from when no local file is given
DEFAULT_REPO = "FunAudioLLM/CosyVoice2-0.5B"


def _ints(values) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


@dataclass
class HiFTConfig:
    """Hyper-parameters of a HiFT generator; the defaults are CosyVoice 2's (the released file).

    ``n_mels`` is CosyVoice's ``in_channels``; ``istft_n_fft`` / ``istft_hop_length`` its
    ``istft_params``. The mel hop is ``prod(upsample_rates) * istft_hop_length`` (480).
    """

    n_mels: int = 80
    base_channels: int = 512
    nb_harmonics: int = 8
    sample_rate: int = 24000
    nsf_alpha: float = 0.1
    nsf_sigma: float = 0.003
    nsf_voiced_threshold: float = 10.0
    upsample_rates: tuple[int, ...] = (8, 5, 3)
    upsample_kernel_sizes: tuple[int, ...] = (16, 11, 7)
    istft_n_fft: int = 16
    istft_hop_length: int = 4
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    source_resblock_kernel_sizes: tuple[int, ...] = (7, 7, 11)
    source_resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    f0_predictor_channels: int = 512

    def __post_init__(self) -> None:
        self.upsample_rates = _ints(self.upsample_rates)
        self.upsample_kernel_sizes = _ints(self.upsample_kernel_sizes)
        self.resblock_kernel_sizes = _ints(self.resblock_kernel_sizes)
        self.source_resblock_kernel_sizes = _ints(self.source_resblock_kernel_sizes)
        self.resblock_dilation_sizes = tuple(_ints(d) for d in self.resblock_dilation_sizes)
        self.source_resblock_dilation_sizes = tuple(_ints(d) for d in self.source_resblock_dilation_sizes)
        stages = len(self.upsample_rates)
        problems = []
        if len(self.upsample_kernel_sizes) != stages:
            problems.append("upsample_kernel_sizes needs one kernel per upsample rate")
        if len(self.source_resblock_kernel_sizes) != stages or len(self.source_resblock_dilation_sizes) != stages:
            problems.append("source_resblock_kernel_sizes / _dilation_sizes need one entry per upsample rate")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            problems.append("resblock_kernel_sizes and resblock_dilation_sizes differ in length")
        if self.base_channels % 2**stages:
            problems.append(f"base_channels ({self.base_channels}) must be divisible by 2**{stages}")
        if problems:
            raise VocoderLoadError("HiFT config: " + "; ".join(problems))

    @property
    def hop_length(self) -> int:
        """Waveform samples per mel frame."""
        return math.prod(self.upsample_rates) * self.istft_hop_length

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = CONFIG_NAME) -> HiFTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict):
            raise VocoderLoadError(f"{source}: expected a mapping of HiFT settings, got {type(data).__name__}")
        unknown = sorted(set(data) - known)
        if unknown:
            raise VocoderLoadError(f"{source}: unknown HiFT setting(s) {unknown}; known: {sorted(known)}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise VocoderLoadError(f"{source}: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for k, v in out.items():
            if isinstance(v, tuple):
                out[k] = [list(x) if isinstance(x, tuple) else x for x in v]
        return out


class Snake(nn.Module):
    """x + sin(alpha x)^2 / alpha with a learnt per-channel ``alpha`` (Ziyin et al., 2020)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        alpha = self.alpha[None, :, None]
        return x + torch.sin(alpha * x).pow(2) / (alpha + 1e-9)


def _same_padding(kernel: int, dilation: int = 1) -> int:
    return (kernel - 1) * dilation // 2


class ResBlock(nn.Module):
    """Per dilation d: x + conv2(snake(conv1_d(snake(x)))), conv1 dilated by d, conv2 not."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel, dilation=d, padding=_same_padding(kernel, d)))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel, padding=_same_padding(kernel))) for _ in dilations
        )
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: Tensor) -> Tensor:
        for conv1, conv2, act1, act2 in zip(self.convs1, self.convs2, self.activations1, self.activations2):
            x = x + conv2(act2(conv1(act1(x))))
        return x


class F0Predictor(nn.Module):
    """Mel (B, n_mels, M) -> F0 in Hz (B, M): a conv stack and a linear read-out, made non-negative."""

    def __init__(self, n_mels: int, channels: int, num_layers: int = 5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers += [weight_norm(nn.Conv1d(n_mels if i == 0 else channels, channels, 3, padding=1)), nn.ELU()]
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, 1)

    def forward(self, mel: Tensor) -> Tensor:
        return self.classifier(self.condnet(mel).transpose(1, 2)).squeeze(-1).abs()


class HarmonicSource(nn.Module):
    """F0 per mel frame -> excitation waveform (B, M * hop) in (-1, 1).

    The phase follows CosyVoice 2's 24 kHz source (``SineGen2``): the instantaneous frequency
    ``(k F0 / sr) mod 1`` of harmonic k is accumulated once per frame, scaled by the hop and
    linearly interpolated to the sample rate, which keeps the phase smooth across frames. The
    original computes the per-sample frequency and linearly resamples it back to the frame rate;
    since F0 is constant within a frame that reads back the frame values, so this module works on
    them directly. For the same reason the random initial phase the original adds to the first
    sample never reaches its output, and is not drawn here.
    """

    def __init__(self, config: HiFTConfig) -> None:
        super().__init__()
        self.sample_rate = config.sample_rate
        self.hop_length = config.hop_length
        self.alpha = config.nsf_alpha
        self.sigma = config.nsf_sigma
        self.voiced_threshold = config.nsf_voiced_threshold
        self.num_harmonics = config.nb_harmonics + 1
        self.l_linear = nn.Linear(self.num_harmonics, 1)

    def forward(self, f0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        f0 = f0.float()  # the phase reaches thousands of radians: never in half precision
        batch, frames = f0.shape
        samples = frames * self.hop_length
        harmonics = torch.arange(1, self.num_harmonics + 1, device=f0.device, dtype=f0.dtype)
        step = (f0[:, None, :] * harmonics[None, :, None] / self.sample_rate) % 1  # (B, H, M) cycles/sample
        phase = torch.cumsum(step, dim=-1) * (2 * math.pi * self.hop_length)
        phase = F.interpolate(phase, size=samples, mode="linear", align_corners=False)
        voiced = (f0 > self.voiced_threshold).to(f0.dtype).repeat_interleave(self.hop_length, dim=-1)[:, None, :]
        noise_std = voiced * self.sigma + (1 - voiced) * (self.alpha / 3)
        if generator is None:
            noise = torch.randn(batch, samples, self.num_harmonics, device=f0.device)
        else:
            noise = torch.randn(
                batch, samples, self.num_harmonics, generator=generator, device=generator.device
            ).to(f0.device)
        excitation = self.alpha * torch.sin(phase) * voiced + noise_std * noise.transpose(1, 2)
        merged = self.l_linear(excitation.transpose(1, 2).to(self.l_linear.weight.dtype))
        return torch.tanh(merged.float()).squeeze(-1)


class HiFTGenerator(nn.Module):
    """HiFT: ``decode(mel (B, n_mels, M), generator=None) -> (B, hop * M)`` waveform."""

    def __init__(self, config: HiFTConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or HiFTConfig()
        n_fft, hop = config.istft_n_fft, config.istft_hop_length
        spec_channels = n_fft + 2  # real and imaginary parts of n_fft // 2 + 1 bins
        stages = len(config.upsample_rates)
        channels = [config.base_channels // 2**i for i in range(stages + 1)]
        self.m_source = HarmonicSource(config)
        self.conv_pre = weight_norm(nn.Conv1d(config.n_mels, channels[0], 7, padding=3))
        self.ups = nn.ModuleList(
            weight_norm(nn.ConvTranspose1d(channels[i], channels[i + 1], k, u, padding=(k - u) // 2))
            for i, (u, k) in enumerate(zip(config.upsample_rates, config.upsample_kernel_sizes))
        )
        # the source STFT runs at the final rate; stage i needs it reduced by the rates after i
        reductions = [math.prod(config.upsample_rates[i + 1:]) for i in range(stages)]
        self.source_downs = nn.ModuleList(
            nn.Conv1d(spec_channels, channels[i + 1], 1) if r == 1
            else nn.Conv1d(spec_channels, channels[i + 1], 2 * r, r, padding=r // 2)
            for i, r in enumerate(reductions)
        )
        self.source_resblocks = nn.ModuleList(
            ResBlock(channels[i + 1], k, d)
            for i, (k, d) in enumerate(zip(config.source_resblock_kernel_sizes, config.source_resblock_dilation_sizes))
        )
        self.resblocks = nn.ModuleList(
            ResBlock(channels[i + 1], k, d)
            for i in range(stages)
            for k, d in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes)
        )
        self.conv_post = weight_norm(nn.Conv1d(channels[-1], spec_channels, 7, padding=3))
        self.f0_predictor = F0Predictor(config.n_mels, config.f0_predictor_channels)
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)
        self._n_fft, self._hop = n_fft, hop

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    def num_samples(self, num_frames: int) -> int:
        """Waveform length produced from ``num_frames`` mel frames."""
        return self.hop_length * num_frames

    def _stft(self, x: Tensor) -> Tensor:
        window = self.window.float()
        spec = torch.stft(x.float(), self._n_fft, self._hop, self._n_fft, window, center=True, return_complex=True)
        return torch.cat([spec.real, spec.imag], dim=1)

    def decode(self, mel: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B, n_mels, M) log-mel -> (B, hop * M) waveform; ``generator`` seeds the source noise."""
        if mel.dim() != 3 or mel.shape[1] != self.config.n_mels:
            raise ValueError(
                f"expected a mel of shape (batch, {self.config.n_mels}, frames), got {tuple(mel.shape)}"
            )
        with parametrize.cached():  # each weight-normed weight is computed once per call
            source = self.m_source(self.f0_predictor(mel), generator)
            source_spec = self._stft(source).to(mel.dtype)
            x = self.conv_pre(mel)
            k = len(self.config.resblock_kernel_sizes)
            for i, up in enumerate(self.ups):
                x = up(F.leaky_relu(x, self.config.lrelu_slope))
                if i == len(self.ups) - 1:
                    x = F.pad(x, (1, 0), mode="reflect")  # one frame more: the centred STFT's length
                x = x + self.source_resblocks[i](self.source_downs[i](source_spec))
                x = sum(block(x) for block in self.resblocks[i * k:(i + 1) * k]) / k
            x = self.conv_post(F.leaky_relu(x))
        bins = self._n_fft // 2 + 1
        magnitude = torch.exp(x[:, :bins]).clamp(max=1e2)
        phase = torch.sin(x[:, bins:])
        spec = torch.polar(magnitude.float(), phase.float())
        audio = torch.istft(spec, self._n_fft, self._hop, self._n_fft, self.window.float(), center=True)
        return audio.clamp(-self.config.audio_limit, self.config.audio_limit)

    def forward(self, mel: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.decode(mel, generator)

    # --- persistence -----------------------------------------------------------------------

    def load_checkpoint(self, state_dict: dict[str, Tensor], source: str = WEIGHTS_NAME) -> None:
        """Strict load: every key and shape must match; the error names the file and each key."""
        state = normalise_keys(state_dict)
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = [
            f"{k} (file {tuple(v.shape)}, model {tuple(own[k].shape)})"
            for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)
        ]
        problems = []
        if missing:
            problems.append(f"missing keys ({len(missing)}): {_listed(missing)}")
        if unexpected:
            problems.append(f"unexpected keys ({len(unexpected)}): {_listed(unexpected)}")
        if wrong:
            problems.append(f"shape mismatches ({len(wrong)}): {_listed(wrong)}")
        if problems:
            raise VocoderLoadError(
                f"{source}: not a HiFT checkpoint for this architecture ({CONFIG_NAME} beside it, or the "
                "CosyVoice 2 defaults): " + "; ".join(problems)
            )
        self.load_state_dict(state, strict=True)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], config: HiFTConfig | None = None,
                  map_location: str | torch.device = "cpu") -> HiFTGenerator:
        """Load ``hift.pt``; the architecture is ``config``, else ``hift.yaml`` beside it, else the default."""
        path = Path(path)
        if not path.is_file():
            raise VocoderLoadError(f"{path}: no such HiFT weights file")
        if config is None:
            config = read_config(path.parent / CONFIG_NAME)
        model = cls(config)
        model.load_checkpoint(read_state_dict(path, map_location=map_location), source=str(path))
        return model.eval()

    def save_pretrained(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``hift.pt`` (the released key layout) and ``hift.yaml`` (the architecture) into ``folder``."""
        from kanade_tokenizer.files import atomic_path

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(folder / WEIGHTS_NAME) as tmp:
            torch.save(state, tmp)
        with atomic_path(folder / CONFIG_NAME) as tmp:
            tmp.write_text(yaml.safe_dump(self.config.to_dict(), sort_keys=False), encoding="utf-8")
        return folder / WEIGHTS_NAME


def _listed(items: list[str], limit: int = 12) -> str:
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def normalise_keys(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The released naming: without a ``generator.`` prefix (CosyVoice's training wrapper, whose
    ``discriminator.`` keys are dropped) and with weight norm as parametrizations (the older
    ``weight_g`` / ``weight_v`` are the same magnitude / direction tensors)."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("discriminator."):
            continue
        key = key.removeprefix("generator.")
        if key.endswith(".weight_g"):
            key = key[: -len("weight_g")] + "parametrizations.weight.original0"
        elif key.endswith(".weight_v"):
            key = key[: -len("weight_v")] + "parametrizations.weight.original1"
        out[key] = value
    return out


def read_config(path: Path) -> HiFTConfig:
    """``hift.yaml`` if it exists, else the released (CosyVoice 2) architecture."""
    if not path.is_file():
        return HiFTConfig()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise VocoderLoadError(f"{path}: cannot read the HiFT config: {e}") from e
    return HiFTConfig.from_dict(data or {}, source=str(path))


def load_hift(
    name: str | os.PathLike[str] | None = None,
    *,
    model_folder: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    device: str | torch.device | None = None,
) -> HiFTGenerator:
    """Find and load a HiFT vocoder in eval mode.

    ``name`` is a ``hift.pt`` file, a folder holding one, a Hub repo id holding one, or None /
    ``"hift"``: then ``model_folder/hift.pt`` (the Kanade checkpoint folder) when it exists, else
    the released file of ``FunAudioLLM/CosyVoice2-0.5B`` from the Hub (honours ``HF_HUB_OFFLINE``
    and the cache). Every failure names the file or repo it looked for.
    """
    from kanitts.files import is_hub_id

    name = None if name is None or os.fspath(name).lower() == "hift" else os.fspath(name)
    if name is None:
        local = Path(model_folder) / WEIGHTS_NAME if model_folder is not None else None
        if local is not None and local.is_file():
            model = HiFTGenerator.from_file(local)
        else:
            looked = f"no {local}; " if local is not None else ""
            model = _from_hub(DEFAULT_REPO, revision, looked)
    else:
        path = Path(name).expanduser()
        if path.is_dir():
            if not (path / WEIGHTS_NAME).is_file():
                raise VocoderLoadError(f"{path}: no {WEIGHTS_NAME} in this folder (the HiFT vocoder's weights)")
            model = HiFTGenerator.from_file(path / WEIGHTS_NAME)
        elif path.is_file():
            model = HiFTGenerator.from_file(path)
        elif is_hub_id(name):
            model = _from_hub(name, revision, "")
        else:
            raise VocoderLoadError(f"{name}: no such HiFT weights file or folder, and not a Hub repo id")
    if device is not None:
        model = model.to(device)
    return model.eval()


def _from_hub(repo: str, revision: str | None, looked: str) -> HiFTGenerator:
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo, WEIGHTS_NAME, revision=revision)
    except Exception as e:  # offline and not cached, unknown repo, network error, ...
        raise VocoderLoadError(
            f"cannot find the HiFT vocoder: {looked}cannot get {WEIGHTS_NAME} of {repo} from the Hugging Face "
            f"Hub ({type(e).__name__}). Put {WEIGHTS_NAME} into the Kanade model folder or pass its path "
            "(--vocoder PATH/hift.pt)."
        ) from e
    return HiFTGenerator.from_file(path)


__all__ = [
    "CONFIG_NAME",
    "DEFAULT_REPO",
    "HiFTConfig",
    "HiFTGenerator",
    "WEIGHTS_NAME",
    "load_hift",
    "normalise_keys",
]
