"""`kanitts eval`: every model speaks every eval sentence; audio, metrics, a dataset, a report.

The models are the base model of experiments.yaml (experiment id ``base``) and each experiment's
checkpoint in ``checkpoints_dir``. For each (model, sentence) the runner writes
``<audio_output_dir>/<experiment>/<sentence>.wav`` and a JSON sidecar, then gathers one row per
sample (the reference's ``experiment_id, train_configuration, sentence_id, sentence, audio``,
plus what happened and the metrics) into:

- ``<audio_output_dir>/eval_results.csv`` and ``eval_results.json`` (what the report reads),
- ``<audio_output_dir>/eval_dataset/`` (``datasets`` save_to_disk, audio embedded);

their names and shape are :mod:`kanitts.evaluation.results`'. The report and the Hub upload
are the eval recipe's next steps (:mod:`kanitts.recipes.eval`).

Work is resumable: a sample whose sidecar records the same model files, sentence and sampling
settings is not generated again (``force`` regenerates). Metrics are always recomputed from the
WAV files, which is cheap. A model that fails to load or a sentence that fails to generate is
reported and the rest goes on.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from kanitts.asr import Transcriber
from kanitts.audio import load_audio, resample, to_mono, write_wav
from kanitts.codecs import Codec, load_codec
from kanitts.config import ConfigSet, EvalSentence
from kanitts.config import SpeakerSimilarity as SimilaritySettings
from kanitts.errors import UserError
from kanitts.evaluation.metrics import METRIC_LABELS
from kanitts.evaluation.naturalness import LABEL as NATURALNESS_LABEL
from kanitts.evaluation.naturalness import folder_signature, load_naturalness
from kanitts.evaluation.ranking import DEFAULT_METRICS, Sample, format_ranking, rank_models
from kanitts.evaluation.references import HOW_TO_GET_REFERENCES, References, collect_references
from kanitts.evaluation.results import (
    REFERENCE_LABELS,
    REFERENCES_DIR,
    SCORE_CACHE,
    loss_history,
    slugify,
    write_results,
    write_text,
)
from kanitts.evaluation.scoring import Clip, ScoreCache, Scorers, digest
from kanitts.evaluation.speaker import SpeakerSimilarity, load_embedder
from kanitts.files import check_output_folder
from kanitts.inference import KaniTTS, SynthesisResult
from kanitts.redact import redact_secrets
from kanitts.runtime import release_memory, resolve_device, scoped_seed

BASE_ID = "base"
SEED = 1234  # every model samples from the same seed, so a rerun with --force reproduces it


def _check_file_names(sentences: list[EvalSentence]) -> None:
    """Two sentence ids that differ only in unsafe characters would share a file: refuse."""
    seen: dict[str, str] = {}
    for sentence in sentences:
        slug = slugify(sentence.sentence_id).lower()  # case-insensitive file systems too
        if slug in seen:
            raise UserError(
                f"eval_set.yaml: sentence ids {seen[slug]!r} and {sentence.sentence_id!r} give the same "
                f"file name {slugify(sentence.sentence_id)!r}; rename one"
            )
        seen[slug] = sentence.sentence_id


@dataclass
class EvalTarget:
    """One model to evaluate."""

    experiment_id: str
    model: str
    train_configuration: dict[str, Any]
    checkpoint_dir: Path | None = None

    @property
    def folder_name(self) -> str:
        return slugify(self.experiment_id)


@dataclass
class EvalSummary:
    """What an eval run produced; the eval recipe adds where the report and the upload went."""

    rows: list[dict[str, Any]]
    failures: list[str]
    generated: int
    reused: int
    results_json: Path
    csv_path: Path
    dataset_dir: Path
    report_index: Path | None = None
    hub_url: str | None = None
    upload_error: str | None = None
    seconds: float = 0.0
    ranking_text: str = ""
    references: list[dict[str, Any]] = field(default_factory=list)
    # Where each speaker's references come from ("alice: 2 configured; ..."), and what is missing.
    reference_origins: str = ""
    reference_notes: list[str] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return bool(self.rows) and not self.failures and not self.upload_error

    def per_model(self) -> list[str]:
        """One line per model (then per kind of reference, the ceiling): means of what was measured."""
        lines = []
        for model in dict.fromkeys(r["experiment_id"] for r in self.rows):
            mine = [r for r in self.rows if r["experiment_id"] == model]
            line = (f"  {model}: {len(mine)} samples, {sum(r['truncated'] for r in mine)} truncated, "
                    f"mean {sum(r['duration_sec'] for r in mine) / len(mine):.2f} s")
            lines.append(line + _means(mine))
        for kind, label in REFERENCE_LABELS.items():
            mine = [r for r in self.references if r["kind"] == kind]
            if mine:
                lines.append(f"  {label} (ceiling, not ranked): {len(mine)} clips, "
                             f"mean {sum(r['duration_sec'] for r in mine) / len(mine):.2f} s" + _means(mine))
        if self.reference_origins:
            lines.append(f"  references: {self.reference_origins}")
        lines += [f"  note: {note}" for note in self.reference_notes]
        return lines

    def describe(self) -> str:
        lines = [
            f"{len(self.rows)} samples ({self.generated} generated, {self.reused} reused) in {self.seconds:.1f} s",
            *self.per_model(),
            *([self.ranking_text] if self.ranking_text else []),
            f"results: {self.csv_path}",
            f"dataset: {self.dataset_dir}",
        ]
        if self.report_index:
            lines.append(f"report:  {self.report_index}")
        if self.hub_url:
            lines.append(f"hub:     {self.hub_url}")
        if self.upload_error:
            lines.append(f"upload failed (the results above are kept): {self.upload_error}")
        lines += [f"failed:  {f}" for f in self.failures]
        return "\n".join(lines)


def _means(rows: list[dict[str, Any]]) -> str:
    """", speaker similarity 0.812, WER 0.050, CER 0.020, MOS not measured": each score's mean."""
    parts = []
    for key in ("speaker_similarity", "wer", "cer", "mos"):
        values = [r[key] for r in rows if r.get(key) is not None]
        parts.append(f"{METRIC_LABELS[key]} {sum(values) / len(values):.3f}" if values
                     else f"{METRIC_LABELS[key]} not measured")
    return ", " + ", ".join(parts)


def eval_targets(configs: ConfigSet) -> tuple[list[EvalTarget], dict[str, str]]:
    """The base model and every experiment's checkpoint, and {model_id: why} for missing ones."""
    experiments = configs.experiments
    checkpoints = Path(configs.eval.paths.checkpoints_dir)
    targets = [EvalTarget(BASE_ID, experiments.base_model, {"base_model": experiments.base_model})]
    missing = {}
    for experiment in experiments.experiments:
        if experiment.sweep is not None:  # its trials are a study's (sweeps/<name>/best.json), not one checkpoint
            continue
        folder = checkpoints / experiment.model_id
        if not (folder / "config.json").is_file():
            missing[experiment.model_id] = (
                f"{experiment.model_id}: no checkpoint at {folder} (train it with `make train`, "
                "or check paths.checkpoints_dir in eval_config.yaml)"
            )
            continue
        configuration = _train_configuration(folder, experiment.model_dump(mode="json"))
        targets.append(EvalTarget(experiment.model_id, str(folder), configuration, folder))
    return targets, missing


def _train_configuration(folder: Path, fallback: dict[str, Any]) -> dict[str, Any]:
    """What the checkpoint was trained with (its experiment.yaml), else the experiment's config."""
    path = folder / "experiment.yaml"
    if path.is_file():
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            data = None
        if isinstance(data, dict):
            return redact_secrets(data)
    return redact_secrets(fallback)


def _model_signature(target: EvalTarget) -> dict[str, Any]:
    """Changes when the model's files change (a retrained checkpoint is evaluated again)."""
    folder = Path(target.model)
    if not folder.is_dir():
        return {"model": target.model}
    files = sorted(p for p in folder.iterdir() if p.suffix in {".json", ".safetensors", ".bin"})
    return {"model": target.model, "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


def _signature(target: EvalTarget, sentence: EvalSentence, configs: ConfigSet) -> str:
    payload = {
        "model": _model_signature(target),
        "sentence": sentence.text,
        "generation": configs.inference.generation.model_dump(exclude={"batch_size"}),
        "codec": configs.model.codec.model_dump(),
        "seed": SEED,
    }
    if configs.model.codec.kind != "nanocodec":  # a codec with voices: each sentence in its speaker's
        payload["voice"] = "the speaker's mean embedding"
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


class _Outputs:
    """Where a sample's files live, and whether they are already done."""

    def __init__(self, audio_dir: Path, takes: int):
        self.audio_dir = audio_dir
        self.takes = takes

    def wav(self, target: EvalTarget, sentence: EvalSentence, take: int) -> Path:
        stem = slugify(sentence.sentence_id) + (f"-{take + 1}" if self.takes > 1 else "")
        return self.audio_dir / target.folder_name / f"{stem}.wav"

    def done(self, target: EvalTarget, sentence: EvalSentence, signature: str) -> list[dict[str, Any]] | None:
        """The sidecars of every take when all exist with this signature, else None."""
        sidecars = []
        for take in range(self.takes):
            wav = self.wav(target, sentence, take)
            meta = wav.with_suffix(".json")
            if not (wav.is_file() and meta.is_file()):
                return None
            try:
                data = json.loads(meta.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                return None
            if data.get("signature") != signature:
                return None
            sidecars.append(data)
        return sidecars

    def save(self, target: EvalTarget, sentence: EvalSentence, take: int, signature: str,
             result: SynthesisResult) -> dict[str, Any]:
        wav = write_wav(self.wav(target, sentence, take), result.audio, result.sample_rate)
        data = {
            "experiment_id": target.experiment_id,
            "sentence_id": sentence.sentence_id,
            "sentence": sentence.text,
            "take": take,
            "signature": signature,
            "truncated": result.truncated,
            "problems": result.problems,
            "voice": result.voice,
            "num_frames": result.num_frames,
            "num_generated_tokens": result.num_generated_tokens,
        }
        write_text(wav.with_suffix(".json"), json.dumps(data, indent=2))
        return data


def run_eval(
    configs: ConfigSet,
    force: bool = False,
    only: list[str] | None = None,
    device: str | None = None,
    load_model: Callable[..., KaniTTS] = KaniTTS.from_pretrained,
) -> EvalSummary:
    """Evaluate the base model and every checkpoint on the eval set (see the module docstring)."""
    started = time.perf_counter()
    eval_cfg = configs.eval
    audio_dir = check_output_folder(eval_cfg.paths.audio_output_dir, "eval_config.yaml: paths.audio_output_dir")
    targets, missing = eval_targets(configs)
    if only:
        unknown = sorted(set(only) - {t.experiment_id for t in targets} - set(missing))
        if unknown:
            raise UserError(f"--only: unknown id(s) {', '.join(unknown)}; known: base and the experiments' model_id")
        targets = [t for t in targets if t.experiment_id in only]
        missing = {k: v for k, v in missing.items() if k in only}
    failures = list(missing.values())
    sentences = configs.eval_set.sentences
    _check_file_names(sentences)
    takes = configs.inference.generation.num_return_sequences
    outputs = _Outputs(audio_dir, takes)
    device = resolve_device(device or configs.inference.model.device_map)
    # Every scoring model loads once, before generating: a wrong model id costs nothing.
    found = collect_references(configs)
    similarity = load_similarity(configs, device, found)
    transcriber = load_transcriber(configs, device)
    naturalness, mos_note = load_naturalness(eval_cfg.naturalness, device)
    language = eval_cfg.intelligibility.language if eval_cfg.intelligibility else None
    scorers = Scorers(ScoreCache(audio_dir / SCORE_CACHE), similarity=similarity, transcriber=transcriber,
                      language=language, naturalness=naturalness)
    codec: Codec | None = None

    def get_codec() -> Codec:
        nonlocal codec
        if codec is None:  # every model needs it: a codec that does not load stops the run
            codec = load_codec(configs.model.codec.kind, configs.model.codec.weights, device=device)
        return codec

    load_errors: dict[str, str] = {}

    sidecars: dict[tuple[str, str], list[dict[str, Any]]] = {}
    generated = reused = 0
    bar = tqdm(total=len(targets) * len(sentences), unit="sample", desc="eval")
    # ``generate`` samples from torch's global generator (it takes no ``torch.Generator``), and
    # loading a model or the codec draws from it too: the whole run is scoped, so the caller's
    # random state is as it was afterwards. numpy's and Python's generators are never seeded.
    with scoped_seed(device=device):
        for target in targets:
            todo = []
            for sentence in sentences:
                signature = _signature(target, sentence, configs)
                done = None if force else outputs.done(target, sentence, signature)
                if done is not None:
                    sidecars[(target.experiment_id, sentence.sentence_id)] = done
                    reused += 1
                    bar.update(1)
                else:
                    todo.append((sentence, signature))
            if not todo:
                continue
            bar.set_postfix_str(target.experiment_id)
            try:
                tts = load_model(target.model, codec=get_codec(), model_cfg=configs.model,
                                 inference_cfg=configs.inference, device=device)
            except (UserError, OSError, RuntimeError, ValueError) as exc:
                load_errors[target.experiment_id] = f"cannot load {target.model}: {exc}"
                failures.append(f"{target.experiment_id}: {load_errors[target.experiment_id]}")
                bar.update(len(todo))
                continue
            torch.manual_seed(SEED)
            for batch in in_batches(todo, configs.inference.generation.batch_size):
                for (sentence, signature), results, error in speak_sentences(tts, batch):
                    bar.update(1)
                    if error:
                        failures.append(f"{target.experiment_id} / {sentence.sentence_id}: generation failed: {error}")
                        continue
                    sidecars[(target.experiment_id, sentence.sentence_id)] = [
                        outputs.save(target, sentence, take, signature, result) for take, result in enumerate(results)
                    ]
                    generated += 1
            del tts
            release_memory()
    bar.close()

    rows = _rows(targets, sentences, sidecars, outputs, scorers)
    references = _references(configs, audio_dir, scorers, get_codec, failures, found)
    del transcriber, naturalness, scorers, codec
    release_memory()
    measures = {
        "speaker_similarity": {
            "embedder": similarity.label if similarity else None,
            "note": (similarity.note if similarity
                     else f"not measured: no reference recordings; {HOW_TO_GET_REFERENCES}"),
            "references": found.origins(),
            "reference_notes": found.notes,
        },
        "intelligibility": (eval_cfg.intelligibility.model_dump() if eval_cfg.intelligibility else None),
        "naturalness": {
            "model": eval_cfg.naturalness.model if eval_cfg.naturalness else None,
            "label": None if mos_note else NATURALNESS_LABEL,
            "note": mos_note,
        },
    }
    ranking, ranking_text = _ranking(rows, sentences, references)
    summary = _write_results(configs, targets, sentences, rows, failures, audio_dir, load_errors,
                             measures, ranking, references)
    summary.ranking_text = ranking_text
    summary.references = references
    summary.reference_origins, summary.reference_notes = found.describe(), found.notes
    summary.generated, summary.reused = generated, reused
    summary.seconds = time.perf_counter() - started
    return summary


def in_batches(items: list, size: int) -> list[list]:
    return [items[i: i + size] for i in range(0, len(items), size)]


def speak_sentences(tts: KaniTTS, batch: list[tuple[EvalSentence, str]]):
    """Yield (item, results, error) per sentence; a failing batch is retried one sentence at a time.

    A model that takes a voice (Kanade, a speaker-conditioned model) speaks each sentence in its
    speaker's voice: the speaker's mean embedding from training (all clips' mean for a sentence
    without a speaker, or one the model was not trained on); each result's ``voice`` says which.
    """
    # "Alice: hi" is read as the model was trained: "alice: hi" (speaker ids are lower-cased), or
    # "hi" when its training prompts had no such prefix (KaniTTS.prompt_text).
    texts = [tts.prompt_text(s.spoken_text, s.speaker) for s, _ in batch]
    found = [tts.voice_embedding(speaker=s.speaker) for s, _ in batch] if tts.takes_voice else None
    voices = None if found is None else [embedding for embedding, _ in found]
    try:
        results = tts.synthesize(texts, batch_size=len(batch), voices=voices)
    except (RuntimeError, ValueError) as exc:
        if len(batch) == 1:
            yield batch[0], [], f"{type(exc).__name__}: {exc}"
            return
        for item in batch:
            yield from speak_sentences(tts, [item])
        return
    takes = len(results) // len(batch)
    for i, item in enumerate(batch):
        mine = results[i * takes: (i + 1) * takes]
        for result in mine:
            if found is not None and found[i][0] is not None:  # where it came from, not "the given embedding"
                result.voice = found[i][1]
            tts.record_prefix(result, item[0].speaker)
        yield item, mine, None


def load_similarity(configs: ConfigSet, device: str, references: References):
    """The embedder and the speakers' reference vectors; None when no speaker has references."""
    paths = references.paths()
    if not paths:
        return None
    embedder = load_embedder((configs.eval.speaker_similarity or SimilaritySettings()).embedder)
    move = getattr(embedder, "to", None)  # a neural embedder runs on the eval device, references too
    if move is not None:
        move(device)
    return SpeakerSimilarity(embedder, paths)


def load_transcriber(configs: ConfigSet, device) -> Transcriber | None:
    """The ASR model of ``intelligibility:``, loaded once per run; None when not configured."""
    settings = configs.eval.intelligibility
    if settings is None:
        return None
    try:
        return Transcriber(settings.model, language=settings.language, device=device,
                           batch_size=settings.batch_size)
    except UserError as exc:
        raise UserError(f"eval_config.yaml: intelligibility.model: {exc}") from None


def _rows(targets, sentences, sidecars, outputs: _Outputs, scorers: Scorers) -> list[dict[str, Any]]:
    """One row per sample that exists, model-major, scored from the WAV files.

    One model's samples are scored together (batched, and only those the score cache lacks), so
    memory stays bounded by the largest model's sample set; the cache is saved after each model.
    """
    rows = []
    for target in targets:
        config_json = json.dumps(target.train_configuration, sort_keys=True)
        found = []
        for sentence in sentences:
            for data in sidecars.get((target.experiment_id, sentence.sentence_id), []):
                wav = outputs.wav(target, sentence, data["take"])
                raw = wav.read_bytes()
                samples, rate = load_audio(raw)
                clip = Clip(to_mono(samples), rate, digest(raw), sentence.spoken_text, sentence.speaker,
                            bool(data["truncated"]))
                found.append((sentence, data, wav, clip))
        if not found:
            continue
        scores = scorers.score([clip for *_, clip in found])
        scorers.cache.save()
        for (sentence, data, wav, clip), score in zip(found, scores, strict=True):
            rows.append({
                "experiment_id": target.experiment_id,
                "train_configuration": config_json,
                "sentence_id": sentence.sentence_id,
                "sentence": sentence.text,
                "take": data["take"],
                "audio": wav.relative_to(outputs.audio_dir).as_posix(),
                "sample_rate": clip.sample_rate,
                "problems": "; ".join(data["problems"]),
                "voice": data.get("voice", ""),
                **score,
            })
    return rows


def _reference_texts(paths: list[Path]) -> dict[Path, str]:
    """What each reference recording says, where an LJSpeech-style metadata.csv beside it tells.

    The folder of the file and the one above (``<speaker>/wavs/<id>.wav``) are looked in, as
    ``kanitts prepare`` reads such folders. A metadata.csv that does not read leaves the texts
    unknown (WER/CER of the references not measured), since they are only a ceiling.
    """
    from kanitts.prepare.sources.files import METADATA_NAME, FolderSource

    texts: dict[Path, str] = {}
    folders = {f for p in paths for f in (p.parent, p.parent.parent) if (f / METADATA_NAME).is_file()}
    for folder in sorted(folders):
        try:
            source = FolderSource(folder, text_field="normalized", encoding="auto")
        except UserError:
            continue
        for index, path in enumerate(source._paths):
            item = source.item(index)
            if path is not None and item.text:
                texts.setdefault(Path(path).resolve(), item.text)
    return texts


def _codec_round_trip(copy: Path, audio: np.ndarray, rate: int, source_digest: str, configs: ConfigSet,
                      get_codec: Callable[[], Codec]) -> Path:
    """``<name>.codec.wav`` beside the copy: the recording encoded and decoded by the codec.

    Kept with a sidecar naming the recording's hash and the codec's settings and files, so it is
    made again only when one of them changes (and the codec loads only then).
    """
    out = copy.with_name(copy.stem + ".codec.wav")
    sidecar = out.with_suffix(".json")
    signature = {"recording": source_digest, "codec": configs.model.codec.model_dump(),
                 "files": folder_signature(configs.model.codec.weights)}
    try:
        if out.is_file() and json.loads(sidecar.read_text(encoding="utf-8")) == signature:
            return out
    except (OSError, json.JSONDecodeError):
        pass
    codec = get_codec()
    wave = resample(audio, rate, codec.sample_rate)
    with torch.no_grad():
        codes, frames = codec.encode(torch.from_numpy(wave)[None], torch.tensor([len(wave)]))
        decoded, _ = codec.decode(codes, frames)
    write_wav(out, decoded[0, : len(wave)].float().cpu().numpy(), codec.sample_rate)
    write_text(sidecar, json.dumps(signature, sort_keys=True))
    return out


def _references(configs: ConfigSet, audio_dir: Path, scorers: Scorers, get_codec: Callable[[], Codec],
                failures: list[str], found: References) -> list[dict[str, Any]]:
    """The speakers' reference recordings, and their codec round trips, scored like the samples.

    A copy of each recording (mono, as scored) and its round trip go under
    ``<audio_dir>/references/<speaker>/``; each is compared for speaker similarity with the
    speaker's *other* references (leave-one-out; None for a speaker with one), and for WER/CER
    with its transcript when a metadata.csv gives it. They are the ceiling the models are
    measured against: what the real voice and the codec alone score. A round trip that fails
    (the codec does not load, say) is listed in ``failures``; the recordings are still scored.
    Each entry says where the recording comes from (``origin``: configured, or held out of
    training and taken automatically, with the dataset row as ``source``).
    """
    if not found.clips:
        return []
    texts = _reference_texts([clip.path.resolve() for clip in found.clips])
    by_speaker: dict[str, list] = {}
    for clip in found.clips:
        by_speaker.setdefault(clip.speaker, []).append(clip)
    entries, clips = [], []
    for speaker, mine in by_speaker.items():
        folder = audio_dir / REFERENCES_DIR / slugify(speaker)
        stems: set[str] = set()
        for index, reference in enumerate(mine):
            path = reference.path
            samples, rate = load_audio(path)
            audio = to_mono(samples)
            stem = slugify(Path(path).stem)
            while stem.lower() in stems:  # two references with one file name, from two folders
                stem += "_"
            stems.add(stem.lower())
            copy = write_wav(folder / f"{stem}.wav", audio, rate)
            raw = copy.read_bytes()
            text = reference.text or texts.get(Path(path).resolve())
            made = [("recording", copy)]
            try:
                made.append(("codec", _codec_round_trip(copy, audio, rate, digest(raw), configs, get_codec)))
            except (UserError, OSError, RuntimeError, ValueError) as exc:
                failures.append(f"references / {speaker} / {Path(path).name}: codec round trip failed: {exc}")
            for kind, wav in made:
                data = wav.read_bytes()
                heard, heard_rate = (audio, rate) if wav == copy else load_audio(data)
                clips.append(Clip(to_mono(heard), heard_rate, digest(data), text, speaker, leave_out=index))
                entries.append((kind, reference, wav, heard_rate, text))
    scores = scorers.score(clips)
    scorers.cache.save()
    metric_keys = list(METRIC_LABELS)
    rows = []
    for (kind, reference, wav, rate, text), score in zip(entries, scores, strict=True):
        rows.append({
            "kind": kind,
            "speaker": reference.speaker,
            "origin": reference.origin,
            "source": reference.source,
            "audio": wav.relative_to(audio_dir).as_posix(),
            "sample_rate": rate,
            "text": text,
            "transcript": score["transcript"],
            **{key: score.get(key) for key in metric_keys},
        })
    return rows


def _ranking(rows: list[dict[str, Any]], sentences: list[EvalSentence],
             references: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, str]:
    """The ranking of the models over the samples (as a dict and as text), or why there is none.

    Takes of one sentence are averaged first: the bootstrap resamples sentences, and a sentence
    counts once per model whatever ``num_return_sequences`` is. The references are shown beside
    the models as the ceiling and do not compete.
    """
    models = list(dict.fromkeys(r["experiment_id"] for r in rows))
    if len(models) < 2:
        return None, f"ranking: not computed (only {len(models)} model has samples; it needs two or more)"
    names = [spec.name for spec in DEFAULT_METRICS]
    speaker_of = {s.sentence_id: s.speaker for s in sentences}
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault((row["experiment_id"], row["sentence_id"]), []).append(row)
    samples = []
    for (model, sentence_id), takes in grouped.items():
        values = {}
        for name in names:
            numbers = [float(t[name]) for t in takes if t.get(name) is not None]
            values[name] = sum(numbers) / len(numbers) if numbers else None
        samples.append(Sample(model=model, sentence=sentence_id, speaker=speaker_of.get(sentence_id), values=values))
    if not any(v is not None for s in samples for v in s.values.values()):
        return None, "ranking: not computed (no metric was measured)"
    ceiling = [Sample(model=REFERENCE_LABELS[r["kind"]], sentence=r["audio"], speaker=r["speaker"],
                      values={name: r.get(name) for name in names}) for r in references]
    ranking = rank_models(samples, ceiling=ceiling)
    if not ranking.composite_metrics:
        return ranking.as_dict(), "ranking: no metric separates the models\n" + format_ranking(ranking)
    return ranking.as_dict(), format_ranking(ranking)


def _write_results(configs, targets, sentences, rows, failures, audio_dir: Path,
                   load_errors: dict[str, str], measures: dict[str, Any],
                   ranking: dict[str, Any] | None, references: list[dict[str, Any]]) -> EvalSummary:
    results = {
        "audio_dir": str(audio_dir),
        **measures,
        "generation": configs.inference.generation.model_dump(),
        "models": [
            {
                "experiment_id": t.experiment_id,
                "model": t.model,
                "train_configuration": t.train_configuration,
                "checkpoint_dir": str(t.checkpoint_dir) if t.checkpoint_dir else None,
                "loss_history": loss_history(t.checkpoint_dir),
                "eval_loss_history": loss_history(t.checkpoint_dir, "eval_loss_history"),
                "error": load_errors.get(t.experiment_id),
            }
            for t in targets
        ],
        "sentences": [{"sentence_id": s.sentence_id, "sentence": s.text} for s in sentences],
        "rows": rows,
        "failures": failures,
        "ranking": ranking,
        "references": references,
    }
    json_path, csv_path, dataset_dir = write_results(results, audio_dir)
    return EvalSummary(rows=rows, failures=failures, generated=0, reused=0, results_json=json_path,
                       csv_path=csv_path, dataset_dir=dataset_dir)
