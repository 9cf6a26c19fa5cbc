"""Make everything the offline demo needs, without a network: two synthetic voices reading
sentences (espeak-ng), a tiny random base model with its tokenizer, a tiny random codec
(NanoCodec, or Kanade with ``--codec kanade``), and the tiny random scoring models eval uses (a
Whisper for WER/CER, a WavLM x-vector for speaker similarity, a wav2vec2 MOS regressor), each saved
as a Hub snapshot is laid out.

The models are untrained, so the demo's audio is noise and its scores are meaningless numbers:
the point is to run every step of the pipeline for real (the same loaders, commands and file
layouts as with real models) in minutes on a laptop CPU.

    python examples/build_demo_assets.py --work examples/work
    python examples/build_demo_assets.py --work examples/work --scoring-models-only
    python examples/build_demo_assets.py --work examples/work-kanade --codec kanade
    python examples/build_demo_assets.py --work examples/work-kanitts2 --model kanitts2
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
from pathlib import Path

from kanitts.tiny import (
    build_tiny_kanade,
    build_tiny_kanitts2,
    build_tiny_mos,
    build_tiny_nanocodec,
    build_tiny_speaker_embedder,
    build_tiny_tts,
    build_tiny_wavlm_xvector,
    build_tiny_whisper,
)

VOICES = {"alice": "en-us", "bob": "en-us+f3"}

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Speech synthesis on a small machine can still be tested quickly.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "A rainbow is a division of white light into many beautiful colors.",
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It is easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "Four hours of steady work faced us.",
]


def speak(text: str, voice: str, path: Path) -> None:
    subprocess.run(["espeak-ng", "-v", voice, "-s", "160", "-w", str(path), text], check=True)


def build_recordings(root: Path) -> None:
    """One LJSpeech-style folder per speaker: wavs/<id>.wav and metadata.csv (`id|text`)."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is needed for the demo: run `make setup` (or apt-get install espeak-ng)")
    for speaker, voice in VOICES.items():
        folder = root / speaker
        (folder / "wavs").mkdir(parents=True, exist_ok=True)
        with open(folder / "metadata.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="|", quoting=csv.QUOTE_NONE, escapechar="\\")
            for i, text in enumerate(SENTENCES):
                clip_id = f"{speaker}_{i:03d}"
                speak(text, voice, folder / "wavs" / f"{clip_id}.wav")
                writer.writerow([clip_id, text])


def build_scoring_models(folder: Path) -> None:
    """The models examples/config/eval_config.yaml names: ASR, speaker embedder, MOS predictor."""
    # Ten-second windows: the espeak recordings (the references) are heard whole.
    build_tiny_whisper(folder / "whisper", chunk_seconds=10)
    build_tiny_wavlm_xvector(folder / "wavlm-sv")
    build_tiny_mos(folder / "mos")
    print(f"scoring:    {folder} (whisper, wavlm-sv, mos)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("examples/work"))
    parser.add_argument("--scoring-models-only", action="store_true",
                        help="build only the tiny ASR, speaker and MOS models (a demo folder made before they existed)")
    parser.add_argument("--codec", choices=["nanocodec", "kanade"], default="nanocodec")
    parser.add_argument("--model", choices=["kanitts", "kanitts2"], default="kanitts",
                        help="kanitts2: a KaniTTS-2-shaped base model and its speaker embedder (NanoCodec)")
    args = parser.parse_args()
    if args.model == "kanitts2" and args.codec != "nanocodec":
        parser.error("--model kanitts2 goes with the NanoCodec codec (as the released KaniTTS-2 models)")
    work: Path = args.work
    if args.scoring_models_only:
        build_scoring_models(work / "scoring")
        return
    build_recordings(work / "recordings")
    print(f"recordings: {work / 'recordings'} ({len(VOICES)} speakers x {len(SENTENCES)} sentences)")
    # The base model's vocabulary is NanoCodec's layout (as a KaniTTS model's): Kanade's 12,800
    # audio ids fit inside it, as they fit inside a real KaniTTS model's 80,538.
    if args.model == "kanitts2":
        cfg = build_tiny_kanitts2(work / "base_model")
        build_tiny_speaker_embedder(work / "embedder")
        print(f"embedder:   {work / 'embedder'} (16-value speaker embeddings)")
    else:
        cfg = build_tiny_tts(work / "base_model")
    print(f"base model: {work / 'base_model'} ({args.model}, text vocabulary {cfg.tokenizer.vocab_size})")
    if args.codec == "kanade":
        build_tiny_kanade(work / "codec")
    else:
        build_tiny_nanocodec(work / "codec")
    print(f"codec:      {work / 'codec'} ({args.codec})")
    build_scoring_models(work / "scoring")


if __name__ == "__main__":
    main()
