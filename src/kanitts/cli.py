"""`kanitts <command>`: parses arguments, calls one library function, prints its result.

Each command lives in the library as a plain function (callable from Python and tests); this
module only wires argparse to them. Errors the user can fix arrive as UserError and are printed
without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kanitts import __version__
from kanitts.errors import ConfigError, UserError

DEFAULT_CONFIG_DIR = Path("config")


def _add_config_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config-dir",
        type=Path,
        default=DEFAULT_CONFIG_DIR,
        help="folder holding the six YAML files (default: ./config)",
    )


# --- check-config ---------------------------------------------------------------------------


def _cmd_check_config(args: argparse.Namespace) -> int:
    from kanitts.recipes import check

    return check.run(args.config_dir)


# --- login --------------------------------------------------------------------------------


def _cmd_login(args: argparse.Namespace) -> int:
    from kanitts.recipes import login

    return login.run(interactive=not args.non_interactive)


# --- prepare ------------------------------------------------------------------------------


def _cmd_prepare(args: argparse.Namespace) -> int:
    from kanitts.prepare.options import PrepareOptions
    from kanitts.recipes import prepare

    if args.output is not None and args.output_opt is not None and args.output != args.output_opt:
        raise UserError(f"two outputs given: {args.output} and --output {args.output_opt}")
    args.output = args.output or args.output_opt
    if args.output is None:
        raise UserError("name the output folder: kanitts prepare INPUT OUTPUT (or --output OUTPUT)")
    names = PrepareOptions.__dataclass_fields__
    options = PrepareOptions(**{k: v for k, v in vars(args).items() if k in names})
    return prepare.run(
        options, config_dir=args.config_dir, codec=args.codec, codec_model=args.codec_model,
        device=args.device, dtype=args.dtype,
    )


def _add_prepare_args(p: argparse.ArgumentParser) -> None:
    """Flags of ``kanitts prepare``; defaults and most help texts come from the options dataclasses."""
    from kanitts.prepare import options as opts

    def flag(group, name: str, cls: type = opts.PrepareOptions, **kw) -> None:
        dest = kw.pop("dest", name)
        value = opts.default(cls, dest)
        if isinstance(value, bool):
            kw.setdefault("action", "store_false" if value else "store_true")
        elif value is not None and "choices" not in kw:
            kw.setdefault("type", type(value))
        kw.setdefault("help", opts.help_text(cls, dest))
        group.add_argument(f"--{name.replace('_', '-')}", dest=dest, default=value, **kw)

    p.add_argument("input", help="folder with metadata.csv, a .csv/.jsonl manifest (path,text[,speaker]), "
                   "or a Hugging Face audio dataset (Hub id or local folder)")
    p.add_argument("output", nargs="?", help="folder to write the codec dataset to (save_to_disk layout)")
    p.add_argument("--output", "-o", dest="output_opt", default=None, metavar="OUTPUT", help="same as OUTPUT")
    g = p.add_argument_group("input")
    flag(g, "input_kind", choices=opts.INPUT_KINDS)
    flag(g, "text_field", choices=opts.TEXT_FIELDS)
    for name in ("split", "config_name", "audio_column", "text_column", "speaker_column", "speaker", "encoding"):
        flag(g, name)
    g = p.add_argument_group("codec")
    g.add_argument("--codec", default=None, help="codec kind (default: codec.kind of model_config.yaml)")
    g.add_argument("--codec-model", default=None,
                   help="Hub id or local folder of the codec weights (default: codec.weights of model_config.yaml)")
    flag(g, "device", opts.CodecSpec)
    flag(g, "dtype", opts.CodecSpec, choices=opts.DTYPES)
    flag(g, "speaker_embedder", metavar="WEIGHTS")
    g = p.add_argument_group("audio")
    flag(g, "normalize", choices=opts.NORMALIZE_MODES)
    for name in ("peak_dbfs", "loudness_lufs", "trim_silence", "trim_top_db", "silence_dbfs",
                 "min_duration", "max_duration"):
        flag(g, name)
    g = p.add_argument_group("suspect clips (kept with a `warnings` entry, or rejected)")
    flag(g, "suspect_clips", choices=opts.SUSPECT_CLIP_MODES)
    for name in ("clip_level", "max_clipped_fraction", "min_chars_per_second", "max_chars_per_second"):
        flag(g, name)
    g = p.add_argument_group(
        "long recordings (a folder of audio files without metadata.csv: cut at pauses, transcribed; "
        "defaults from the `prepare` section of dataset_config.yaml)"
    )
    for name in ("segment_min_duration", "segment_max_duration", "segment_target_duration", "segment_padding",
                 "split_pause", "vad_threshold", "min_asr_confidence"):
        flag(g, name, type=float)
    flag(g, "asr_model")
    flag(g, "asr_language")
    flag(g, "asr_batch_size", type=int)
    flag(g, "refine_cuts", action=argparse.BooleanOptionalAction)
    flag(g, "transcribe_only")
    g = p.add_argument_group("run")
    flag(g, "batch_seconds", type=float)
    flag(g, "max_batch_size", type=int)
    for name in ("shard_size", "num_workers", "resume", "overwrite"):
        flag(g, name)
    flag(g, "push_to_hub", metavar="REPO")
    flag(g, "private")
    flag(g, "no_progress", dest="progress")


# --- synthesize, eval, report, upload-model --------------------------------------------------


def _cmd_synthesize(args: argparse.Namespace) -> int:
    from kanitts.recipes import synthesize

    return synthesize.run(text=args.text, model=args.model, output=args.output, config_dir=args.config_dir,
                          speaker=args.speaker, codec=args.codec, device=args.device, voice=args.voice,
                          seed=args.seed)


def _seed(value: str) -> int:
    """A seed for torch.manual_seed: a whole number in its range, else argparse's usage error."""
    try:
        seed = int(value)
    except ValueError:
        seed = -1
    if not 0 <= seed < 2**64:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number from 0 to 2**64 - 1")
    return seed


def _cmd_serve(args: argparse.Namespace) -> int:
    from kanitts.recipes import serve

    return serve.run(models=args.model, config_dir=args.config_dir, host=args.host, port=args.port,
                     codec=args.codec, device=args.device)


def _cmd_eval(args: argparse.Namespace) -> int:
    from kanitts.recipes import eval as eval_recipe

    return eval_recipe.run(config_dir=args.config_dir, force=args.force, only=args.only, device=args.device,
                           report=not args.no_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from kanitts.recipes import report

    return report.run(config_dir=args.config_dir)


def _cmd_upload_model(args: argparse.Namespace) -> int:
    from kanitts.recipes import publish

    return publish.run(config_dir=args.config_dir, model_id=args.model_id, repo=args.repo, private=args.private)


def _cmd_train(args: argparse.Namespace) -> int:
    from kanitts.recipes import train

    only = [name.strip() for name in args.only.split(",") if name.strip()] if args.only else None
    return train.run(args.config_dir, only=only, force=args.force, checkpoints_dir=args.checkpoints_dir)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from kanitts.recipes import sweep

    if args.trials is not None and args.trials < 1:
        raise UserError(f"--trials: expected a number of trials of 1 or more, got {args.trials}")
    only = [name.strip() for name in args.only.split(",") if name.strip()] if args.only else None
    return sweep.run(args.config_dir, only=only, n_trials=args.trials, checkpoints_dir=args.checkpoints_dir)


def _cmd_data(args: argparse.Namespace) -> int:
    from kanitts.recipes import data

    return data.run(args.config_dir, tokenizer_name=args.tokenizer, rebuild=args.rebuild, num_proc=args.num_proc)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kanitts",
        description="Fine-tune, evaluate and publish LLM-based TTS models on codec tokens.",
    )
    parser.add_argument("--version", action="version", version=f"kanitts {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("check-config", help="validate the six config files and their cross-references")
    _add_config_dir(p)
    p.set_defaults(func=_cmd_check_config)

    p = sub.add_parser("login", help="log in to the Hugging Face Hub and W&B (HF_TOKEN / WANDB_API_KEY or a prompt)")
    p.add_argument("--non-interactive", action="store_true", help="only use HF_TOKEN / WANDB_API_KEY; never prompt")
    p.set_defaults(func=_cmd_login)

    p = sub.add_parser("prepare", help="turn recordings + transcripts into a codec dataset (resumable)")
    _add_prepare_args(p)
    _add_config_dir(p)
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("synthesize", help="speak a text with a checkpoint or base model into a WAV file")
    p.add_argument("text", help='what to say, e.g. "Hello there" (or "alice: Hello there")')
    p.add_argument("--model", required=True, help="checkpoint folder or Hub id")
    p.add_argument("--speaker", default=None,
                   help="training speaker (e.g. alice): its prompt prefix where the model trained with one, "
                        "and its mean voice where the model takes a voice embedding")
    p.add_argument("--voice", type=Path, default=None,
                   help="reference clip to speak in the voice of (Kanade codec: codec.kind: kanade)")
    p.add_argument("--seed", type=_seed, default=None,
                   help="seed sampling and the vocoder's noise (Kanade HiFT): the same seed gives the same audio")
    p.add_argument("-o", "--output", type=Path, default=Path("out.wav"), help="WAV file to write")
    p.add_argument("--codec", default=None, help="codec weights (folder or Hub id); default: model_config.yaml")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: inference_config.yaml)")
    _add_config_dir(p)
    p.set_defaults(func=_cmd_synthesize)

    p = sub.add_parser("serve", help="serve models over HTTP: OpenAI's speech API, streaming, a page to try them")
    p.add_argument("--model", action="append", default=[], metavar="MODEL",
                   help="checkpoint folder or Hub id (repeat for several); served under its folder name")
    p.add_argument("--host", default=None, help="address to listen on (default: server.host, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: server.port, 8000)")
    p.add_argument("--codec", default=None, help="codec weights (folder or Hub id); default: model_config.yaml")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: inference_config.yaml)")
    _add_config_dir(p)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("eval", help="the base model and every checkpoint speak the eval set; metrics, dataset, report")
    p.add_argument("--force", action="store_true", help="regenerate audio that already exists")
    p.add_argument(
        "--only", nargs="+", default=None, metavar="ID", help="evaluate only these ids ('base' = base model)"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: inference_config.yaml)")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    _add_config_dir(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("report", help="(re)build the HTML listening report from the eval outputs")
    _add_config_dir(p)
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("upload-model", help="publish checkpoints/<model_id> to the Hub with a model card")
    p.add_argument("--model-id", required=True, help="the experiment's model_id (its checkpoint folder)")
    p.add_argument("--repo", required=True, help="Hub repo id, user/name")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    _add_config_dir(p)
    p.set_defaults(func=_cmd_upload_model)

    p = sub.add_parser(
        "data", help="build (or reuse the cached) training sequences and print what was kept and dropped"
    )
    _add_config_dir(p)
    p.add_argument(
        "--tokenizer", default=None, help="tokenizer folder or Hub id (default: experiments.yaml base_model)"
    )
    p.add_argument("--rebuild", action="store_true", help="ignore the cache and build again")
    p.add_argument(
        "--num-proc", type=int, default=None,
        help="worker processes (default: dataset_config num_proc, else n_shards_per_dataset, else the CPUs up to 8)",
    )
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser(
        "train",
        help="run every experiment of experiments.yaml (LoRA, merge, save); skips finished ones, resumes",
    )
    _add_config_dir(p)
    p.add_argument("--only", metavar="IDS", help="comma-separated model_ids to run (default: all)")
    p.add_argument("--force", action="store_true", help="train again even if checkpoints/<model_id> exists")
    p.add_argument(
        "--checkpoints-dir", type=Path, help="where checkpoints go (default: eval_config paths.checkpoints_dir)"
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "sweep",
        help="run (or resume) the grid / Optuna studies of experiments.yaml's sweep: sections; trials table, report",
    )
    _add_config_dir(p)
    p.add_argument("--trials", type=int, metavar="N", help="trials each study should hold (default: its n_trials)")
    p.add_argument("--only", metavar="IDS", help="comma-separated model_ids of experiments with a sweep (default: all)")
    p.add_argument(
        "--checkpoints-dir", type=Path, help="where checkpoints go (default: eval_config paths.checkpoints_dir)"
    )
    p.set_defaults(func=_cmd_sweep)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        return 1
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
