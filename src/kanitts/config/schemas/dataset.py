"""dataset_config.yaml: the source datasets of the sequence step, their columns and filters."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from kanitts.config.schemas.base import Strict, Text


class CategoricalFilter(Strict):
    column_name: Text
    value: str | int | float | bool


class DatasetEntry(Strict):
    """One source dataset. `reponame` is a Hub id, a save_to_disk folder, or parquet/jsonl/csv files."""

    reponame: Text
    name: Text | None = None
    split: Text = "train"
    text_col_name: Text = "text"
    # The reference's keys, one per NanoCodec codebook: the column of this dataset holding it.
    nano_layer_1: Text | None = None
    nano_layer_2: Text | None = None
    nano_layer_3: Text | None = None
    nano_layer_4: Text | None = None
    # Any codec: codebook column (model_config.yaml codec_layers) -> the column of this dataset.
    codebook_columns: dict[Text, Text] = {}
    encoded_len: Text = "encoded_len"
    speaker_id: Text | None = Field(None, min_length=1)
    # KaniTTS-2's prompt prefix ("en: text"), lower-cased as there; instead of speaker_id's.
    language_tag: Text | None = Field(None, min_length=1)
    # The column of each clip's speaker embedding when it is not the prepared one (speaker_emb, or
    # the codec's global embedding): e.g. grouped_sp_emb in KaniTTS-2's datasets.
    speaker_emb: Text | None = Field(None, min_length=1)
    max_len: PositiveInt | None = None
    categorical_filter: CategoricalFilter | None = None
    # Added here: rows held out of training for the validation loss, drawn per speaker (seeded by
    # `seed`); a fraction of each speaker's rows or a row count shared out over the speakers.
    validation_fraction: float | None = Field(None, gt=0.0, lt=1.0)
    validation_rows: PositiveInt | None = None

    @model_validator(mode="after")
    def _one_prefix(self) -> DatasetEntry:
        if self.speaker_id is not None and self.language_tag is not None:
            raise ValueError(
                "speaker_id and language_tag both set a prompt prefix ('<tag>: text'); give one of them"
            )
        return self

    @property
    def prompt_prefix(self) -> str | None:
        """What precedes the text in the prompt: the language tag, else the speaker id."""
        return self.language_tag if self.language_tag is not None else self.speaker_id

    @model_validator(mode="after")
    def _one_name_per_codebook(self) -> DatasetEntry:
        twice = [k for k in self.codebook_columns if k in _NANO_KEYS and getattr(self, k) is not None]
        if twice:
            raise ValueError(f"codebook_columns renames {', '.join(twice)}, which is also set as its own key")
        if self.validation_fraction is not None and self.validation_rows is not None:
            raise ValueError("validation_fraction and validation_rows are both set: give one of them")
        return self

    @property
    def label(self) -> str:
        """How messages name this dataset."""
        return self.reponame if self.name is None else f"{self.reponame} ({self.name})"

    def column_renames(self) -> dict[str, str]:
        """Codebook column -> this dataset's column, for the codebooks whose column is named here."""
        nano = {key: getattr(self, key) for key in _NANO_KEYS if getattr(self, key) is not None}
        return {**nano, **self.codebook_columns}

    def layer_columns(self, codec_layers: Sequence[str]) -> list[str]:
        """This dataset's column of each codebook of `codec_layers` (model_config.yaml), in order."""
        renames = self.column_renames()
        return [renames.get(name, name) for name in codec_layers]


_NANO_KEYS = tuple(k for k in DatasetEntry.model_fields if k.startswith("nano_layer_"))


class PrepareSection(Strict):
    """How `kanitts prepare` cuts and transcribes long recordings (the flags of the same names
    win; max_duration_sec above is the longest clip when segment_max_duration is not set)."""

    segment_min_duration: PositiveFloat | None = None
    segment_max_duration: PositiveFloat | None = None
    segment_target_duration: PositiveFloat | None = None
    segment_padding: float | None = Field(None, ge=0)
    split_pause: PositiveFloat | None = None
    vad_threshold: float | None = Field(None, gt=0, lt=1)
    asr_model: Text | None = None
    asr_language: Text | None = None
    asr_batch_size: PositiveInt | None = None
    min_asr_confidence: float | None = Field(None, le=0)
    refine_cuts: bool | None = None


class DatasetConfig(Strict):
    max_duration_sec: PositiveFloat | None = None
    # `kanitts prepare` on long recordings; not used by the sequence step
    prepare: PrepareSection | None = None
    hf_datasets: list[DatasetEntry] = Field(min_length=1)
    # Added here (the reference has none of these as config keys):
    # the process count under the reference's name for it (an argument there); num_proc wins
    n_shards_per_dataset: PositiveInt | None = None
    num_proc: PositiveInt | None = None
    seed: int = Field(42, ge=0)
    cache_dir: Text = ".cache/kanitts/sequences"
    # The reference drops each codec frame equal to the one before it (shortens silences);
    # false keeps every frame, so the model learns true durations.
    dedup_frames: bool = True
