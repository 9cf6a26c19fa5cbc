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
