"""What the Kanade recipes share: loading the model, finding and checking the input audio
before any work, progress bars."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from kanade_tokenizer.audio import AUDIO_SUFFIXES, AudioLoadError, audio_info, load_audio
from kanade_tokenizer.errors import KanadeInputError
from kanade_tokenizer.files import KanadeHubError
from kanade_tokenizer.tokens import TOKEN_SUFFIX, check_tokens_match, load_tokens


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(model: str | os.PathLike[str], weights: str | os.PathLike[str] | None = None,
               device: str | torch.device | None = None):
    """Load a KanadeModel in eval mode.

    ``model`` is a Hub repo id (``frothywater/kanade-12.5hz``), a local folder holding
    ``config.yaml`` and ``model.safetensors``, a config YAML path or a released config name
    (``12hz``); with a config, ``weights`` is the safetensors file (optional when it is
    ``model.safetensors`` beside a ``config.yaml``).
    """
    from kanade_tokenizer.configuration import released_config_names
    from kanade_tokenizer.model import KanadeModel
    from kanade_tokenizer.pretrained import KanadeWeightsError

    model = os.fspath(model)
    if weights is not None and not Path(weights).is_file():
        raise KanadeInputError(f"{weights}: no such weights file")
    if weights is not None and not Path(model).is_file() and model not in released_config_names():
        raise KanadeInputError(
            f"{model}: no such config file (--weights needs --model CONFIG.yaml or a released config name: "
            f"{', '.join(released_config_names())})"
        )

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


def model_device(model) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def model_sample_rate(model) -> int:
    return int(getattr(getattr(model, "config", None), "sample_rate", 24000))


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
    problems = []
    for pair in pairs:
        try:
            pair.num_frames, pair.sample_rate = audio_info(pair.path)
        except (AudioLoadError, FileNotFoundError) as e:  # each names its file
            problems.append(str(e))
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


def check_long_enough(pairs: Sequence[AudioInput], model, sr: int) -> None:
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


def progress_bar(total: int, unit: str, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, desc=desc, disable=not enabled or total <= 1, dynamic_ncols=True)


def global_embedding_from(model, reference: str | os.PathLike[str], model_name: str = "") -> torch.Tensor:
    """The global embedding of a token file (.safetensors, made by the same kind of model) or of an audio file."""
    reference = Path(reference)
    if reference.suffix == TOKEN_SUFFIX:
        tokens = load_tokens(reference)
        check_tokens_match(reference, tokens, model, model_name)
        return tokens.global_embedding
    wave = load_audio(reference, sample_rate=model_sample_rate(model)).to(model_device(model))
    return model.encode(wave).global_embedding
