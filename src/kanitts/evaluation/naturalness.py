"""Naturalness: a predicted mean opinion score (MOS, 1 = bad, 5 = excellent) per sample.

The predictor is an SSL speech encoder (wav2vec2, WavLM, HuBERT, ...) with a pooled regression
head that was fine-tuned on listening-test scores, the architecture of SSL-MOS and of UTMOS's
strong learner. It is loaded through transformers' ``AutoModelForAudioClassification`` with a
single output (``num_labels: 1``), so any such checkpoint on the Hub or in a local folder works
with the project's own loading code and no third-party model code is executed.

The published UTMOS22 weights are not in that form (a Lightning checkpoint of a fairseq
wav2vec2, run through torch.hub code), which is why none is loaded by default: the
``naturalness:`` section of eval_config.yaml names the model, and without it MOS is "not
measured". A checkpoint that is not a one-output audio regressor, or whose head did not load
(a plain SSL encoder gets a random head: its "MOS" would be noise), is refused with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kanitts.audio import resample, to_mono
from kanitts.errors import UserError
from kanitts.files import check_model_weights, is_hub_id

LABEL = "predicted MOS (SSL encoder + regression head)"
# One 25 ms window at 16 kHz: the convolutional feature encoder yields no frame for less.
_SHORTEST = 400


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def folder_signature(name: str) -> list[list[Any]]:
    """Name, size and mtime of a local model folder's files (empty for a Hub id).

    Part of a scorer's identity in the score cache: a retrained or replaced local model must not
    reuse the scores of the old one.
    """
    folder = Path(name).expanduser()
    if not name or not folder.is_dir():
        return []
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(folder.iterdir()) if p.is_file()]


class NaturalnessPredictor:
    """A MOS regressor loaded once; :meth:`predict` scores batches of ``(audio, sample_rate)``."""

    label = LABEL

    def __init__(self, model: str | Path, *, device: object = None, batch_size: int = 8):
        import torch
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModelForAudioClassification
        from transformers.models.auto.modeling_auto import MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES

        name = str(model)
        folder = Path(name).expanduser()
        if not folder.is_dir() and not is_hub_id(name):
            raise UserError(f"MOS model {name}: no such folder (nor a Hub id owner/name)")
        if batch_size < 1:
            raise UserError(f"MOS batch size must be at least 1, got {batch_size}")
        source = str(folder) if folder.is_dir() else name
        where = f"folder {folder}" if folder.is_dir() else f"{name!r} from the Hugging Face Hub"
        try:
            config = AutoConfig.from_pretrained(source)
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(
                f"cannot load the MOS model {where} ({_first_line(exc)}); with HF_HUB_OFFLINE=1 only models "
                "already in the local cache load, or pass a local folder"
            ) from None
        kind = getattr(config, "model_type", None)
        if kind not in MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES:
            raise UserError(f"MOS model {name}: its config.json is a {kind!r} model, not an audio model with a "
                            "regression head (wav2vec2, WavLM, HuBERT ... ForSequenceClassification)")
        if config.num_labels != 1:
            raise UserError(f"MOS model {name}: it has {config.num_labels} outputs (a classifier); a MOS "
                            "predictor has one regression output (num_labels: 1)")
        check_model_weights(source, f"MOS model {name}")
        try:
            self.features = AutoFeatureExtractor.from_pretrained(source)
            net, info = AutoModelForAudioClassification.from_pretrained(source, output_loading_info=True)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:  # RuntimeError: weights of other shapes
            raise UserError(f"cannot load the MOS model {where}: {_first_line(exc)}") from None
        prefix = net.base_model_prefix + "."
        head = sorted(k for k in info["missing_keys"] if not k.startswith(prefix))
        if head:
            raise UserError(f"MOS model {name}: its regression head is not in the weights (missing {head[0]}, ...); "
                            "it is an encoder without MOS training, whose scores would be random")
        self.name = name
        self.device = torch.device(device or "cpu")
        self.model = net.eval().to(self.device, torch.float32)
        self.batch_size = batch_size
        self.sample_rate = int(self.features.sampling_rate)
        # Group norm in the feature encoder normalises over the whole padded clip, and a feature
        # extractor without an attention mask lets the model see the padding: such models score
        # clips one at a time, so a batched score equals the clip's own.
        self.pads_exactly = (getattr(config, "feat_extract_norm", "layer") != "group"
                             and bool(getattr(self.features, "return_attention_mask", False)))

    @property
    def identity(self) -> dict[str, Any]:
        """What the scores depend on, for the score cache."""
        return {"scorer": "mos", "model": self.name, "files": folder_signature(self.name)}

    def predict(self, clips: Sequence[tuple[np.ndarray, int]]) -> list[float | None]:
        """One predicted MOS per clip, in order; an empty clip has none (None)."""
        waves = [resample(to_mono(np.asarray(audio, dtype=np.float32)), int(rate), self.sample_rate)
                 for audio, rate in clips]
        scores: list[float | None] = [None] * len(waves)
        order = sorted((i for i, w in enumerate(waves) if w.size), key=lambda i: len(waves[i]))
        size = self.batch_size if self.pads_exactly else 1
        for start in range(0, len(order), size):
            chunk = order[start: start + size]
            for index, value in zip(chunk, self._run([waves[i] for i in chunk]), strict=True):
                scores[index] = round(value, 4)
        return scores

    def _run(self, waves: list[np.ndarray]) -> list[float]:
        import torch

        waves = [np.pad(w, (0, _SHORTEST - len(w))) if len(w) < _SHORTEST else w for w in waves]
        inputs = self.features(waves, sampling_rate=self.sample_rate, padding=True, return_tensors="pt",
                               return_attention_mask=self.pads_exactly)
        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        with torch.no_grad():
            logits = self.model(**inputs).logits
        return [float(v) for v in logits[:, 0].float().cpu()]


def load_naturalness(settings: Any, device: object = None) -> tuple[NaturalnessPredictor | None, str | None]:
    """The predictor of eval_config.yaml's ``naturalness:`` section, and a note when there is none.

    No section: (None, why). A model that does not load: a UserError naming the key, unless
    ``if_unavailable: skip`` asks for MOS to be left unmeasured instead (then the note says why).
    """
    if settings is None:
        return None, "MOS not measured: eval_config.yaml has no naturalness section"
    try:
        return NaturalnessPredictor(settings.model, device=device, batch_size=settings.batch_size), None
    except UserError as exc:
        if settings.if_unavailable == "skip":
            return None, f"MOS not measured: {exc}"
        raise UserError(f"eval_config.yaml: naturalness.model: {exc}") from None
