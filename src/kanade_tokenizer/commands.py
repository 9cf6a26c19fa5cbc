"""The work behind ``kanade encode / decode / convert``, as plain functions.

Every function takes already-loaded objects (model, vocoder) or paths and returns a summary;
``kanade_tokenizer.cli`` only parses arguments and calls them, and tests call them directly.

Token files
-----------
``encode`` writes **one safetensors file per input audio file** (one file a unit keeps runs
resumable, lets tools read a single utterance without loading a whole corpus, and maps one to one
onto ``decode``). Each file holds:

* ``content_token_indices``: int64 ``(T,)``, the content tokens (FSQ indices in [0, 12800)).
* ``global_embedding``: float32 ``(128,)``, the global (speaker) embedding.
* ``content_embedding``: float32 ``(T, 768)``, only with ``save_content_embedding=True``.

and string metadata: ``format`` (``kanade-tokens/1``), ``source`` (the input path),
``sample_rate`` and ``num_samples`` (the length of the audio at the model's rate, so ``decode``
restores the exact length), and what made the tokens: ``model`` (the id or path the model was
loaded from), ``token_rate`` (tokens per second), ``codebook_size``, ``global_embedding_dim`` and
``kanade_tokenizer_version``. ``decode`` refuses a file whose tokens another kind of model made
(other rate, vocabulary or embedding size), and ids outside the vocabulary, naming the file,
the position and the value. Files without these keys (written before they existed) are checked
for what they do say.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kanade_tokenizer.audio import AUDIO_SUFFIXES, load_audio, save_audio
from kanade_tokenizer.files import KanadeHubError, atomic_path

TOKEN_FORMAT = "kanade-tokens/1"
TOKEN_SUFFIX = ".safetensors"

#: metadata keys that say what kind of model made a token file, and the model's value for each
MODEL_FACTS = ("sample_rate", "token_rate", "codebook_size", "global_embedding_dim")


class KanadeInputError(ValueError):
    """A problem the user can fix: a missing input, a bad token file, a model that will not load."""


# --- loading ---------------------------------------------------------------------------------


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(model: str | os.PathLike[str], weights: str | os.PathLike[str] | None = None,
               device: str | torch.device | None = None):
    """Load a KanadeModel in eval mode.

    ``model`` is a Hub repo id (``frothywater/kanade-12.5hz``), a local folder holding
    ``config.yaml`` and ``model.safetensors``, or a config YAML path; with a config path,
    ``weights`` is the safetensors file (optional when it is ``model.safetensors`` beside a
    ``config.yaml``).
    """
    model = os.fspath(model)
    if weights is not None and not Path(weights).is_file():
        raise KanadeInputError(f"{weights}: no such weights file")
    if weights is not None and not Path(model).is_file():
        raise KanadeInputError(f"{model}: no such config file (--weights needs --model CONFIG.yaml)")

    from kanade_tokenizer.model import KanadeModel, KanadeWeightsError

    try:
        if weights is not None:
            loaded = KanadeModel.from_pretrained(model, weights_path=os.fspath(weights))
        else:
            loaded = KanadeModel.from_pretrained(model)
    except KanadeHubError as e:
        raise KanadeInputError(str(e)) from None
    except (OSError, ValueError, KeyError, KanadeWeightsError) as e:  # missing files, config, weights
        raise KanadeInputError(f"cannot load the Kanade model {model!r}: {type(e).__name__}: {e}") from e
    loaded = loaded.eval()
    if device is not None:
        loaded = loaded.to(device)
    return loaded


def load_vocoder_for(model, name: str | None = None, device: str | torch.device | None = None):
    """The vocoder ``name``, or the one the model's config names (``vocoder_name``); checks that
    its number of mel bins matches the model's."""
    from kanade_tokenizer.vocoders import load_vocoder

    config = getattr(model, "config", None)
    if name is None:
        name = getattr(config, "vocoder_name", None) or "vocos"
    vocoder = load_vocoder(name, device=device)
    want = getattr(config, "n_mels", None)
    have = getattr(getattr(vocoder, "config", None), "n_mels", None)
    if want is not None and have is not None and int(want) != int(have):
        raise KanadeInputError(
            f"the vocoder {name!r} takes {have}-bin mels but the model makes {want}-bin mels; "
            "pass a matching --vocoder"
        )
    return vocoder


def model_device(model) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def model_sample_rate(model) -> int:
    return int(getattr(getattr(model, "config", None), "sample_rate", 24000))


def model_facts(model) -> dict[str, str]:
    """What a token file records about the model that made it (the facts the model states)."""
    facts = {"sample_rate": str(model_sample_rate(model))}
    for key in ("token_rate", "codebook_size", "global_embedding_dim"):
        value = getattr(model, key, None)
        if value is not None:
            facts[key] = f"{float(value):g}" if key == "token_rate" else str(int(value))
    return facts


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kanitts")
    except PackageNotFoundError:
        return "unknown"


# --- inputs ----------------------------------------------------------------------------------


@dataclass
class AudioInput:
    path: Path
    output: Path
    num_frames: int = 0  # at the file's own rate, from its header (read_audio_headers)
    sample_rate: int = 0

    def length_at(self, rate: int) -> int:
        """Samples after resampling to ``rate``: ceil(frames * rate / own rate), as the resampler gives."""
        return -(-self.num_frames * int(rate) // self.sample_rate)


def read_audio_headers(pairs: Sequence[AudioInput]) -> list[AudioInput]:
    """Read every input's header (length and rate) before anything is encoded; an unreadable or
    truncated file stops the run here, naming it, so no run ends half way through a corpus."""
    import soundfile as sf

    from kanade_tokenizer.audio import AudioLoadError, wav_truncation

    problems = []
    for pair in pairs:
        problem = None
        try:
            problem = wav_truncation(pair.path)
            info = sf.info(str(pair.path))
            pair.num_frames, pair.sample_rate = int(info.frames), int(info.samplerate)
        except Exception as e:  # libsndfile errors on files it cannot open
            problem = problem or f"cannot read audio ({e})"
        if problem is None and pair.num_frames == 0:
            problem = "the file holds no audio samples"
        if problem is not None:
            problems.append(f"{pair.path}: {problem}")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise AudioLoadError("; ".join(problems[:5]) + more)
    return list(pairs)


def collect_audio_inputs(inputs: Sequence[str | os.PathLike[str]], output_dir: str | os.PathLike[str],
                         suffix: str = TOKEN_SUFFIX) -> list[AudioInput]:
    """Expand files and folders into (audio file, output file) pairs.

    A file ``x/a.wav`` maps to ``OUT/a<suffix>``; files found under a folder ``D`` (recursively,
    by audio suffix) keep their path relative to ``D``. Two inputs that would write the same
    output are an error.
    """
    output_dir = Path(output_dir)
    pairs: list[AudioInput] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                raise KanadeInputError(f"{path}: folder holds no audio files ({', '.join(AUDIO_SUFFIXES)})")
            pairs += [AudioInput(p, output_dir / p.relative_to(path).with_suffix(suffix)) for p in found]
        elif path.is_file():
            pairs.append(AudioInput(path, output_dir / (path.stem + suffix)))
        else:
            raise KanadeInputError(f"{path}: no such file or folder")
    seen: dict[Path, Path] = {}
    for pair in pairs:
        if pair.output in seen:
            raise KanadeInputError(
                f"{seen[pair.output]} and {pair.path} would both be written to {pair.output}; "
                "rename one or encode them in separate runs"
            )
        seen[pair.output] = pair.path
    return pairs


# --- token files -----------------------------------------------------------------------------


def save_tokens(path: str | os.PathLike[str], features: Any, *, source: str = "", num_samples: int | None = None,
                sample_rate: int | None = None, model_name: str = "", save_content_embedding: bool = False,
                facts: dict[str, str] | None = None, extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Write one utterance's KanadeFeatures to ``path`` (safetensors; written to a temporary name first).

    ``facts`` (:func:`model_facts` of the model that encoded it) are stored in the metadata;
    ``extra`` tensors (e.g. ``kanade-train predict``'s ``mel``) are stored beside the tokens."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    if features.content_token_indices is not None:
        tensors["content_token_indices"] = features.content_token_indices.detach().to("cpu", torch.int64)
    if features.global_embedding is not None:
        tensors["global_embedding"] = features.global_embedding.detach().to("cpu", torch.float32)
    if save_content_embedding and getattr(features, "content_embedding", None) is not None:
        tensors["content_embedding"] = features.content_embedding.detach().to("cpu", torch.float32)
    for name, value in (extra or {}).items():
        tensors[name] = value.detach().to("cpu")
    metadata = {"format": TOKEN_FORMAT, "source": str(source), "model": str(model_name)}
    metadata.update(facts or {})
    metadata["kanade_tokenizer_version"] = _version()
    if num_samples is not None:
        metadata["num_samples"] = str(int(num_samples))
    if sample_rate is not None:
        metadata["sample_rate"] = str(int(sample_rate))
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return path


@dataclass
class TokenFile:
    content_token_indices: torch.Tensor | None
    global_embedding: torch.Tensor
    content_embedding: torch.Tensor | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def num_samples(self) -> int | None:
        value = self.metadata.get("num_samples")
        return int(value) if value else None


def load_tokens(path: str | os.PathLike[str]) -> TokenFile:
    """Read a token file written by :func:`save_tokens` (or any safetensors with the same tensor names)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise KanadeInputError(f"{path}: no such token file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise KanadeInputError(f"{path}: not a readable safetensors file ({e})") from e
    if "global_embedding" not in tensors:
        raise KanadeInputError(f"{path}: has no 'global_embedding' tensor (found {sorted(tensors)})")
    if "content_token_indices" not in tensors and "content_embedding" not in tensors:
        raise KanadeInputError(
            f"{path}: has neither 'content_token_indices' nor 'content_embedding' (found {sorted(tensors)})"
        )
    _check_token_tensors(path, tensors, metadata)
    return TokenFile(
        content_token_indices=tensors.get("content_token_indices"),
        global_embedding=tensors["global_embedding"],
        content_embedding=tensors.get("content_embedding"),
        metadata=metadata,
    )


def _check_token_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Shapes, dtypes and ids a decoder can use, whatever model decodes them."""
    g = tensors["global_embedding"]
    if g.dim() != 1 or not g.is_floating_point():
        raise KanadeInputError(f"{path}: global_embedding must be a 1-D float vector, got {g.dtype} {tuple(g.shape)}")
    ids = tensors.get("content_token_indices")
    if ids is not None:
        if ids.dim() != 1 or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise KanadeInputError(
                f"{path}: content_token_indices must be 1-D integer ids, got {ids.dtype} {tuple(ids.shape)}"
            )
        if ids.numel() == 0:
            raise KanadeInputError(f"{path}: holds no content tokens (its audio was shorter than one token)")
        size = metadata.get("codebook_size")
        check_token_ids(path, ids, int(size) if size and size.isdigit() else None)
    content = tensors.get("content_embedding")
    if content is not None and (content.dim() != 2 or content.size(0) == 0):
        raise KanadeInputError(f"{path}: content_embedding must be (T, C) with T > 0, got {tuple(content.shape)}")


def check_token_ids(path: str | os.PathLike[str], ids: torch.Tensor, codebook_size: int | None, model: str = "") -> None:
    """Ids must lie in [0, codebook_size) (only >= 0 when the size is unknown); the first one that
    does not is named with its position."""
    bad = ids < 0 if codebook_size is None else (ids < 0) | (ids >= codebook_size)
    if bool(bad.any()):
        pos = int(bad.nonzero()[0, 0])
        valid = "0 or more" if codebook_size is None else f"0 ... {codebook_size - 1}"
        whose = f" of {model}" if model else ""
        raise KanadeInputError(
            f"{path}: content_token_indices[{pos}] = {int(ids[pos])} is outside the vocabulary{whose} "
            f"(valid ids: {valid}; {int(bad.sum())} bad id(s) in the file)"
        )


def _same_number(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:  # not a number: a file edited by hand, compared as written
        return a == b


def check_tokens_match(path: str | os.PathLike[str], tokens: TokenFile, model, model_name: str = "") -> None:
    """Refuse tokens that a different kind of model made, or ids outside this model's vocabulary."""
    have = model_facts(model)
    made_by = tokens.metadata.get("model")
    this = f"the model {model_name}" if model_name else "this model"
    phrases = {"sample_rate": "at {} Hz", "token_rate": "at {} tokens/s", "codebook_size": "with {} codes",
               "global_embedding_dim": "with {}-dim global embeddings"}
    for key in MODEL_FACTS:
        recorded, own = tokens.metadata.get(key), have.get(key)
        if recorded and own and not _same_number(recorded, own):
            hint = f"; decode it with the model that made it (--model {made_by})" if made_by else ""
            raise KanadeInputError(
                f"{path}: made by {made_by or 'another model'} {phrases[key].format(recorded)}, "
                f"but {this} works {phrases[key].format(own)}{hint}"
            )
    g = tokens.global_embedding
    if "global_embedding_dim" in have and g.numel() != int(have["global_embedding_dim"]):
        raise KanadeInputError(
            f"{path}: global_embedding has {g.numel()} values but {this} takes {have['global_embedding_dim']}"
        )
    if tokens.content_token_indices is not None and "codebook_size" in have:
        check_token_ids(path, tokens.content_token_indices, int(have["codebook_size"]), this)
    elif tokens.content_embedding is not None:
        dim = getattr(getattr(model, "local_quantizer", None), "output_dim", None)
        if dim is not None and tokens.content_embedding.size(1) != dim:
            raise KanadeInputError(
                f"{path}: content_embedding has {tokens.content_embedding.size(1)} channels but {this} takes {dim}"
            )


# --- encode ----------------------------------------------------------------------------------


@dataclass
class EncodeSummary:
    files: int = 0
    audio_seconds: float = 0.0
    tokens: int = 0
    seconds: float = 0.0
    outputs: list[Path] = field(default_factory=list)

    def __str__(self) -> str:
        rate = self.audio_seconds / self.seconds if self.seconds > 0 else float("inf")
        return (
            f"encoded {self.files} file(s), {self.audio_seconds / 3600:.3f} h of audio, {self.tokens} tokens "
            f"in {self.seconds:.1f} s ({rate:.1f}x real time)"
        )


def _batches(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def encode_files(model, inputs: Sequence[str | os.PathLike[str]], output_dir: str | os.PathLike[str], *,
                 batch_size: int = 8, model_name: str = "", save_content_embedding: bool = False,
                 progress: bool = True) -> EncodeSummary:
    """Encode audio files (or folders of them) into one token file each, under ``output_dir``.

    Files are read at the model's rate, grouped by length into batches of ``batch_size`` and
    encoded with ``model.encode_batch``.
    """
    if batch_size < 1:
        raise KanadeInputError(f"batch size must be at least 1, got {batch_size}")
    pairs = read_audio_headers(collect_audio_inputs(inputs, output_dir))
    sr = model_sample_rate(model)
    _check_long_enough(pairs, model, sr)
    facts = model_facts(model)
    device = model_device(model)
    summary = EncodeSummary()
    start = time.perf_counter()
    bar = _progress(total=len(pairs), unit="file", desc="encode", enabled=progress)
    pairs = sorted(pairs, key=lambda p: p.num_frames / p.sample_rate)  # similar lengths batch with less padding
    try:
        for group in _batches(pairs, batch_size):
            waves = [load_audio(p.path, sample_rate=sr) for p in group]
            with torch.inference_mode():
                features = model.encode_batch([w.to(device) for w in waves])
            for pair, wave, feat in zip(group, waves, features):
                save_tokens(pair.output, feat, source=str(pair.path), num_samples=wave.numel(), sample_rate=sr,
                            model_name=model_name, save_content_embedding=save_content_embedding, facts=facts)
                summary.files += 1
                summary.audio_seconds += wave.numel() / sr
                if feat.content_token_indices is not None:
                    summary.tokens += int(feat.content_token_indices.numel())
                summary.outputs.append(pair.output)
            bar.update(len(group))
            bar.set_postfix(audio_h=f"{summary.audio_seconds / 3600:.3f}")
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _check_long_enough(pairs: Sequence[AudioInput], model, sr: int) -> None:
    """Every input gives at least one token, or the run stops before encoding, naming the files."""
    minimum = getattr(model, "min_audio_length", None)
    if minimum is None:
        return
    minimum = int(minimum())
    short = [p for p in pairs if p.length_at(sr) < minimum]
    if short:
        listed = "; ".join(
            f"{p.path}: {p.num_frames / p.sample_rate:.3f} s ({p.length_at(sr)} samples at {sr} Hz)" for p in short[:5]
        )
        more = f" and {len(short) - 5} more" if len(short) > 5 else ""
        raise KanadeInputError(
            f"{len(short)} input(s) shorter than one token, which needs at least {minimum} samples "
            f"({1000 * minimum / sr:.1f} ms) at {sr} Hz: {listed}{more}"
        )


def _progress(total: int, unit: str, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, desc=desc, disable=not enabled or total <= 1, dynamic_ncols=True)


# --- decode ----------------------------------------------------------------------------------


def mel_to_audio(vocoder, mel: torch.Tensor, num_samples: int | None = None) -> torch.Tensor:
    """Vocode one ``(n_mels, T)`` mel to ``(samples,)`` audio, trimmed or zero-padded to ``num_samples``."""
    from kanade_tokenizer.vocoders import vocode

    audio = vocode(vocoder, mel.unsqueeze(0))[0].float().cpu()
    if num_samples is not None:
        if audio.numel() >= num_samples:
            audio = audio[:num_samples]
        else:
            audio = torch.nn.functional.pad(audio, (0, num_samples - audio.numel()))
    return audio


def global_embedding_from(model, reference: str | os.PathLike[str], model_name: str = "") -> torch.Tensor:
    """The global embedding of a token file (.safetensors, made by the same kind of model) or of an audio file."""
    reference = Path(reference)
    if reference.suffix == TOKEN_SUFFIX:
        tokens = load_tokens(reference)
        check_tokens_match(reference, tokens, model, model_name)
        return tokens.global_embedding
    wave = load_audio(reference, sample_rate=model_sample_rate(model)).to(model_device(model))
    return model.encode(wave).global_embedding


@dataclass
class DecodeSummary:
    files: int = 0
    audio_seconds: float = 0.0
    seconds: float = 0.0
    outputs: list[Path] = field(default_factory=list)

    def __str__(self) -> str:
        return f"wrote {self.files} file(s), {self.audio_seconds:.1f} s of audio in {self.seconds:.1f} s"


def decode_files(model, vocoder, token_files: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str], *,
                 reference: str | os.PathLike[str] | None = None, progress: bool = True,
                 model_name: str = "") -> DecodeSummary:
    """Token files -> mel (model.decode) -> waveform (vocoder) -> audio files.

    With one token file and an ``output`` that ends in an audio suffix, that file is written;
    otherwise ``output`` is a folder and each input ``x.safetensors`` becomes ``output/x.wav``.
    ``reference`` (a token file or an audio file) replaces every file's global embedding, i.e.
    speaks the content in the reference's voice. Every file is checked against the model
    (:func:`check_tokens_match`) before the first one is decoded.
    """
    output = Path(output)
    token_files = [Path(t) for t in token_files]
    if not token_files:
        raise KanadeInputError("no token files given")
    if output.suffix.lower() in AUDIO_SUFFIXES:
        if len(token_files) > 1:
            raise KanadeInputError(f"{output}: one output file for {len(token_files)} inputs; pass a folder as -o")
        targets = [output]
    else:
        targets = [output / (t.stem + ".wav") for t in token_files]
    for src in token_files:
        check_tokens_match(src, load_tokens(src), model, model_name)
    sr = model_sample_rate(model)
    device = model_device(model)
    override = global_embedding_from(model, reference, model_name) if reference is not None else None
    summary = DecodeSummary()
    start = time.perf_counter()
    bar = _progress(total=len(token_files), unit="file", desc="decode", enabled=progress)
    try:
        for src, dst in zip(token_files, targets):
            tokens = load_tokens(src)
            g = override if override is not None else tokens.global_embedding
            kwargs: dict[str, Any] = {"global_embedding": g.to(device), "target_audio_length": tokens.num_samples}
            if tokens.content_embedding is not None and tokens.content_token_indices is None:
                kwargs["content_embedding"] = tokens.content_embedding.to(device)
            else:
                kwargs["content_token_indices"] = tokens.content_token_indices.to(device)
            with torch.inference_mode():
                mel = model.decode(**kwargs)
            audio = mel_to_audio(vocoder, mel, tokens.num_samples)
            save_audio(dst, audio, sr)
            summary.files += 1
            summary.audio_seconds += audio.numel() / sr
            summary.outputs.append(dst)
            bar.update(1)
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


# --- voice conversion --------------------------------------------------------------------------


def convert_voice(model, vocoder, source: str | os.PathLike[str], reference: str | os.PathLike[str],
                  output: str | os.PathLike[str]) -> Path:
    """Speak ``source``'s content in ``reference``'s voice; writes ``output`` (same length as the source)."""
    sr = model_sample_rate(model)
    pairs = read_audio_headers([AudioInput(Path(source), Path(output)), AudioInput(Path(reference), Path(output))])
    _check_long_enough(pairs[:1], model, sr)  # the reference only gives a voice: any length does
    device = model_device(model)
    src = load_audio(source, sample_rate=sr).to(device)
    ref = load_audio(reference, sample_rate=sr).to(device)
    with torch.inference_mode():
        mel = model.voice_conversion(src, ref)
    audio = mel_to_audio(vocoder, mel, src.numel())
    return save_audio(output, audio, sr)


__all__ = [
    "EncodeSummary",
    "DecodeSummary",
    "KanadeInputError",
    "TOKEN_FORMAT",
    "TokenFile",
    "check_token_ids",
    "check_tokens_match",
    "collect_audio_inputs",
    "convert_voice",
    "decode_files",
    "encode_files",
    "global_embedding_from",
    "load_model",
    "load_tokens",
    "load_vocoder_for",
    "mel_to_audio",
    "model_facts",
    "read_audio_headers",
    "save_tokens",
]
