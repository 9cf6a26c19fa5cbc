"""`kanitts synthesize`: speak one text with a checkpoint or base model into a WAV file."""

from __future__ import annotations

import sys
from pathlib import Path

from kanitts.audio import write_wav
from kanitts.codecs import codec_class
from kanitts.config import load_configs
from kanitts.errors import UserError
from kanitts.files import check_output_file
from kanitts.inference import KaniTTS, text_problem
from kanitts.runtime import scoped_seed


def run(*, text: str, model: str, output: Path, config_dir: Path, speaker: str | None = None,
        codec: str | None = None, device: str | None = None, voice: Path | None = None,
        seed: int | None = None) -> int:
    """``seed`` seeds sampling and a stochastic vocoder's noise (Kanade's HiFT), as eval and the
    server do, so one seed gives the same audio again; None draws fresh."""
    # The text, the output and the voice clip are checked before the model loads (seconds to minutes).
    problem = text_problem(text, speaker)
    if problem:
        raise UserError(f"the text to say ({text!r}): {problem}")
    check_output_file(output, "output file (-o)")
    configs = load_configs(config_dir, kinds=("model", "inference"))
    if voice is not None:
        embedder = configs.model.speaker_embedder is not None  # a KaniTTS-2 model's voice embedder
        if not embedder and not hasattr(codec_class(configs.model.codec.kind), "embed"):
            raise UserError(
                f"--voice {voice}: a reference voice needs a codec with a global (speaker) embedding "
                f"(codec.kind: kanade), or a KaniTTS-2 model's speaker embedder (model_config.yaml "
                f"speaker_embedder); model_config.yaml names codec.kind: {configs.model.codec.kind} and no "
                "speaker_embedder. Use --speaker with the name a prefix-trained model knows"
            )
        if not voice.is_file():
            raise UserError(f"--voice {voice}: no such file")
    tts = KaniTTS.from_pretrained(model, codec=codec, model_cfg=configs.model, inference_cfg=configs.inference,
                                  device=device)
    if voice is not None and tts.conditioning is None:
        print(f"note: --voice {voice} sets the voice of the codec's decoder only: {model} has no speaker "
              "slot (trained without training.speaker_conditioning: embedding), so its language model "
              "speaks as it was trained", file=sys.stderr)
    # generate takes no torch.Generator: the global one is seeded for this call, then given back
    with scoped_seed(seed, device=str(tts.model.device)):
        result = tts.synthesize([text], speaker=speaker, voice=voice)[0]
    for problem in result.problems:
        print(f"warning: {problem}", file=sys.stderr)
    if not result.ok:
        print("error: the model produced no audio", file=sys.stderr)
        return 1
    write_wav(output, result.audio, result.sample_rate)
    print(f"{output}: {result.duration_sec:.2f} s ({result.num_frames} frames)")
    if result.voice:
        print(f"voice: {result.voice}")
    return 0
