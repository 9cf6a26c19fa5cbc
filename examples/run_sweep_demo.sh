#!/usr/bin/env bash
# `make sweep-demo`: a 6-trial Optuna study on the demo data, offline on a CPU, in about a minute.
#   1. the demo's assets and codec datasets (made by `make demo`; made here if missing)
#   2. kanitts check-config, kanitts sweep --config-dir examples/config-sweep
# Kill it (Ctrl-C, or kill -9) and run it again: finished trials are kept, the interrupted one is
# retried from its last checkpoint. The study is examples/work/sweeps/demo-sweep.db (opens in
# optuna-dashboard as it is), the report examples/work/sweeps/demo-sweep/index.html.
#
#   TRIALS=10 make sweep-demo        the study grows to 10 trials (a finished study is extended)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
KANITTS=${KANITTS:-.venv/bin/kanitts}
WORK=examples/work
CONFIG=examples/config-sweep
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled

step() { printf '\n\033[0;36m== %s\033[0m\n' "$*"; }

step "1/2 demo assets and codec datasets"
if [ -f "$WORK/codec/model.safetensors" ] && [ -f "$WORK/base_model/model.safetensors" ]; then
  echo "reusing $WORK (delete it to rebuild)"
else
  "$PY" examples/build_demo_assets.py --work "$WORK"
fi
for speaker in alice bob; do
  if [ -d "$WORK/data/$speaker" ]; then
    echo "reusing $WORK/data/$speaker"
  else
    "$KANITTS" prepare "$WORK/recordings/$speaker" --output "$WORK/data/$speaker" \
      --speaker "$speaker" --config-dir "$CONFIG" --device cpu
  fi
done

step "2/2 kanitts check-config + sweep"
"$KANITTS" check-config --config-dir "$CONFIG"
"$KANITTS" sweep --config-dir "$CONFIG" ${TRIALS:+--trials "$TRIALS"}
