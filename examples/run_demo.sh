#!/usr/bin/env bash
# `make demo`: the whole pipeline offline on a CPU, in a few minutes, with tiny random models.
#   1. two espeak-ng voices read 12 sentences each; a tiny base model and codec are built
#   2. kanitts prepare: recordings -> codec datasets (one per speaker)
#   3. kanitts check-config, kanitts data: the training sequences and their summary
#   4. kanitts train: two LoRA experiments (padded batches; exact packing with loss on audio)
#   5. kanitts eval: base + both checkpoints speak the eval set -> WAVs, metrics, HTML report
# Everything lands in examples/work/ (delete it to start over).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
KANITTS=${KANITTS:-.venv/bin/kanitts}
WORK=examples/work
CONFIG=examples/config
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled

step() { printf '\n\033[0;36m== %s\033[0m\n' "$*"; }

step "1/5 demo assets (voices, tiny base model, tiny codec)"
if [ -f "$WORK/codec/model.safetensors" ] && [ -f "$WORK/base_model/model.safetensors" ]; then
  echo "reusing $WORK (delete it to rebuild)"
else
  "$PY" examples/build_demo_assets.py --work "$WORK"
fi

step "2/5 kanitts prepare: recordings -> codec datasets"
for speaker in alice bob; do
  if [ -d "$WORK/data/$speaker" ]; then
    echo "reusing $WORK/data/$speaker"
  else
    # The codec is the one examples/config/model_config.yaml names (codec.weights).
    "$KANITTS" prepare "$WORK/recordings/$speaker" --output "$WORK/data/$speaker" \
      --speaker "$speaker" --config-dir "$CONFIG" --device cpu
  fi
done

step "3/5 kanitts check-config + data"
"$KANITTS" check-config --config-dir "$CONFIG"
"$KANITTS" data --config-dir "$CONFIG"

step "4/5 kanitts train: two LoRA experiments"
"$KANITTS" train --config-dir "$CONFIG"

step "5/5 kanitts eval: listen in the report"
"$KANITTS" eval --config-dir "$CONFIG"

printf '\nDone. Open %s/report/index.html in a browser.\n' "$WORK"
