"""NanoCodec against Kanade as the TTS codec: what the same audio costs the same language model.

The same clips (synthetic speech, 2 to 8 s) are encoded by both codecs (tiny random ones: their
token rates are the released models', 4 x 12.5 and 1 x 12.5 tokens per second) and laid out as
training sequences through each codec's TokenLayout, with the same text tokens. Then, for each
layout, on the same LFM2 (same shape, same vocabulary, same LoRA):

- **tokens per audio second**: of the training sequences (text, specials and audio);
- **training**: one epoch of exact packing with the chunked loss (what ``kanitts train`` runs
  with ``packing: true``) after untimed warm-up steps: tokens/s, and audio seconds trained per
  wall second;
- **generation**: ``generate`` of a fixed amount of audio per prompt (every frame forced, the
  layout constraint on), batch of prompts: audio seconds generated per wall second (the LM only;
  the tiny codecs' decoders say nothing about the real ones').

Ends with ``ratio: <Kanade / NanoCodec audio seconds trained per wall second>``.

    python benchmarks/bench_codecs.py                              # small LFM2 on the CPU
    python benchmarks/bench_codecs.py --shape lfm2-350m --device cuda --clips 128 --max-tokens 8192
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from kanitts.config import LoraArgs
from kanitts.tiny import tiny_model_config
from kanitts.tokens import TokenLayout

SHAPES = {
    "small": dict(hidden_size=256, intermediate_size=1024, num_attention_heads=4, num_key_value_heads=2,
                  layer_types=["conv", "conv", "full_attention", "conv", "conv", "full_attention"]),
    # LFM2-350M (environment-notes §2)
    "lfm2-350m": dict(hidden_size=1024, intermediate_size=6656, num_attention_heads=16, num_key_value_heads=8,
                      layer_types=["conv", "conv", "full_attention", "conv", "conv", "full_attention", "conv", "conv",
                               "full_attention", "conv", "full_attention", "conv", "full_attention", "conv",
                               "full_attention", "conv"]),
}
LORA = LoraArgs(r=16, lora_alpha=16, target_modules=["q_proj", "v_proj", "w1", "w2", "w3"])
TEXT_VOCAB = 384


@dataclass
class Run:
    name: str
    tokens_per_audio_second: float
    train_tokens_per_second: float
    train_audio_per_second: float
    generate_audio_per_second: float


def clips(count: int, seed: int = 0) -> list[torch.Tensor]:
    from kanade_tokenizer.testing import synthetic_speech

    rng = np.random.default_rng(seed)
    return [synthetic_speech(float(rng.uniform(2.0, 8.0)), 24000, seed=seed + i) for i in range(count)]


def encode_all(codec, audio_24k: list[torch.Tensor]) -> list[np.ndarray]:
    """Each clip's codes (num_codebooks, frames), one clip per call (the CPU's best batch)."""
    from kanitts.audio import resample

    out = []
    for wave in audio_24k:
        wave = torch.from_numpy(resample(wave.numpy(), 24000, codec.sample_rate))
        codes, frames = codec.encode(wave[None])
        out.append(codes[0, :, : int(frames[0])].cpu().numpy())
    return out


def sequences_of(layout: TokenLayout, codes: list[np.ndarray], seconds: list[float], seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)  # the same text for both codecs
    out = []
    for c, s in zip(codes, seconds):
        text = [1, *rng.integers(3, TEXT_VOCAB, size=int(4 * s) + 2).tolist()]
        out.append(layout.training_ids(text, layout.frames_to_ids(c, dedup=False)))
    return out


def build_model(shape: str, vocab_size: int, device: str, dtype: torch.dtype):
    from transformers import Lfm2Config, Lfm2ForCausalLM

    torch.manual_seed(0)
    spec = SHAPES[shape]
    config = Lfm2Config(vocab_size=vocab_size, num_hidden_layers=len(spec["layer_types"]),
                        max_position_embeddings=8192, tie_word_embeddings=True, **spec)
    model = Lfm2ForCausalLM(config).to(device=device, dtype=dtype)
    model.set_attn_implementation("sdpa")
    return model


def train_epoch(model, sequences: list[list[int]], layout: TokenLayout, max_tokens: int, warmup: int, device: str):
    """(tokens trained, seconds) over one epoch of packs, the first ``warmup`` packs untimed."""
    from kanitts.training.batching import PackingCollator, pack_by_length
    from kanitts.training.lora import wrap_with_lora
    from kanitts.training.loss import model_loss
    from kanitts.training.packing import enable_exact_packing

    enable_exact_packing(model)
    peft_model = wrap_with_lora(model, LORA)
    peft_model.train()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    collate = PackingCollator(start_of_ai=layout.start_of_ai)
    packs = pack_by_length([len(s) for s in sequences], max_tokens)
    tokens, start = 0, None
    for step, pack in enumerate(packs[:warmup] + packs):
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
        batch = collate([{"input_ids": sequences[i]} for i in pack])
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        loss = model_loss(peft_model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            tokens += int(batch["input_ids"].numel())
    _sync(device)
    seconds = time.perf_counter() - start
    peft_model.unload()
    return tokens, seconds


def generate_audio(model, layout: TokenLayout, frames: int, batch: int, device: str) -> float:
    """Seconds of wall time to generate ``frames`` frames for each of ``batch`` prompts."""
    from transformers import LogitsProcessorList

    from kanitts.inference import LayoutConstraint

    model.eval()
    prompt = layout.prompt_ids([1, *range(3, 40)])
    input_ids = torch.tensor([prompt] * batch, device=device)
    new = 2 + frames * layout.num_codebooks
    kwargs = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, eos_token_id=layout.end_of_speech,
                  pad_token_id=layout.pad, attention_mask=torch.ones_like(input_ids))
    with torch.inference_mode():
        model.generate(input_ids, **{**kwargs, "max_new_tokens": 8, "min_new_tokens": 8})  # warm-up
        _sync(device)
        start = time.perf_counter()
        constraint = LogitsProcessorList([LayoutConstraint(layout, input_ids.shape[1])])
        model.generate(input_ids, logits_processor=constraint, **kwargs)
        _sync(device)
    return time.perf_counter() - start


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--clips", type=int, default=12, help="clips of 2 to 8 s, the same for both codecs")
    parser.add_argument("--max-tokens", type=int, default=2048, help="token budget of a pack")
    parser.add_argument("--warmup-steps", type=int, default=2, help="packs trained before timing")
    parser.add_argument("--generate-seconds", type=float, default=1.0, help="audio generated per prompt")
    parser.add_argument("--generate-batch", type=int, default=2, help="prompts generated together")
    args = parser.parse_args()
    device = args.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32

    from kanitts.codecs import load_codec
    from kanitts.tiny import build_tiny_kanade, build_tiny_nanocodec

    audio = clips(args.clips)
    seconds = [len(w) / 24000 for w in audio]
    layouts = {
        "nanocodec": TokenLayout.from_config(tiny_model_config(TEXT_VOCAB)),
        "kanade": TokenLayout.from_config(tiny_model_config(TEXT_VOCAB, kind="kanade")),
    }
    vocab = max(layout.vocab_size for layout in layouts.values())  # one model for both
    with tempfile.TemporaryDirectory() as tmp:
        codecs = {
            "nanocodec": load_codec("nanocodec", build_tiny_nanocodec(f"{tmp}/nano"), device="cpu"),
            "kanade": load_codec("kanade", build_tiny_kanade(f"{tmp}/kanade"), device="cpu"),
        }
        codes = {name: encode_all(codec, audio) for name, codec in codecs.items()}
    threads = f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    machine = torch.cuda.get_device_name() if device == "cuda" else threads
    print(f"device: {device} ({machine}); LFM2 shape {args.shape}, vocab {vocab}, {dtype}; "
          f"{args.clips} clips, {sum(seconds):.1f} s of audio")

    runs = []
    for name, layout in layouts.items():
        sequences = sequences_of(layout, codes[name], seconds)
        total = sum(len(s) for s in sequences)
        model = build_model(args.shape, vocab, device, dtype)
        tokens, train_seconds = train_epoch(model, sequences, layout, args.max_tokens, args.warmup_steps, device)
        model = build_model(args.shape, vocab, device, dtype)
        frames = round(args.generate_seconds * 12.5)
        generate_seconds = generate_audio(model, layout, frames, args.generate_batch, device)
        del model
        runs.append(Run(
            name=name,
            tokens_per_audio_second=total / sum(seconds),
            train_tokens_per_second=tokens / train_seconds,
            train_audio_per_second=tokens / train_seconds / (total / sum(seconds)),
            generate_audio_per_second=args.generate_batch * frames / 12.5 / generate_seconds,
        ))
    print(f"{'layout':10s} {'tokens/audio s':>15s} {'train tokens/s':>15s} {'audio s trained/s':>18s} "
          f"{'audio s generated/s':>20s}")
    for run in runs:
        print(f"{run.name:10s} {run.tokens_per_audio_second:15.1f} {run.train_tokens_per_second:15.0f} "
              f"{run.train_audio_per_second:18.2f} {run.generate_audio_per_second:20.2f}")
    nano, kanade = runs
    print(f"generation, Kanade / NanoCodec audio seconds per second: "
          f"{kanade.generate_audio_per_second / nano.generate_audio_per_second:.2f}")
    print(f"ratio: {kanade.train_audio_per_second / nano.train_audio_per_second:.2f}")


if __name__ == "__main__":
    main()
