"""Shared fixtures: tiny random models saved in the real layouts, built once per test session."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One intra-op thread: the tiny models gain nothing from more, and on a shared 2-core machine
# two threads per op wait on each other (the suite ran 4x slower under load).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run only where PyTorch sees a CUDA GPU."""
    cuda_tests = [item for item in items if item.get_closest_marker("cuda") is not None]
    if not cuda_tests:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs these on one)")
    for item in cuda_tests:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_tts(tmp_path_factory):
    """(folder, ModelConfig): a tiny LFM2 + tokenizer standing in for a KaniTTS base model."""
    from kanitts.tiny import build_tiny_tts

    folder = tmp_path_factory.mktemp("tiny_tts")
    cfg = build_tiny_tts(folder)
    return folder, cfg


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tts):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_tts[0]))


@pytest.fixture(scope="session")
def tiny_layout(tiny_tts):
    from kanitts.tokens import TokenLayout

    return TokenLayout.from_config(tiny_tts[1])


@pytest.fixture(scope="session")
def tiny_codec_dir(tmp_path_factory):
    """A small random NanoCodec saved as a local folder (config.json + model.safetensors)."""
    from kanitts.tiny import build_tiny_nanocodec

    return build_tiny_nanocodec(tmp_path_factory.mktemp("tiny_codec"))


@pytest.fixture(scope="session")
def tiny_codec(tiny_codec_dir):
    from kanitts.codecs import load_codec

    return load_codec("nanocodec", tiny_codec_dir, device="cpu")


@pytest.fixture(scope="session")
def tiny_kanade_dir(tmp_path_factory):
    """A small random Kanade codec (12.5 Hz, 128-d global embedding, Vocos) as a local folder."""
    from kanitts.tiny import build_tiny_kanade

    return build_tiny_kanade(tmp_path_factory.mktemp("tiny_kanade"))


@pytest.fixture(scope="session")
def tiny_kanade(tiny_kanade_dir):
    from kanitts.codecs import load_codec

    return load_codec("kanade", tiny_kanade_dir, device="cpu")


@pytest.fixture(scope="session")
def kanade_project(tmp_path_factory, tiny_kanade_dir):
    """A tiny Kanade TTS project: a base LFM2 + tokenizer sized for the Kanade token layout, its
    model_config (codec.kind: kanade, the tiny codec's folder) and a prepared two-speaker dataset."""
    import csv
    from types import SimpleNamespace

    import soundfile as sf

    from kanade_tokenizer.testing import synthetic_speech
    from kanitts.prepare.options import CodecSpec, PrepareOptions
    from kanitts.prepare.pipeline import prepare_dataset
    from kanitts.tiny import build_lfm2, build_tokenizer, tiny_model_config
    from kanitts.tokens import TokenLayout

    root = tmp_path_factory.mktemp("kanade_project")
    tokenizer = build_tokenizer(root / "base")
    model_cfg = tiny_model_config(len(tokenizer), kind="kanade", weights=str(tiny_kanade_dir))
    build_lfm2(root / "base", vocab_size=TokenLayout.from_config(model_cfg).vocab_size, tokenizer=tokenizer)
    clips = root / "clips"
    clips.mkdir()
    texts = ["The quick brown fox.", "Hello there.", "A test of speech."]
    with open(clips / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "text", "speaker"])
        for s, speaker in enumerate(("alice", "bob")):
            for i, text in enumerate(texts):
                name = f"{speaker}_{i}.wav"
                sf.write(clips / name, synthetic_speech(1.2 + 0.3 * i, seed=10 * s + i).numpy(), 24000)
                writer.writerow([name, text, speaker])
    options = PrepareOptions(
        input=str(clips / "manifest.csv"), output=str(root / "data"), progress=False, num_workers=1
    )
    prepare_dataset(options, CodecSpec(kind="kanade", weights=str(tiny_kanade_dir)))
    return SimpleNamespace(root=root, base=root / "base", model_cfg=model_cfg, data=root / "data",
                           clips=clips, codec_dir=tiny_kanade_dir)


@pytest.fixture(scope="session")
def kanade_sequences(kanade_project, tmp_path_factory):
    """The training sequences of :func:`kanade_project`'s dataset, and the data step's report."""
    from transformers import AutoTokenizer

    from kanitts.config import DatasetConfig
    from kanitts.sequences import build_training_dataset

    cfg = DatasetConfig.model_validate({
        "hf_datasets": [{"reponame": str(kanade_project.data)}], "dedup_frames": False,
        "cache_dir": str(tmp_path_factory.mktemp("kanade_cache")),
    })
    tokenizer = AutoTokenizer.from_pretrained(str(kanade_project.base))
    return build_training_dataset(cfg, kanade_project.model_cfg, tokenizer, num_proc=1)


@pytest.fixture(scope="session")
def evaluated_project(tmp_path_factory, tiny_tts, tiny_codec_dir):
    """(folder, EvalSummary): a small eval project, evaluated once with its report.

    Its config paths are relative to the folder: copy it and chdir into the copy to resume.
    """
    from kanitts.recipes.eval import evaluate

    from eval_project import build_project, eval_configs

    root = tmp_path_factory.mktemp("eval_project")
    build_project(root, tiny_tts[0], tiny_tts[1], tiny_codec_dir)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        summary = evaluate(eval_configs(Path("config")), report=True)
    finally:
        os.chdir(cwd)
    return root, summary


@pytest.fixture
def project_copy(evaluated_project, tmp_path, monkeypatch):
    """A fresh copy of the evaluated project, as the working directory; returns its config dir."""
    import shutil

    copy = tmp_path / "project"
    shutil.copytree(evaluated_project[0], copy)
    monkeypatch.chdir(copy)
    return Path("config")


def upstream_fixed(package: str, what: str, patch: str) -> str:
    """The failure message of a canary: a test marked ``canary`` asserts a bug of a third-party
    package that one of kanitts' patches works around, so it fails on the first release that
    fixes the bug, and that failure is news, not a regression: it says which release and what
    to do."""
    from importlib.metadata import version

    return (
        f"upstream fixed {what} ({package} {version(package)}): "
        f"remove this canary and the patch in {patch} if no longer needed"
    )


CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@contextlib.contextmanager
def headless_chromium(*flags: str):
    """Debian's chromium under selenium in a throwaway profile, with the browser log kept.

    The browser tests skip where chromium and chromium-driver are not installed (``make setup``
    installs them); ``flags`` are added to the ones every test needs.
    """
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip("Debian's chromium and chromium-driver are not installed "
                    "(apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="kanitts-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={profile}", *flags):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
