"""NVIDIA NeMo NanoCodec (22 kHz, 4 x 4032 codes at 12.5 frames/s) through ``nanocodec-torch``.

What this wrapper adds to the package (see ``nanocodec_torch.AudioCodecModel``):

- **Loading** from a Hub id *or* a local folder (``config.json`` + ``model.safetensors``). The
  package's ``from_pretrained`` treats any string with a "/" as a Hub id, ignores the encoder and
  decoder shapes in ``config.json`` and prints a lot; here a local path is a local path, the
  architecture comes from ``config.json`` when it names one, and loading is strict (every weight
  must be in the file).
- **Saving** (:meth:`NanoCodec.save_pretrained`) in the Hub layout the package's loader reads
  (its key names differ from the module's own ``state_dict``).
- **Lengths as in the reference datasets**: each clip is zero-padded to a multiple of 1,764 samples
  and ``frame_lengths = ceil(samples / 1764)`` (the package floors).
- **Exact batching**: the encoder has no length masking, so in a padded batch a short clip's last
  frames would see its neighbour's padding. Before every encoder convolution the positions past
  each item's end are filled with the item's last valid value, which is what the convolution's
  replicate padding sees when the clip is encoded alone; batched codes therefore equal
  one-clip-at-a-time codes (up to float rounding).
- **Fast, batch-correct decoding**: the decoder is causal, so padding frames never leak into
  valid samples; the package's grouped transposed convolution (a Python loop over up to 432
  groups) is replaced by the equivalent ``conv_transpose1d(groups=...)`` call.

The two changes to the package's modules live in :mod:`kanitts.patches.nanocodec`, with what they
rely on and the versions they were tested with. The rest is one adapter class over one library
(loading, saving, lengths, encode, decode); at a little over 400 lines it reads best whole.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kanitts.atomic import atomic_file
from kanitts.codecs.base import Codec, mono_batch, weights_fingerprint
from kanitts.codecs.registry import codec_entry
from kanitts.errors import UserError
from kanitts.files import is_hub_id
from kanitts.patches.nanocodec import ReplicateFill, install_fast_upsampling
from kanitts.runtime import resolve_device, resolve_dtype, scoped_seed

#: The released weights KaniTTS uses: the registry holds the one copy of the id.
DEFAULT_NANOCODEC = codec_entry("nanocodec").default_weights
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

# The architecture of the released 22 kHz 0.6 kbps 12.5 fps model (nanocodec-torch defaults).
DEFAULT_CONFIG: dict[str, Any] = {
    "sample_rate": 22050,
    "encoder_config": {
        "down_sample_rates": [2, 3, 6, 7, 7],
        "encoded_dim": 16,
        "base_channels": 24,
        "activation": "lrelu",
        "pad_mode": "replicate",
    },
    "decoder_config": {
        "up_sample_rates": [7, 7, 6, 3, 2],
        "input_dim": 16,
        "base_channels": 864,
        "activation": "half_snake",
        "output_activation": "clamp",
        "pad_mode": "zeros",
        "n_groups_equal_to_out_channels": True,
    },
    "quantizer_config": {"num_groups": 4, "num_levels_per_group": [9, 8, 8, 7]},
}

def _merge_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """The full architecture: DEFAULT_CONFIG updated by the keys a config.json names."""
    merged = copy.deepcopy(DEFAULT_CONFIG)
    for key, value in (config or {}).items():
        if key in ("encoder_config", "decoder_config", "quantizer_config") and isinstance(value, dict):
            merged[key].update(value)
        elif key == "sample_rate" and value is not None:
            merged[key] = int(value)
    return merged


def _build_model(config: dict[str, Any]):
    from nanocodec_torch import AudioCodecModel

    return AudioCodecModel(
        sample_rate=config["sample_rate"],
        encoder_config=copy.deepcopy(config["encoder_config"]),
        decoder_config=copy.deepcopy(config["decoder_config"]),
        quantizer_config=copy.deepcopy(config["quantizer_config"]),
    )


# --- the package's Hub key layout <-> the module's own state_dict --------------------------------


def _to_hub_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's weights under the key names ``nanocodec_torch``'s safetensors loader reads."""
    out: dict[str, torch.Tensor] = {}
    up_prefix = "audio_decoder.up_sample_conv_layers."
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu")
        if tensor.is_floating_point():
            tensor = tensor.float()
        if key.startswith(up_prefix) and key.count(".") == 3:
            # CausalConvTranspose1d keeps weight as [in, K, 1]; the Hub stores the
            # ConvTranspose1d layout [in, 1, K] under ".conv.".
            index, leaf = key[len(up_prefix) :].split(".")
            if leaf == "weight":
                tensor = tensor.transpose(1, 2)
            key = f"{up_prefix}{index}.conv.{leaf}"
        elif key.endswith(".alpha"):
            key = key[: -len(".alpha")] + ".activation.snake_act.alpha"
        out[key] = tensor.contiguous()
    return out


def _load_weights_strict(model: torch.nn.Module, weights_file: Path) -> None:
    """Load a Hub-layout safetensors file with the package's loader; fail if a weight is missing."""
    from nanocodec_torch.utils import load_safetensors_weights

    from kanitts.files import check_safetensors

    check_safetensors(weights_file, "NanoCodec weights")
    expected = {name: tuple(p.shape) for name, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            load_safetensors_weights(model, str(weights_file), device="cpu", verbose=False)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise UserError(
            f"{weights_file} does not match the NanoCodec architecture in its config.json: {exc}"
        ) from None
    # the package assigns `.data`, which accepts any shape: check them here
    wrong = [
        f"{name} {tuple(p.shape)} != {expected[name]}"
        for name, p in model.named_parameters()
        if tuple(p.shape) != expected[name]
    ]
    if wrong:
        raise UserError(
            f"{weights_file} does not match the NanoCodec architecture in its config.json "
            f"({len(wrong)} weight shapes differ, e.g. {wrong[0]})"
        )
    missing = [name for name, p in model.named_parameters() if torch.isnan(p).any()]
    if missing:
        raise UserError(
            f"{weights_file} lacks {len(missing)} NanoCodec weight(s), e.g. {missing[0]}; "
            "is it a NanoCodec checkpoint in the nanocodec-torch layout?"
        )


def _random_init_(model: torch.nn.Module, seed: int | None) -> None:
    """Give a freshly built model weights that do something (for tests and benchmarks).

    nanocodec-torch zero-initialises the decoder's up-sampling convolutions (so a random decoder
    outputs a constant) and the default encoder scale maps every frame to the FSQ centre code.
    """
    gen = torch.Generator().manual_seed(0 if seed is None else seed)
    with torch.no_grad():
        for module in model.audio_decoder.up_sample_conv_layers:
            fan_in = module.channels_per_group * module.kernel_size
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / fan_in**0.5)
        # Spread the encoder output over the FSQ range, so codes vary with the input.
        post = model.audio_encoder.post_conv.conv
        post.weight.mul_(20.0)


class NanoCodec(Codec):
    """NanoCodec behind the :class:`~kanitts.codecs.base.Codec` interface."""

    kind = "nanocodec"

    # The decoder is causal and its state fades within ~2.5 s: with 32 frames of left context the
    # streamed chunks equal a whole decode to float rounding (max |diff| 2e-8 on the 22 kHz shape,
    # random weights; 16 frames: 1e-4). benchmarks/bench_serve.py and docs/serving.md say more.
    stream_context_frames = 32

    def __init__(
        self,
        model: torch.nn.Module,
        config: dict[str, Any],
        *,
        name_or_path: str = "random",
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ):
        self._device = torch.device(resolve_device(device))
        self.compute_dtype = resolve_dtype(dtype, self._device)
        self.config = copy.deepcopy(config)
        self._name_or_path = str(name_or_path)
        self._fingerprint: str | None = None

        model = model.float().to(self._device).eval()
        model.requires_grad_(False)
        self.model = model
        self.sample_rate = int(model.sample_rate)
        self.samples_per_frame = int(model.samples_per_frame)
        self.num_codebooks = len(model.vector_quantizer.fsqs)
        self.codebook_size = int(model.vector_quantizer.fsqs[0].codebook_size)

        self._fill = ReplicateFill(model.audio_encoder)
        install_fast_upsampling(model.audio_decoder)

    # --- construction -----------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        config: dict[str, Any] | None = None,
        *,
        seed: int | None = 0,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> NanoCodec:
        """A randomly initialised NanoCodec (no download); ``config`` overrides the defaults."""
        merged = _merge_config(config)
        with scoped_seed(seed):  # leave the caller's RNG state alone
            model = _build_model(merged)
        _random_init_(model, seed)
        return cls(model, merged, name_or_path="random", device=device, dtype=dtype)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path = DEFAULT_NANOCODEC,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        *,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool | None = None,
    ) -> NanoCodec:
        """Load from a local folder (``config.json`` + ``model.safetensors``), a ``.safetensors``
        file, or a Hugging Face Hub id (default: the 22 kHz 12.5 fps model KaniTTS uses)."""
        config_file, weights_file = _locate(
            str(name_or_path), revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
        )
        raw_config: dict[str, Any] = {}
        if config_file is not None:
            try:
                raw_config = json.loads(Path(config_file).read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise UserError(f"cannot read the NanoCodec config {config_file}: {exc}") from None
        config = _merge_config(raw_config)
        model = _build_model(config)
        _load_weights_strict(model, Path(weights_file))
        return cls(model, config, name_or_path=str(name_or_path), device=device, dtype=dtype)

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (Hub layout, float32) to ``out_dir``."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        config = {"codec": self.kind, **copy.deepcopy(self.config)}
        with atomic_file(out / WEIGHTS_NAME) as tmp:
            save_file(_to_hub_state_dict(self.model), str(tmp), metadata={"format": "pt"})
        (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        return out

    # --- identity / device --------------------------------------------------------------------

    @property
    def name_or_path(self) -> str:
        return self._name_or_path

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.config, self.model)
        return self._fingerprint

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device: str | torch.device) -> NanoCodec:
        self._device = torch.device(resolve_device(device))
        self.model.to(self._device)
        return self

    def describe(self) -> dict[str, Any]:
        # the compute dtype changes codes (bf16 rounds differently), so it is part of the identity
        return {**super().describe(), "dtype": str(self.compute_dtype).replace("torch.", "")}

    # --- encode -------------------------------------------------------------------------------

    def _autocast(self):
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self._device.type, dtype=self.compute_dtype)

    @torch.inference_mode()
    def encode(
        self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        waveforms, lengths = mono_batch(waveforms, lengths)
        batch = waveforms.shape[0]

        spf = self.samples_per_frame
        frames = self.frame_lengths(lengths)
        max_frames = int(frames.max()) if batch else 0
        if max_frames == 0:
            empty = torch.zeros(batch, self.num_codebooks, 0, dtype=torch.int64, device=self._device)
            return empty, frames.to(self._device)

        # Zero-pad every clip to a whole number of frames (NeMo's pad_audio) and the batch to
        # the longest one; anything past an item's length is zeroed.
        padded_total = max_frames * spf
        audio = waveforms.to(self._device, torch.float32)
        if audio.shape[1] < padded_total:
            audio = F.pad(audio, (0, padded_total - audio.shape[1]))
        audio = audio[:, :padded_total]
        positions = torch.arange(padded_total, device=self._device)
        audio = audio * (positions[None, :] < lengths.to(self._device)[:, None])

        padded_lengths = (frames * spf).to(self._device)
        ragged = bool((frames < max_frames).any())
        fill = self._fill.lengths(padded_lengths, padded_total) if ragged else contextlib.nullcontext()
        with fill, self._autocast():
            latent, _ = self.model.audio_encoder(audio.unsqueeze(1), None)
        codes = self.model.vector_quantizer.encode(latent.float(), None).to(torch.int64)
        frames = frames.to(self._device)
        valid = torch.arange(codes.shape[-1], device=self._device)[None, :] < frames[:, None]
        codes = codes * valid[:, None, :]
        return codes, frames

    # --- decode -------------------------------------------------------------------------------

    @torch.inference_mode()
    def decode(
        self, codes: torch.Tensor, frame_lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if codes.ndim == 2:
            codes = codes.unsqueeze(0)
        if codes.ndim != 3 or codes.shape[1] != self.num_codebooks:
            raise ValueError(
                f"decode expects codes of shape (B, {self.num_codebooks}, F), got {tuple(codes.shape)}"
            )
        batch, _, max_frames = codes.shape
        if frame_lengths is None:
            frame_lengths = torch.full((batch,), max_frames, dtype=torch.int64)
        frame_lengths = torch.as_tensor(frame_lengths, dtype=torch.int64).to(self._device)
        if frame_lengths.shape != (batch,) or bool((frame_lengths < 0).any()) or bool(
            (frame_lengths > max_frames).any()
        ):
            raise ValueError(f"frame_lengths must be {batch} values in [0, {max_frames}]")
        codes = codes.to(self._device, torch.int64)
        valid = torch.arange(max_frames, device=self._device)[None, :] < frame_lengths[:, None]
        valid_codes = codes.masked_select(valid[:, None, :])
        if valid_codes.numel() and (
            int(valid_codes.min()) < 0 or int(valid_codes.max()) >= self.codebook_size
        ):
            raise ValueError(
                f"codes must lie in [0, {self.codebook_size}); got "
                f"[{int(valid_codes.min())}, {int(valid_codes.max())}]"
            )
        sample_lengths = frame_lengths * self.samples_per_frame
        if max_frames == 0:
            return torch.zeros(batch, 0, device=self._device), sample_lengths
        codes = codes * valid[:, None, :]  # padding frames -> code 0 (the decoder is causal)
        with self._autocast():
            latent = self.model.vector_quantizer.decode(codes.to(torch.int32), None)
            audio, _ = self.model.audio_decoder(latent, None)
        audio = audio.squeeze(1).float()
        positions = torch.arange(audio.shape[-1], device=self._device)
        audio = audio * (positions[None, :] < sample_lengths[:, None])
        return audio, sample_lengths


# --- where the files are ------------------------------------------------------------------------


def _locate(
    name: str,
    *,
    revision: str | None,
    cache_dir: str | Path | None,
    local_files_only: bool | None,
) -> tuple[Path | None, Path]:
    """(config.json or None, model.safetensors) for a local folder/file or a Hub id."""
    path = Path(name).expanduser()
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise UserError(
                f"NanoCodec folder {path} has no {WEIGHTS_NAME}; expected config.json + "
                f"{WEIGHTS_NAME} (as written by NanoCodec.save_pretrained or downloaded from "
                f"{DEFAULT_NANOCODEC})"
            )
        config = path / CONFIG_NAME
        return (config if config.is_file() else None), weights
    if path.is_file():
        if path.suffix != ".safetensors":
            raise UserError(f"NanoCodec weights must be a .safetensors file, got {path}")
        config = path.with_name(CONFIG_NAME)
        return (config if config.is_file() else None), path
    if not is_hub_id(name):
        raise UserError(f"NanoCodec weights not found: {name} is neither a folder nor a file (nor a Hub id owner/name)")

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    kwargs: dict[str, Any] = {"revision": revision, "cache_dir": cache_dir}
    if local_files_only is not None:
        kwargs["local_files_only"] = local_files_only
    try:
        weights = Path(hf_hub_download(name, WEIGHTS_NAME, **kwargs))
    except Exception as exc:  # network, auth, offline mode, unknown repo: all the user's to fix
        raise UserError(
            f"cannot get {WEIGHTS_NAME} of the NanoCodec {name!r} from the Hugging Face Hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Check the id, "
            "your network and `hf auth login`, or pass a local folder with config.json + "
            f"{WEIGHTS_NAME}."
        ) from None
    try:
        config: Path | None = Path(hf_hub_download(name, CONFIG_NAME, **kwargs))
    except EntryNotFoundError:
        config = None
    except Exception:  # the weights came, so the config is optional
        config = None
    return config, weights
