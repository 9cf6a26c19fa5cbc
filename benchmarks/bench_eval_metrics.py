"""Eval scoring: speaker similarity and MOS of many clips, batched against one clip at a time.

    python benchmarks/bench_eval_metrics.py                              # CPU, tiny random models
    python benchmarks/bench_eval_metrics.py --shape full --device cuda --clips 64

The two neural per-sample scorers of ``kanitts eval`` run through their real code: the WavLM
x-vector speaker embedder (``SpeakerSimilarity.score_batch``) and the MOS predictor
(``NaturalnessPredictor.predict``), both loaded from folders written here with random weights
(``--shape tiny``: the tiny test models; ``--shape full``: the base-size shapes of
``microsoft/wavlm-base-plus-sv`` and of a wav2vec2-base MOS regressor, 95 M parameters each,
with layer norm in the feature encoder so that padded batches are exact; a group-norm model
scores one clip at a time by design, so batching cannot help it). Random weights cost what
trained ones cost. The baseline scores the same clips one call per clip; ours scores them in
batches of ``--batch-size``. The figure is seconds of audio scored per wall second, both
models together; the last line is ``ratio: <batched / one at a time>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np
import torch

from kanitts.evaluation.naturalness import NaturalnessPredictor
from kanitts.evaluation.speaker import SpeakerSimilarity, WavLMXVectorEmbedder
from kanitts.tiny import build_tiny_mos, build_tiny_wavlm_xvector

SR = 22050


def build_full(folder: Path) -> tuple[Path, Path]:
    """Base-size WavLM x-vector and wav2vec2 MOS regressor, random, saved as Hub snapshots."""
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForSequenceClassification,
        WavLMConfig,
        WavLMForXVector,
    )

    features = Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=True)
    wavlm, mos = folder / "wavlm", folder / "mos"
    WavLMForXVector(WavLMConfig(feat_extract_norm="layer", num_labels=2)).save_pretrained(wavlm)
    features.save_pretrained(wavlm)
    config = Wav2Vec2Config(feat_extract_norm="layer", num_labels=1, problem_type="regression")
    Wav2Vec2ForSequenceClassification(config).save_pretrained(mos)
    features.save_pretrained(mos)
    return wavlm, mos


def clips(count: int, shortest: float, longest: float) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for seconds in np.linspace(shortest, longest, count):
        t = np.arange(int(SR * seconds)) / SR
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(90, 250) * t) + 0.02 * rng.standard_normal(len(t))
        out.append(wave.astype(np.float32))
    rng.shuffle(out)
    return out


def run(similarity: SpeakerSimilarity, mos: NaturalnessPredictor, waves: list[np.ndarray], batched: bool) -> float:
    if batched:
        similarity.score_batch([(w, SR, "ref") for w in waves])
        mos.predict([(w, SR) for w in waves])
    else:
        for w in waves:
            similarity.score_batch([(w, SR, "ref")])
            mos.predict([(w, SR)])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--shape", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shortest", type=float, default=1.0, help="seconds")
    parser.add_argument("--longest", type=float, default=4.0, help="seconds")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per mode (best is kept)")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.shape == "full":
            wavlm_dir, mos_dir = build_full(root)
        else:
            wavlm_dir, mos_dir = build_tiny_wavlm_xvector(root / "wavlm"), build_tiny_mos(root / "mos")
        reference = root / "ref.wav"
        import soundfile as sf

        sf.write(reference, clips(1, 2.0, 2.0)[0], SR)
        embedder = WavLMXVectorEmbedder(str(wavlm_dir)).to(args.device)
        embedder.batch_size = args.batch_size
        similarity = SpeakerSimilarity(embedder, {"ref": [str(reference)]})
        mos = NaturalnessPredictor(str(mos_dir), device=args.device, batch_size=args.batch_size)
        waves = clips(args.clips, args.shortest, args.longest)
        audio_seconds = sum(len(w) for w in waves) / SR
        params = sum(p.numel() for p in embedder.model.parameters()) + sum(p.numel() for p in mos.model.parameters())
        print(f"device: {args.device}, shape {args.shape} ({params / 1e6:.1f} M parameters in the two models), "
              f"threads {torch.get_num_threads()}")
        print(f"clips: {args.clips} of {args.shortest:g}-{args.longest:g} s ({audio_seconds:.1f} s of audio), "
              f"batch size {args.batch_size}")
        run(similarity, mos, waves[:2], batched=True)  # warm-up: kernels, allocator
        speeds = {}
        for name, batched in (("one at a time", False), ("batched", True)):
            best = float("inf")
            for _ in range(args.rounds):
                start = time.perf_counter()
                run(similarity, mos, waves, batched)
                best = min(best, time.perf_counter() - start)
            speeds[name] = audio_seconds / best
            print(f"{name}: {best:.2f} s, {speeds[name]:.1f} audio s/s")
        print(f"ratio: {speeds['batched'] / speeds['one at a time']:.2f}")


if __name__ == "__main__":
    main()
