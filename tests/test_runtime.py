"""kanitts.runtime: the device rule, one dtype vocabulary, the launcher's rank, scoped seeding,
memory release; and the one Hub-id rule every loader uses."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from kanitts.errors import UserError
from kanitts.files import is_hub_id
from kanitts.runtime import (
    DTYPE_NAMES,
    canonical_dtype,
    process_rank,
    release_memory,
    resolve_device,
    resolve_dtype,
    scoped_seed,
)


@pytest.mark.parametrize("short, long", [("bf16", "bfloat16"), ("fp16", "float16"), ("fp32", "float32")])
def test_both_spellings_mean_one_dtype(short, long):
    assert canonical_dtype(short) == canonical_dtype(long) == canonical_dtype(long.upper()) == long
    assert resolve_dtype(short, "cpu") == resolve_dtype(long, "cpu") == getattr(torch, long)
    assert short in DTYPE_NAMES and long in DTYPE_NAMES


def test_auto_and_given_dtypes_on_the_cpu():
    assert resolve_dtype("auto", "cpu") == torch.float32  # half precision is slower on a CPU
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype(torch.float16, "cpu") == torch.float16  # a torch dtype passes through


def test_auto_on_a_gpu_is_half_precision(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", "cuda:1") == resolve_dtype("bf16", "cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", "cuda") == resolve_dtype("bfloat16", "cuda") == torch.float16
    assert resolve_dtype("fp32", "cuda") == torch.float32


def test_an_unknown_dtype_lists_the_names():
    with pytest.raises(UserError) as err:
        resolve_dtype("bf32", "cpu")
    assert "'bf32'" in str(err.value)
    assert "auto, float32 (fp32), bfloat16 (bf16), float16 (fp16)" in str(err.value)
    with pytest.raises(UserError, match=r"^--dtype: unknown dtype 'half'"):
        canonical_dtype("half", "--dtype")


def test_device_rule(monkeypatch):
    assert resolve_device("cpu") == resolve_device(torch.device("cpu")) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == resolve_device("auto") == "cpu"
    with pytest.raises(UserError, match="'cuda:1' was asked for, but PyTorch sees no CUDA GPU"):
        resolve_device("cuda:1")
    with pytest.raises(UserError, match="'gpu0' is not supported: use auto, cpu, cuda, cuda:N or mps"):
        resolve_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:2") == "cuda:2"


def test_rank_from_the_launchers_environment(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    alone = process_rank()
    assert (alone.rank, alone.world_size, alone.local_rank, alone.is_main) == (0, 1, None, True)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    launched = process_rank()
    assert (launched.rank, launched.world_size, launched.local_rank, launched.is_main) == (3, 4, 1, False)
    monkeypatch.setenv("WORLD_SIZE", "four")
    with pytest.raises(UserError, match=r"WORLD_SIZE='four' is not a whole number"):
        process_rank()


def test_scoped_seed_seeds_the_block_and_gives_the_state_back():
    torch.manual_seed(99)
    expected_next = torch.rand(3)
    torch.manual_seed(99)
    with scoped_seed(7):
        inside = torch.rand(3)
    with scoped_seed(7):
        assert torch.equal(torch.rand(3), inside)  # the same seed, the same draws
    assert torch.equal(torch.rand(3), expected_next)  # the caller's generator was not moved
    torch.manual_seed(99)
    with scoped_seed():  # no seed: draws go on from the caller's state, which comes back after
        assert torch.equal(torch.rand(3), expected_next)
    assert torch.equal(torch.rand(3), expected_next)


def test_release_memory_collects_what_was_dropped():
    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: only the garbage collector frees it
    gone = weakref.ref(a)
    gc.disable()
    try:
        del a, b
        assert gone() is not None
        release_memory()
        assert gone() is None
    finally:
        gc.enable()


def test_one_hub_id_rule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_hub_id("nineninesix/nemo-nano-codec-22khz-0.6kbps-12.5fps-pytorch")
    assert is_hub_id("me/model.v2") and is_hub_id("me/data.set")
    # names that end like a file are files (a missing one is said so, not asked of the Hub)
    for name in ("me/model.safetensors", "me/codec.SAFETENSORS", "configs/model.yaml", "me/train.jsonl.gz",
                 "me/clips.parquet", "me/ref.wav"):
        assert not is_hub_id(name), name
    for name in ("./me/model", "~/me", "../x/y", "a/b/c", "owner/name/", "model", "me\\model", ""):
        assert not is_hub_id(name), name


def test_prepare_takes_both_spellings_of_its_dtype():
    from kanitts.cli import build_parser
    from kanitts.prepare.options import CodecSpec

    for name in ("bf16", "bfloat16", "fp32", "float32", "auto"):
        CodecSpec(kind="nanocodec", weights="w", dtype=name).validate()
        assert build_parser().parse_args(["prepare", "in", "out", "--dtype", name]).dtype == name
    with pytest.raises(UserError, match=r"--dtype: unknown dtype 'half'; use one of auto, float32 \(fp32\)"):
        CodecSpec(kind="nanocodec", weights="w", dtype="half").validate()


def test_kanade_takes_the_same_dtype_vocabulary():
    from kanade_tokenizer.errors import KanadeInputError
    from kanade_tokenizer.scripts.export_safetensors import _DTYPES as EXPORT_DTYPES
    from kanade_tokenizer.scripts.export_safetensors import main as export_main
    from kanade_tokenizer.testing import build_tiny_model

    model = build_tiny_model(seed=0)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    for short, long, dtype in (("bf16", "bfloat16", torch.bfloat16), ("fp16", "float16", torch.float16)):
        model.mixed_precision = short
        by_short = model._autocast_dtype(cpu)
        model.mixed_precision = long
        assert by_short == model._autocast_dtype(cpu) == dtype
    for name in ("fp32", "float32", "no", None):
        model.mixed_precision = name
        assert model._autocast_dtype(gpu) is None
    model.mixed_precision = "half"
    with pytest.raises(KanadeInputError, match=r"mixed_precision: unknown dtype 'half'; use one of auto, float32"):
        model._autocast_dtype(cpu)
    assert set(EXPORT_DTYPES) == {"float32", "fp32", "bfloat16", "bf16", "float16", "fp16"}
    with pytest.raises(SystemExit):  # argparse refuses a name outside them
        export_main(["ckpt", "--dtype", "half"])


def test_kanade_loaders_follow_the_one_hub_id_rule(tmp_path, monkeypatch):
    from kanade_tokenizer.pretrained import resolve_files
    from kanade_tokenizer.vocoders import VocoderLoadError, load_vocoder

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"not a Hugging Face repo id: me/model\.yaml"):
        resolve_files("me/model.yaml")  # a missing config file, never asked of the Hub
    with pytest.raises(FileNotFoundError, match="not a Hugging Face repo id: a/b/c"):
        resolve_files("a/b/c")
    for name in ("me/vocos.safetensors", "./me/vocos", "~/vocos"):
        with pytest.raises(VocoderLoadError, match="no such folder, and not a Hugging Face repo id"):
            load_vocoder(name)
