"""What training picks from the machine and the config: trackers, attention, precision."""

from __future__ import annotations

import pytest
import torch

from kanitts.errors import UserError
from kanitts.training import lora, tracking
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


def test_attention_auto_falls_back_to_sdpa_without_flash_attn(monkeypatch):
    monkeypatch.setattr(lora, "flash_attention_available", lambda: False)
    assert lora.choose_attention("auto")[0] == "sdpa"
    assert lora.choose_attention("eager") == ("eager", [])
    with pytest.raises(UserError, match="flash_attention_2"):
        lora.choose_attention("flash_attention_2")
    monkeypatch.setattr(lora, "flash_attention_available", lambda: True)
    assert lora.choose_attention("auto") == ("flash_attention_2", [])


def test_bf16_only_where_supported(monkeypatch):
    monkeypatch.setattr(lora, "bf16_supported", lambda: False)
    args, dtype, notes = lora.choose_precision({"bf16": True, "learning_rate": 1e-4})
    assert args == {"bf16": False, "learning_rate": 1e-4} and dtype == torch.float32
    assert "fp32" in notes[0]
    monkeypatch.setattr(lora, "bf16_supported", lambda: True)
    args, dtype, notes = lora.choose_precision({"bf16": True})
    assert args["bf16"] is True and dtype == torch.bfloat16 and notes == []


def test_trainer_args_pass_through_with_the_runner_settings(tmp_path):
    from kanitts.config import Experiment
    from kanitts.training.experiments import training_arguments

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
