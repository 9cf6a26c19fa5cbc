"""Mistakes a user can make on the way from data to a published model, each said in one line.

Every test asserts what the message names (file, folder, row, text) and that what was done
before the mistake is still there. Unwritable folders are made the ways that stop root too:
a file where a folder must be, and writes that the OS refuses (monkeypatched to fail as a
read-only mount or a full disk does).
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from kanitts.cli import main
from kanitts.config import GenerationSection, InferenceConfig
from kanitts.errors import ConfigError, UserError
from kanitts.evaluation.runner import BASE_ID, run_eval
from kanitts.files import check_output_file, check_output_folder, check_safetensors
from kanitts.inference import KaniTTS
from kanitts.recipes.eval import evaluate

from eval_project import eval_configs


def _cut(file: Path) -> None:
    """Truncate a file to half its size, as an interrupted copy or download leaves it."""
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


@pytest.fixture
def broken_model(tiny_tts, tmp_path):
    folder = shutil.copytree(tiny_tts[0], tmp_path / "broken-model")
    _cut(folder / "model.safetensors")
    return folder


def _fail_writes(monkeypatch, code: int) -> None:
    """Make every fsync fail with ``code``, as the OS does on a full disk (ENOSPC)."""
    def refuse(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", refuse)


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


# --- corrupt weights -------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage header"])
def test_corrupt_safetensors_is_named(tiny_tts, tmp_path, damage):
    weights = shutil.copy(tiny_tts[0] / "model.safetensors", tmp_path / "model.safetensors")
    data = Path(weights).read_bytes()
    Path(weights).write_bytes({"truncated": data[: len(data) // 2], "empty": b"",
                               "garbage header": data[:8] + b"{nope" + data[13:]}[damage])
    with pytest.raises(UserError, match=r"model\.safetensors is truncated or corrupt \(.+\); copy or download"):
        check_safetensors(tmp_path)
    check_safetensors(tiny_tts[0])  # the intact original passes


def test_truncated_checkpoint_is_one_error_in_synthesize(broken_model, tiny_tts, tiny_codec_dir, tmp_path, capsys):
    with pytest.raises(UserError, match=f"{broken_model / 'model.safetensors'} is truncated or corrupt"):
        KaniTTS.from_pretrained(broken_model, codec=tiny_codec_dir, model_cfg=tiny_tts[1], device="cpu")

    config = tmp_path / "config"
    config.mkdir()
    (config / "model_config.yaml").write_text(yaml.safe_dump(
        {**tiny_tts[1].model_dump(), "codec": {**tiny_tts[1].codec.model_dump(), "weights": str(tiny_codec_dir)}}))
    (config / "inference_config.yaml").write_text(yaml.safe_dump({"model": {"torch_dtype": "float32"}}))
    earlier = tmp_path / "out.wav"
    earlier.write_bytes(b"an earlier take")
    code = main(["synthesize", "alice: Hello.", "--model", str(broken_model), "-o", str(earlier),
                 "--device", "cpu", "--config-dir", str(config)])
    err = capsys.readouterr().err
    assert code == 1 and "model.safetensors is truncated or corrupt" in err and str(broken_model) in err
    _no_traceback(err)
    assert earlier.read_bytes() == b"an earlier take"


def test_truncated_download_in_the_hub_cache_says_what_to_delete(broken_model, tiny_tts, tiny_codec, tmp_path,
                                                                 monkeypatch):
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--me--tiny"
    commit = "0" * 40
    shutil.copytree(broken_model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(UserError, match=f"model: the weights of 'me/tiny' are truncated or corrupt \\(.+\\); "
                                        f"delete {repo} so that they are downloaded again"):
        KaniTTS.from_pretrained("me/tiny", codec=tiny_codec, model_cfg=tiny_tts[1], device="cpu")


def test_truncated_codec_weights_are_named(tiny_codec_dir, tmp_path):
    from kanitts.codecs import load_codec

    folder = shutil.copytree(tiny_codec_dir, tmp_path / "codec")
    _cut(folder / "model.safetensors")
    with pytest.raises(UserError, match=f"NanoCodec weights: {folder / 'model.safetensors'} is truncated or corrupt"):
        load_codec("nanocodec", folder, device="cpu")


def test_truncated_base_model_is_refused_before_training(broken_model, tiny_tts, tmp_path):
    from kanitts.config import ConfigSet, ExperimentsConfig
    from kanitts.training.experiments import run_experiments

    experiments = ExperimentsConfig.model_validate(
        {"base_model": str(broken_model), "experiments": [{"base": {"model_id": "exp"}, "lora_args": {"r": 4}}]})
    configs = ConfigSet(config_dir=tmp_path, experiments=experiments, model=tiny_tts[1])
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "older").mkdir(parents=True)
    with pytest.raises(UserError, match=r"experiments.yaml: base_model .*model\.safetensors is truncated or corrupt"):
        run_experiments(configs, checkpoints_dir=checkpoints)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["older"]  # no run folder was started


def test_eval_lists_a_broken_checkpoint_and_evaluates_the_others(project_copy, capsys):
    before = {p: p.read_bytes() for p in Path("audio samples/exp-b").glob("*.wav")}
    _cut(Path("ckpt/exp-b/model.safetensors"))
    assert main(["eval", "--config-dir", str(project_copy)]) == 1
    out = capsys.readouterr().out
    assert "failed:  exp-b: cannot load ckpt/exp-b: ckpt/exp-b/model.safetensors is truncated or corrupt" in out
    assert f"  {BASE_ID}: 3 samples" in out and "  exp-a: 3 samples" in out

    results = json.loads(Path("audio samples/eval_results.json").read_text())
    assert {r["experiment_id"] for r in results["rows"]} == {BASE_ID, "exp-a"}
    model = next(m for m in results["models"] if m["experiment_id"] == "exp-b")
    assert "model.safetensors is truncated or corrupt" in model["error"]
    page = Path("report/index.html").read_text()
    assert "not evaluated: cannot load ckpt/exp-b: ckpt/exp-b/model.safetensors is truncated" in page
    assert "<h2>Problems</h2>" in page
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', page, re.S).group(1))  # what report.js draws
    assert [m["id"] for m in data["models"] if m["error"]] == ["exp-b"]
    assert "exp-b" not in {r["model"] for r in data["rows"]}
    assert "= 6 sample(s); 1 model(s) could not be loaded (see Problems)." in page
    assert {p: p.read_bytes() for p in Path("audio samples/exp-b").glob("*.wav")} == before


# --- folders that cannot be written ------------------------------------------------------------


def test_output_folder_checks(tmp_path, monkeypatch):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me")
    with pytest.raises(UserError, match=f"checkpoints {blocker / 'ckpt'} cannot be created: {blocker} is a file"):
        check_output_folder(blocker / "ckpt", "checkpoints")
    with pytest.raises(UserError, match=f"report {blocker} is a file, not a folder"):
        check_output_folder(blocker, "report", replaced_whole=True)
    with pytest.raises(UserError, match=f"-o {tmp_path} is a folder; name a file"):
        check_output_file(tmp_path, "-o")
    assert check_output_folder(tmp_path / "new" / "deeper", "out") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # the check creates nothing
    assert blocker.read_text() == "keep me"

    _fail_writes(monkeypatch, errno.ENOSPC)
    with pytest.raises(
        UserError, match=f"out {tmp_path / 'a'} cannot be written: No space left on device \\(in {tmp_path}\\)"
    ):
        check_output_folder(tmp_path / "a", "out")
    _fail_writes(monkeypatch, errno.EROFS)
    with pytest.raises(UserError, match="cannot be written: Read-only file system"):
        check_output_file(tmp_path / "out.wav", "-o")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # the probe left nothing


def test_train_refuses_a_checkpoints_dir_that_is_a_file(tiny_tts, tmp_path, capsys):
    config = tmp_path / "config"
    config.mkdir()
    (config / "experiments.yaml").write_text(yaml.safe_dump(
        {"base_model": str(tiny_tts[0]), "experiments": [{"base": {"model_id": "exp"}, "lora_args": {"r": 4}}]}))
    (config / "model_config.yaml").write_text(yaml.safe_dump(tiny_tts[1].model_dump()))
    (config / "dataset_config.yaml").write_text(yaml.safe_dump({"hf_datasets": [{"reponame": "someone/data"}]}))
    blocker = tmp_path / "ckpt"
    blocker.write_text("not a folder")
    code = main(["train", "--config-dir", str(config), "--checkpoints-dir", str(blocker)])
    err = capsys.readouterr().err
    assert code == 1 and f"checkpoints folder {blocker} is a file, not a folder" in err
    _no_traceback(err)
    assert blocker.read_text() == "not a folder"


def test_eval_refuses_unwritable_outputs_before_generating(project_copy, monkeypatch):
    results = Path("audio samples/eval_results.json")
    before = results.read_bytes()
    config = yaml.safe_load((project_copy / "eval_config.yaml").read_text())
    config["paths"]["report_dir"] = "notes/report"
    (project_copy / "eval_config.yaml").write_text(yaml.safe_dump(config))
    Path("notes").write_text("a file where the report's folder should be")
    with pytest.raises(UserError, match=r"paths\.report_dir notes/report cannot be created: notes is a file"):
        evaluate(eval_configs(project_copy), force=True)
    assert results.read_bytes() == before

    _fail_writes(monkeypatch, errno.ENOSPC)
    with pytest.raises(UserError, match=r"paths\.audio_output_dir audio samples cannot be written: No space left"):
        run_eval(eval_configs(project_copy), force=True)
    assert results.read_bytes() == before


def test_report_and_synthesize_refuse_a_file_in_the_way(project_copy, tmp_path, capsys):
    shutil.rmtree("report")
    Path("report").write_text("mine")
    assert main(["report", "--config-dir", str(project_copy)]) == 1
    err = capsys.readouterr().err
    assert "paths.report_dir report is a file, not a folder" in err
    _no_traceback(err)
    assert Path("report").read_text() == "mine"

    # -o is checked before the model is looked for: the missing model is never reached
    code = main(["synthesize", "Hello.", "--model", "no/such-model", "-o", "report/out.wav",
                 "--config-dir", str(project_copy)])
    err = capsys.readouterr().err
    assert code == 1 and "output file (-o) report/out.wav cannot be created: report is a file" in err


def test_prepare_refuses_an_output_under_a_file(tmp_path, tiny_codec_dir):
    from kanitts.prepare.options import CodecSpec, PrepareOptions
    from kanitts.prepare.pipeline import prepare_dataset

    blocker = tmp_path / "data"
    blocker.write_text("x")
    options = PrepareOptions(input=str(tmp_path / "clips"), output=str(blocker / "codec-dataset"))
    codec = CodecSpec(kind="nanocodec", weights=str(tiny_codec_dir), device="cpu")
    with pytest.raises(
        UserError, match=f"output folder {blocker / 'codec-dataset'} cannot be created: {blocker} is a file"
    ):
        prepare_dataset(options, codec)
    assert blocker.read_text() == "x"


# --- a vocabulary too small for the token layout -------------------------------------------------


@pytest.fixture(scope="module")
def small_vocab_model(tiny_tts, tmp_path_factory):
    from transformers import AutoTokenizer

    from kanitts.tiny import build_lfm2
    from kanitts.tokens import TokenLayout

    folder = tmp_path_factory.mktemp("small_vocab")
    layout = TokenLayout.from_config(tiny_tts[1])
    build_lfm2(folder, vocab_size=layout.vocab_size - 100, tokenizer=AutoTokenizer.from_pretrained(str(tiny_tts[0])))
    return folder, layout


def test_small_vocabulary_is_refused_before_synthesis(small_vocab_model, tiny_tts, tiny_codec):
    with pytest.raises(UserError, match=r"token embeddings, but the token layout of model_config\.yaml"):
        KaniTTS.from_pretrained(small_vocab_model[0], codec=tiny_codec, model_cfg=tiny_tts[1], device="cpu")


# --- texts and generation budgets ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tts(tiny_tts, tiny_codec):
    inference = InferenceConfig.model_validate(
        {"model": {"torch_dtype": "float32"}, "generation": {"max_new_tokens": 14, "constrained_decoding": True}})
    return KaniTTS.from_pretrained(tiny_tts[0], codec=tiny_codec, model_cfg=tiny_tts[1], inference_cfg=inference,
                                   device="cpu")


def test_empty_and_prefix_only_texts_are_refused_by_name(tts):
    with pytest.raises(UserError, match="the text \\(''\\): empty text"):
        tts.synthesize("")
    with pytest.raises(UserError, match="text 2 of 2 \\('alice:'\\): only the speaker prefix 'alice:'"):
        tts.synthesize(["alice: Hello.", "alice:"])
    with pytest.raises(UserError, match="empty text"):
        tts.synthesize(["   "], speaker="alice")
    assert tts.synthesize(["alice: Hello."])[0].ok  # the same model still speaks


def test_max_new_tokens_that_cannot_hold_a_frame_is_refused(tts, tiny_tts, tiny_codec, tmp_path):
    needed = 2 + tiny_tts[1].codec.num_codebooks
    with pytest.raises(UserError, match=f"max_new_tokens: {needed - 1} is too small to hold one audio frame, "
                                        f"which takes {needed} tokens"):
        tts.synthesize(["Hello."], max_new_tokens=needed - 1)
    with pytest.raises(UserError, match=r"inference_config\.yaml: generation\.max_new_tokens: 3 is too small"):
        KaniTTS(tts.model, tts.tokenizer, tiny_codec, tts.layout, GenerationSection(max_new_tokens=3))
    assert tts.synthesize(["Hello."], max_new_tokens=needed)[0].num_frames == 1


def test_config_files_refuse_prefix_only_sentences_and_tiny_budgets(project_copy):
    from kanitts.config import load_configs

    (project_copy / "eval_set.yaml").write_text(yaml.safe_dump({"eval_set": [{"p1": "alice: Hi."}, {"p2": "alice:"}]}))
    inference = yaml.safe_load((project_copy / "inference_config.yaml").read_text())
    inference["generation"]["max_new_tokens"] = 5
    (project_copy / "inference_config.yaml").write_text(yaml.safe_dump(inference))
    with pytest.raises(ConfigError) as caught:
        load_configs(project_copy, kinds=("eval_set", "model", "inference"))
    problems = "\n".join(caught.value.problems)
    assert "eval_set.yaml" in problems and "item [1] (p2): only the speaker prefix 'alice:'" in problems
    assert "inference_config.yaml: generation.max_new_tokens: 5 is too small to hold one audio frame" in problems


def test_cli_synthesize_refuses_a_prefix_only_text_before_loading(tmp_path, capsys):
    code = main(["synthesize", "alice:", "--model", "no/such-model", "-o", str(tmp_path / "x.wav")])
    err = capsys.readouterr().err
    assert code == 1 and "the text to say ('alice:'): only the speaker prefix 'alice:'" in err
    _no_traceback(err)


# --- kanitts login --------------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def no_tokens(monkeypatch):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_login_at_end_of_input_says_what_to_do(no_tokens, monkeypatch, capsys):
    import getpass

    def ctrl_d(prompt=""):
        raise EOFError

    monkeypatch.setattr(sys, "stdin", _Terminal())
    monkeypatch.setattr(getpass, "getpass", ctrl_d)
    assert main(["login"]) == 0
    out = capsys.readouterr().out
    assert "Hugging Face: skipped: end of input; run `make login` again or set HF_TOKEN" in out
    assert "Traceback" not in out


def test_login_without_a_terminal_never_prompts(no_tokens, monkeypatch, capsys):
    import getpass

    def must_not_prompt(prompt=""):
        raise AssertionError("prompted without a terminal")

    monkeypatch.setattr(sys, "stdin", io.StringIO())  # a notebook's or a pipe's stdin
    monkeypatch.setattr(getpass, "getpass", must_not_prompt)
    assert main(["login"]) == 0
    out = capsys.readouterr().out
    assert ("Hugging Face: skipped: HF_TOKEN is not set and there is no terminal to ask in; set HF_TOKEN, or run "
            "`make login` in a terminal (in a notebook: huggingface_hub.notebook_login())") in out


# --- kanitts report on damaged eval outputs -------------------------------------------------------


@pytest.mark.parametrize("damage, message", [
    (lambda text: text[: len(text) // 2], r"eval_results.json is truncated or corrupt \(line \d+, column \d+"),
    (lambda text: "[1, 2]", "eval_results.json holds a list, not the eval results"),
    (lambda text: json.dumps({"rows": []}), "eval_results.json lacks generation, models, sentences, failures"),
])
def test_report_on_damaged_results_keeps_the_old_report(project_copy, capsys, damage, message):
    results = Path("audio samples/eval_results.json")
    page = Path("report/index.html").read_bytes()
    results.write_text(damage(results.read_text()))
    assert main(["report", "--config-dir", str(project_copy)]) == 1
    err = capsys.readouterr().err
    assert re.search(message, err) and "run `make eval` again" in err
    _no_traceback(err)
    assert Path("report/index.html").read_bytes() == page


def test_report_with_a_missing_wav_names_it_and_leaves_nothing_half_written(project_copy, capsys):
    page = Path("report/index.html").read_bytes()
    Path("audio samples/exp-a/prompt_2.wav").unlink()
    assert main(["report", "--config-dir", str(project_copy)]) == 1
    err = capsys.readouterr().err
    assert "audio samples/exp-a/prompt_2.wav: the audio of exp-a / prompt:2" in err and "is missing" in err
    assert Path("report/index.html").read_bytes() == page
    assert sorted(p.name for p in Path(".").iterdir() if p.name.startswith(".")) == []
