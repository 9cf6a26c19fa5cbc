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
    from kanitts.accounts import login_all

    results = login_all(interactive=not args.non_interactive)
    for r in results:
        print(f"{r.service}: {r.detail}")
    return 0 if all(r.ok or r.detail.startswith("skipped") for r in results) else 1


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
