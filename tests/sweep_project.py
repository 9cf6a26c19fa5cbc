"""A tiny training project on disk for the validation and sweep tests: base model, codec data of
two speakers, config files. Built per test module; helpers, not fixtures, so both modules and
the subprocesses of the kill and two-process tests use the same files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

CODEBOOK_SIZE = 32  # keeps the vocabulary (and so every step) small


def build_base(folder: Path, codebook_size: int = CODEBOOK_SIZE, codec_weights: str | None = None):
    """(folder, ModelConfig) of a tiny hybrid LFM2 and its tokenizer (for a model that speaks
    with the tiny NanoCodec at ``codec_weights``: its 4032 codes)."""
    from kanitts.tiny import build_lfm2, build_tokenizer, tiny_model_config
    from kanitts.tokens import TokenLayout

    tokenizer = build_tokenizer(folder)
    cfg = tiny_model_config(len(tokenizer), codebook_size=codebook_size, weights=codec_weights)
    layout = TokenLayout.from_config(cfg)
    build_lfm2(folder, vocab_size=layout.vocab_size, hidden_size=32, intermediate_size=64, tokenizer=tokenizer)
    return folder, cfg


def save_codec_dataset(path: Path, speakers=("alice", "bob"), rows_per_speaker=(12, 6), seed=1) -> None:
    import datasets

    rng = np.random.default_rng(seed)
    rows = []
    for speaker, count in zip(speakers, rows_per_speaker):
        for i in range(count):
            frames = int(rng.integers(3, 10))
            layers = rng.integers(0, CODEBOOK_SIZE, size=(4, frames)).tolist()
            rows.append({"text": f"{speaker} says sentence {i}.", "speaker": speaker, "encoded_len": frames,
                         **{f"nano_layer_{k + 1}": layers[k] for k in range(4)}})
    datasets.Dataset.from_list(rows).save_to_disk(str(path))


def experiment(model_id: str, *, steps: int = 3, trainer=None, sweep=None, **training) -> dict:
    record = {
        "base": {"model_id": model_id},
        "lora_args": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "in_proj"]},
        "trainer_args": {"max_steps": steps, "learning_rate": 1e-3, "logging_steps": 1, "eval_steps": 1,
                         "per_device_eval_batch_size": 8, **(trainer or {})},
        "training": training,
    }
    if sweep is not None:
        record["sweep"] = sweep
    return record


def write_project(root: Path, base, experiments: list[dict], *, validation: dict | None = None) -> Path:
    """Config folder under `root` (paths inside are absolute); returns it."""
    folder, cfg = base
    data = root / "codec"
    if not data.exists():
        save_codec_dataset(data)
    config_dir = root / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    entry = {"reponame": str(data), **(validation if validation is not None else {"validation_fraction": 0.25})}
    (config_dir / "model_config.yaml").write_text(yaml.safe_dump(cfg.model_dump()))
    (config_dir / "dataset_config.yaml").write_text(yaml.safe_dump({
        "max_duration_sec": None, "cache_dir": str(root / "cache"), "num_proc": 1, "hf_datasets": [entry],
    }))
    (config_dir / "experiments.yaml").write_text(yaml.safe_dump({"base_model": str(folder),
                                                                 "experiments": experiments}))
    (config_dir / "eval_config.yaml").write_text(yaml.safe_dump({"paths": {"checkpoints_dir": str(root / "ck")}}))
    return config_dir
