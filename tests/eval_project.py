"""A small evaluation project on the tiny models, shared by the eval, report and hub tests.

Config paths are relative to the project folder, so a finished project can be copied and the
copy resumes exactly where the original stopped.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import yaml

from kanitts.audio import write_wav

SR = 22050
EXPERIMENTS = [("exp-a", 8, 1e-3), ("exp-b", 16, 5e-4)]
SENTENCES = [
    {"prompt 1": "alice: Hello there."},
    {"prompt:2": "alice: The quick brown fox."},
    {"no speaker": "Plain text without a prefix."},
]
MAX_NEW_TOKENS = 14  # start_of_ai, start_of_speech, 3 frames


def voice(f0: float, seconds: float, seed: int, brightness: float) -> np.ndarray:
    """A crude vowel-like harmonic signal: pitch f0, spectral tilt set by ``brightness``."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(SR * seconds)) / SR
    vibrato = 1 + 0.02 * np.sin(2 * np.pi * 5 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * f0 * np.cumsum(vibrato) / SR
    wave = sum((brightness ** k) * np.sin(k * phase) for k in range(1, 30))
    envelope = np.clip(np.sin(np.pi * t / seconds) * 3, 0, 1) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))
    return (0.3 * wave * envelope / np.max(np.abs(wave))).astype(np.float32)


def write_checkpoint(
    base_folder: Path, checkpoints: Path, model_id: str, experiment: dict, losses: list[float]
) -> Path:
    """A checkpoint folder in the layout `kanitts train` writes (the weights: the base model's)."""
    folder = checkpoints / model_id
    shutil.copytree(base_folder, folder)
    (folder / "experiment.yaml").write_text(
        yaml.safe_dump({"base_model": str(base_folder), "model_id": model_id, "experiment": experiment})
    )
    history = [{"step": i + 1, "loss": loss} for i, loss in enumerate(losses)]
    (folder / "metrics.json").write_text(json.dumps({
        "loss_history": history, "final_loss": losses[-1], "train_runtime": 12.5,
        "tokens_per_second": 900.0, "peak_memory_bytes": 0, "dataset_fingerprint": "abc123",
    }))
    return folder


def build_project(root: Path, base_folder: Path, model_cfg, codec_dir: Path) -> Path:
    """Configs (relative paths), two trained checkpoints and reference clips under ``root``."""
    config = root / "config"
    config.mkdir(parents=True)
    refs = [write_wav(root / "refs" / f"alice_{i}.wav", voice(110, 1.2, i, 0.8), SR) for i in range(2)]
    experiments = [
        {"base": {"model_id": mid, "desc": f"rank {r}"},
         "lora_args": {"r": r, "lora_alpha": r, "target_modules": ["q_proj", "v_proj"]},
         "trainer_args": {"learning_rate": lr, "max_steps": 3}}
        for mid, r, lr in EXPERIMENTS
    ]
    files = {
        "experiments.yaml": {"base_model": str(base_folder), "experiments": experiments},
        "eval_config.yaml": {
            "paths": {"audio_output_dir": "audio samples", "checkpoints_dir": "ckpt", "report_dir": "report"},
            "huggingface": {"upload_dataset": False},
            "speaker_similarity": {"references": {"alice": [str(p.relative_to(root)) for p in refs]},
                                   "embedder": "mfcc-stats"},
        },
        "eval_set.yaml": {"eval_set": SENTENCES},
        "model_config.yaml": {**model_cfg.model_dump(),
                              "codec": {**model_cfg.codec.model_dump(), "weights": str(codec_dir)}},
        "inference_config.yaml": {"model": {"torch_dtype": "float32"},
                                  "generation": {"max_new_tokens": MAX_NEW_TOKENS, "constrained_decoding": True,
                                                 "batch_size": 3}},
        "dataset_config.yaml": {"hf_datasets": [{"reponame": "someone/alice-nano", "speaker_id": "alice"},
                                                {"reponame": "local/folder/data", "speaker_id": "alice"}]},
    }
    for name, data in files.items():
        (config / name).write_text(yaml.safe_dump(data, sort_keys=False))
    for (mid, _, _), experiment, losses in zip(EXPERIMENTS, experiments, ([3.0, 2.5, 2.1], [3.1, 2.2, 1.7])):
        write_checkpoint(base_folder, root / "ckpt", mid, experiment, losses)
    return config


def eval_configs(config_dir: Path):
    from kanitts.config import load_configs

    return load_configs(config_dir, kinds=("experiments", "eval", "eval_set", "model", "inference"))
