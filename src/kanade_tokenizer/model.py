"""The Kanade tokenizer network: waveform -> (content tokens, global embedding) -> mel.

Data flow (see docs/kanade.md):

- encode: waveform (24 kHz) -> symmetric zero padding -> WavLM (16 kHz, 50 Hz frames) ->
  local features (mean of layers 6 and 9, standardised per utterance) -> local encoder
  (local-window Transformer) -> strided conv downsampling -> FSQ -> content tokens/embedding;
  global features (mean of layers 1, 2[, 3, 4]) -> ConvNeXt + attentive statistics pooling ->
  global embedding.
- decode: tokens -> FSQ codes -> proj_out -> mel prenet -> transposed-conv upsampling -> linear
  interpolation to the mel length -> mel decoder (AdaLN-Zero on the global embedding) -> postnet.

Everything takes batches with per-item lengths; ``encode``/``decode`` are the one-utterance
wrappers of the original API and ``encode_batch``/``decode_batch`` the batched ones. The config
format is :mod:`kanade_tokenizer.configuration`, loading and saving
:mod:`kanade_tokenizer.pretrained`, bucketing and padding :mod:`kanade_tokenizer.batching`.

Training builds on the ``forward_*`` building blocks, :meth:`KanadeModel.autocast` and the
length rules (:meth:`~KanadeModel.waveform_padding`, :meth:`~KanadeModel.mel_length`): the
public API that :mod:`kanade_tokenizer.training.pipeline` uses. The module is longer than 400
lines because it is one class: the network, its length arithmetic and its encode/decode entry
points belong together, and splitting them would scatter one data flow over files.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kanitts.bucketing import bucket_by_length
from kanitts.errors import UserError
from kanitts.runtime import canonical_dtype

from .batching import as_1d, as_waveform_list, pad_right
from .configuration import (
    COMPONENTS,
    KanadeConfigError,
    KanadeModelConfig,
    component_class,
    instantiate,
    read_config,
)
from .errors import KanadeInputError
from .modules.fsq import FiniteScalarQuantizer
from .modules.global_encoder import GlobalEncoder
from .modules.mel import mel_frames
from .modules.postnet import PostNet
from .modules.ssl import SSLFeatureExtractor
from .modules.transformer import Transformer
from .modules.utils import lengths_to_mask
from .pretrained import KanadeWeightsError, LoadReport, PretrainedMixin


@dataclass
class KanadeFeatures:
    """Output of ``encode``: one utterance, no batch axis.

    content_embedding: (T, C) float32 (the FSQ ``proj_out`` output); content_token_indices: (T,)
    int64 in [0, 12800); global_embedding: (G,) float32. Fields not requested are None.
    """

    content_embedding: Tensor | None = None
    content_token_indices: Tensor | None = None
    global_embedding: Tensor | None = None


class KanadeModel(PretrainedMixin, nn.Module):
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
        #: the component sections of the config the model was built from (for to_config_dict)
        self.config_sections: dict[str, dict[str, Any]] = {}
        #: the folder ``from_pretrained`` read the weights from (None when built from a config);
        #: ``load_vocoder_for`` looks there for the vocoder's weights (``hift.pt``) first
        self.checkpoint_folder: os.PathLike | None = None

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
    ) -> KanadeModel:
        """Build a randomly initialised model (apart from the SSL model) from a config.

        Args:
            config: path to a config.yaml (released format), a released config name (``12hz``) or
                its parsed dict.
            ssl_model: a ready ``WavLMModel`` to use instead of building one (no download).
            ssl_config: a ``WavLMConfig`` (or its kwargs) for a randomly initialised SSL model.
            load_ssl_weights: False builds the SSL model with random weights instead of loading
                ``microsoft/wavlm-base-plus``; None follows the config (``pretrained``, default True).
            build_feature_decoder: also build the training-only feature decoder and conv_upsample.
            mixed_precision: see the class docstring.
        """
        sections = read_config(config)
        model_config = KanadeModelConfig.from_dict(dict(sections["config"] or {}), "config")
        modules: dict[str, nn.Module] = {}
        stored: dict[str, dict[str, Any]] = {}
        for name in COMPONENTS:
            if name not in sections or sections[name] is None:
                continue
            if name == "feature_decoder" and not build_feature_decoder:
                stored[name] = sections[name]
                continue
            klass, init_args = component_class(sections[name], name)
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
            modules[name] = instantiate(klass, init_args, name)
            stored[name] = sections[name]
        model = cls(model_config, mixed_precision=mixed_precision, **modules)
        model.config_sections = stored
        return model

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
        if mp in (None, "no"):
            return None
        try:
            name = canonical_dtype(mp, "mixed_precision")  # kanitts' one vocabulary: bf16 = bfloat16
        except UserError as exc:
            raise KanadeInputError(str(exc)) from None
        if name == "auto":  # bf16 on CUDA, as the released models were run, whatever the GPU
            return torch.bfloat16 if device.type == "cuda" else None
        return None if name == "float32" else getattr(torch, name)

    def autocast(self, device: torch.device):
        """The autocast context of the trainable modules on ``device`` (``mixed_precision``; a
        no-op context for fp32). The ``forward_*`` building blocks run inside it."""
        dtype = self._autocast_dtype(device)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)

    # --- length arithmetic --------------------------------------------------------------------

    def ssl_frames(self, audio_length: int) -> int:
        """WavLM frames the original expects for ``audio_length`` samples: ceil(L / sr * 16000 /
        hop), in floating point and in that order. That is ceil(L / 480) at 24 kHz except where the
        rounding of ``L / 24000 * 16000`` lands just above a whole number of frames (6 lengths
        under 30 s), where it is one more; the released checkpoints were trained on that."""
        ssl = self.ssl_feature_extractor
        return math.ceil(int(audio_length) / self.config.sample_rate * ssl.ssl_sample_rate / ssl.hop_size)

    def waveform_padding(self, audio_length: int) -> int:
        """Zero samples added on *each* side of ``audio_length`` samples so WavLM yields
        :meth:`ssl_frames` frames.

        The original's floating-point arithmetic, operation for operation: required =
        get_minimum_input_length(E) / 16000 * sr, p = ceil((required - L) / 2). Exact integer
        arithmetic would give about 3 % of lengths one sample less padding, and a different token
        count for the lengths :meth:`ssl_frames` names.
        """
        ssl = self.ssl_feature_extractor
        required = ssl.get_minimum_input_length(self.ssl_frames(audio_length)) / ssl.ssl_sample_rate
        return max(0, math.ceil((required * self.config.sample_rate - int(audio_length)) / 2))

    def estimated_audio_length(self, token_length: int) -> int:
        """Audio length estimated from a token count (what decode uses without a target
        length), in the original's floating-point order."""
        ssl = self.ssl_feature_extractor
        frames = int(token_length) * self.config.downsample_factor
        return math.ceil(ssl.get_minimum_input_length(frames) / ssl.ssl_sample_rate * self.config.sample_rate)

    def mel_length(self, audio_length: int) -> int:
        """Mel frames the decoder predicts for ``audio_length`` samples: the frames of the
        config's mel feature (:func:`~kanade_tokenizer.modules.mel.mel_frames`)."""
        c = self.config
        return mel_frames(
            audio_length, hop_length=c.hop_length, n_fft=c.n_fft, padding=c.padding,
            bigvgan_style_mel=c.bigvgan_style_mel,
        )

    def num_tokens(self, audio_length: int) -> int:
        """Content tokens for ``audio_length`` samples: floor(E / f), E as in
        :meth:`ssl_frames` (ceil(L / 480) but for a few lengths)."""
        return self.ssl_frames(audio_length) // self.config.downsample_factor

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

    def pad_waveforms(self, waveforms: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Pad each item symmetrically (:meth:`waveform_padding`) and right-pad them to a
        (B, S) batch; returns the batch and the padded lengths."""
        padded = []
        for wave in waveforms:
            p = self.waveform_padding(wave.size(-1))
            padded.append(F.pad(wave, (p, p)))
        return pad_right(padded)

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
            local = standardise(local, frame_lengths)
        return local, global_, frame_lengths

    def forward_content(
        self, local_features: Tensor, frame_lengths: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(B, E, D) local SSL features -> content embedding (B, T, C) fp32, token indices (B, T),
        token lengths (B,). Call inside :meth:`autocast` for mixed precision."""
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

    def forward_ssl_reconstruction(self, content_embedding: Tensor, num_frames: int) -> Tensor:
        """(B, T, C) content embeddings -> (B, num_frames, D) fp32 reconstruction of the local SSL
        features by the training-only ``feature_decoder``.

        The content is brought back to the SSL frame rate by ``conv_upsample``, or, without it
        (``use_conv_downsample: false``), by interpolation with ``local_interpolation_mode``; the
        conv output can be a few frames short of ``num_frames`` (frames that did not fill a
        downsampling window), and is returned as it is. Call inside :meth:`autocast`.
        """
        if self.feature_decoder is None:
            raise RuntimeError("this model has no feature_decoder (build it with build_feature_decoder=True)")
        x = content_embedding
        if self.conv_upsample is not None:
            x = self.conv_upsample(x.transpose(1, 2)).transpose(1, 2)
        elif x.size(1) != num_frames:
            x = interpolate_time(x, num_frames, self.config.local_interpolation_mode)
        return self.feature_decoder(x).float()

    def forward_mel(
        self,
        content_embedding: Tensor,
        global_embedding: Tensor,
        mel_lengths: Sequence[int] | Tensor,
        token_lengths: Tensor | None = None,
    ) -> Tensor:
        """(B, T, C) content embeddings + (B, G) global embeddings -> (B, n_mels, max M) mels.

        Item i uses its first ``token_lengths[i]`` tokens and yields ``mel_lengths[i]`` frames
        (the rest is padding). Call inside :meth:`autocast` for mixed precision.
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
            x = interpolate_time(x, M, mode)
        else:
            items = []
            for i in range(B):
                xi = interpolate_time(x[i : i + 1, : int(up_lengths[i])], int(mel_lengths[i]), mode)
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
        """One padded forward pass over ``waveforms`` (already on the model's device)."""
        batch, lengths = self.pad_waveforms(waveforms)
        single = len(waveforms) == 1
        local, global_, frame_lengths = self.forward_ssl_features(batch, None if single else lengths)
        content = indices = token_lengths = embeddings = None
        with self.autocast(batch.device):
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
        wave = as_1d(waveform, "waveform").to(self.device, torch.float32)
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
        items = as_waveform_list(waveforms, lengths)
        items = [w.to(self.device, torch.float32) for w in items]
        if not items:
            return []
        if max_padding == "auto":
            max_padding = 0.1 if self.device.type == "cpu" else None
        groups = bucket_by_length([w.size(-1) for w in items], max_items=batch_size, max_padding=max_padding)
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
            [as_1d(global_embedding, "global_embedding")],
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
            contents = [self.decode_token_indices(as_1d(t, "content_token_indices")) for t in content_token_indices]
        else:
            raise ValueError("give content_token_indices or content_embedding")
        globals_ = [as_1d(torch.as_tensor(g), "global_embedding").to(device).float() for g in global_embeddings]
        if len(globals_) != len(contents):
            raise ValueError(f"{len(globals_)} global embeddings for {len(contents)} contents")
        if any(c.size(0) == 0 for c in contents):
            raise ValueError("cannot decode an empty token sequence")
        if target_audio_lengths is None:
            target_audio_lengths = [self.estimated_audio_length(c.size(0)) for c in contents]
        mel_lengths = [self.mel_length(n) for n in target_audio_lengths]
        token_lengths = torch.tensor([c.size(0) for c in contents], dtype=torch.long, device=device)
        T = int(token_lengths.max())
        content = torch.stack([F.pad(c, (0, 0, 0, T - c.size(0))) for c in contents])
        with self.autocast(device):
            mel = self.forward_mel(content, torch.stack(globals_), mel_lengths, token_lengths)
        return [mel[i, :, :m] for i, m in enumerate(mel_lengths)]

    @torch.inference_mode()
    def voice_conversion(self, source_waveform: Tensor, reference_waveform: Tensor) -> Tensor:
        """Content of ``source_waveform`` spoken with the voice of ``reference_waveform``.

        Returns a mel (n_mels, M) with M matching the source length.
        """
        source = as_1d(source_waveform, "source_waveform")
        content = self.encode(source, return_global=False)
        reference = self.encode(reference_waveform, return_content=False)
        return self.decode(
            reference.global_embedding,
            content_embedding=content.content_embedding,
            target_audio_length=source.size(-1),
        )


# --------------------------------------------------------------------------------------------
# helpers


def standardise(x: Tensor, lengths: Tensor) -> Tensor:
    """Per-item, per-channel (x - mean_t) / (std_t + 1e-8) over the valid frames (unbiased std;
    one-frame items get std 0 instead of the original's NaN)."""
    E = x.size(1)
    mask = lengths_to_mask(lengths.to(x.device), E)[..., None].to(x.dtype)  # (B, E, 1)
    n = lengths.to(x.device, x.dtype)[:, None, None]
    mean = (x * mask).sum(1, keepdim=True) / n
    var = (((x - mean) * mask) ** 2).sum(1, keepdim=True) / (n - 1).clamp_min(1)
    return (x - mean) / (var.sqrt() + 1e-8) * mask


def interpolate_time(x: Tensor, size: int, mode: str) -> Tensor:
    """(B, T, C) -> (B, size, C) along time."""
    kwargs = {"align_corners": False} if mode in ("linear", "bilinear", "bicubic", "trilinear") else {}
    y = F.interpolate(x.transpose(1, 2), size=size, mode=mode, **kwargs)
    return y.transpose(1, 2)


__all__ = [
    "KanadeConfigError", "KanadeFeatures", "KanadeModel", "KanadeModelConfig", "KanadeWeightsError", "LoadReport",
]
