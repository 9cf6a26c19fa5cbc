"""KaniTTS-2: transformers' LFM2 with frame-level positions, learnable RoPE scales and a speaker slot.

The released KaniTTS-2 checkpoints are LFM2 causal LMs over the NanoCodec token layout with
three additions (kanitts-reference §2.6), all read from ``config.json``:

- **Frame-level positions** (``audio_tokens_start``, ``tokens_per_frame``, ``audio_step``):
  text and special tokens advance the position by one, the ``tokens_per_frame`` tokens of an
  audio frame share one position, and a frame advances it by ``audio_step`` (fractional steps
  give float positions). :func:`frame_positions` computes them from the ids, per row, per packed
  sequence and ignoring padding, for training and for every generation step alike; so cached
  generation needs no state of its own and equals recomputing the whole sequence.
- **A learnable RoPE scale per attention layer** (``use_learnable_rope``, ``alpha_min``,
  ``alpha_max``): ``alpha = alpha_min + (alpha_max - alpha_min) * sigmoid(w)``, ``w`` starting
  at 0, multiplies that layer's rotary frequencies (:mod:`kanitts.patches.lfm2_rope`).
- **A speaker embedding** (``speaker_emb_dim``): a bias-free ``Linear(speaker_emb_dim ->
  hidden)`` whose output is the input of one slot after start_of_human. The slot is
  :class:`kanitts.conditioning.SpeakerConditioning`'s: a placeholder token (``speaker_slot_id``,
  our key; by default ``audio_tokens_start - 2``, the reserved id after pad) whose embedding is
  replaced, so padding, packing and generation treat it as a token. It counts as a text token
  for the positions, which is the upstream "+1 after position 0".

The parameters keep the upstream names (``model.speaker_emb_projection.weight``,
``model.learnable_rope_layers.<i>.alpha_weight`` for each attention layer ``i``), so
:meth:`KaniTTS2ForCausalLM.save_pretrained` writes a checkpoint the ``kani-tts-2`` package
loads (one ``model.safetensors``: its learnable-RoPE loader reads no shards), and
:meth:`KaniTTS2ForCausalLM.from_pretrained` reads theirs, single or sharded, refusing one that
leaves any parameter at its random initialisation (the upstream loader leaves the projection
random when learnable RoPE is off).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from transformers import Lfm2ForCausalLM

from kanitts.conditioning import SpeakerConditioning
from kanitts.errors import UserError
from kanitts.patches.lfm2_rope import adopt_signature, install_rope_scales, named_arguments

#: config.json keys of KaniTTS-2 and the defaults the upstream loader uses for absent ones
UPSTREAM_DEFAULTS: dict[str, Any] = {
    "tokens_per_frame": 4,
    "audio_step": 1.0,
    "use_learnable_rope": False,
    "alpha_min": 0.1,
    "alpha_max": 2.0,
    "speaker_emb_dim": 128,
}
ROPE_LAYERS = "learnable_rope_layers"
#: keys whose presence in a config.json marks a KaniTTS-2 checkpoint (beside audio_tokens_start)
MARKERS = ("speaker_emb_dim", "use_learnable_rope", "tokens_per_frame", "audio_step")
BOUNDARIES = "cu_seq_lens_q"


def is_kanitts2_config(config: Any) -> bool:
    """A (transformers) config of a KaniTTS-2 model: LFM2 with ``audio_tokens_start`` and a marker key."""
    values = config if isinstance(config, dict) else config.to_dict()
    return "audio_tokens_start" in values and any(key in values for key in MARKERS)


@dataclass(frozen=True)
class KaniTTS2Settings:
    """The KaniTTS-2 keys of one config.json, defaults filled in as the upstream loader does."""

    audio_tokens_start: int
    tokens_per_frame: int
    audio_step: float
    use_learnable_rope: bool
    alpha_min: float
    alpha_max: float
    speaker_emb_dim: int
    speaker_slot_id: int

    @classmethod
    def from_config(cls, config: Any, where: str = "config.json") -> KaniTTS2Settings:
        start = getattr(config, "audio_tokens_start", None)
        if not isinstance(start, int) or isinstance(start, bool) or start <= 0:
            raise UserError(
                f"{where}: a KaniTTS-2 model needs audio_tokens_start (the first audio token id), got {start!r}"
            )
        values = {key: getattr(config, key, default) for key, default in UPSTREAM_DEFAULTS.items()}
        settings = cls(
            audio_tokens_start=start,
            tokens_per_frame=int(values["tokens_per_frame"]),
            audio_step=float(values["audio_step"]),
            use_learnable_rope=bool(values["use_learnable_rope"]),
            alpha_min=float(values["alpha_min"]),
            alpha_max=float(values["alpha_max"]),
            speaker_emb_dim=int(values["speaker_emb_dim"]),
            speaker_slot_id=int(getattr(config, "speaker_slot_id", None) or start - 2),
        )
        problems = []
        if settings.tokens_per_frame < 1:
            problems.append(f"tokens_per_frame must be at least 1, got {settings.tokens_per_frame}")
        if not settings.audio_step > 0:
            problems.append(f"audio_step must be positive, got {settings.audio_step}")
        if settings.use_learnable_rope and not 0 < settings.alpha_min < settings.alpha_max:
            problems.append(
                f"alpha_min < alpha_max (both positive) needed, got {settings.alpha_min}, {settings.alpha_max}"
            )
        if settings.speaker_emb_dim < 1:
            problems.append(f"speaker_emb_dim must be at least 1, got {settings.speaker_emb_dim}")
        if problems:
            raise UserError(f"{where}: " + "; ".join(problems))
        return settings


def frame_positions(
    input_ids: torch.Tensor,
    settings: KaniTTS2Settings,
    attention_mask: torch.Tensor | None = None,
    boundaries: torch.Tensor | None = None,
) -> torch.Tensor:
    """KaniTTS-2 position ids of ``input_ids`` (batch, tokens).

    Position = (text tokens before) + (audio tokens before // tokens_per_frame) * audio_step,
    counting only attended tokens (so left padding does not shift a row) and restarting at every
    packed sequence of a row given its ``cu_seq_lens`` ``boundaries``. Long when ``audio_step``
    is whole, float32 otherwise.
    """
    attended = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    audio = (input_ids >= settings.audio_tokens_start) & attended
    text = ~(input_ids >= settings.audio_tokens_start) & attended
    text_before = text.long().cumsum(-1) - text.long()
    audio_before = audio.long().cumsum(-1) - audio.long()
    if boundaries is not None:
        starts = boundaries[:-1].long().to(input_ids.device)
        lengths = (boundaries[1:] - boundaries[:-1]).long().to(input_ids.device)
        owner = torch.repeat_interleave(starts, lengths, output_size=input_ids.shape[-1])
        text_before = text_before - text_before[..., owner]
        audio_before = audio_before - audio_before[..., owner]
    frames = torch.div(audio_before, settings.tokens_per_frame, rounding_mode="floor")
    step = settings.audio_step
    if float(step).is_integer():
        positions = text_before + frames * int(step)
    else:
        positions = text_before.float() + frames.float() * step
    return positions.masked_fill(~attended, 0)


@dataclass(frozen=True)
class FramePositions:
    """:func:`frame_positions` of one sequence as a list, for collators (picklable for workers)."""

    settings: KaniTTS2Settings

    def __call__(self, ids) -> list:
        return frame_positions(torch.as_tensor([list(ids)]), self.settings)[0].tolist()


class RopeScale(nn.Module):
    """One attention layer's learnable RoPE factor (upstream parameter name ``alpha_weight``)."""

    def __init__(self, alpha_min: float, alpha_max: float):
        super().__init__()
        self.alpha_min, self.alpha_max = float(alpha_min), float(alpha_max)
        self.alpha_weight = nn.Parameter(torch.zeros(()))

    def forward(self) -> torch.Tensor:
        """The factor alpha; a forward (not a property) so that peft's ``modules_to_save``
        wrapper, which trains a copy of the module, answers with the trained copy."""
        return self.alpha_min + (self.alpha_max - self.alpha_min) * torch.sigmoid(self.alpha_weight)


def _rope_alpha(decoder: nn.Module, index: int) -> torch.Tensor:
    return getattr(decoder, ROPE_LAYERS)[index]()


def _attention_layers(config: Any) -> list[int]:
    return [i for i, kind in enumerate(config.layer_types) if kind != "conv"]


class KaniTTS2ForCausalLM(Lfm2ForCausalLM):
    """LFM2 causal LM read and written as a KaniTTS-2 checkpoint (see the module docstring).

    ``forward`` takes ``speaker_embeddings`` ((slots, speaker_emb_dim), one per speaker slot in
    the batch, row-major) and computes the frame positions itself when it is not given
    ``position_ids``; ``generate(..., speaker_embeddings=...)`` conditions a batch of prompts.
    """

    def __init__(self, config):
        settings = KaniTTS2Settings.from_config(config)
        super().__init__(config)
        for key in UPSTREAM_DEFAULTS:  # every upstream key lands in config.json
            setattr(config, key, getattr(settings, key))
        self.model.speaker_emb_projection = nn.Linear(settings.speaker_emb_dim, config.hidden_size, bias=False)
        if settings.use_learnable_rope:
            attention = set(_attention_layers(config))
            scales = [RopeScale(settings.alpha_min, settings.alpha_max) if i in attention else None
                      for i in range(config.num_hidden_layers)]
            setattr(self.model, ROPE_LAYERS, nn.ModuleList(scales))
            install_rope_scales(self.model, {i: partial(_rope_alpha, self.model, i) for i in sorted(attention)})
        self.post_init()
        self.kanitts2 = settings
        self.speaker = SpeakerConditioning(self.model, settings.speaker_slot_id)

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, RopeScale):
            from transformers import initialization

            initialization.zeros_(module.alpha_weight)

    # --- positions and conditioning ---------------------------------------------------------

    def frame_positions(self, input_ids, attention_mask=None, boundaries=None) -> torch.Tensor:
        return frame_positions(input_ids, self.kanitts2, attention_mask, boundaries)

    def forward(self, *args, speaker_embeddings: torch.Tensor | None = None, **kwargs):
        named = named_arguments(super().forward, args, kwargs)
        input_ids = named.get("input_ids")
        if named.get("position_ids") is None and input_ids is not None:
            cache = named.get("cache", named.get("past_key_values"))
            if cache is not None and cache.get_seq_length() > 0:
                raise ValueError(
                    "a KaniTTS-2 forward that continues a cache needs the frame position_ids of its tokens "
                    "(generate computes them)"
                )
            named["position_ids"] = self.frame_positions(input_ids, named.get("attention_mask"), named.get(BOUNDARIES))
        if named.get("attention_mask") is None and named.get(BOUNDARIES) is None and input_ids is not None:
            # frame positions repeat, which transformers would read as packed sequences without a mask
            named["attention_mask"] = torch.ones_like(input_ids)
        if speaker_embeddings is None:
            return super().forward(**named)
        with self.speaker.conditioned(speaker_embeddings):
            return super().forward(**named)

    def prepare_inputs_for_generation(self, input_ids, *args, **kwargs):
        """Each step's position ids are the frame positions of the whole sequence so far, sliced
        to the step's tokens by transformers (stateless, so batches and beams need nothing more)."""
        parent = super().prepare_inputs_for_generation
        named = named_arguments(parent, (input_ids, *args), kwargs)
        kwargs["position_ids"] = self.frame_positions(input_ids, named.get("attention_mask"))
        return parent(input_ids, *args, **kwargs)

    adopt_signature(forward, Lfm2ForCausalLM.forward, "speaker_embeddings")
    adopt_signature(prepare_inputs_for_generation, Lfm2ForCausalLM.prepare_inputs_for_generation)

    # --- loading and saving -----------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """A KaniTTS-2 checkpoint (folder or Hub id; one or several safetensors files), every
        parameter read from it: a missing or unexpected one is a :class:`UserError` naming it."""
        want_info = kwargs.pop("output_loading_info", False)
        where = str(pretrained_model_name_or_path)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        missing = sorted(info.get("missing_keys") or [])
        unexpected = sorted(info.get("unexpected_keys") or [])
        mismatched = sorted(str(m[0] if isinstance(m, tuple) else m) for m in info.get("mismatched_keys") or [])
        problems = []
        if missing:
            problems.append(
                f"parameters missing from the checkpoint (they would stay random): {', '.join(missing[:8])}"
            )
        if unexpected:
            problems.append(f"weights in the checkpoint that the model has no place for: {', '.join(unexpected[:8])}")
        if mismatched:
            problems.append(f"weights whose shape differs from config.json's: {', '.join(mismatched[:8])}")
        if problems:
            hint = ""
            if any("speaker_emb_projection" in key for key in missing):
                hint = (" (a KaniTTS-2 checkpoint has model.speaker_emb_projection.weight; "
                        "is this a KaniTTS v1 or plain LFM2?)")
            if any(ROPE_LAYERS in key for key in missing + unexpected):
                hint += " (check use_learnable_rope in config.json against the learnable_rope_layers weights)"
            raise UserError(f"{where}: not a complete KaniTTS-2 checkpoint: " + "; ".join(problems) + hint)
        return (model, info) if want_info else model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """One ``model.safetensors`` unless a shard size is asked for: the upstream loader of
        learnable-RoPE checkpoints reads that single file only."""
        kwargs.setdefault("max_shard_size", "1000GB")
        return super().save_pretrained(save_directory, *args, **kwargs)


def load_causal_lm(name_or_path: str, **kwargs):
    """The causal LM of a folder or Hub id: :class:`KaniTTS2ForCausalLM` when its config.json
    has the KaniTTS-2 keys (:func:`is_kanitts2_config`), else transformers' own class for it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(name_or_path)
    if getattr(config, "model_type", None) == "lfm2" and is_kanitts2_config(config):
        return KaniTTS2ForCausalLM.from_pretrained(name_or_path, **kwargs)
    return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)


def layout_problems(settings: KaniTTS2Settings, layout: Any, where: str) -> list[str]:
    """Where a KaniTTS-2 model's config.json and model_config.yaml's token layout disagree."""
    problems = []
    if settings.audio_tokens_start != layout.audio_tokens_start:
        problems.append(
            f"{where}: config.json audio_tokens_start is {settings.audio_tokens_start}, model_config.yaml "
            f"codec.audio_tokens_start is {layout.audio_tokens_start}"
        )
    if settings.tokens_per_frame != layout.num_codebooks:
        problems.append(
            f"{where}: config.json tokens_per_frame is {settings.tokens_per_frame}, but a frame of the codec has "
            f"{layout.num_codebooks} tokens (model_config.yaml codec.num_codebooks)"
            + (" (the released KaniTTS-2 models write NanoCodec frames of 4 tokens: use them with codec.kind: "
               "nanocodec; a KaniTTS-2 model for one-token codes such as Kanade's has tokens_per_frame: 1)"
               if layout.num_codebooks == 1 else "")
        )
    if settings.speaker_slot_id != layout.speaker_slot:
        problems.append(
            f"{where}: the model's speaker slot is id {settings.speaker_slot_id} (config.json speaker_slot_id, "
            f"default audio_tokens_start - 2), model_config.yaml puts it at {layout.speaker_slot} "
            "(special_tokens.speaker_embedding, default pad_token + 1)"
        )
    return problems


def rope_scale_modules(model: nn.Module) -> list[str]:
    """The names peft's ``modules_to_save`` takes for each learnable RoPE scale (empty without)."""
    return [name for name, module in model.named_modules() if isinstance(module, RopeScale)]
