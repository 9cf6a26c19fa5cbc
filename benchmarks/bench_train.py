"""LoRA training throughput: the reference setup against exact packing, same model, same data.

(a) reference: batch 1, no packing, loss on every token, gradient accumulation 4 (the seed's
    experiments.yaml), transformers' default collator;
(b) packing, stock loss: padding-free packs of up to --max-tokens tokens with exact LFM2 packing
    (kanitts.training.packing), loss on every token through transformers' loss (full logits);
(c) ours: the same packs with the chunked LM-head loss (kanitts.training.loss), which never
    holds the pack's (tokens x vocab) logits.

Both train one epoch over the same synthetic TTS-shaped sequences (text prompt + 12.5 fps x 4
codebooks of audio, 2 to 10 s) with the seed's LoRA settings, through the same Trainer. The
first steps are warm-up and not timed. Peak memory is the process's resident memory above what
it was before the run on CPU (sampled every 5 ms) or the CUDA peak allocation on a GPU.
Prints tokens/s and peak memory of each and ends with ``ratio: <ours (c) over reference tokens/s>``.

    python benchmarks/bench_train.py                       # small LFM2 on CPU
    python benchmarks/bench_train.py --shape lfm2-350m --device cuda --sequences 512
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import platform
import tempfile
import threading
import time
from dataclasses import dataclass

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from kanitts.config import LoraArgs
from kanitts.tiny import tiny_model_config
from kanitts.tokens import TokenLayout
from kanitts.training.batching import PackingCollator, pack_by_length
from kanitts.training.lora import wrap_with_lora
from kanitts.training.packing import enable_exact_packing

# The seed's recommended LoRA (README of the reference pipeline).
SEED_LORA = LoraArgs(r=16, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "v_proj", "w1", "w2", "w3"],
                     use_rslora=True)

SHAPES = {
    # The hybrid LFM2 of the tests and the offline demo.
    "tiny": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                 layer_types=["conv", "full_attention", "conv", "full_attention"]),
    # A small hybrid LFM2 that trains in seconds on a laptop CPU, vocabulary of a 384-token text
    # tokenizer plus the real 4 x 4032 audio codes.
    "small": dict(hidden_size=256, intermediate_size=1024, num_attention_heads=4, num_key_value_heads=2,
                  layer_types=["conv", "conv", "full_attention", "conv", "conv", "full_attention"]),
    # LFM2-350M (environment-notes §2) with the KaniTTS vocabulary.
    "lfm2-350m": dict(hidden_size=1024, intermediate_size=6656, num_attention_heads=16, num_key_value_heads=8,
                      layer_types=["conv", "conv", "full_attention", "conv", "conv", "full_attention", "conv", "conv",
                               "full_attention", "conv", "full_attention", "conv", "full_attention", "conv",
                               "full_attention", "conv"]),
}


def build_model(shape: str, vocab_size: int, attn_implementation: str, dtype: torch.dtype, device: str):
    from transformers import Lfm2Config, Lfm2ForCausalLM

    torch.manual_seed(0)
    spec = SHAPES[shape]
    config = Lfm2Config(vocab_size=vocab_size, num_hidden_layers=len(spec["layer_types"]),
                        max_position_embeddings=4096, tie_word_embeddings=True, **spec)
    model = Lfm2ForCausalLM(config).to(device=device, dtype=dtype)
    model.set_attn_implementation(attn_implementation)
    return model


def synthetic_sequences(layout: TokenLayout, count: int, seed: int = 0) -> list[list[int]]:
    """Training sequences shaped like speech: ~4 text tokens and 12.5 frames per second of audio."""
    rng = np.random.default_rng(seed)
    sequences = []
    for _ in range(count):
        seconds = rng.uniform(2.0, 10.0)
        text = [1, *rng.integers(3, layout.text_vocab_size, size=int(4 * seconds) + 2).tolist()]
        codes = rng.integers(0, layout.codebook_size, size=(layout.num_codebooks, int(12.5 * seconds)))
        sequences.append(layout.training_ids(text, layout.frames_to_ids(codes)))
    return sequences


class PeakMemory:
    """Peak memory during a block, above the level at its start (RSS on CPU, allocations on CUDA)."""

    def __init__(self, device: str):
        self.device = device
        self.peak = 0

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # return freed memory, so the start level is honest
        except OSError:
            pass
        self.start = self._rss()
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while self._running:
            self.peak = max(self.peak, self._rss() - self.start)
            time.sleep(0.005)

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self._running = False
            self._thread.join()


@dataclass
class Run:
    name: str
    tokens_per_second: float
    peak_bytes: int
    largest_batch_tokens: int

    @property
    def bytes_per_token(self) -> float:
        return self.peak_bytes / self.largest_batch_tokens


def train_once(
    name: str, packed: bool, chunked_loss: bool, args, layout: TokenLayout, sequences, dtype, attention: str
) -> Run:
    import datasets
    from transformers import TrainerCallback, TrainingArguments

    from kanitts.training.trainer import ExperimentTrainer

    model = build_model(args.shape, layout.vocab_size, attention, dtype, args.device)
    rows = [{"input_ids": s, "labels": s, "attention_mask": [1] * len(s), "length": len(s)} for s in sequences]
    if packed:
        enable_exact_packing(model)
        collator = PackingCollator(start_of_ai=layout.start_of_ai)
        packs = pack_by_length([len(s) for s in sequences], args.max_tokens)
        largest = max(sum(len(sequences[i]) for i in pack) for pack in packs)
    else:
        from transformers import default_data_collator

        collator = default_data_collator
        rows = [{k: r[k] for k in ("input_ids", "labels", "attention_mask")} for r in rows]
        largest = max(len(s) for s in sequences)
    model = wrap_with_lora(model, SEED_LORA)

    class Timer(TrainerCallback):
        """(time, tokens trained) after the warm-up steps and at the end."""

        def __init__(self):
            self.marks = []
            self.trainer = None

        def _mark(self):
            if args.device == "cuda":
                torch.cuda.synchronize()
            self.marks.append((time.perf_counter(), self.trainer.tokens_trained))

        def on_step_begin(self, a, state, control, **kw):
            if state.global_step == args.warmup_steps:
                self._mark()

        def on_train_end(self, a, state, control, **kw):
            self._mark()

    timer = Timer()
    with tempfile.TemporaryDirectory() as out:
        training_args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=1,
            gradient_accumulation_steps=1 if packed else 4, learning_rate=5e-5, num_train_epochs=1,
            bf16=dtype == torch.bfloat16, report_to="none", save_strategy="no", logging_strategy="no",
            disable_tqdm=True, remove_unused_columns=False, dataloader_pin_memory=args.device == "cuda",
            use_cpu=args.device == "cpu",
        )
        trainer = ExperimentTrainer(
            model=model, args=training_args, train_dataset=datasets.Dataset.from_list(rows),
            data_collator=collator, callbacks=[timer], max_tokens_per_batch=args.max_tokens if packed else None,
            chunked_loss=chunked_loss,
        )
        timer.trainer = trainer
        with PeakMemory(args.device) as memory:
            trainer.train()
    (t0, n0), (t1, n1) = timer.marks
    del trainer, model
    gc.collect()
    return Run(name, (n1 - n0) / (t1 - t0), memory.peak, largest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sequences", type=int, default=96, help="training sequences (one epoch)")
    parser.add_argument("--max-tokens", type=int, default=4096, help="token budget of a pack")
    parser.add_argument("--warmup-steps", type=int, default=2, help="optimizer steps not timed")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cuda = args.device == "cuda"
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    from kanitts.training.model_loading import flash_attention_available

    attention = "flash_attention_2" if cuda and flash_attention_available(dtype) else "sdpa"
    layout = TokenLayout.from_config(tiny_model_config(64400 if args.shape == "lfm2-350m" else 384))
    sequences = synthetic_sequences(layout, args.sequences)
    lengths = [len(s) for s in sequences]
    machine = (
        torch.cuda.get_device_name() if cuda
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    )
    print(f"device: {args.device} ({machine}); shape {args.shape}, vocab {layout.vocab_size}, {dtype}, "
          f"attention {attention}")
    print(f"data: {len(sequences)} sequences, {sum(lengths)} tokens, length {min(lengths)}-{max(lengths)} "
          f"(mean {np.mean(lengths):.0f}); pack budget {args.max_tokens} tokens")

    reference = train_once("reference (batch 1, no packing)", False, False, args, layout, sequences, dtype, attention)
    packed_stock = train_once("packing, stock loss", True, False, args, layout, sequences, dtype, attention)
    ours = train_once("ours (packing + chunked loss)", True, True, args, layout, sequences, dtype, attention)
    for run in (reference, packed_stock, ours):
        print(f"{run.name:34s} {run.tokens_per_second:9.0f} tokens/s   peak {run.peak_bytes / 2**20:8.1f} MiB "
              f"(largest batch {run.largest_batch_tokens} tokens, {run.bytes_per_token / 2**10:.1f} KiB/token)")
    print(f"memory per token, ours / reference: {ours.bytes_per_token / reference.bytes_per_token:.2f}")
    print(f"ratio: {ours.tokens_per_second / reference.tokens_per_second:.2f}")


if __name__ == "__main__":
    main()
