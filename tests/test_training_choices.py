"""What training picks from the machine and the config: trackers, attention, precision."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from kanitts.errors import UserError
from kanitts.training import model_loading, tracking
from kanitts.training.tracking import resolve_tracking


@pytest.fixture
def no_wandb_login(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))


def test_wandb_without_login_runs_offline_and_says_so(no_wandb_login, monkeypatch):
    monkeypatch.setattr(tracking, "_installed", lambda name: True)
    result = resolve_tracking(None, "my-project")  # the reference default: wandb
    assert result.report_to == ["wandb"]
    assert result.environment == {"WANDB_PROJECT": "my-project", "WANDB_MODE": "offline"}
    assert "not logged in" in result.notes[0]


def test_wandb_with_a_netrc_login_reports_online(no_wandb_login, monkeypatch, tmp_path):
    monkeypatch.setattr(tracking, "_installed", lambda name: True)
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    result = resolve_tracking("wandb", "proj")
    assert result.report_to == ["wandb"] and result.environment == {"WANDB_PROJECT": "proj"}
    assert result.notes == []


def test_missing_or_disabled_trackers_never_fail(no_wandb_login, monkeypatch):
    monkeypatch.setattr(tracking, "_installed", lambda name: name != "trackio")
    result = resolve_tracking(["trackio", "tensorboard"], None)
    assert result.report_to == ["tensorboard"]
    assert "trackio is not installed" in result.notes[0]
    monkeypatch.setenv("WANDB_MODE", "disabled")
    result = resolve_tracking("wandb", None)
    assert result.report_to == ["none"] and "disabled" in result.notes[0]
    assert resolve_tracking("none", "p").report_to == ["none"]


@pytest.fixture
def fake_flash_attn(monkeypatch, tmp_path):
    """A CUDA machine (as far as the choice can tell) with a ``flash_attn`` package on the path;
    ``write(body)`` sets what importing it does."""
    from kanitts import runtime

    package = tmp_path / "site" / "flash_attn"
    package.mkdir(parents=True)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    runtime.flash_attention_functions.cache_clear()

    def write(body: str) -> None:
        (package / "__init__.py").write_text(body)
        sys.modules.pop("flash_attn", None)
        runtime.flash_attention_functions.cache_clear()

    yield write
    sys.modules.pop("flash_attn", None)
    runtime.flash_attention_functions.cache_clear()


def test_attention_auto_falls_back_to_sdpa_without_flash_attn(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    choice, notes = model_loading.choose_attention("auto", torch.bfloat16)
    assert choice == "sdpa" and "no CUDA GPU" in notes[0]
    assert model_loading.choose_attention("eager") == ("eager", [])
    with pytest.raises(UserError, match=r"training\.attn_implementation: flash_attention_2 .* no CUDA GPU"):
        model_loading.choose_attention("flash_attention_2", torch.bfloat16)


def test_attention_auto_takes_flash_only_where_it_runs(fake_flash_attn):
    fake_flash_attn("def flash_attn_func(*a, **k): pass\ndef flash_attn_varlen_func(*a, **k): pass\n")
    assert model_loading.choose_attention("auto", torch.bfloat16) == ("flash_attention_2", [])
    assert model_loading.choose_attention("flash_attention_2", torch.float16) == ("flash_attention_2", [])
    # flash-attn takes only fp16/bf16: an fp32 experiment gets sdpa, and says why
    choice, notes = model_loading.choose_attention("auto", torch.float32)
    assert choice == "sdpa" and "fp16/bf16" in notes[0] and "float32" in notes[0]
    with pytest.raises(UserError, match=r"fp16/bf16.*trainer_args\.bf16"):
        model_loading.choose_attention("flash_attention_2", torch.float32)


def test_attention_auto_skips_a_flash_attn_built_for_another_torch(fake_flash_attn):
    # found on the path, but its CUDA extension does not load (the usual wrong-wheel failure)
    fake_flash_attn("raise ImportError('flash_attn_2_cuda.so: undefined symbol: _ZN3c10')\n")
    choice, notes = model_loading.choose_attention("auto", torch.bfloat16)
    assert choice == "sdpa" and "does not import" in notes[0]
    with pytest.raises(UserError, match="does not import"):
        model_loading.choose_attention("flash_attention_2", torch.bfloat16)


def test_bf16_only_where_supported(monkeypatch):
    monkeypatch.setattr(model_loading, "bf16_supported", lambda: False)
    args, dtype, notes = model_loading.choose_precision({"bf16": True, "learning_rate": 1e-4})
    assert args == {"bf16": False, "learning_rate": 1e-4} and dtype == torch.float32
    assert "fp32" in notes[0]
    monkeypatch.setattr(model_loading, "bf16_supported", lambda: True)
    args, dtype, notes = model_loading.choose_precision({"bf16": True})
    assert args["bf16"] is True and dtype == torch.bfloat16 and notes == []


def test_trainer_args_pass_through_with_the_runner_settings(tmp_path):
    from kanitts.config import Experiment
    from kanitts.training.arguments import training_arguments

    experiment = Experiment.model_validate({
        "base": {"model_id": "x", "run_name": "run-x"},
        "trainer_args": {"warmup_ratio": 0.1, "weight_decay": 0.02, "lr_scheduler_type": "cosine",
                         "logging_steps": 3, "save_steps": 7, "seed": 5},
    })
    args, dtype, notes = training_arguments(experiment, tmp_path / "run", ["none"], "proj")
    assert (args.weight_decay, args.lr_scheduler_type, args.save_steps, args.seed) == (0.02, "cosine", 7, 5)
    assert args.warmup_steps == 0.1 and any("warmup_ratio" in n for n in notes)
    assert args.logging_steps == 3 and args.save_total_limit == 2  # the user's value wins, our default fills in
    assert args.output_dir == str(tmp_path / "run") and args.run_name == "run-x"
    assert args.remove_unused_columns is False and args.report_to == []  # "none": no tracker
    assert args.train_sampling_strategy == "group_by_length" and dtype == torch.float32

    packed = experiment.model_copy(update={"training": experiment.training.model_copy(update={"packing": True})})
    args, _, _ = training_arguments(packed, tmp_path / "run", ["none"], "proj")
    assert args.train_sampling_strategy == "random"  # packs come from PackedBatchSampler instead


def test_tracker_environment_is_set_for_the_block_and_restored_after(monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "the-callers")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    before = dict(os.environ)
    chosen = tracking.Tracking(report_to=["wandb"], environment={"WANDB_PROJECT": "mine", "WANDB_MODE": "offline"})
    with chosen.applied():
        assert os.environ["WANDB_PROJECT"] == "mine" and os.environ["WANDB_MODE"] == "offline"
    assert dict(os.environ) == before
    with pytest.raises(RuntimeError), chosen.applied():
        raise RuntimeError("training failed")
    assert dict(os.environ) == before


@pytest.mark.parametrize("name", ["./models/base", "models/base/v1", "base-model"])
def test_a_missing_local_base_model_is_named_not_asked_of_the_hub(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=rf"base_model '{name}' is not a folder here and not a Hub id owner/name"):
        model_loading.load_base_model(name, "sdpa", torch.float32)
