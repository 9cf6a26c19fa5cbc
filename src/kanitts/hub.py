"""Publishing to the Hugging Face Hub: trained models with a model card, and eval results.

Both go through :func:`push_files`: ``create_repo`` (idempotent, with the requested
visibility) and one ``create_commit`` holding every file, so a repo never shows half an upload.
A checkpoint is published only when complete (the files ``kanitts train`` writes last are there
and readable); its card is generated from what the checkpoint records about its training and
from the eval results, so what the card claims is what was measured.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import yaml

from kanitts.config import CodecSection, EvalSentence
from kanitts.errors import UserError
from kanitts.files import check_safetensors, is_hub_id, is_repo_id
from kanitts.redact import redact_secrets

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
LICENSE = "apache-2.0"


def push_files(
    repo_id: str,
    files: dict[str, Path | bytes],
    *,
    repo_type: str = "model",
    private: bool = True,
    commit_message: str,
    token: str | None = None,
) -> str:
    """Create ``repo_id`` if needed and commit ``files`` (path in repo -> local file or bytes).

    Every way the Hub can fail (offline mode, no token, no network, refused, not found) is one
    UserError that names the repo and the cause.
    """
    # huggingface_hub and datasets are imported where used: each takes a noticeable part of a
    # second, and most commands that import this module use only one of them.
    from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
    from huggingface_hub import errors as hub_errors

    if not is_repo_id(repo_id):
        raise UserError(f"{repo_id!r} is not a Hub repo id: use user/name or org/name")
    if token is None and get_token() is None:
        raise UserError(f"cannot upload to {repo_id}: not logged in to the Hugging Face Hub "
                        "(run `make login` or set HF_TOKEN)")
    api = HfApi(token=token)
    operations = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=content if isinstance(content, bytes) else str(content))
        for name, content in sorted(files.items())
    ]
    # The HTTP client's own base error (httpx's) covers refused connections and time-outs;
    # huggingface_hub re-exports it under this name.
    network_errors = (getattr(hub_errors, "HTTPError", ConnectionError), ConnectionError, TimeoutError)
    try:
        url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        api.create_commit(repo_id, operations, commit_message=commit_message, repo_type=repo_type)
    except hub_errors.OfflineModeIsEnabled:
        raise UserError(f"cannot upload to {repo_id}: HF_HUB_OFFLINE is set; unset it to publish") from None
    except hub_errors.HfHubHTTPError as exc:
        raise UserError(f"the Hub refused the upload to {repo_id}: {_refusal(exc)}") from None
    except network_errors as exc:
        raise UserError(
            f"cannot reach the Hugging Face Hub at {constants.ENDPOINT} to upload {repo_id} "
            f"({type(exc).__name__}: {_first_line(exc)}); check the network connection"
        ) from None
    except OSError as exc:  # the rest of what a client raises (requests' errors are OSErrors)
        raise UserError(f"the upload to {repo_id} failed: {type(exc).__name__}: {_first_line(exc)}") from None
    return str(url)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _refusal(exc) -> str:
    """'401 Unauthorized: what the server said (what to do)' for an HfHubHTTPError."""
    response = exc.response
    if response is None:
        return _first_line(exc)
    status = response.status_code
    # httpx calls it reason_phrase, requests reason
    reason = getattr(response, "reason_phrase", None) or getattr(response, "reason", "") or ""
    said = (getattr(exc, "server_message", None) or "").strip().splitlines()
    return f"{status} {reason}".strip() + (f": {said[0]}" if said else "") + _refusal_hint(status)


def _refusal_hint(status: int | None) -> str:
    return {
        401: " (not logged in, or the token is invalid or expired: run `make login` or set HF_TOKEN)",
        403: " (the token may not write there: use a token with write access, or a repo under your own name)",
        404: " (repository not found: check the name, and that the token can see it)",
    }.get(status, "")


# --- eval results ------------------------------------------------------------------------------


def upload_eval_dataset(dataset_dir: Path | str, repo_id: str, private: bool = True, token: str | None = None,
                        ranking_csv: Path | str | None = None) -> str:
    """Push the eval dataset (``save_to_disk`` folder) as one parquet shard plus a dataset card.

    ``ranking_csv`` (eval_ranking.csv), when given and present, goes into the same commit.
    """
    from datasets import load_from_disk

    dataset = load_from_disk(str(dataset_dir))
    with tempfile.TemporaryDirectory() as tmp:
        shard = Path(tmp) / "train.parquet"
        dataset.to_parquet(str(shard))
        card = (
            "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
            "    path: data/train-*.parquet\ntags:\n- kanitts\n- text-to-speech\n- evaluation\n---\n\n"
            "# KaniTTS evaluation results\n\nEvery model (the base model and each fine-tuning experiment) "
            "speaking every sentence of the eval set, made by `kanitts eval`.\n\nColumns: `experiment_id`, "
            "`train_configuration` (JSON of the experiment's full config), `sentence_id`, `sentence`, `take`, "
            "`audio`, `truncated`, `problems`, `voice` (the voice a speaker-conditioned model spoke in), "
            "the metrics (duration, characters per second, "
            "leading/trailing silence, clipping, peak level, speaker similarity, `wer`, `cer` and the ASR "
            "`transcript`, predicted `mos`; empty where not measured), and the model's place in the ranking "
            "(`model_rank`, `model_composite`, `model_p_best`, `model_verdict`: winner, tie or empty).\n"
        )
        files: dict[str, Path | bytes] = {"data/train-00000-of-00001.parquet": shard}
        if ranking_csv is not None and Path(ranking_csv).is_file():
            files["eval_ranking.csv"] = Path(ranking_csv)
            card += ("\n`eval_ranking.csv`: per model (best first, overall and per speaker) the mean of each "
                     "metric with its bootstrap interval, the composite score, P(best) and the verdict, and the "
                     "speakers' reference recordings as a non-competing ceiling.\n")
        files["README.md"] = card.encode()
        return push_files(
            repo_id,
            files,
            repo_type="dataset",
            private=private,
            commit_message=f"Eval results: {len(dataset)} samples",
            token=token,
        )


# --- models ------------------------------------------------------------------------------------


def checkpoint_problems(folder: Path) -> list[str]:
    """What a checkpoint lacks to be published; empty when complete."""
    if not folder.is_dir():
        return [f"{folder} does not exist"]
    problems = []
    if not (folder / "config.json").is_file():
        problems.append("config.json is missing")
    if not ((folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()):
        problems.append("the weights (model.safetensors) are missing")
    else:
        try:
            check_safetensors(folder)
        except UserError as exc:
            problems.append(str(exc))
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        problems.append("the tokenizer files (tokenizer.json / tokenizer_config.json) are missing")
    for name in ("experiment.yaml", "metrics.json"):
        if not (folder / name).is_file():
            problems.append(f"{name} is missing (written by `kanitts train` when training completes)")
    if (folder / "metrics.json").is_file():
        try:
            json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            problems.append(f"metrics.json is not valid JSON: {exc}")
    return problems


def _read_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    experiment = redact_secrets(yaml.safe_load((folder / "experiment.yaml").read_text(encoding="utf-8")) or {})
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    return experiment, metrics


def _table(rows: list[tuple[str, Any]], header: tuple[str, str] = ("setting", "value"), code: bool = True) -> str:
    """A two-column markdown table; ``code`` sets the keys as code (config keys)."""
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {f'`{k}`' if code else k} | {_cell(v)} |" for k, v in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return "`" + json.dumps(value) + "`"
    return str(value).replace("|", "\\|")


def _score(value: Any, digits: int = 3) -> str:
    return "not measured" if value is None else f"{value:.{digits}f}"


def _with_interval(summary: dict[str, Any] | None) -> str:
    if not summary or summary.get("not_measured"):
        return "not measured"
    low, high = summary.get("ci") or [None, None]
    interval = "" if low is None or high is None else f" [{low:.3f}, {high:.3f}]"
    return f"{summary['mean']:.3f}{interval}"


def _ranking_section(model_id: str, ranking: dict[str, Any] | None) -> str:
    """Where the model stands among the evaluated ones, with the intervals and the references' ceiling."""
    if not ranking:
        return ""
    models = ranking.get("models", [])
    place = next((i for i, m in enumerate(models) if m["model"] == model_id), None)
    if place is None:
        return ""
    me = models[place]
    pct = round(ranking.get("confidence_level", 0.95) * 100)
    if ranking.get("winner") == model_id:
        verdict = "the suggested winner"
    elif model_id in ranking.get("tied", []):
        verdict = "tied for first with " + ", ".join(m for m in ranking["tied"] if m != model_id)
    elif ranking.get("winner"):
        verdict = f"behind the suggested winner {ranking['winner']}"
    else:
        verdict = "no model is a clear winner"
    composite = _with_interval({"mean": me["composite"], "ci": me.get("composite_ci")}) if me.get(
        "composite") is not None else "not computed"
    p_best = "n/a" if me.get("p_best") is None else f"{me['p_best']:.0%}"
    ceiling = ranking.get("ceiling", [])
    shown = [m for m in ranking["metrics"]
             if any(not x["metrics"].get(m["name"], {}).get("not_measured") for x in [*models, *ceiling])]
    header = ["metric", model_id, *[c["name"] for c in ceiling]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for metric in shown:
        directions = {"lower": "lower is better", "higher": "higher is better", "near_one": "best at 1"}
        better = directions[metric["direction"]]
        cells = [_with_interval(me["metrics"].get(metric["name"]))]
        cells += [_with_interval(c["metrics"].get(metric["name"])) for c in ceiling]
        lines.append(f"| {metric['label']} ({better}) | " + " | ".join(cells) + " |")
    return (
        f"### Ranking\n\nRank {place + 1} of {len(models)} models over {ranking['n_sentences']} sentences: "
        f"composite {composite}, best in {p_best} of bootstrap resamples; {verdict}. Means with {pct}% "
        "bootstrap intervals over the sentences"
        + ("; the reference recordings (and the same through the codec) are the ceiling, not ranked" if ceiling
           else "")
        + ".\n\n" + "\n".join(lines)
    )


# Where eval_results.json's reference recordings came from, by their ``origin`` (results written
# before eval took references automatically have none: they were all configured).
_REFERENCE_ORIGINS = {
    "configured": "configured in eval_config.yaml",
    "held-out": "held out of the training data and taken automatically (never trained on)",
}


def _references_line(references: list[dict[str, Any]] | None) -> str:
    """"Speaker similarity references: alice: 2 recordings held out of ...; bob: 1 configured ..."."""
    counts: dict[tuple[str, str], int] = {}
    for ref in references or []:
        if ref.get("kind") == "recording":
            key = (str(ref.get("speaker")), ref.get("origin") or "configured")
            counts[key] = counts.get(key, 0) + 1
    if not counts:
        return ""
    parts = [f"{speaker}: {n} recording(s) {_REFERENCE_ORIGINS.get(origin, origin)}"
             for (speaker, origin), n in counts.items()]
    return "Speaker similarity references: " + "; ".join(parts) + "."


def _eval_section(model_id: str, eval_rows: list[dict[str, Any]], ranking: dict[str, Any] | None = None,
                  references: list[dict[str, Any]] | None = None) -> str:
    rows = [r for r in eval_rows if r.get("experiment_id") == model_id]
    if not rows:
        return "Not evaluated yet (run `make eval`)."
    voiced = any(r.get("voice") for r in rows)  # a speaker-conditioned model: which voice it spoke in
    header = ("| sentence | duration (s) | chars/s | truncated | speaker similarity | WER | CER | MOS |"
              + (" voice |" if voiced else "") + "\n|---|---|---|---|---|---|---|---|" + ("---|" if voiced else ""))
    lines = [header]
    for r in rows:
        cps = r.get("chars_per_sec")
        lines.append(
            f"| {_cell(r['sentence'])} | {r['duration_sec']:.2f} | {'' if cps is None else f'{cps:.1f}'} | "
            f"{'yes' if r['truncated'] else 'no'} | {_score(r.get('speaker_similarity'))} | "
            f"{_score(r.get('wer'))} | {_score(r.get('cer'))} | {_score(r.get('mos'), 2)} |"
            + (f" {_cell(r.get('voice') or '')} |" if voiced else "")
        )
    truncated = sum(bool(r["truncated"]) for r in rows)
    ranked = _ranking_section(model_id, ranking)
    sources = _references_line(references)
    return (
        f"{len(rows)} eval samples, {truncated} truncated. Metrics are computed by `kanitts eval` "
        "(speaker similarity: cosine to the training speaker's reference recordings; WER/CER: of an ASR "
        "transcript against the sentence; MOS: a predicted mean opinion score)."
        + (f" {sources}" if sources else "") + "\n\n" + "\n".join(lines)
        + (f"\n\n{ranked}" if ranked else "")
    )


def _is_kanitts2(folder: Path) -> bool:
    from kanitts.models.kanitts2 import is_kanitts2_config

    try:
        return is_kanitts2_config(json.loads((folder / "config.json").read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return False


def _trained_prefixes(folder: Path) -> frozenset[str] | None:
    """The prompt prefixes the checkpoint's config.json records for its training (None: none recorded)."""
    from types import SimpleNamespace

    from kanitts.inference import trained_prefixes

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # a missing or broken config.json is check_checkpoint's to report
        return None
    return trained_prefixes(SimpleNamespace(**config), str(folder)) if isinstance(config, dict) else None


def _voice_usage(folder: Path, repo_id: str, codec: CodecSection, kanitts2: bool, config_args: str) -> str:
    """How to choose the voice: a reference clip (a codec with a voice embedding, Kanade, or the
    model's speaker slot) and the training speakers' mean voices the checkpoint carries."""
    from kanitts.codecs import codec_class
    from kanitts.conditioning import PROJECTION_FILE, SPEAKERS_FILE, load_speaker_means

    text = ""
    if not kanitts2 and hasattr(codec_class(codec.kind), "embed"):
        slot = (folder / PROJECTION_FILE).is_file()
        text += ("\n\nVoice cloning: `kanitts synthesize \"Hello.\" --model "
                 f"{repo_id}{config_args} --voice ref.wav -o out.wav` speaks in the voice of `ref.wav`: its "
                 f"{codec.kind} global embedding goes to the decoder"
                 + (" and to the model's speaker slot (trained with speaker conditioning)." if slot else
                    "; the model itself was trained without speaker conditioning."))
    speakers = sorted(k.removeprefix("speaker:") for k in load_speaker_means(folder) if k.startswith("speaker:")) \
        if (folder / SPEAKERS_FILE).is_file() else []
    if speakers:
        text += ("\n\nTraining speakers (`--speaker NAME` without `--voice` speaks in that speaker's mean "
                 f"voice): {', '.join(speakers)}.")
    return text


def build_model_card(
    folder: Path | str,
    repo_id: str,
    dataset_ids: list[str] | None = None,
    eval_rows: list[dict[str, Any]] | None = None,
    codec: CodecSection | None = None,
    ranking: dict[str, Any] | None = None,
    references: list[dict[str, Any]] | None = None,
) -> str:
    """README.md for a checkpoint: Hub metadata, training settings, final loss, eval, usage, license.

    ``codec`` (model_config.yaml's) says which audio tokens the model writes; default NanoCodec.
    ``ranking`` (eval_results.json's) adds where the model stands among the evaluated ones, and
    ``references`` (its reference recordings) which of them were configured or held out of training.
    """
    codec = codec or CodecSection()
    folder = Path(folder)
    experiment, metrics = _read_checkpoint(folder)
    body = experiment.get("experiment", experiment)
    base = body.get("base", {}) if isinstance(body.get("base"), dict) else {}
    model_id = experiment.get("model_id") or base.get("model_id") or folder.name
    base_model = experiment.get("base_model") or body.get("base_model")
    datasets = [d for d in (dataset_ids or experiment.get("datasets") or []) if is_hub_id(d)]
    meta: dict[str, Any] = {"license": LICENSE, "library_name": "transformers", "pipeline_tag": "text-to-speech"}
    if is_hub_id(base_model):
        meta["base_model"] = base_model
        meta["base_model_relation"] = "finetune"
    if datasets:
        meta["datasets"] = datasets
    meta["tags"] = ["kanitts", "text-to-speech", "lfm2", codec.kind, "lora"]
    kanitts2 = _is_kanitts2(folder)
    if kanitts2:
        meta["tags"].insert(1, "kanitts-2")

    final_loss = metrics.get("final_loss")
    history = metrics.get("loss_history") or []
    training_facts = [
        ("final training loss", f"{final_loss:.4f}" if isinstance(final_loss, (int, float)) else "n/a"),
        ("logged steps", len(history) if isinstance(history, list) else "n/a"),
    ]
    for key, label in (("train_runtime", "runtime (s)"), ("tokens_per_second", "tokens/s")):
        if isinstance(metrics.get(key), (int, float)):
            training_facts.append((label, f"{metrics[key]:.1f}"))
    prefixes = _trained_prefixes(folder)  # None: not recorded, any eval speaker is a prefix
    speakers = sorted({s for r in (eval_rows or []) if (s := EvalSentence("", r["sentence"]).speaker)
                       and (prefixes is None or s.lower() in prefixes)})
    example = f"{speakers[0]}: Hello, this is my new voice." if speakers else "Hello, this is my new voice."
    # a codec other than the default one is named in model_config.yaml, or the model loads with NanoCodec's
    custom_codec = codec.model_dump() != CodecSection().model_dump()
    config_args = " --config-dir config" if custom_codec else ""
    load_args = ', model_cfg=load_configs("config", kinds=("model",)).model' if custom_codec else ""

    sections = [
        "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---",
        f"# {model_id}",
        (f"A KaniTTS text-to-speech model fine-tuned from `{base_model}` with LoRA (merged into the weights) "
         f"using kanitts. It writes {codec.kind} tokens ({codec.num_codebooks} codebook(s) x {codec.codebook_size} "
         f"codes, {codec.fps:g} frames/s) that the codec (`{codec.weights}`) turns into "
         f"{codec.sample_rate / 1000:g} kHz audio.")
        + (f"\n\n{base['desc']}" if base.get("desc") else ""),
        ("## Usage\n\n"
         + ("The model speaks through the codec it was trained with: put it in `config/model_config.yaml`:\n\n"
            "```yaml\n" + yaml.safe_dump({"codec": {"kind": codec.kind, "weights": codec.weights,
                                                    "audio_tokens_start": codec.audio_tokens_start}},
                                          sort_keys=False) + "```\n\n" if custom_codec else "")
         + "```bash\npip install kanitts\n"
         f"kanitts synthesize \"{example}\" --model {repo_id}{config_args} -o out.wav\n```\n\n```python\n"
         "from kanitts.audio import write_wav\n"
         + ("from kanitts.config import load_configs\n" if custom_codec else "")
         + "from kanitts.inference import KaniTTS\n\n"
         f"tts = KaniTTS.from_pretrained(\"{repo_id}\"{load_args})\n"
         f"result = tts.synthesize([\"{example}\"])[0]\n"
         "write_wav(\"out.wav\", result.audio, result.sample_rate)\n```\n\n"
         + ("A KaniTTS-2 model (speaker embedding, frame-level positions, learnable RoPE): give a reference "
            f"clip to speak in its voice (`kanitts synthesize \"Hello.\" --model {repo_id} --voice ref.wav "
            "-o out.wav`, with the speaker embedder in model_config.yaml); start the text with the language tag "
            "it was trained with (`en: text`). The checkpoint also loads in the `kani-tts-2` package."
            if kanitts2 else
            "Start the text with the speaker prefix the model was trained with (`speaker: text`)."
            if prefixes is None else
            f"Its training prompts began with {', '.join(f'`{p}: `' for p in sorted(prefixes))}: start the text "
            "with one of them." if prefixes else "It was trained without prompt prefixes: give the text alone.")
         + _voice_usage(folder, repo_id, codec, kanitts2, config_args)),
        "## Training\n\n" + _table([
            ("base model", base_model or "n/a"),
            ("datasets", ", ".join(datasets) if datasets else "local data"),
            *[(k, v) for k, v in training_facts],
        ], header=("", ""), code=False),
    ]
    if isinstance(body.get("lora_args"), dict):
        sections.append("### LoRA\n\n" + _table(sorted(body["lora_args"].items())))
    if isinstance(body.get("trainer_args"), dict):
        sections.append("### Trainer\n\n" + _table(sorted(body["trainer_args"].items())))
    if isinstance(body.get("training"), dict):
        sections.append("### Data and batching\n\n" + _table(sorted(body["training"].items())))
    if metrics.get("dataset_fingerprint"):
        sections.append(f"Training data fingerprint: `{metrics['dataset_fingerprint']}`.")
    sections.append("## Evaluation\n\n" + _eval_section(model_id, eval_rows or [], ranking, references))
    sections.append(f"## License\n\n{LICENSE.capitalize()}; the base model's license also applies.")
    return "\n\n".join(sections) + "\n"


def upload_model(
    folder: Path | str,
    repo_id: str,
    private: bool = False,
    dataset_ids: list[str] | None = None,
    eval_rows: list[dict[str, Any]] | None = None,
    token: str | None = None,
    codec: CodecSection | None = None,
    ranking: dict[str, Any] | None = None,
    references: list[dict[str, Any]] | None = None,
) -> str:
    """Publish a complete checkpoint folder with its generated model card as README.md."""
    folder = Path(folder)
    problems = checkpoint_problems(folder)
    if problems:
        raise UserError(f"refusing to upload the incomplete checkpoint {folder}: " + "; ".join(problems))
    card = build_model_card(folder, repo_id, dataset_ids, eval_rows, codec, ranking, references)
    files: dict[str, Path | bytes] = {
        p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "README.md"
    }
    files["README.md"] = card.encode()
    recorded = yaml.safe_load((folder / "experiment.yaml").read_text(encoding="utf-8"))
    if redact_secrets(recorded) != recorded:  # written before kanitts kept secrets out of it
        files["experiment.yaml"] = yaml.safe_dump(redact_secrets(recorded), sort_keys=False).encode()
    return push_files(repo_id, files, repo_type="model", private=private,
                      commit_message=f"Upload {folder.name} (kanitts)", token=token)
