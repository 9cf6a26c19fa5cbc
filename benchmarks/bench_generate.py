"""Eval generation: one prompt at a time (the reference way) against kanitts' batched generation.

    python benchmarks/bench_generate.py                       # CPU, small LFM2, tiny NanoCodec
    python benchmarks/bench_generate.py --shape lfm2-350m --device cuda --dtype bfloat16 --batch-size 16

Both runs use the same model, codec, prompts and sampling settings (temperature 0.6, top_p 0.95,
repetition_penalty 1.1) through ``KaniTTS.synthesize``; only the batch size differs (1 for the
baseline, as the reference eval script generates, ``--batch-size`` for ours). The models are
randomly initialised, so decoding is constrained to the token layout (otherwise a random model
writes no valid audio) and nearly every sample runs to ``--max-new-tokens``: both modes produce
the same amount of audio, and the figure compared is seconds of audio produced per wall-clock
second, generation and codec decoding included. The last line is ``ratio: <ours / baseline>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kanitts.config import InferenceConfig, ModelConfig
from kanitts.inference import KaniTTS
from kanitts.tiny import build_lfm2, build_tiny_nanocodec, build_tokenizer, tiny_model_config
from kanitts.tokens import TokenLayout

SENTENCES = [
    "alice: Hello, this is a test of the text to speech system.",
    "alice: The quick brown fox jumps over the lazy dog.",
    "alice: Machine learning is transforming the world of artificial intelligence.",
    "alice: Please call Stella and ask her to bring these things with her from the store.",
    "alice: The birch canoe slid on the smooth planks.",
    "alice: Glue the sheet to the dark blue background.",
    "alice: It is easy to tell the depth of a well.",
    "alice: Rice is often served in round bowls.",
    "alice: The juice of lemons makes fine punch.",
    "alice: The box was thrown beside the parked truck.",
    "alice: Four hours of steady work faced us.",
    "alice: A rainbow is a division of white light into many beautiful colors.",
    "alice: These days a chicken leg is a rare dish.",
    "alice: Speech synthesis on a small machine can still be tested quickly.",
    "alice: Hello world.",
    "alice: A sentence the model has never heard.",
]

# LFM2-350M: hidden 1024, 16 layers (attention at 2, 5, 8, 10, 12, 14), 16 heads / 8 KV heads.
LFM2_350M = dict(
    hidden_size=1024,
    intermediate_size=6656,
    num_attention_heads=16,
    num_key_value_heads=8,
    layer_types=tuple("full_attention" if i in (2, 5, 8, 10, 12, 14) else "conv" for i in range(16)),
)
SMALL = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
             layer_types=("conv", "conv", "full_attention", "conv", "conv", "full_attention"))


def build_model(folder: Path, shape: str) -> ModelConfig:
    """A random LFM2 of the chosen shape with the tiny tokenizer; the full KaniTTS token layout
    (vocabulary 80,538) for the 350M shape, the tiny layout otherwise."""
    tokenizer = build_tokenizer(folder)
    if shape == "lfm2-350m":
        cfg = ModelConfig()
        build_lfm2(folder, vocab_size=TokenLayout.from_config(cfg).vocab_size, tokenizer=tokenizer, **LFM2_350M)
    else:
        cfg = tiny_model_config(len(tokenizer))
        build_lfm2(folder, vocab_size=TokenLayout.from_config(cfg).vocab_size, tokenizer=tokenizer, **SMALL)
    return cfg


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every generation benchmark shares (bench_serve.py too): shape, device, dtype, threads."""
    parser.add_argument("--shape", choices=["small", "lfm2-350m"], default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 is steadier on a machine shared with other work)")


def build_models(folder: Path, args: argparse.Namespace) -> tuple[Path, Path, ModelConfig]:
    """(model folder, codec folder, model config) of the random model of ``args.shape`` and the
    tiny NanoCodec, under ``folder``; applies ``args.threads``."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir, codec_dir = folder / "model", folder / "codec"
    model_cfg = build_model(model_dir, args.shape)
    build_tiny_nanocodec(codec_dir)
    return model_dir, codec_dir, model_cfg


def describe(tts: KaniTTS, args: argparse.Namespace) -> str:
    import torch

    params = sum(p.numel() for p in tts.model.parameters()) / 1e6
    return (f"model: {args.shape} LFM2, {params:.1f} M parameters, {args.device}, {args.dtype}, "
            f"torch threads {torch.get_num_threads()}")


def run(tts: KaniTTS, batch_size: int, seed: int) -> tuple[float, float, int]:
    """(wall seconds, audio seconds, truncated-or-empty count) for speaking every sentence."""
    import torch

    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    results = tts.synthesize(SENTENCES, batch_size=batch_size)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    return wall, sum(r.duration_sec for r in results), sum(not r.ok for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=122, help="2 markers + 4 tokens per frame")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model_dir, codec_dir, model_cfg = build_models(Path(tmp), args)
        inference_cfg = InferenceConfig.model_validate({
            "model": {"torch_dtype": args.dtype},
            "generation": {"max_new_tokens": args.max_new_tokens, "constrained_decoding": True,
                           "batch_size": args.batch_size},
        })
        tts = KaniTTS.from_pretrained(model_dir, codec=codec_dir, model_cfg=model_cfg,
                                      inference_cfg=inference_cfg, device=args.device)
        print(describe(tts, args))
        print(f"{len(SENTENCES)} prompts, max_new_tokens {args.max_new_tokens}, batch size {args.batch_size}")
        tts.synthesize(SENTENCES[:2], batch_size=2, max_new_tokens=10)  # warm-up

        figures = {}
        runs = (("one prompt at a time (reference)", 1), (f"batched x{args.batch_size} (kanitts)", args.batch_size))
        for name, batch in runs:
            best = None
            for repeat in range(args.repeats):
                wall, audio, failed = run(tts, batch, seed=repeat)
                rate = audio / wall
                best = max(best or (0.0, 0.0, 0.0, 0), (rate, wall, audio, failed))
            rate, wall, audio, failed = best
            figures[batch] = rate
            print(f"{name:36s} wall {wall:7.2f} s  audio {audio:7.2f} s  "
                  f"{rate:6.2f} audio s / wall s  ({failed} without audio)")
        ratio = figures[args.batch_size] / figures[1]
        print(f"speed-up of batched eval generation: {ratio:.2f}x")
        print(f"ratio: {ratio:.3f}")


if __name__ == "__main__":
    main()
