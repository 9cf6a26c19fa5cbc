"""Speech recognition: what a listener would hear in a clip, as text.

One :class:`Transcriber` serves every part of the project that needs transcripts (the
intelligibility scores of ``kanitts eval``, and transcribing a dataset's clips). It wraps the
transformers ``automatic-speech-recognition`` pipeline, so any checkpoint that pipeline runs
works: Whisper models (the default, ``openai/whisper-large-v3-turbo``, a distilled large-v3
that is fast and accurate on English and multilingual speech), or CTC models such as wav2vec2.

The model is loaded once; clips are resampled with :func:`kanitts.audio.resample` to the rate
of the model's feature extractor (16 kHz for Whisper) and transcribed in batches. Device and
precision follow :mod:`kanitts.runtime`, like every other model in the project.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kanitts.audio import resample, to_mono
from kanitts.errors import UserError
from kanitts.files import check_model_weights, is_hub_id
from kanitts.runtime import resolve_device, resolve_dtype

if TYPE_CHECKING:
    import torch

#: The ASR model used when none is named.
DEFAULT_ASR_MODEL = "openai/whisper-large-v3-turbo"
#: what the transformers ASR pipeline generates with unless the model says otherwise (its
#: documented defaults, after OpenAI's Whisper), so :meth:`Transcriber.transcribe_scored`
#: decodes as :meth:`Transcriber.transcribe` does
PIPELINE_BEAMS = 5
PIPELINE_MAX_NEW_TOKENS = 256


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _load_config(name: str):
    """The model's config, or one line saying why there is none (missing, offline, not a model)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError, KeyError) as exc:
        if is_hub_id(name):
            raise UserError(
                f"cannot load the ASR model {name!r} from the Hugging Face Hub ({_first_line(exc)}). "
                "Check the id and your network (HF_HUB_OFFLINE=1 allows only models already in the "
                "local cache), or pass a local folder"
            ) from None
        raise UserError(
            f"ASR model folder {name}: not a transformers model ({_first_line(exc)}); it needs the "
            "config.json, weights and processor files that save_pretrained writes"
        ) from None


def _check_is_asr(name: str, config: Any) -> None:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CTC_MAPPING_NAMES,
        MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES,
    )

    kind = getattr(config, "model_type", None)
    if kind not in MODEL_FOR_CTC_MAPPING_NAMES and kind not in MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES:
        raise UserError(
            f"ASR model {name}: its config.json is a {kind!r} model, not a speech recognition model "
            "(Whisper, wav2vec2 or another automatic-speech-recognition checkpoint)"
        )


@dataclass(frozen=True)
class Transcript:
    """A transcript and how sure the model was: ``confidence`` is the mean log-probability (nats)
    of the tokens it generated, end of text included, as Whisper's own ``avg_logprob``; 0 is
    certain, good speech is typically above -0.5, and below -1 the text is often wrong. ``None``
    where the model gives none (CTC models, empty clips)."""

    text: str
    confidence: float | None
    #: the transcript's words with their times, where asked for and the model gives them
    words: tuple[Word, ...] | None = None


@dataclass(frozen=True)
class Word:
    """One word of a transcript and when it is spoken: seconds from the start of its clip, as
    Whisper's cross-attention alignment (dynamic time warping) places its tokens. Each word ends
    where the next begins (the alignment has no gaps), and the first begins at 0."""

    text: str
    start: float
    end: float


class Transcriber:
    """An ASR model loaded once, turning batches of (audio, sample_rate) into text.

    ``language`` (``"en"``, ``"english"``, ``"fr"``, ...) is given to models that take one
    (multilingual Whisper); others (English-only Whisper, CTC models) transcribe in the one
    language they know. ``spelling`` is the model's English spelling mapping (Whisper tokenizers
    ship it as ``normalizer.json``; empty for other models), for
    :func:`kanitts.evaluation.intelligibility.normalize`.
    """

    def __init__(
        self,
        model: str | Path = DEFAULT_ASR_MODEL,
        *,
        language: str | None = "en",
        device: object = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 8,
    ):
        from transformers import pipeline

        name = str(model)
        if not is_hub_id(name) and not Path(name).expanduser().is_dir():
            raise UserError(f"ASR model {name}: no such folder (nor a Hub id owner/name)")
        if batch_size < 1:
            raise UserError(f"ASR batch size must be at least 1, got {batch_size}")
        config = _load_config(name)
        _check_is_asr(name, config)
        check_model_weights(name, f"ASR model {name}")
        self.name = name
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_size = batch_size
        try:
            self.pipe = pipeline("automatic-speech-recognition", model=name, device=self.device, dtype=self.dtype)
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"cannot load the ASR model {name!r}: {_first_line(exc)}") from None
        tokenizer = self.pipe.tokenizer
        if tokenizer is not None and tokenizer.pad_token_id is None:
            # Batching pads the generated ids; Whisper-style tokenizers without a pad token pad
            # with their end-of-text token, which decoding drops as it does any special token.
            tokenizer.pad_token = tokenizer.eos_token
        self.sample_rate = int(self.pipe.feature_extractor.sampling_rate)
        self.spelling: dict[str, str] = dict(getattr(tokenizer, "english_spelling_normalizer", None) or {})
        self.language = language
        self._generate_kwargs = self._language_kwargs(language)

    @property
    def word_timestamps(self) -> bool:
        """Whether :meth:`transcribe_scored` can time words: Whisper models whose generation
        config names the cross-attention heads that follow the audio (``alignment_heads``, which
        the OpenAI checkpoints carry); not CTC models nor Whisper models without them."""
        model = self.pipe.model
        scored = bool(getattr(model.config, "is_encoder_decoder", False))
        return scored and bool(getattr(model.generation_config, "alignment_heads", None))

    def _language_kwargs(self, language: str | None) -> dict[str, str]:
        """``language`` for generate where the model is multilingual Whisper, else nothing."""
        generation = getattr(self.pipe.model, "generation_config", None)
        if language is None or generation is None or not hasattr(generation, "lang_to_id"):
            return {}
        if getattr(generation, "is_multilingual", True) is False:
            return {}
        return {"language": language, "task": "transcribe"}

    def transcribe(self, clips: Sequence[tuple[np.ndarray, int]]) -> list[str]:
        """One transcript per ``(audio, sample_rate)`` clip, in order; an empty clip is ``""``.

        Audio is mono or ``(T, C)`` float; it is made mono and resampled to :attr:`sample_rate`.
        """
        waves = [resample(to_mono(np.asarray(audio, dtype=np.float32)), int(rate), self.sample_rate)
                 for audio, rate in clips]
        spoken = [index for index, wave in enumerate(waves) if wave.size > 0]
        texts = [""] * len(waves)
        if not spoken:
            return texts
        options: dict[str, Any] = {"generate_kwargs": dict(self._generate_kwargs)} if self._generate_kwargs else {}
        outputs = self.pipe([waves[index] for index in spoken], batch_size=self.batch_size, **options)
        for index, output in zip(spoken, outputs, strict=True):
            texts[index] = str(output["text"]).strip()
        return texts

    def transcribe_scored(self, clips: Sequence[tuple[np.ndarray, int]], *, words: bool = False) -> list[Transcript]:
        """Like :meth:`transcribe`, with each transcript's :class:`Transcript` confidence, and its
        :class:`Word` times with ``words=True`` where :attr:`word_timestamps` says the model has
        them (else ``words`` stays ``None``).

        Sequence-to-sequence models (Whisper) are run through ``generate`` here rather than the
        pipeline, which returns no scores; clips of more than the model's window (30 s for
        Whisper) and CTC models go through :meth:`transcribe` and get ``confidence=None``.
        """
        waves = [resample(to_mono(np.asarray(audio, dtype=np.float32)), int(rate), self.sample_rate)
                 for audio, rate in clips]
        results = [Transcript("", None)] * len(waves)
        extractor = self.pipe.feature_extractor
        window = getattr(extractor, "n_samples", None)
        scored = window is not None and bool(getattr(self.pipe.model.config, "is_encoder_decoder", False))
        direct = [i for i, w in enumerate(waves) if w.size > 0 and scored and w.size <= window]
        rest = [i for i, w in enumerate(waves) if w.size > 0 and i not in set(direct)]
        if rest:
            for i, text in zip(rest, self.transcribe([(waves[i], self.sample_rate) for i in rest]), strict=True):
                results[i] = Transcript(text, None)
        for first in range(0, len(direct), self.batch_size):
            batch = direct[first : first + self.batch_size]
            timed = words and self.word_timestamps
            for i, transcript in zip(batch, self._generate_scored([waves[i] for i in batch], timed), strict=True):
                results[i] = transcript
        return results

    def _generate_scored(self, waves: list[np.ndarray], timed: bool = False) -> list[Transcript]:
        import torch

        model, tokenizer = self.pipe.model, self.pipe.tokenizer
        features = self.pipe.feature_extractor(
            waves, sampling_rate=self.sample_rate, return_tensors="pt", return_attention_mask=True
        )
        inputs = features.input_features.to(model.device, dtype=model.dtype)
        with torch.inference_mode():
            # Timing words needs the decoder's cross-attention weights, which generate asks every
            # layer for: run the encoder here without them, or generate keeps each encoder
            # layer's self-attention too (large-v3: 32 x 20 heads x 1500 x 1500 per clip, ~3 GB).
            source = {"encoder_outputs": model.get_encoder()(inputs)} if timed else {"input_features": inputs}
            # generate switches the model to eager attention for the weights and leaves it so;
            # put the fused kernel back for the encoder and for untimed calls
            config = getattr(model, "model", model).config
            attention = config._attn_implementation
            try:
                out = model.generate(
                    **source, attention_mask=features.attention_mask.to(model.device),
                    num_beams=PIPELINE_BEAMS, **self._length_kwargs(),
                    return_dict_in_generate=True, output_scores=True, **self._generate_kwargs,
                    **({"return_token_timestamps": True} if timed else {}),
                )
            finally:
                config._attn_implementation = attention
            # a ModelOutput, or a plain dict when token timestamps are asked for
            if out.get("sequences_scores") is not None:
                # beam search: the beam's log-probability divided by its generated length
                confidences = out["sequences_scores"].float().cpu().tolist()
            else:
                steps = model.compute_transition_scores(out["sequences"], out["scores"], normalize_logits=True)
                confidences = None
        generated = out["sequences"].cpu().tolist()
        times = out["token_timestamps"].float().cpu().tolist() if timed else None
        end = model.generation_config.eos_token_id
        ends = {end} if isinstance(end, int) else set(end or [])
        skip = self._control_ids()
        results = []
        for row, ids in enumerate(generated):
            text_ids = [token for token in ids if token not in skip and token not in ends]
            if confidences is not None:
                confidence = float(confidences[row])
            else:
                tail = ids[-steps.shape[1]:]
                length = next((k + 1 for k, token in enumerate(tail) if token in ends), len(tail))
                confidence = float(steps[row, :length].float().mean()) if length else None
            text = tokenizer.decode(text_ids, skip_special_tokens=True).strip()
            timed_words = None
            if times is not None:
                timed_words = self._words(ids, times[row], skip | ends)
            results.append(Transcript(text, confidence, timed_words))
        return results

    def _words(self, ids: list[int], times: list[float], control: set[int]) -> tuple[Word, ...]:
        """Tokens -> words with times. Token ``k`` is spoken from ``times[k - 1]`` to ``times[k]``
        (how the transformers ASR pipeline reads Whisper's token timestamps); a token whose text
        begins with a space begins a word, so scripts without spaces make one word per run."""
        tokenizer = self.pipe.tokenizer
        groups: list[tuple[list[int], float, float]] = []
        for k, token in enumerate(ids):
            if token in control:
                continue
            start, end = (times[k - 1] if k else 0.0), times[k]
            if not groups or tokenizer.decode([token]).startswith(" "):
                groups.append(([token], start, end))
            else:
                tokens, first, _ = groups[-1]
                groups[-1] = ([*tokens, token], first, end)
        words = ((tokenizer.decode(tokens, skip_special_tokens=True).strip(), a, b) for tokens, a, b in groups)
        return tuple(Word(text, float(a), float(b)) for text, a, b in words if text)

    def _length_kwargs(self) -> dict[str, int]:
        """The pipeline's token limit unless the model's generation config sets its own."""
        from transformers import GenerationConfig

        generation = self.pipe.model.generation_config
        if generation.max_new_tokens is not None or generation.max_length != GenerationConfig().max_length:
            return {}
        return {"max_new_tokens": PIPELINE_MAX_NEW_TOKENS}

    def _control_ids(self) -> set[int]:
        """Token ids that steer Whisper (start, language, task, no-timestamps, timestamps), which
        are not text even where a tokenizer does not list them as special."""
        generation = self.pipe.model.generation_config
        ids = set(self.pipe.tokenizer.all_special_ids)
        for name in ("decoder_start_token_id", "no_timestamps_token_id", "pad_token_id", "bos_token_id"):
            if isinstance(getattr(generation, name, None), int):
                ids.add(getattr(generation, name))
        for mapping in ("lang_to_id", "task_to_id"):
            ids.update((getattr(generation, mapping, None) or {}).values())
        no_timestamps = getattr(generation, "no_timestamps_token_id", None)
        if isinstance(no_timestamps, int):  # the timestamp tokens follow it in Whisper vocabularies
            ids.update(range(no_timestamps + 1, no_timestamps + 1 + 1501))
        return ids
