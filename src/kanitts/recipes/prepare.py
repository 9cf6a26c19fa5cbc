"""The prepare job: recordings -> codec dataset, with the codec the project's config names.

The codec a dataset is encoded with must be the one training and inference decode with, which is
``codec`` in ``model_config.yaml``. This module is the one place that turns that file into a
:class:`~kanitts.prepare.options.CodecSpec`; the component
(:func:`kanitts.prepare.pipeline.prepare_dataset`) takes the spec and never reads configs. The
CLI and Python callers both come here, so they get the same dataset for the same inputs::

    from pathlib import Path
    from kanitts.prepare.options import PrepareOptions
    from kanitts.recipes import prepare

    prepare.run(PrepareOptions(input="data/alice", output="data/alice-nano", speaker="alice"),
                config_dir=Path("config"))
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from kanitts.errors import UserError
from kanitts.prepare.options import SEGMENTATION_FIELDS, CodecSpec, PrepareOptions, default


def resolve_codec(
    config_dir: Path,
    *,
    kind: str | None = None,
    weights: str | None = None,
    device: str | None = default(CodecSpec, "device"),
    dtype: str = default(CodecSpec, "dtype"),
) -> CodecSpec:
    """The codec to encode with: ``kind`` and ``weights`` as given, else those of
    ``model_config.yaml`` in ``config_dir`` (its schema defaults when there is no such file).
    Another ``kind`` than the config's, without ``weights``, takes that codec's default weights."""
    from kanitts.codecs import codec_entry
    from kanitts.config import CONFIG_FILES, ModelConfig, load_configs

    if kind is None or weights is None:
        if (Path(config_dir) / CONFIG_FILES["model"]).is_file():
            configs = load_configs(config_dir, kinds=("model",))
            for warning in configs.warnings:  # codec.model_name set, where kind + weights decide
                print(f"warning: {warning}", file=sys.stderr)
            section = configs.model.codec
        else:
            section = ModelConfig().codec
        kind = kind or section.kind
        if weights is None:
            weights = section.weights if kind == section.kind else codec_entry(kind).default_weights
    if weights is None:
        raise UserError(f"codec {kind!r} has no default weights; name a Hub id or a folder with --codec-model")
    return CodecSpec(kind=kind, weights=str(weights), device=device, dtype=dtype)


def configured_speaker_embedder(config_dir: Path) -> str | None:
    """``speaker_embedder.weights`` of model_config.yaml in ``config_dir`` (None without one)."""
    from kanitts.config import CONFIG_FILES, load_configs

    if not (Path(config_dir) / CONFIG_FILES["model"]).is_file():
        return None
    section = load_configs(config_dir, kinds=("model",)).model.speaker_embedder
    return None if section is None else section.weights


def check_one_voice_embedding(options: PrepareOptions, spec: CodecSpec) -> None:
    """A codec with its own voice embedding (Kanade) takes no speaker embedder: the data's
    embedding column would be the codec's, and the embedder's work lost (model_config.yaml
    refuses the two together for the same reason)."""
    from kanitts.codecs import codec_entry

    column = codec_entry(spec.kind).embedding_column
    if options.speaker_embedder is not None and column is not None:
        raise UserError(
            f"--speaker-embedder {options.speaker_embedder}: the {spec.kind} codec writes its own global (speaker) "
            f"embedding per clip ({column}), which is the voice its decoder and a conditioned model read; "
            "drop --speaker-embedder (a speaker embedder is for NanoCodec data, KaniTTS-2)"
        )


def segmentation_defaults(options: PrepareOptions, config_dir: Path) -> PrepareOptions:
    """``options`` with the long-recording settings not given as flags taken from the ``prepare``
    section of ``dataset_config.yaml`` (the longest clip from its ``max_duration_sec``), where the
    input is a folder of recordings and that file exists."""
    from kanitts.config import CONFIG_FILES, load_configs
    from kanitts.prepare.recordings import needs_segmenting

    if not needs_segmenting(options) or not (Path(config_dir) / CONFIG_FILES["dataset"]).is_file():
        return options
    dataset = load_configs(config_dir, kinds=("dataset",)).dataset
    section = dataset.prepare
    given = {name: getattr(section, name) for name in SEGMENTATION_FIELDS if section is not None}
    filled = {name: value for name, value in given.items() if value is not None and getattr(options, name) is None}
    if options.segment_max_duration is None and "segment_max_duration" not in filled and dataset.max_duration_sec:
        filled["segment_max_duration"] = float(dataset.max_duration_sec)
    return replace(options, **filled) if filled else options


def run(
    options: PrepareOptions,
    *,
    config_dir: Path,
    codec: str | None = None,
    codec_model: str | None = None,
    device: str | None = default(CodecSpec, "device"),
    dtype: str = default(CodecSpec, "dtype"),
) -> int:
    """``kanitts prepare``: check the options, pick the codec (:func:`resolve_codec`), encode,
    print the summary; returns the exit code. A user's mistake raises UserError/ConfigError."""
    from kanitts.prepare.pipeline import prepare_dataset

    options.validate()  # before the config and the codec are loaded
    options = segmentation_defaults(options, config_dir)
    options.validate()
    if options.speaker_embedder is None:
        options.speaker_embedder = configured_speaker_embedder(config_dir)
    spec = resolve_codec(config_dir, kind=codec, weights=codec_model, device=device, dtype=dtype)
    spec.validate()
    check_one_voice_embedding(options, spec)
    result = prepare_dataset(options, spec)
    print(result.summary())
    return 0
