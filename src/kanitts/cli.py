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
    from kanitts.config import check_config_dir

    report = check_config_dir(args.config_dir)
    for line in report.warnings:
        print(f"warning: {line}")
    for line in report.errors:
        print(f"error: {line}")
    if report.errors:
        print(f"\n{len(report.errors)} error(s) in {args.config_dir}/", file=sys.stderr)
        return 1
    for name in report.checked:
        print(f"ok: {name}")
    print(f"All configuration files in {args.config_dir}/ are valid.")
    return 0


# --- login --------------------------------------------------------------------------------


def _cmd_login(args: argparse.Namespace) -> int:
    from kanitts.recipes import login

    return login.run(interactive=not args.non_interactive)


# --- prepare ------------------------------------------------------------------------------


def _cmd_prepare(args: argparse.Namespace) -> int:
    from kanitts.data.prepare import PrepareOptions, prepare_dataset

    if args.output is not None and args.output_opt is not None and args.output != args.output_opt:
        raise UserError(f"two outputs given: {args.output} and --output {args.output_opt}")
    args.output = args.output or args.output_opt
    if args.output is None:
        raise UserError("name the output folder: kanitts prepare INPUT OUTPUT (or --output OUTPUT)")
    if args.codec is None or args.codec_model is None:
        # The codec that model_config.yaml names is the one training and inference decode with.
        from kanitts.config import CONFIG_FILES, ModelConfig, load_config

        has_model_config = (args.config_dir / CONFIG_FILES["model"]).is_file()
        codec = load_config("model", args.config_dir).codec if has_model_config else ModelConfig().codec
        if args.codec is None:
            args.codec = codec.kind
        if args.codec_model is None and args.codec == codec.kind:
            args.codec_model = codec.weights
    fields = PrepareOptions.__dataclass_fields__
    options = PrepareOptions(**{k: v for k, v in vars(args).items() if k in fields})
    result = prepare_dataset(options)
    print(result.summary())
    return 0


def _add_prepare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="folder with metadata.csv, a .csv/.jsonl manifest (path,text[,speaker]), "
                   "or a Hugging Face audio dataset (Hub id or local folder)")
    p.add_argument("output", nargs="?", help="folder to write the codec dataset to (save_to_disk layout)")
    p.add_argument("--output", "-o", dest="output_opt", default=None, metavar="OUTPUT", help="same as OUTPUT")
    g = p.add_argument_group("input")
    g.add_argument("--input-kind", default="auto", choices=["auto", "folder", "manifest", "hf"])
    g.add_argument("--text-field", default="normalized", choices=["normalized", "text"],
                   help="metadata.csv: use the 3rd (normalized) column when present, or always the 2nd")
    g.add_argument("--split", default="train", help="HF dataset split (default: train)")
    g.add_argument("--config-name", default=None, help="HF dataset configuration (subset)")
    g.add_argument("--audio-column", default="audio")
    g.add_argument("--text-column", default="text")
    g.add_argument("--speaker-column", default=None,
                   help="HF dataset speaker column (default: 'speaker' when the dataset has one)")
    g.add_argument("--speaker", default=None, help="one speaker name for the whole input")
    g.add_argument("--encoding", default="auto",
                   help="encoding of metadata.csv / the manifest (default auto: UTF-8, or UTF-8/16/32 "
                        "with a byte-order mark); e.g. cp1252, latin-1, utf-16-le")
    g = p.add_argument_group("codec")
    g.add_argument("--codec", default=None, help="codec kind (default: codec.kind of model_config.yaml, nanocodec)")
    g.add_argument("--codec-model", default=None,
                   help="Hub id or local folder of the codec weights (default: codec.weights of "
                        "model_config.yaml, nineninesix/nemo-nano-codec-22khz-0.6kbps-12.5fps-pytorch)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: the GPU when there is one)")
    g.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16", "auto"],
                   help="encoder precision (default fp32, as the reference datasets; bf16 is faster "
                        "on GPUs but can change a few codes; auto: bf16 on GPU, fp32 on CPU)")
    g = p.add_argument_group("audio")
    g.add_argument("--normalize", default="none", choices=["none", "peak", "loudness"])
    g.add_argument("--peak-dbfs", type=float, default=-1.0, help="peak target / ceiling (default: -1)")
    g.add_argument("--loudness-lufs", type=float, default=-23.0, help="loudness target (default: -23 LUFS)")
    g.add_argument("--trim-silence", action="store_true", help="cut leading and trailing silence")
    g.add_argument("--trim-top-db", type=float, default=40.0)
    g.add_argument("--silence-dbfs", type=float, default=-60.0,
                   help="reject clips whose peak is below this (default: -60 dBFS)")
    g.add_argument("--min-duration", type=float, default=0.3, help="seconds (default: 0.3)")
    g.add_argument("--max-duration", type=float, default=40.0, help="seconds (default: 40)")
    g = p.add_argument_group("suspect clips (kept with a `warnings` entry, or rejected)")
    g.add_argument("--suspect-clips", default="warn", choices=["warn", "reject"],
                   help="keep suspect clips with a warning (default) or reject them")
    g.add_argument("--clip-level", type=float, default=0.999,
                   help="|sample| at or above this counts as full scale (default: 0.999)")
    g.add_argument("--max-clipped-fraction", type=float, default=0.001,
                   help="a clip with more of its samples at full scale is clipped (default: 0.001 = 0.1%%)")
    g.add_argument("--min-chars-per-second", type=float, default=2.0,
                   help="transcripts slower than this are too short for their audio (default: 2)")
    g.add_argument("--max-chars-per-second", type=float, default=30.0,
                   help="transcripts faster than this are too long for their audio (default: 30)")
    g = p.add_argument_group("run")
    g.add_argument("--batch-seconds", type=float, default=None,
                   help="padded audio seconds per encoder batch (default: 600 on GPU, 60 on CPU)")
    g.add_argument("--max-batch-size", type=int, default=None,
                   help="clips per encoder call (default: 64 on GPU, 1 on CPU, where batching does not pay)")
    g.add_argument("--shard-size", type=int, default=500, help="clips per resumable shard")
    g.add_argument("--num-workers", type=int, default=4, help="audio decoding threads")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run (same inputs/options)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output or interrupted run")
    g.add_argument("--push-to-hub", default=None, metavar="REPO", help="also push the dataset to this Hub repo")
    g.add_argument("--private", action="store_true", help="make the pushed dataset private")
    g.add_argument("--no-progress", dest="progress", action="store_false")


# --- synthesize, eval, report, upload-model --------------------------------------------------


def _cmd_synthesize(args: argparse.Namespace) -> int:
    from kanitts.recipes import synthesize

    return synthesize.run(text=args.text, model=args.model, output=args.output, config_dir=args.config_dir,
                          speaker=args.speaker, codec=args.codec, device=args.device)


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
    from kanitts.training.experiments import train_command

    only = [name.strip() for name in args.only.split(",") if name.strip()] if args.only else None
    return train_command(args.config_dir, only=only, force=args.force, checkpoints_dir=args.checkpoints_dir)


def _cmd_data(args: argparse.Namespace) -> int:
    from kanitts.data.sequences import training_data_command

    report = training_data_command(
        args.config_dir, tokenizer_name=args.tokenizer, rebuild=args.rebuild, num_proc=args.num_proc
    )
    print(report.format())
    return 0


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
    p.add_argument("--speaker", default=None, help="speaker prefix the model was trained with (e.g. alice)")
    p.add_argument("-o", "--output", type=Path, default=Path("out.wav"), help="WAV file to write")
    p.add_argument("--codec", default=None, help="codec weights (folder or Hub id); default: model_config.yaml")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: inference_config.yaml)")
    _add_config_dir(p)
    p.set_defaults(func=_cmd_synthesize)

    p = sub.add_parser("eval", help="the base model and every checkpoint speak the eval set; metrics, dataset, report")
    p.add_argument("--force", action="store_true", help="regenerate audio that already exists")
    p.add_argument("--only", nargs="+", default=None, metavar="ID", help="evaluate only these ids ('base' = base model)")
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

    p = sub.add_parser("data", help="build (or reuse the cached) training sequences and print what was kept and dropped")
    _add_config_dir(p)
    p.add_argument("--tokenizer", default=None, help="tokenizer folder or Hub id (default: experiments.yaml base_model)")
    p.add_argument("--rebuild", action="store_true", help="ignore the cache and build again")
    p.add_argument("--num-proc", type=int, default=None, help="worker processes (default: dataset_config num_proc, or CPUs)")
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser(
        "train",
        help="run every experiment of experiments.yaml (LoRA, merge, save); skips finished ones, resumes",
    )
    _add_config_dir(p)
    p.add_argument("--only", metavar="IDS", help="comma-separated model_ids to run (default: all)")
    p.add_argument("--force", action="store_true", help="train again even if checkpoints/<model_id> exists")
    p.add_argument("--checkpoints-dir", type=Path, help="where checkpoints go (default: eval_config paths.checkpoints_dir)")
    p.set_defaults(func=_cmd_train)

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
