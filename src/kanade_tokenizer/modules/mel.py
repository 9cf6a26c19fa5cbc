"""Mel spectrograms in pure PyTorch (no torchaudio, no librosa).

Two definitions are needed:

* **Vocos style** (the 12.5 Hz and 25 Hz models, and the input of ``charactr/vocos-mel-24khz``):
  periodic Hann window of ``n_fft``, reflect padding of ``n_fft // 2`` on both sides ("center"),
  STFT magnitude (power 1), HTK mel scale, *unnormalised* triangular filters from 0 Hz to the
  Nyquist frequency, then ``ln(max(mel, 1e-7))``. This is what torchaudio's ``MelSpectrogram``
  computes with its defaults and ``power=1``, and it gives ``L // hop + 1`` frames. With
  ``padding="same"`` the audio is reflect-padded by ``(n_fft - hop) // 2`` on both sides and the
  STFT is not centred, giving ``L // hop`` frames.
* **BigVGAN / HiFT style** (the 25 Hz "clean" model): periodic Hann window, reflect padding of
  ``(n_fft - hop) // 2`` on both sides, non-centred STFT, magnitude ``sqrt(re² + im² + 1e-9)``,
  Slaney mel scale with Slaney area normalisation (librosa's default filterbank), then
  ``ln(max(mel, 1e-5))``; ``L // hop`` frames.

:class:`MelSpectrogram` keeps its window and filterbank as buffers under the same names as
torchaudio's transform (``spectrogram.window`` and ``mel_scale.fb``), so a Vocos checkpoint whose
feature extractor was a torchaudio ``MelSpectrogram`` loads into it strictly.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

MelScale = Literal["htk", "slaney"]

# Slaney's auditory-toolbox mel scale: linear below 1 kHz, logarithmic above.
_SLANEY_F_SP = 200.0 / 3.0
_SLANEY_MIN_LOG_HZ = 1000.0
_SLANEY_MIN_LOG_MEL = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP  # 15.0
_SLANEY_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(freq: torch.Tensor, mel_scale: MelScale = "htk") -> torch.Tensor:
    """Frequency in Hz to mels on the HTK (``2595·log10(1 + f/700)``) or Slaney scale."""
    freq = torch.as_tensor(freq, dtype=torch.float64)
    if mel_scale == "htk":
        return 2595.0 * torch.log10(1.0 + freq / 700.0)
    if mel_scale == "slaney":
        linear = freq / _SLANEY_F_SP
        log_part = _SLANEY_MIN_LOG_MEL + torch.log(
            torch.clamp(freq, min=_SLANEY_MIN_LOG_HZ) / _SLANEY_MIN_LOG_HZ
        ) / _SLANEY_LOGSTEP
        return torch.where(freq >= _SLANEY_MIN_LOG_HZ, log_part, linear)
    raise ValueError(f"mel_scale must be 'htk' or 'slaney', got {mel_scale!r}")


def mel_to_hz(mels: torch.Tensor, mel_scale: MelScale = "htk") -> torch.Tensor:
    """Inverse of :func:`hz_to_mel`."""
    mels = torch.as_tensor(mels, dtype=torch.float64)
    if mel_scale == "htk":
        return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    if mel_scale == "slaney":
        linear = mels * _SLANEY_F_SP
        log_part = _SLANEY_MIN_LOG_HZ * torch.exp(_SLANEY_LOGSTEP * (mels - _SLANEY_MIN_LOG_MEL))
        return torch.where(mels >= _SLANEY_MIN_LOG_MEL, log_part, linear)
    raise ValueError(f"mel_scale must be 'htk' or 'slaney', got {mel_scale!r}")


def mel_filterbank(
    n_freqs: int,
    n_mels: int,
    sample_rate: int,
    f_min: float = 0.0,
    f_max: float | None = None,
    mel_scale: MelScale = "htk",
    norm: Literal["slaney"] | None = None,
) -> torch.Tensor:
    """Triangular mel filterbank of shape ``(n_freqs, n_mels)`` (float32).

    Bin ``k`` sits at ``k · (sample_rate / 2) / (n_freqs - 1)`` Hz. The ``n_mels + 2`` band edges
    are equally spaced on the chosen mel scale between ``f_min`` and ``f_max`` (Nyquist when
    None); filter ``m`` rises linearly from edge ``m`` to a peak of 1 at edge ``m + 1`` and falls
    back to 0 at edge ``m + 2``. ``norm="slaney"`` scales each filter by ``2 / (f[m+2] - f[m])``
    so that every filter has the same area. Computed in float64 and cast to float32.
    """
    if f_max is None:
        f_max = sample_rate / 2.0
    if not 0.0 <= f_min < f_max <= sample_rate / 2.0:
        raise ValueError(
            f"need 0 <= f_min < f_max <= sample_rate / 2, got f_min={f_min}, f_max={f_max}, "
            f"sample_rate={sample_rate}"
        )
    if norm not in (None, "slaney"):
        raise ValueError(f"norm must be None or 'slaney', got {norm!r}")
    bin_freqs = torch.linspace(0.0, sample_rate / 2.0, n_freqs, dtype=torch.float64)
    edges_mel = torch.linspace(
        float(hz_to_mel(torch.tensor(f_min), mel_scale)),
        float(hz_to_mel(torch.tensor(f_max), mel_scale)),
        n_mels + 2,
        dtype=torch.float64,
    )
    edges_hz = mel_to_hz(edges_mel, mel_scale)  # (n_mels + 2,)
    widths = edges_hz[1:] - edges_hz[:-1]  # (n_mels + 1,)
    # distance of every bin from every edge: (n_freqs, n_mels + 2)
    dist = edges_hz[None, :] - bin_freqs[:, None]
    rising = -dist[:, :-2] / widths[:-1]  # 0 at the left edge, 1 at the centre
    falling = dist[:, 2:] / widths[1:]  # 1 at the centre, 0 at the right edge
    fb = torch.clamp(torch.minimum(rising, falling), min=0.0)
    if norm == "slaney":
        fb = fb * (2.0 / (edges_hz[2:] - edges_hz[:-2]))[None, :]
    return fb.to(torch.float32)


class _Window(nn.Module):
    """Holds the analysis window (buffer ``window``), named like torchaudio's ``Spectrogram``."""

    def __init__(self, win_length: int, persistent: bool = True) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(win_length, periodic=True), persistent=persistent)


class _Filterbank(nn.Module):
    """Holds the mel filterbank (buffer ``fb``, shape (n_freqs, n_mels)), named like torchaudio's ``MelScale``."""

    def __init__(self, fb: torch.Tensor, persistent: bool = True) -> None:
        super().__init__()
        self.register_buffer("fb", fb, persistent=persistent)


class MelSpectrogram(nn.Module):
    """Linear-amplitude mel spectrogram: ``fb.T @ |STFT(x)|``.

    Args:
        sample_rate, n_fft, hop_length, n_mels: the usual; the window is a periodic Hann window of
            ``n_fft`` samples.
        f_min, f_max: the filterbank's range (``f_max`` None means Nyquist).
        mel_scale, norm: "htk" with no norm (torchaudio's default) or "slaney" with "slaney"
            (librosa's default).
        center: reflect-pad ``n_fft // 2`` on both sides before framing (torch.stft's
            ``center=True``); otherwise the input is framed as given.
        magnitude_eps: added to ``re² + im²`` before the square root (0 for torchaudio's
            ``abs()``, 1e-9 for the BigVGAN/HiFT recipe).
        persistent_buffers: whether the window and filterbank are part of the state dict.

    Input ``(..., samples)``; output ``(..., n_mels, frames)`` in float32.
    """

    def __init__(
        self,
        sample_rate: int = 24000,
        n_fft: int = 1024,
        hop_length: int = 256,
        n_mels: int = 100,
        f_min: float = 0.0,
        f_max: float | None = None,
        mel_scale: MelScale = "htk",
        norm: Literal["slaney"] | None = None,
        center: bool = True,
        magnitude_eps: float = 0.0,
        persistent_buffers: bool = True,
    ) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.win_length = n_fft
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.center = center
        self.magnitude_eps = magnitude_eps
        self.spectrogram = _Window(n_fft, persistent=persistent_buffers)
        fb = mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate, f_min, f_max, mel_scale, norm)
        self.mel_scale = _Filterbank(fb, persistent=persistent_buffers)

    def magnitude(self, audio: torch.Tensor) -> torch.Tensor:
        """|STFT| of ``(N, samples)`` audio: ``(N, n_fft // 2 + 1, frames)``."""
        if self.center:
            audio = reflect_pad(audio, self.n_fft // 2, self.n_fft // 2)
        spec = torch.stft(
            audio,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.spectrogram.window.to(audio.dtype),
            center=False,
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        if self.magnitude_eps > 0:
            return torch.sqrt(spec.real.square() + spec.imag.square() + self.magnitude_eps)
        return spec.abs()

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        lead = audio.shape[:-1]
        flat = audio.reshape(-1, audio.shape[-1]).float()
        mag = self.magnitude(flat)  # (N, F, frames)
        mel = torch.matmul(mag.transpose(1, 2), self.mel_scale.fb.to(mag.dtype)).transpose(1, 2)
        return mel.reshape(*lead, self.n_mels, mel.shape[-1])


def reflect_pad(audio: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Reflect-pad the last axis of ``(N, samples)`` audio (needs more than ``max(left, right)`` samples)."""
    if left == 0 and right == 0:
        return audio
    length = audio.shape[-1]
    if length <= max(left, right):
        raise ValueError(
            f"audio of {length} samples is too short for reflect padding of {max(left, right)} "
            f"samples; need at least {max(left, right) + 1}"
        )
    return F.pad(audio.unsqueeze(1), (left, right), mode="reflect").squeeze(1)


def mel_frames(
    num_samples: int, *, hop_length: int, n_fft: int, padding: str = "center", bigvgan_style_mel: bool = False
) -> int:
    """Frames of the log-mel feature for ``num_samples`` samples: ``L // hop + 1`` for the
    centred Vocos definition; otherwise the audio is reflect-padded by ``(n_fft - hop) // 2`` on
    both sides and framed without centring, ``L // hop`` frames when ``n_fft - hop`` is even.

    The one length rule for a mel of this package: what :class:`MelSpectrogramFeatures` returns,
    the length the Kanade decoder predicts, and what a caller sizing a mel buffer should use.
    """
    num_samples = int(num_samples)
    if not bigvgan_style_mel and padding == "center":
        return num_samples // hop_length + 1
    pad = (n_fft - hop_length) // 2
    return (num_samples + 2 * pad - n_fft) // hop_length + 1


class MelSpectrogramFeatures(nn.Module):
    """The log-mel feature: Kanade's mel-decoder target and the Vocos vocoder's input.

    ``bigvgan_style_mel=False`` gives the Vocos definition, ``True`` the BigVGAN/HiFT one (see the
    module docstring). ``padding`` is "center" or "same". The window and filterbank are buffers
    ``mel_spec.spectrogram.window`` and ``mel_spec.mel_scale.fb`` (the names in the Vocos
    checkpoint); ``persistent_buffers=False`` keeps them out of state dicts (they are recomputed
    from the arguments), as for the training target. The name is Vocos's own class name, which
    its released ``config.yaml`` cites.

    Input ``(samples,)``, ``(B, samples)`` or ``(B, 1, samples)``; output ``(..., n_mels, frames)``
    with the leading dimensions of the input (a channel axis of 1 is kept).
    """

    def __init__(
        self,
        sample_rate: int = 24000,
        n_fft: int = 1024,
        hop_length: int = 256,
        n_mels: int = 100,
        padding: Literal["center", "same"] = "center",
        fmin: float = 0.0,
        fmax: float | None = None,
        bigvgan_style_mel: bool = False,
        persistent_buffers: bool = False,
    ) -> None:
        super().__init__()
        if padding not in ("center", "same"):
            raise ValueError(f"padding must be 'center' or 'same', got {padding!r}")
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.padding = padding
        self.bigvgan_style_mel = bigvgan_style_mel
        if bigvgan_style_mel:
            # BigVGAN/HiFT always frames the (n_fft - hop) / 2 reflect-padded audio without centring.
            self.pad = (n_fft - hop_length) // 2
            self.clip_val = 1e-5
            self.mel_spec = MelSpectrogram(
                sample_rate, n_fft, hop_length, n_mels, fmin, fmax, "slaney", "slaney",
                center=False, magnitude_eps=1e-9, persistent_buffers=persistent_buffers,
            )
        else:
            self.pad = (n_fft - hop_length) // 2 if padding == "same" else 0
            self.clip_val = 1e-7
            self.mel_spec = MelSpectrogram(
                sample_rate, n_fft, hop_length, n_mels, fmin, fmax, "htk", None,
                center=padding == "center", magnitude_eps=0.0, persistent_buffers=persistent_buffers,
            )

    @classmethod
    def from_config(cls, config: Any) -> MelSpectrogramFeatures:
        """Build from a ``KanadeModelConfig``-like object (fields sample_rate, n_fft, hop_length,
        n_mels, padding, mel_fmin, mel_fmax, bigvgan_style_mel)."""
        return cls(
            sample_rate=config.sample_rate,
            n_fft=config.n_fft,
            hop_length=config.hop_length,
            n_mels=config.n_mels,
            padding=getattr(config, "padding", "center"),
            fmin=getattr(config, "mel_fmin", 0.0) or 0.0,
            fmax=getattr(config, "mel_fmax", None),
            bigvgan_style_mel=getattr(config, "bigvgan_style_mel", False),
        )

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for ``num_samples`` samples (:func:`mel_frames`)."""
        return mel_frames(
            num_samples, hop_length=self.hop_length, n_fft=self.n_fft, padding=self.padding,
            bigvgan_style_mel=self.bigvgan_style_mel,
        )

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        lead = audio.shape[:-1]
        flat = audio.reshape(-1, audio.shape[-1]).float()
        flat = reflect_pad(flat, self.pad, self.pad)
        mel = self.mel_spec(flat)
        mel = torch.log(torch.clamp(mel, min=self.clip_val))
        return mel.reshape(*lead, self.n_mels, mel.shape[-1])
