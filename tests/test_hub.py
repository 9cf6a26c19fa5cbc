"""Publishing: model cards, refusal of incomplete checkpoints, and real uploads to a local Hub stand-in.

The stand-in is an HTTP server on 127.0.0.1 that answers the Hub API calls huggingface_hub makes
for an upload (create repo, validate README metadata, preupload, commit) and keeps what it
receives; the client code under test is the real one, pointed at it through its endpoint.
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from kanitts.errors import UserError
from kanitts.files import is_hub_id, is_repo_id
from kanitts.hub import build_model_card, checkpoint_problems, upload_model


class HubStandIn:
    """Just enough of the Hub API for `create_repo` + `create_commit` with regular (inline) files."""

    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.files: dict[str, dict[str, bytes]] = {}
        self.auth: list[str | None] = []
        self.reject_with: int | None = None
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                stand_in.auth.append(self.headers.get("Authorization"))
                if stand_in.reject_with:
                    return self._reply(stand_in.reject_with, {"error": "Invalid credentials in Authorization header"})
                base = f"http://127.0.0.1:{self.server.server_port}"
                if self.path == "/api/repos/create":
                    body = json.loads(data)
                    kind = body.get("type") or "model"
                    repo_id = f"{body['organization']}/{body['name']}"
                    stand_in.repos[f"{kind}:{repo_id}"] = body
                    prefix = "" if kind == "model" else f"{kind}s/"
                    return self._reply(200, {"url": f"{base}/{prefix}{repo_id}"})
                if self.path == "/api/validate-yaml":
                    content = json.loads(data)["content"]
                    match = re.match(r"^---\n(.*?)\n---\n", content, re.S)
                    try:
                        meta = yaml.safe_load(match.group(1)) if match else {}
                        assert isinstance(meta, dict)
                    except Exception as exc:  # any failure is invalid metadata
                        return self._reply(400, {"errors": [{"message": str(exc)}]})
                    return self._reply(200, {"errors": [], "warnings": []})
                match = re.match(r"^/api/(models|datasets)/([^/]+/[^/]+)/(preupload|commit)/([^/?]+)", self.path)
                if not match:
                    return self._reply(404, {"error": f"no route {self.path}"})
                kind, repo_id, action = match.group(1)[:-1], match.group(2), match.group(3)
                if f"{kind}:{repo_id}" not in stand_in.repos:
                    return self._reply(404, {"error": "Repository not found"})
                if action == "preupload":
                    files = json.loads(data)["files"]
                    return self._reply(200, {"files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
                received = stand_in.files.setdefault(f"{kind}:{repo_id}", {})
                for line in data.decode().splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        received[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                return self._reply(200, {"commitUrl": f"{base}/{repo_id}/commit/{'0' * 40}", "commitOid": "0" * 40})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub(monkeypatch):
    """The stand-in, with huggingface_hub pointed at it and allowed online for 127.0.0.1 only."""
    from huggingface_hub import constants

    stand_in = HubStandIn()
    monkeypatch.setattr(constants, "ENDPOINT", stand_in.endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_standin_token")
    yield stand_in
    stand_in.close()


def _front_matter(card: str) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", card, re.S)
    assert match, "the card starts with YAML metadata"
    return yaml.safe_load(match.group(1))


def test_model_card_has_metadata_settings_loss_eval_usage_and_license(evaluated_project):
    root, summary = evaluated_project
    card = build_model_card(root / "ckpt" / "exp-b", "me/exp-b",
                            dataset_ids=["someone/alice-nano", "local/folder/data"], eval_rows=summary.rows)
    meta = _front_matter(card)
    assert meta["license"] == "apache-2.0" and meta["pipeline_tag"] == "text-to-speech"
    assert meta["datasets"] == ["someone/alice-nano"]  # local folders are not Hub datasets
    assert "base_model" not in meta  # the base here is a local folder, not a Hub id
    assert "# exp-b" in card
    assert "| `r` | 16 |" in card and "| `learning_rate` | 0.0005 |" in card
    assert "| final training loss | 1.7000 |" in card
    assert "alice: Hello there." in card and "3 eval samples, 3 truncated" in card
    assert 'kanitts synthesize "alice: Hello, this is my new voice." --model me/exp-b' in card
    assert 'KaniTTS.from_pretrained("me/exp-b")' in card
    assert "## License" in card


def test_model_card_says_where_the_model_ranks_with_intervals_and_the_ceiling(evaluated_project):
    import json

    root, summary = evaluated_project
    results = json.loads((root / summary.results_json).read_text())
    card = build_model_card(root / "ckpt" / "exp-b", "me/exp-b", eval_rows=summary.rows, ranking=results["ranking"])
    place = [m["model"] for m in results["ranking"]["models"]].index("exp-b") + 1
    assert f"### Ranking\n\nRank {place} of 3 models over 3 sentences: composite " in card
    assert "| metric | exp-b | real speaker | real speaker (codec) |" in card
    similarity = next(m for m in results["ranking"]["models"] if m["model"] == "exp-b")["metrics"]["speaker_similarity"]
    assert f"| speaker similarity (higher is better) | {similarity['mean']:.3f}" in card
    assert "| truncation rate (lower is better) | 1.000 [1.000, 1.000] |" in card
    assert "| WER | CER | MOS |" in card and "| not measured | not measured | not measured |" in card
    assert "### Ranking" not in build_model_card(root / "ckpt" / "exp-b", "me/exp-b", eval_rows=summary.rows)


def test_model_card_names_a_hub_base_model(evaluated_project, tmp_path):
    import shutil

    folder = shutil.copytree(evaluated_project[0] / "ckpt" / "exp-a", tmp_path / "exp-a")
    record = yaml.safe_load((folder / "experiment.yaml").read_text())
    record["base_model"] = "nineninesix/kani-tts-400m-0.3-pt"
    (folder / "experiment.yaml").write_text(yaml.safe_dump(record))
    meta = _front_matter(build_model_card(folder, "me/exp-a"))
    assert meta["base_model"] == "nineninesix/kani-tts-400m-0.3-pt"
    assert meta["base_model_relation"] == "finetune"


def test_upload_sends_every_file_and_the_card(evaluated_project, hub):
    folder = evaluated_project[0] / "ckpt" / "exp-a"
    url = upload_model(folder, "me/exp-a", private=True, eval_rows=evaluated_project[1].rows)
    assert url.endswith("/me/exp-a")
    assert hub.repos["model:me/exp-a"]["visibility"] == "private"
    received = hub.files["model:me/exp-a"]
    assert received["model.safetensors"] == (folder / "model.safetensors").read_bytes()
    assert {"config.json", "experiment.yaml", "metrics.json", "tokenizer.json", "README.md"} <= set(received)
    assert received["README.md"].decode() == build_model_card(folder, "me/exp-a", eval_rows=evaluated_project[1].rows)
    assert set(hub.auth) == {"Bearer hf_standin_token"}


def test_public_upload_creates_a_public_repo(evaluated_project, hub):
    upload_model(evaluated_project[0] / "ckpt" / "exp-b", "me/exp-b", private=False)
    assert hub.repos["model:me/exp-b"]["visibility"] == "public"


def test_incomplete_checkpoint_is_refused_before_any_request(evaluated_project, tmp_path, hub):
    import shutil

    folder = shutil.copytree(evaluated_project[0] / "ckpt" / "exp-a", tmp_path / "exp-a")
    (folder / "metrics.json").unlink()
    (folder / "model.safetensors").unlink()
    problems = checkpoint_problems(folder)
    assert any("metrics.json" in p for p in problems) and any("model.safetensors" in p for p in problems)
    with pytest.raises(UserError, match="incomplete checkpoint"):
        upload_model(folder, "me/broken")
    with pytest.raises(UserError, match="does not exist"):
        upload_model(tmp_path / "nothing", "me/broken")
    assert hub.auth == []


def test_one_rule_tells_hub_ids_from_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_hub_id("nineninesix/kani-tts-400m-0.3-pt") and is_hub_id("me/model.v2")
    for path in ("./me/model", "/abs/model", "~/model/x", "a/b/c", "model", "me\\model", "", None):
        assert not is_hub_id(path), path
    (tmp_path / "me" / "model").mkdir(parents=True)
    assert not is_hub_id("me/model")  # an existing folder wins, as in from_pretrained
    assert is_repo_id("me/model")  # where to upload: spelling only


def test_rejected_credentials_become_a_user_error(evaluated_project, hub):
    hub.reject_with = 401
    with pytest.raises(UserError, match="make login"):
        upload_model(evaluated_project[0] / "ckpt" / "exp-a", "me/exp-a")


def test_cli_upload_model_uses_configs_and_eval_results(project_copy, hub):
    from kanitts.cli import main

    code = main(["upload-model", "--model-id", "exp-a", "--repo", "me/exp-a", "--private",
                 "--config-dir", str(project_copy)])
    assert code == 0
    card = hub.files["model:me/exp-a"]["README.md"].decode()
    assert _front_matter(card)["datasets"] == ["someone/alice-nano"]
    assert "3 eval samples" in card
    assert main(["upload-model", "--model-id", "nope", "--repo", "me/nope", "--config-dir", str(project_copy)]) == 1


def test_eval_dataset_is_pushed_when_asked(project_copy, hub):
    import pyarrow.parquet as pq

    from kanitts.recipes.eval import evaluate

    from eval_project import eval_configs

    config = yaml.safe_load((project_copy / "eval_config.yaml").read_text())
    config["huggingface"] = {"upload_dataset": True, "repo_name": "me/eval-results", "private": True}
    (project_copy / "eval_config.yaml").write_text(yaml.safe_dump(config))
    summary = evaluate(eval_configs(project_copy), report=False)
    assert summary.generated == 0 and summary.hub_url.endswith("/datasets/me/eval-results")
    assert hub.repos["dataset:me/eval-results"]["visibility"] == "private"
    received = hub.files["dataset:me/eval-results"]
    table = pq.read_table(io.BytesIO(received["data/train-00000-of-00001.parquet"]))
    assert table.num_rows == 9
    assert {"experiment_id", "train_configuration", "sentence_id", "sentence", "audio"} <= set(table.column_names)
    first = table.column("audio")[0].as_py()
    assert first["path"] == "base__prompt_1.wav"
    assert first["bytes"] == Path("audio samples/base/prompt_1.wav").read_bytes()
    assert "configs:" in received["README.md"].decode()
    # The ranking: each row's model's place, and the ranking table beside the data.
    assert {"wer", "cer", "mos", "model_rank", "model_composite", "model_p_best", "model_verdict"} <= set(
        table.column_names)
    assert sorted(set(table.column("model_rank").to_pylist())) == [1, 2, 3]
    assert received["eval_ranking.csv"] == Path("audio samples/eval_ranking.csv").read_bytes()


# --- every way the Hub can fail is one line -------------------------------------------------------


def test_no_token_is_said_before_any_request(evaluated_project, hub, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(UserError, match=r"cannot upload to me/exp-a: not logged in .*run `make login` or set HF_TOKEN"):
        upload_model(evaluated_project[0] / "ckpt" / "exp-a", "me/exp-a")
    assert hub.auth == []


def test_offline_mode_is_named(evaluated_project, hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="cannot upload to me/exp-a: HF_HUB_OFFLINE is set; unset it to publish"):
        upload_model(evaluated_project[0] / "ckpt" / "exp-a", "me/exp-a")


def test_no_network_is_named(evaluated_project, hub, monkeypatch):
    import socket

    from huggingface_hub import constants

    with socket.socket() as s:  # a port on this machine that nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", closed)
    with pytest.raises(UserError, match=f"cannot reach the Hugging Face Hub at {closed} to upload me/exp-a "
                                        r"\(ConnectError: .*\); check the network connection"):
        upload_model(evaluated_project[0] / "ckpt" / "exp-a", "me/exp-a")


@pytest.mark.parametrize("status, hint", [
    (403, "the token may not write there"),
    (404, "repository not found: check the name"),
])
def test_refusals_say_why(evaluated_project, hub, status, hint):
    hub.reject_with = status
    with pytest.raises(UserError, match=f"the Hub refused the upload to me/exp-a: {status} .*{hint}"):
        upload_model(evaluated_project[0] / "ckpt" / "exp-a", "me/exp-a")


def test_truncated_weights_are_never_uploaded(evaluated_project, tmp_path, hub):
    import shutil

    folder = shutil.copytree(evaluated_project[0] / "ckpt" / "exp-a", tmp_path / "exp-a")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UserError, match=f"incomplete checkpoint .*{weights} is truncated or corrupt"):
        upload_model(folder, "me/exp-a")
    assert hub.auth == []


def test_cli_upload_model_failure_is_one_line(project_copy, hub, capsys):
    from kanitts.cli import main

    hub.reject_with = 401
    assert main(["upload-model", "--model-id", "exp-a", "--repo", "me/exp-a", "--config-dir", str(project_copy)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the Hub refused the upload to me/exp-a: 401") and "make login" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert main(["upload-model", "--model-id", " ", "--repo", "me/exp-a", "--config-dir", str(project_copy)]) == 1
    assert "name the checkpoint to upload: --model-id" in capsys.readouterr().err


def test_failed_eval_upload_keeps_results_and_report(project_copy, hub, capsys):
    from kanitts.cli import main

    config = yaml.safe_load((project_copy / "eval_config.yaml").read_text())
    config["huggingface"] = {"upload_dataset": True, "repo_name": "me/eval-results"}
    (project_copy / "eval_config.yaml").write_text(yaml.safe_dump(config))
    Path("report/index.html").unlink()
    Path("audio samples/eval_results.json").unlink()
    hub.reject_with = 401
    assert main(["eval", "--config-dir", str(project_copy)]) == 1
    out = capsys.readouterr().out
    assert "upload failed (the results above are kept): the Hub refused the upload to me/eval-results: 401" in out
    assert "9 samples (0 generated, 9 reused)" in out
    assert Path("report/index.html").is_file()  # written before the upload was tried
    assert len(json.loads(Path("audio samples/eval_results.json").read_text())["rows"]) == 9


def test_make_upload_model_without_a_terminal_says_what_is_missing(tmp_path):
    import shutil
    import subprocess
    import sys

    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    root = Path(__file__).resolve().parents[1]
    venv = Path(sys.executable).parent.parent  # the Makefile's $(VENV)/bin/python
    done = subprocess.run([make, "-s", "-C", str(root), "upload-model", f"VENV={venv}", "REPO=me/x"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "error: MODEL_ID not given and no terminal to ask in; run: make upload-model MODEL_ID=" in done.stderr
