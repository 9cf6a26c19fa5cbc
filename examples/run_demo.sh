#!/usr/bin/env bash
# `make demo`: the whole pipeline offline on a CPU, in a few minutes, with tiny random models.
#   1. two espeak-ng voices read 12 sentences each; a tiny base model and codec are built
#   2. kanitts prepare: recordings -> codec datasets (one per speaker)
#   3. kanitts check-config, kanitts data: the training sequences and their summary
#   4. kanitts train: two LoRA experiments (padded batches; exact packing with loss on audio)
#   5. kanitts eval: base + both checkpoints speak the eval set -> WAVs, WER/CER, speaker similarity,
#      MOS (tiny random scoring models), the real speaker's ceiling (recordings of the rows held out
#      of training, taken automatically), a ranking, HTML report
# Everything lands in examples/work/ (delete it to start over).
#
#   DEVICE=cuda DTYPE=bf16 make demo    on a GPU in bf16: prepare and eval on DEVICE (default: prepare
#                                       on the CPU, eval where inference_config.yaml says), training
#                                       (on the GPU whenever there is one) and eval in bf16 through a
#                                       config copy in examples/work/config-bf16
#   CODEC=kanade make demo              the same on a tiny Kanade codec (one token per 80 ms, a global
#                                       embedding per clip): examples/config-kanade, examples/work-kanade,
#                                       one prefix-trained and one speaker-conditioned experiment
#   KANITTS2=1 make demo                the same on a tiny KaniTTS-2-shaped base model and speaker embedder
#                                       (embeddings at prepare, frame positions, RoPE scales):
#                                       examples/config-kanitts2, examples/work-kanitts2, then a
#                                       synthesize --voice with a reference clip
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
KANITTS=${KANITTS:-.venv/bin/kanitts}
DEVICE=${DEVICE:-}
DTYPE=${DTYPE:-fp32}
CODEC=${CODEC:-nanocodec}
KANITTS2=${KANITTS2:-}
MODEL=kanitts
case "$CODEC" in
  nanocodec) WORK=examples/work; CONFIG=examples/config ;;
  kanade) WORK=examples/work-kanade; CONFIG=examples/config-kanade ;;
  *) echo "CODEC must be nanocodec or kanade, not $CODEC" >&2; exit 2;;
esac
case "$KANITTS2" in
  ""|0) ;;
  1)
    [ "$CODEC" = nanocodec ] || { echo "KANITTS2=1 goes with CODEC=nanocodec" >&2; exit 2; }
    MODEL=kanitts2; WORK=examples/work-kanitts2; CONFIG=examples/config-kanitts2 ;;
  *) echo "KANITTS2 must be 1 or unset, not $KANITTS2" >&2; exit 2;;
esac
SOURCE_CONFIG=$CONFIG
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled

step() { printf '\n\033[0;36m== %s\033[0m\n' "$*"; }

case "$DTYPE" in fp32|bf16) ;; *) echo "DTYPE must be fp32 or bf16, not $DTYPE" >&2; exit 2;; esac
if [ "$DTYPE" = bf16 ]; then
  # trainer_args.bf16 for every experiment, bf16 weights at eval; the paths inside stay the same
  CONFIG="$WORK/config-bf16"
  mkdir -p "$CONFIG"
  "$PY" - "$SOURCE_CONFIG" "$CONFIG" <<'PYEOF'
import shutil, sys
from pathlib import Path
import yaml
source, target = Path(sys.argv[1]), Path(sys.argv[2])
for f in source.glob("*.yaml"):
    shutil.copy(f, target / f.name)
experiments = yaml.safe_load((source / "experiments.yaml").read_text())
for experiment in experiments["experiments"]:
    experiment.setdefault("trainer_args", {})["bf16"] = True
(target / "experiments.yaml").write_text(yaml.safe_dump(experiments, sort_keys=False))
inference = yaml.safe_load((source / "inference_config.yaml").read_text())
inference["model"]["torch_dtype"] = "bfloat16"
(target / "inference_config.yaml").write_text(yaml.safe_dump(inference, sort_keys=False))
PYEOF
fi

step "1/5 demo assets (voices, tiny base model, tiny $CODEC codec)"
if [ -f "$WORK/codec/model.safetensors" ] && [ -f "$WORK/base_model/model.safetensors" ]; then
  echo "reusing $WORK (delete it to rebuild)"
else
  "$PY" examples/build_demo_assets.py --work "$WORK" --codec "$CODEC" --model "$MODEL"
fi
if [ ! -f "$WORK/scoring/mos/model.safetensors" ]; then
  "$PY" examples/build_demo_assets.py --work "$WORK" --scoring-models-only
fi

step "2/5 kanitts prepare: recordings -> codec datasets"
for speaker in alice bob; do
  if [ -d "$WORK/data/$speaker" ]; then
    echo "reusing $WORK/data/$speaker"
  else
    # The codec is the one $CONFIG/model_config.yaml names (codec.kind, codec.weights).
    "$KANITTS" prepare "$WORK/recordings/$speaker" --output "$WORK/data/$speaker" \
      --speaker "$speaker" --config-dir "$CONFIG" --device "${DEVICE:-cpu}" --dtype "$DTYPE"
  fi
done

step "3/5 kanitts check-config + data"
"$KANITTS" check-config --config-dir "$CONFIG"
"$KANITTS" data --config-dir "$CONFIG"

step "4/5 kanitts train: two LoRA experiments"
"$KANITTS" train --config-dir "$CONFIG"

step "5/5 kanitts eval: listen in the report"
"$KANITTS" eval --config-dir "$CONFIG" ${DEVICE:+--device "$DEVICE"}

if [ "$MODEL" = kanitts2 ]; then
  step "voice cloning: kanitts synthesize --voice (a reference clip the embedder reads)"
  "$KANITTS" synthesize "A voice from one reference clip." --model "$WORK/checkpoints/k2-clip-packed" \
    --voice "$WORK/recordings/bob/wavs/bob_003.wav" --config-dir "$CONFIG" -o "$WORK/cloned.wav" \
    ${DEVICE:+--device "$DEVICE"}
fi

printf '\nDone. Open %s/report/index.html in a browser.\n' "$WORK"
