"""eval_config.yaml: where eval writes, whether it uploads, speaker-similarity references, ASR, MOS."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, PositiveInt, PrivateAttr, TypeAdapter, ValidationError, model_validator

from kanitts.config.schemas.base import Strict, Text


class EvalPaths(Strict):
    audio_output_dir: Text = "./audio_samples"
    checkpoints_dir: Text = "./checkpoints"
    report_dir: Text = "./report"


class EvalHub(Strict):
    upload_dataset: bool = False
    repo_name: Text | None = None
    private: bool = True

    @model_validator(mode="after")
    def _repo_when_uploading(self) -> EvalHub:
        if self.upload_dataset and not self.repo_name:
            raise ValueError("repo_name is required when upload_dataset is true")
        return self


class EvalProcessing(Strict):
    """The reference's ``processing`` section, of which nothing is used here.

    Its ``num_proc`` sized a process pool for dataset work; here eval generates on one device and
    measures a sample in milliseconds, so there is no pool to size. Files that set it load as
    before; :attr:`notes` says that it is ignored, and loading puts that among the warnings every
    command (check-config too) prints.
    """

    _ignored: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="wrap")
    @classmethod
    def _drop_num_proc(cls, data: Any, handler) -> EvalProcessing:
        ignored: tuple[str, ...] = ()
        if isinstance(data, dict) and "num_proc" in data:
            try:  # a wrong value is still an error, named at its key
                TypeAdapter(PositiveInt).validate_python(data["num_proc"])
            except ValidationError as exc:
                errors = [{"type": e["type"], "loc": ("num_proc", *e["loc"]), "input": e["input"],
                           **({"ctx": e["ctx"]} if "ctx" in e else {})} for e in exc.errors()]
                raise ValidationError.from_exception_data(cls.__name__, errors) from None
            data = {k: v for k, v in data.items() if k != "num_proc"}
            ignored = ("num_proc",)
        model = handler(data)
        model._ignored = ignored
        return model

    @property
    def notes(self) -> list[str]:
        return [f"processing.{key} is ignored (eval needs no process pool); remove it" for key in self._ignored]


class SpeakerSimilarity(Strict):
    """Reference recordings per speaker prefix, for the speaker-similarity metric.

    A speaker of eval_set.yaml without ``references`` gets up to ``auto_references`` recordings
    of its rows that dataset_config.yaml's validation split holds out of training (never trained
    on); 0 turns that off. Configured references win, per speaker.
    """

    references: dict[Text, list[Text]] = {}
    auto_references: Annotated[int, Field(ge=0, strict=True)] = 5  # strict: `true` or "3" is no count
    # A name from kanitts.evaluation.speaker: `mfcc-stats` (a proxy that works offline with no
    # weights, so the demo and CI run), `wavlm-xvector[:<folder or Hub id>]` (a real
    # speaker-verification x-vector; recommended), `auto` (that one when it is cached, else the
    # proxy, with a note), `kanade:<folder or Hub id>` (the Kanade tokenizer's global embedding).
    embedder: Text = "mfcc-stats"


class Intelligibility(Strict):
    """The ASR model that transcribes every sample for WER and CER (kanitts.asr.Transcriber).

    The section is optional: without it WER and CER are not measured, so the offline demo and
    CI need no ASR weights.
    """

    model: Text = "openai/whisper-large-v3-turbo"  # a Hub id or a local folder
    language: Text = "en"
    batch_size: PositiveInt = 8


class Naturalness(Strict):
    """The MOS predictor (kanitts.evaluation.naturalness): a one-output audio regression model.

    Optional: without it MOS is not measured. ``if_unavailable: skip`` leaves MOS unmeasured
    (with a note) when the weights cannot be loaded, instead of stopping before generation.
    """

    model: Text  # a Hub id or a local folder
    batch_size: PositiveInt = 8
    if_unavailable: Literal["error", "skip"] = "error"


class EvalConfig(Strict):
    paths: EvalPaths = EvalPaths()
    huggingface: EvalHub = EvalHub()
    processing: EvalProcessing = EvalProcessing()
    speaker_similarity: SpeakerSimilarity | None = None
    intelligibility: Intelligibility | None = None
    naturalness: Naturalness | None = None

    @property
    def notes(self) -> list[str]:
        return self.processing.notes
