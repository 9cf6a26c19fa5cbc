"""``kanade``: encode speech into Kanade tokens, decode tokens to audio, convert voices.

    kanade encode IN... -o OUT_DIR            audio files/folders -> one .safetensors per file
    kanade decode TOKENS.safetensors... -o OUT(.wav | folder)
    kanade convert --source A.wav --reference B.wav -o OUT.wav

Options shared by all commands: --model (Hub id, local folder, config YAML or released config
name), --weights (with a config YAML or name), --vocoder, --device, for encode
--batch-size, and for decode/convert --seed (deterministic HiFT noise). Each command is one
recipe (:mod:`kanade_tokenizer.recipes`); this module only parses the arguments and calls its
``run``. Errors the user can fix are printed as one line (``error: ...``) with
exit status 1.
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
        help="Hub repo id, local folder (config.yaml + model.safetensors), config YAML or released config "
             f"name such as 12hz (then give --weights); default {DEFAULT_MODEL}",
    )
    g.add_argument("--weights", default=None, help="model weights (.safetensors) when --model is a config YAML")
    if vocoder:
        g.add_argument(
            "--vocoder", default=None,
            help="vocoder Hub id, local folder or hift.pt file (default: the model's vocoder: "
                 "charactr/vocos-mel-24khz, or for 25hz_clean HiFT from the model folder's hift.pt)",
        )
        g.add_argument(
            "--seed", type=int, default=None,
            help="seed the noise of a stochastic vocoder (HiFT) so the same seed gives the same audio",
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


def _cmd_encode(args: argparse.Namespace) -> int:
    from kanade_tokenizer.recipes import encode

    return encode.run(
        inputs=args.inputs, output=args.output, model=args.model, weights=args.weights, device=args.device,
        batch_size=args.batch_size, save_content_embedding=args.save_content_embedding,
        progress=not args.no_progress,
    )


def _cmd_decode(args: argparse.Namespace) -> int:
    from kanade_tokenizer.recipes import decode

    return decode.run(
        tokens=args.tokens, output=args.output, model=args.model, weights=args.weights, vocoder=args.vocoder,
        device=args.device, reference=args.reference, progress=not args.no_progress, seed=args.seed,
    )


def _cmd_convert(args: argparse.Namespace) -> int:
    from kanade_tokenizer.recipes import convert

    return convert.run(
        source=args.source, reference=args.reference, output=args.output, model=args.model,
        weights=args.weights, vocoder=args.vocoder, device=args.device, seed=args.seed,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from kanade_tokenizer.audio import AudioLoadError
    from kanade_tokenizer.errors import KanadeInputError
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
