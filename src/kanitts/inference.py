"""Text to speech with a KaniTTS model: prompt, batched generation, robust decoding to audio.

The prompt is the one the reference pipeline builds (``TokenLayout.prompt_ids``), so any
KaniTTS checkpoint speaks here as it does there. What differs is how the work is done:

- **Batches.** Prompts are left-padded (the model continues from the right edge) and generated
  together, ``generation.batch_size`` at a time; the reference generates one prompt at a time.
  LFM2 zeroes padded positions before its short convolutions and attention masks them, so a
  prompt's continuation does not depend on its neighbours.
- **Decoding never fails a batch.** A model can stop early, run out of ``max_new_tokens``, or
  emit a token of the wrong codebook. ``TokenLayout.ids_to_frames`` keeps every whole frame and
  says what went wrong; each :class:`SynthesisResult` carries that as ``truncated``,
  ``dropped_frames`` and ``problems``.
- **Voices.** With a codec that has a global embedding (Kanade), the voice is an embedding: of a
  reference clip (``voice=``, ``--voice ref.wav``), else the mean of the ``speaker``'s training
  clips, else of all training clips (saved with the checkpoint). It is what the codec decodes
  with, and what a speaker-conditioned model (:mod:`kanitts.conditioning`) reads in its slot.
- **Prompt prefixes follow training.** A speaker picks a voice and, as in the reference, puts
  ``speaker: `` before the text. A checkpoint that records the prefixes its training prompts
  began with (:data:`PROMPT_PREFIXES`, written by training) gets only those: a model that knows
  its speakers by embedding alone (or prompts by language tag) never reads a name it did not
  train on. Without the record (base models, older checkpoints) every speaker is prefixed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kanitts.codecs import load_codec
from kanitts.codecs.base import Codec
from kanitts.config import EvalSentence, GenerationSection, InferenceConfig, ModelConfig
from kanitts.errors import UserError
from kanitts.files import check_model_weights, corrupt_download, is_hub_id
from kanitts.runtime import resolve_device, resolve_dtype
from kanitts.tokens import TokenLayout

MEAN_VOICE = "the mean embedding of the training clips"
#: config.json key of the prompt prefixes a checkpoint's training data used: {"speakers": [...],
#: "language_tags": [...]}, lower-cased as in the prompts
PROMPT_PREFIXES = "kanitts_prompt_prefixes"


@dataclass
class SynthesisResult:
    """One generated utterance: the audio and what happened on the way."""

    text: str
    audio: np.ndarray
    sample_rate: int
    num_frames: int
    truncated: bool
    problems: list[str] = field(default_factory=list)
    num_generated_tokens: int = 0
    dropped_frames: int = 0  # broken frames left out of the audio (each one a gap of a frame)
    # the voice it was spoken in (a reference clip, a speaker's mean embedding, ...); "" for a
    # model and codec that take none
    voice: str = ""

    @property
    def duration_sec(self) -> float:
        return len(self.audio) / self.sample_rate

    @property
    def ok(self) -> bool:
        """True when there is audio; it may still be truncated (see ``problems``)."""
        return self.num_frames > 0


class KaniTTS:
    """A KaniTTS language model, its tokenizer and the codec that turns its tokens into audio."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        codec: Codec,
        layout: TokenLayout,
        generation: GenerationSection,
        name_or_path: str = "",
        conditioning: Any = None,
        voices: dict[str, Any] | None = None,
        speaker_embedder: Any = None,
    ):
        self.model = model
        #: what embeds a reference clip for the slot when the codec has no global embedding
        #: (KaniTTS-2's WavLM embedder): its weights, loaded on first use, or a loaded embedder
        self.speaker_embedder = speaker_embedder
        #: the speaker slot of a speaker-conditioned model (None: the model has none)
        self.conditioning = conditioning
        #: training speakers' mean embeddings ("speaker:<name>") and all clips' ("mean")
        self.voices = dict(voices or {})
        if getattr(codec, "voice", False) is None and "mean" in self.voices:
            # the voice of callers that decode without naming one (streaming, codec.decode)
            codec.voice = self.voices["mean"]
        self.tokenizer = tokenizer
        self.codec = codec
        self.layout = layout
        self.generation = generation
        self.name_or_path = name_or_path
        pad = tokenizer.pad_token_id
        self.pad_token_id = layout.pad if pad is None else int(pad)
        #: the prompt prefixes the model trained with (None: not recorded, every speaker is prefixed)
        self.trained_prefixes = trained_prefixes(getattr(model, "config", None), name_or_path)
        _check_compatible(model, codec, layout, name_or_path)
        check_max_new_tokens(generation.max_new_tokens, layout, "inference_config.yaml: generation.max_new_tokens")

    @classmethod
    def from_pretrained(
        cls,
        model_path: str | Path,
        codec: Codec | str | Path | None = None,
        model_cfg: ModelConfig | None = None,
        inference_cfg: InferenceConfig | None = None,
        device: str | None = None,
    ) -> KaniTTS:
        """Load a merged checkpoint or a base model (local folder or Hub id) and its codec.

        ``codec`` is a loaded :class:`Codec`, a folder or Hub id of codec weights, or None for
        ``model_cfg.codec.weights``. ``model_cfg`` must describe the model's token space (the
        reference KaniTTS layout when None).
        """
        # transformers takes seconds to import: only loading a model pays for it.
        from safetensors import SafetensorError
        from transformers import AutoTokenizer

        from kanitts.models.kanitts2 import load_causal_lm

        model_cfg = model_cfg or ModelConfig()
        inference_cfg = inference_cfg or InferenceConfig()
        device = resolve_device(device or inference_cfg.model.device_map)
        # torch_dtype is the GPU's precision: on the CPU half precision is slower, so fp32 always.
        dtype = resolve_dtype(inference_cfg.model.torch_dtype if device.startswith("cuda") else "float32", device)
        name = str(model_path)
        if not Path(name).is_dir() and not is_hub_id(name):
            raise UserError(f"model folder not found: {name} (give a checkpoint folder or a Hub id user/name)")
        check_model_weights(name)
        try:
            tokenizer = AutoTokenizer.from_pretrained(name)
            model = load_causal_lm(name, dtype=dtype)
        except SafetensorError as exc:
            raise corrupt_download(name, exc, "model") from None
        except (OSError, ValueError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"cannot load the model {name!r}: {first_line}. It must be a folder (or Hub id) "
                "with config.json, the weights and the tokenizer files"
            ) from None
        model.to(device).eval()
        if not isinstance(codec, Codec):
            weights = model_cfg.codec.weights if codec is None else str(codec)
            codec = load_codec(model_cfg.codec.kind, weights, device=device)
        layout = TokenLayout.from_config(model_cfg)
        conditioning, voices = _speaker_files(model, name, layout)
        embedder = model_cfg.speaker_embedder.weights if model_cfg.speaker_embedder is not None else None
        return cls(model, tokenizer, codec, layout, inference_cfg.generation, name, conditioning, voices, embedder)

    # --- prompts and generation -----------------------------------------------------------

    def prompt_ids(self, text: str, speaker: str | None = None) -> list[int]:
        text_ids = self.tokenizer(self.prompt_text(text, speaker)).input_ids
        return self.layout.prompt_ids(text_ids, speaker_slot=self.conditioning is not None)

    def prompt_text(self, text: str, speaker: str | None = None) -> str:
        """The text the model reads for ``speaker`` saying ``text``: with the ``speaker: `` prefix
        unless the checkpoint records that its training prompts never had it (:meth:`prefix_note`)."""
        return self.layout.text_prompt(text, None if self.prefix_note(speaker) else speaker)

    def prefix_note(self, speaker: str | None) -> str | None:
        """Why the prompt leaves ``speaker``'s prefix out, or None when it has it (or there is no speaker).

        Only a checkpoint whose config.json records its training prefixes leaves one out: a
        name it never read as a prefix would be text it was not trained on, while the speaker's
        voice still reaches it through the embedding (:meth:`voice_embedding`).
        """
        if not speaker or self.trained_prefixes is None or speaker.lower() in self.trained_prefixes:
            return None
        known = ", ".join(sorted(self.trained_prefixes))
        return (f"no {speaker.lower() + ':'!r} prompt prefix (the model trained "
                + (f"only with the prefixes {known})" if known else "without prompt prefixes)"))

    def record_prefix(self, result: SynthesisResult, speaker: str | None) -> None:
        """Say on ``result`` that ``speaker``'s prefix was left out: in its ``voice``, or, for a model
        that takes no voice (the speaker then changes nothing), as a problem."""
        note = self.prefix_note(speaker)
        if note is None:
            return
        if result.voice:
            result.voice += f"; {note}"
        else:
            result.problems.append(f"speaker {speaker!r} changes nothing: {note}, and it takes no voice embedding")

    # --- voices -----------------------------------------------------------------------------------

    @property
    def takes_voice(self) -> bool:
        """True when a voice embedding matters: the codec decodes with one, or the model reads one."""
        return hasattr(self.codec, "embed") or self.conditioning is not None

    def voice_embedding(self, voice: Any = None, speaker: str | None = None):
        """The voice to speak in, as a (dim,) float tensor, and where it came from; (None, reason)
        when there is none.

        ``voice`` is a reference clip (a path to an audio file, or a waveform at the codec's
        sample rate) or an embedding; else the ``speaker``'s mean embedding from training, else
        the mean over all training clips. An embedding of another size than the model's speaker
        projection reads (another embedder than the one it was trained with) is a UserError.
        """
        embedding, source = self._find_voice(voice, speaker)
        wanted = None if self.conditioning is None else self.conditioning.embedding_dim
        if embedding is not None and wanted is not None and embedding.numel() != wanted:
            raise UserError(
                f"{source}: {embedding.numel()} values, but the model's speaker projection reads {wanted} "
                "(config.json speaker_emb_dim, or the size of its training data's embeddings); embed the voice "
                "with the embedder the model was trained with (model_config.yaml speaker_embedder, or its codec)"
            )
        return embedding, source

    def _find_voice(self, voice: Any, speaker: str | None):
        import torch

        if voice is not None:
            if not hasattr(self.codec, "embed") and self.conditioning is not None and self.speaker_embedder:
                return self._embed_voice(voice)
            if not hasattr(self.codec, "embed"):
                raise UserError(
                    f"a reference voice needs a codec with a global (speaker) embedding, such as Kanade "
                    f"(codec.kind: kanade), or a KaniTTS-2 model and its speaker embedder (model_config.yaml "
                    f"speaker_embedder); this model's codec is {self.codec.kind}, which has none: "
                    "use --speaker with the name a prefix-trained model knows"
                )
            if isinstance(voice, (str, Path)):
                return self.codec.embed(_read_voice(voice, self.codec.sample_rate)), f"the voice of {voice}"
            tensor = torch.as_tensor(voice, dtype=torch.float32)
            if tensor.ndim == 1 and tensor.numel() == getattr(self.codec, "embedding_dim", -1):
                return tensor, "the given embedding"
            return self.codec.embed(tensor), "the given clip"
        if speaker and f"speaker:{speaker.lower()}" in self.voices:
            return self.voices[f"speaker:{speaker.lower()}"], f"speaker {speaker.lower()}'s mean embedding"
        if speaker and f"speaker:{speaker}" in self.voices:
            return self.voices[f"speaker:{speaker}"], f"speaker {speaker}'s mean embedding"
        if "mean" in self.voices:
            unknown = self.unknown_speaker(speaker)
            return self.voices["mean"], MEAN_VOICE + (f" ({unknown})" if unknown else "")
        return None, ("no voice: give a reference clip (--voice ref.wav); this model has no training "
                      "speakers' embeddings")

    def unknown_speaker(self, speaker: str | None) -> str | None:
        """Why ``speaker`` has no mean embedding although the model knows training speakers
        (a typo, or a name it never trained on), or None."""
        known = [key.removeprefix("speaker:") for key in self.voices if key.startswith("speaker:")]
        if not speaker or not known or {f"speaker:{speaker.lower()}", f"speaker:{speaker}"} & self.voices.keys():
            return None
        if self.trained_prefixes and speaker.lower() in self.trained_prefixes:
            return None  # a prefix it trained with (a language tag): the prompt is right, the voice the mean
        return f"{speaker!r} is not one of the model's training speakers ({', '.join(sorted(known))})"

    def _embed_voice(self, voice: Any):
        """A reference clip (file or waveform at the codec's rate) or an embedding, through the
        KaniTTS-2 speaker embedder."""
        import torch

        if not isinstance(voice, (str, Path)):  # an embedding passes through: no embedder to load
            tensor = torch.as_tensor(voice, dtype=torch.float32)
            if tensor.ndim == 1 and tensor.numel() == self.conditioning.embedding_dim:
                return tensor, "the given embedding"
        if isinstance(self.speaker_embedder, str):
            from kanitts.models.speaker_embedder import KaniSpeakerEmbedder

            self.speaker_embedder = KaniSpeakerEmbedder.load(
                self.speaker_embedder, device=self.model.device, where="model_config.yaml speaker_embedder"
            )
        embedder = self.speaker_embedder
        if isinstance(voice, (str, Path)):
            from kanitts.audio import AudioDecodeError, load_audio

            if not Path(voice).is_file():
                raise UserError(f"voice clip {voice}: no such file")
            try:
                samples, rate = load_audio(str(voice))
            except (AudioDecodeError, OSError, ValueError, RuntimeError) as exc:  # the file is the user's to fix
                raise UserError(f"voice clip {voice}: cannot read it as audio ({exc})") from None
            return torch.from_numpy(embedder.embed(samples, rate)), f"the voice of {voice}"
        return torch.from_numpy(embedder.embed(tensor.numpy(), self.codec.sample_rate)), "the given clip"

    def generate_ids(
        self, prompts: Sequence[Sequence[int]], speaker_embeddings: Any = None, **generate_kwargs: Any
    ) -> list[np.ndarray]:
        """Generate after a batch of prompts; returns the new tokens of every sequence.

        With ``num_return_sequences = n`` the result holds n sequences per prompt, prompt-major.
        ``speaker_embeddings`` ((prompts, dim)) fill the speaker slots of a speaker-conditioned
        model (default: :meth:`voice_embedding`'s default voice). Keyword arguments go to
        ``model.generate`` and override the configured sampling.
        """
        import contextlib

        import torch

        if "max_new_tokens" in generate_kwargs:
            check_max_new_tokens(generate_kwargs["max_new_tokens"], self.layout, "max_new_tokens")
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            attention_mask[row, width - len(prompt):] = 1
        device = self.model.device
        settings = self.sampling_kwargs()
        # Processors given by the caller run after the layout constraint (a sampler must see the mask).
        processors = list(generate_kwargs.pop("logits_processor", None) or [])
        if self.generation.constrained_decoding:
            processors.insert(0, LayoutConstraint(self.layout, width))
        if processors:
            from transformers import LogitsProcessorList

            settings["logits_processor"] = LogitsProcessorList(processors)
        settings.update(generate_kwargs)
        slots = contextlib.nullcontext()
        if self.conditioning is not None:
            if speaker_embeddings is None:  # callers that name no voice get the default one
                default, _ = self.voice_embedding()
                dim = self.conditioning.embedding_dim
                default = torch.zeros(dim) if default is None else default
                speaker_embeddings = default[None].expand(len(prompts), -1)
            slots = self.conditioning.conditioned(speaker_embeddings)
        with torch.inference_mode(), slots:
            out = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                eos_token_id=self.layout.end_of_speech,
                pad_token_id=self.pad_token_id,
                **settings,
            )
        return [row.numpy() for row in out[:, width:].to("cpu")]

    def sampling_kwargs(self) -> dict[str, Any]:
        """The configured generation settings as ``generate`` keywords."""
        g = self.generation
        kwargs: dict[str, Any] = {
            "max_new_tokens": g.max_new_tokens,
            "do_sample": g.do_sample,
            "repetition_penalty": g.repetition_penalty,
            "num_return_sequences": g.num_return_sequences,
        }
        if g.do_sample:
            kwargs.update(temperature=g.temperature, top_p=g.top_p)
        return kwargs

    # --- decoding ---------------------------------------------------------------------------

    def decode_ids(
        self, texts: Sequence[str], generated: Sequence[np.ndarray], voice: Any = None
    ) -> list[SynthesisResult]:
        """Turn generated token streams into audio; a broken stream gives what it can, never raises.

        ``voice`` ((dim,) embedding, or (texts, dim): one per stream) is what a codec with global
        embeddings decodes with.
        """
        # Generation pads finished sequences after end_of_speech; ids_to_frames stops at the first
        # end_of_speech, so that padding is never read as audio.
        decoded = [self.layout.ids_to_frames(ids) for ids in generated]
        audios = self._decode_frames([d.codes for d in decoded], voice)
        results = []
        for text, ids, frames, (audio, codec_problem) in zip(texts, generated, decoded, audios):
            problems = list(frames.problems)
            if codec_problem:
                problems.append(codec_problem)
            elif frames.num_frames == 0:
                problems.append("no audio frames generated")
            results.append(
                SynthesisResult(
                    text=text,
                    audio=audio,
                    sample_rate=self.codec.sample_rate,
                    num_frames=frames.num_frames if not codec_problem else 0,
                    truncated=frames.truncated,
                    problems=problems,
                    dropped_frames=frames.dropped_frames,
                    num_generated_tokens=_count_generated(ids, self.pad_token_id, self.layout.end_of_speech),
                )
            )
        return results

    def _decode_frames(self, codes: list[np.ndarray], voice: Any = None) -> list[tuple[np.ndarray, str | None]]:
        """Codec-decode many (K, F) code arrays in one padded batch; fall back to one at a time."""
        import torch

        empty = np.zeros(0, dtype=np.float32)
        out: list[tuple[np.ndarray, str | None]] = [(empty, None)] * len(codes)
        todo = [i for i, c in enumerate(codes) if c.shape[1] > 0]
        if not todo:
            return out
        lengths = torch.tensor([codes[i].shape[1] for i in todo], dtype=torch.long)
        batch = torch.zeros((len(todo), self.layout.num_codebooks, int(lengths.max())), dtype=torch.long)
        for row, i in enumerate(todo):
            batch[row, :, : codes[i].shape[1]] = torch.from_numpy(codes[i])
        rows = None
        if voice is not None:
            voice = torch.as_tensor(voice).float()
            rows = voice[todo] if voice.ndim == 2 else voice.expand(len(todo), -1)
        extra = {} if rows is None else {"global_embeddings": rows}
        try:
            waves, sample_lengths = self.codec.decode(batch, lengths, **extra)
        except (RuntimeError, ValueError) as exc:
            if len(todo) == 1:
                out[todo[0]] = (empty, f"codec decoding failed: {exc}")
                return out
            for row, i in enumerate(todo):
                out[i] = self._decode_frames([codes[i]], None if rows is None else rows[row])[0]
            return out
        waves = waves.float().to("cpu").numpy()
        for row, i in enumerate(todo):
            out[i] = (waves[row, : int(sample_lengths[row])].astype(np.float32), None)
        return out

    # --- the whole way ----------------------------------------------------------------------

    def synthesize(
        self,
        texts: str | Sequence[str],
        speaker: str | None = None,
        batch_size: int | None = None,
        progress: bool = False,
        voice: Any = None,
        voices: Sequence[Any] | None = None,
        **generate_kwargs: Any,
    ) -> list[SynthesisResult]:
        """Speak each text (``"speaker: "`` is prepended when ``speaker`` is given and the model
        trained with that prefix: :meth:`prompt_text`).

        ``voice`` is a reference clip (audio file or waveform) or an embedding to speak in, for
        a codec with global embeddings (Kanade): see :meth:`voice_embedding`; ``voices`` gives
        one per text instead (each row of a batch conditioned and decoded with its own).
        Returns one result per text, or ``num_return_sequences`` per text, text-major.
        """
        import torch
        from tqdm.auto import tqdm

        if isinstance(texts, str):
            texts = [texts]
        for index, text in enumerate(texts):
            problem = text_problem(text, speaker)
            if problem:
                where = f"text {index + 1} of {len(texts)}" if len(texts) > 1 else "the text"
                raise UserError(f"{where} ({text!r}): {problem}")
        if voices is not None and len(voices) != len(texts):
            raise ValueError(f"voices: {len(voices)} voices for {len(texts)} texts")
        embeddings, sources, voice_problems = None, [""] * len(texts), [None] * len(texts)
        unknown = None  # why the named speaker has no voice of its own, for texts spoken in the mean one
        if self.takes_voice:
            given = [voice] if voices is None else list(voices)
            embeddings, sources, voice_problems = [], [], []
            for v in given:
                embedding, source = self.voice_embedding(v, speaker)
                problem = None
                if embedding is None:
                    # a decoder voice of zeros still decodes: said in every result, never silently
                    dim = getattr(self.codec, "embedding_dim", None) or self.conditioning.embedding_dim
                    embedding, problem = torch.zeros(int(dim)), source
                embeddings.append(embedding)
                sources.append(source)
                voice_problems.append(problem)
            if voices is None:  # one voice for every text, embedded once
                embeddings, sources, voice_problems = (x * len(texts) for x in (embeddings, sources, voice_problems))
            if "mean" in self.voices:  # a misspelt --speaker is said, not silently the mean voice
                unknown = self.unknown_speaker(speaker)
        elif voice is not None or voices is not None:
            self.voice_embedding(voice if voices is None else voices[0], speaker)  # the error: no embeddings
        batch_size = batch_size or self.generation.batch_size
        copies = generate_kwargs.get("num_return_sequences", self.generation.num_return_sequences)
        results: list[SynthesisResult] = []
        bar = tqdm(total=len(texts), unit="text", desc="synthesize", disable=not progress)
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start: start + batch_size])
            spoken = [self.prompt_text(t, speaker) for t in chunk]
            chunk_voices = None if embeddings is None else torch.stack(embeddings[start: start + batch_size])
            slots = None if self.conditioning is None else chunk_voices
            generated = self.generate_ids([self.prompt_ids(t, speaker) for t in chunk], slots, **generate_kwargs)
            decoder_voice = None
            if hasattr(self.codec, "embed"):  # one voice per generated stream (copies are text-major)
                decoder_voice = chunk_voices.repeat_interleave(copies, dim=0)
            chunk_results = self.decode_ids([t for t in spoken for _ in range(copies)], generated, decoder_voice)
            for index, result in enumerate(chunk_results):
                which = start + index // copies  # the text this stream speaks
                result.voice = "a zero embedding" if voice_problems[which] else sources[which]
                if voice_problems[which]:
                    result.problems.append(voice_problems[which] + "; decoded with a zero embedding")
                elif unknown and (voice if voices is None else voices[which]) is None:
                    result.problems.append(f"speaker {unknown}: spoke in {MEAN_VOICE}")
                self.record_prefix(result, speaker)
            results.extend(chunk_results)
            bar.update(len(chunk))
        bar.close()
        return results


class LayoutConstraint:
    """A logits processor that allows only the token the layout expects at each step.

    After the prompt a KaniTTS model writes start_of_ai, start_of_speech, then frames of one
    token per codebook in order, and may stop (end_of_speech) only between frames. Masking
    everything else makes a malformed stream impossible, which an untrained or barely trained
    model otherwise produces almost always. Prompts are left-padded to one width, so every row
    is at the same step and one mask serves the batch.
    """

    def __init__(self, layout: TokenLayout, prompt_width: int):
        self.layout = layout
        self.prompt_width = prompt_width

    def allowed(self, step: int) -> list[tuple[int, int]]:
        """Half-open id ranges allowed at generation step ``step`` (0 = first new token)."""
        lay = self.layout
        if step == 0:
            return [(lay.start_of_ai, lay.start_of_ai + 1)]
        if step == 1:
            return [(lay.start_of_speech, lay.start_of_speech + 1)]
        position = step - 2
        low = int(lay.codebook_offsets[position % lay.num_codebooks])
        ranges = [(low, low + lay.codebook_size)]
        if position % lay.num_codebooks == 0 and position > 0:
            ranges.append((lay.end_of_speech, lay.end_of_speech + 1))
        return ranges

    def __call__(self, input_ids, scores):
        import torch

        mask = torch.full_like(scores, float("-inf"))
        for low, high in self.allowed(input_ids.shape[1] - self.prompt_width):
            mask[:, low:high] = 0.0
        return scores + mask


def _read_voice(path: str | Path, sample_rate: int):
    """A reference clip as a mono, peak-normalised waveform at ``sample_rate`` (what Kanade's
    encoder was trained on), or a UserError naming the file."""
    from kanade_tokenizer.audio import load_audio

    if not Path(path).is_file():
        raise UserError(f"voice clip {path}: no such file")
    try:
        return load_audio(str(path), sample_rate)
    except (OSError, ValueError, RuntimeError) as exc:  # the file is the user's to fix
        raise UserError(f"voice clip {path}: cannot read it as audio ({exc})") from None


def trained_prefixes(config: Any, name: str) -> frozenset[str] | None:
    """The prompt prefixes (lower-cased) a checkpoint's config.json records for its training
    prompts, with those its upstream keys list (``speaker_settings``, ``language_settings``: a base
    model's own, which a fine-tune keeps knowing); None when it records none (a base model, a
    checkpoint trained before the record). A malformed record is a UserError naming the key."""
    record = getattr(config, PROMPT_PREFIXES, None)
    if record is None:
        return None
    if not isinstance(record, dict) or not all(
        isinstance(names, list) and all(isinstance(n, str) for n in names) for names in record.values()
    ):
        raise UserError(
            f"model {name!r}: config.json {PROMPT_PREFIXES} must map speakers and language_tags to lists of "
            f"names, got {record!r}; fix it, or delete the key to prefix every speaker"
        )
    prefixes = {n.lower() for names in record.values() for n in names}
    for key, listed in (("speaker_settings", "speaker_list"), ("language_settings", "language_tags_list")):
        settings = getattr(config, key, None)
        names = settings.get(listed) if isinstance(settings, dict) else None
        prefixes.update(n.lower() for n in names or [] if isinstance(n, str))
    return frozenset(prefixes)


def _speaker_files(model: Any, name: str, layout: TokenLayout):
    """The speaker projection and mean embeddings a checkpoint folder carries (none for a Hub id
    or a folder without them)."""
    from kanitts.conditioning import PROJECTION_FILE, SpeakerConditioning, load_speaker_means

    folder = Path(name)
    kanitts2 = getattr(model, "kanitts2", None)
    if kanitts2 is not None:  # the model holds its slot and projection itself
        from kanitts.models.kanitts2 import layout_problems

        problems = layout_problems(kanitts2, layout, f"model {name!r}")
        if problems:
            raise UserError("; ".join(problems))
        return model.speaker, load_speaker_means(folder) if folder.is_dir() else {}
    if not folder.is_dir():
        return None, {}
    conditioning = None
    if (folder / PROJECTION_FILE).is_file():
        conditioning = SpeakerConditioning.load(model, folder, layout.speaker_slot)
    return conditioning, load_speaker_means(folder)


def _count_generated(ids: np.ndarray, pad: int, end_of_speech: int) -> int:
    """Tokens the model produced, up to and including end_of_speech (not the padding after it)."""
    ends = np.flatnonzero(ids == end_of_speech)
    if len(ends):
        return int(ends[0]) + 1
    trailing = len(ids)
    while trailing and ids[trailing - 1] == pad:
        trailing -= 1
    return trailing


def text_problem(text: str, speaker: str | None = None) -> str | None:
    """Why ``text`` cannot be spoken (empty, or a speaker prefix with nothing after it), or None."""
    if not text.strip():
        return "empty text: give the words to say"
    prefixed = EvalSentence("", text)
    if not prefixed.spoken_text:
        return f"only the speaker prefix {prefixed.speaker + ':'!r}, nothing to say after it"
    return None


def check_max_new_tokens(value: int, layout: TokenLayout, where: str) -> None:
    """Refuse a generation budget that cannot hold a single audio frame (the result is silence)."""
    if value < layout.min_new_tokens:
        raise UserError(
            f"{where}: {value} is too small to hold one audio frame, which takes {layout.min_new_tokens} "
            f"tokens (start_of_ai, start_of_speech and {layout.num_codebooks} codes); "
            "a sentence takes far more (the default is 1200)"
        )


def check_vocabulary(vocab: int, layout: TokenLayout, name: str) -> None:
    """Refuse a model whose vocabulary stops below the layout's highest id (an index error later)."""
    if vocab < layout.vocab_size:
        raise UserError(
            f"model {name!r} has {vocab} token embeddings, but the token layout of model_config.yaml "
            f"uses ids up to {layout.vocab_size - 1}; use the model_config.yaml this model was trained with"
        )


def _check_compatible(model: Any, codec: Codec, layout: TokenLayout, name: str) -> None:
    """Refuse a model_config that does not fit the model or the codec, before any generation."""
    check_vocabulary(int(model.get_input_embeddings().weight.shape[0]), layout, name)
    if codec.num_codebooks != layout.num_codebooks or codec.codebook_size != layout.codebook_size:
        raise UserError(
            f"the codec ({codec.kind}, {codec.num_codebooks} x {codec.codebook_size} codes) does not match "
            f"model_config.yaml codec ({layout.num_codebooks} x {layout.codebook_size})"
        )
