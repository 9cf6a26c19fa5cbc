"""``kanade``: encode speech into Kanade tokens, decode tokens to audio, convert voices.

    kanade encode IN... -o OUT_DIR            audio files/folders -> one .safetensors per file
    kanade decode TOKENS.safetensors... -o OUT(.wav | folder)
    kanade convert --source A.wav --reference B.wav -o OUT.wav

Options shared by all commands: --model (Hub id, local folder or config YAML), --weights (with a
config YAML), --vocoder, --device, and for encode --batch-size. The work is done by the
functions in :mod:`kanade_tokenizer.commands`; this module only wires argparse to them. Errors
the user can fix are printed as one line (``error: ...``) with exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

DEFAULT_MODEL = "frothywater/kanade-12.5hz"


def _add_model_options(parser: argparse.ArgumentParser, vocoder: bool = True) -> None:
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model", default=DEFAULT_MODEL,
        help="Hub repo id, local folder (config.yaml + model.safetensors) or config YAML "
             f"(then give --weights); default {DEFAULT_MODEL}",
    )
    g.add_argument("--weights", default=None, help="model weights (.safetensors) when --model is a config YAML")
    if vocoder:
        g.add_argument(
            "--vocoder", default=None,
            help="vocoder Hub id or local folder (default: the model's vocoder, charactr/vocos-mel-24khz)",
        )
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kanade", description="Kanade speech tokenizer: speech <-> content tokens + global embedding."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    enc = sub.add_parser("encode", help="audio files or folders -> token files (.safetensors, one per input)")
    enc.add_argument("inputs", nargs="+", help="audio files and/or folders (searched recursively)")
    enc.add_argument("-o", "--output", required=True, help="output folder")
    enc.add_argument("--batch-size", type=int, default=8, help="utterances per forward pass (default 8)")
    enc.add_argument("--save-content-embedding", action="store_true",
                     help="also store the (T, 768) content embedding")
    enc.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_model_options(enc, vocoder=False)
    enc.set_defaults(func=_cmd_encode)

    dec = sub.add_parser("decode", help="token files -> audio (model mel decoder + vocoder)")
    dec.add_argument("tokens", nargs="+", help="token files written by `kanade encode`")
    dec.add_argument("-o", "--output", required=True, help="output .wav (one input) or folder")
    dec.add_argument("--reference", default=None,
                     help="take the global embedding (voice) from this audio or token file instead")
    dec.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_model_options(dec)
    dec.set_defaults(func=_cmd_decode)

    conv = sub.add_parser("convert", help="voice conversion: source content in the reference's voice")
    conv.add_argument("--source", required=True, help="audio whose words are kept")
    conv.add_argument("--reference", required=True, help="audio whose voice is used")
    conv.add_argument("-o", "--output", required=True, help="output audio file (.wav, .flac, ...)")
    _add_model_options(conv)
    conv.set_defaults(func=_cmd_convert)
    return parser


def _load(args: argparse.Namespace, with_vocoder: bool = True):
    from kanade_tokenizer import commands

    device = args.device or commands.default_device()
    model = commands.load_model(args.model, args.weights, device=device)
    vocoder = commands.load_vocoder_for(model, args.vocoder, device=device) if with_vocoder else None
    return model, vocoder


def _cmd_encode(args: argparse.Namespace) -> int:
    from kanade_tokenizer import commands

    if args.batch_size < 1:
        raise commands.KanadeInputError(f"--batch-size must be at least 1, got {args.batch_size}")
    # fail on bad inputs (missing, unreadable, truncated) before loading the model
    commands.read_audio_headers(commands.collect_audio_inputs(args.inputs, args.output))
    model, _ = _load(args, with_vocoder=False)
    summary = commands.encode_files(
        model, args.inputs, args.output, batch_size=args.batch_size, model_name=args.model,
        save_content_embedding=args.save_content_embedding, progress=not args.no_progress,
    )
    print(f"{summary} -> {args.output}")
    return 0


def _cmd_decode(args: argparse.Namespace) -> int:
    from kanade_tokenizer import commands

    for path in args.tokens:  # fail on bad inputs before loading the model
        commands.load_tokens(path)
    model, vocoder = _load(args)
    summary = commands.decode_files(
        model, vocoder, args.tokens, args.output, reference=args.reference, progress=not args.no_progress,
        model_name=args.model,
    )
    print(f"{summary} -> {args.output}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kanade_tokenizer import commands

    for path in (args.source, args.reference):
        if not Path(path).is_file():
            raise commands.KanadeInputError(f"{path}: no such audio file")
    commands.read_audio_headers([commands.AudioInput(Path(p), Path(args.output)) for p in (args.source, args.reference)])
    model, vocoder = _load(args)
    out = commands.convert_voice(model, vocoder, args.source, args.reference, args.output)
    print(f"wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from kanade_tokenizer.audio import AudioLoadError
    from kanade_tokenizer.commands import KanadeInputError
    from kanade_tokenizer.vocoders.vocos import VocosLoadError

    try:
        return int(args.func(args) or 0)
    except (KanadeInputError, AudioLoadError, VocosLoadError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
