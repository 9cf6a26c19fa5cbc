"""A token in trainer_args is shown as set but never written or published: experiment.yaml (see
test_training), the model card and the uploaded files, the eval results, the eval dataset and
the report."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from test_hub import hub  # noqa: F401 - the local Hub stand-in fixture

from kanitts.redact import REDACTED, is_secret_key, redact_secrets

SECRET = "hf_" + "Zq9" * 12
API_KEY = "0123456789abcdef0123456789abcdef01234567"


def test_secret_keys_are_redacted_and_other_settings_kept():
    settings = {
        "trainer_args": {"hub_token": SECRET, "learning_rate": 1e-4, "max_steps": 3, "report_to": ["wandb"],
                         "average_tokens_across_devices": True},
        "tracking": [{"WANDB_API_KEY": API_KEY, "db-password": "pw", "client_secret_file": "x", "token": None}],
        "training": {"max_tokens_per_batch": 4096, "pad_token_id": 64407},
        "base": {"desc": f"pushed with {SECRET}"},
    }
    redacted = redact_secrets(settings)
    assert redacted["trainer_args"] == {**settings["trainer_args"], "hub_token": REDACTED}
    assert redacted["tracking"] == [{"WANDB_API_KEY": REDACTED, "db-password": REDACTED,
                                     "client_secret_file": REDACTED, "token": None}]
    assert redacted["training"] == settings["training"]
    assert redacted["base"]["desc"] == f"pushed with {REDACTED}"
    assert settings["trainer_args"]["hub_token"] == SECRET  # the caller's settings are not changed
    assert [k for k in ("access_token", "api_key", "tokens", "num_tokens", "token_id") if is_secret_key(k)] == [
        "access_token", "api_key"]


def _add_secrets(config_dir: Path) -> None:
    """exp-a trained with a token in trainer_args, by a version that wrote it into experiment.yaml."""
    path = Path("ckpt/exp-a/experiment.yaml")
    record = yaml.safe_load(path.read_text())
    record["experiment"]["trainer_args"].update(hub_token=SECRET, wandb_api_key=API_KEY)
    path.write_text(yaml.safe_dump(record))
    experiments = yaml.safe_load((config_dir / "experiments.yaml").read_text())
    experiments["experiments"][1]["trainer_args"]["hub_token"] = SECRET
    (config_dir / "experiments.yaml").write_text(yaml.safe_dump(experiments))


def _files_under(*folders: Path):
    return [p for folder in folders for p in folder.rglob("*") if p.is_file()]


def test_eval_results_dataset_and_report_show_the_key_not_the_secret(project_copy):
    from datasets import load_from_disk

    from kanitts.recipes.eval import evaluate

    from eval_project import eval_configs

    _add_secrets(project_copy)
    summary = evaluate(eval_configs(project_copy), report=True)
    assert summary.generated == 0  # the samples are reused: only the settings were rewritten
    audio_dir, report_dir = Path("audio samples"), Path("report")
    files = _files_under(audio_dir, report_dir)
    assert {"eval_results.json", "eval_results.csv", "index.html"} <= {p.name for p in files}
    for path in files:
        content = path.read_bytes()
        assert SECRET.encode() not in content and API_KEY.encode() not in content, path

    results = json.loads((audio_dir / "eval_results.json").read_text())
    trainer_args = {m["experiment_id"]: m["train_configuration"].get("experiment", m["train_configuration"])
                    .get("trainer_args") for m in results["models"]}
    assert trainer_args["exp-a"]["hub_token"] == REDACTED and trainer_args["exp-a"]["wandb_api_key"] == REDACTED
    rows = load_from_disk(str(audio_dir / "eval_dataset")).select_columns(["experiment_id", "train_configuration"])
    configuration = json.loads(next(r["train_configuration"] for r in rows if r["experiment_id"] == "exp-a"))
    assert configuration["experiment"]["trainer_args"]["hub_token"] == REDACTED
    page = (report_dir / "index.html").read_text()
    assert "trainer_args.hub_token" in page and "&lt;redacted&gt;" in page


def test_the_model_card_and_the_uploaded_files_show_the_key_not_the_secret(project_copy, hub):  # noqa: F811
    from kanitts.hub import build_model_card, upload_model

    _add_secrets(project_copy)
    folder = Path("ckpt/exp-a")
    card = build_model_card(folder, "me/exp-a")
    assert f"| `hub_token` | {REDACTED} |" in card and f"| `wandb_api_key` | {REDACTED} |" in card
    upload_model(folder, "me/exp-a")
    received = hub.files["model:me/exp-a"]
    for name, content in received.items():
        assert SECRET.encode() not in content and API_KEY.encode() not in content, name
    uploaded = yaml.safe_load(received["experiment.yaml"])
    assert uploaded["experiment"]["trainer_args"]["hub_token"] == REDACTED
    assert uploaded["experiment"]["trainer_args"]["learning_rate"] == 1e-3
