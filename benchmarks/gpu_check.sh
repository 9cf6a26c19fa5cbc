#!/usr/bin/env bash
# The first run on a CUDA machine, from a fresh clone, in under 10 minutes: setup, the tests that
# need CUDA, the demo on the GPU in bf16 and every benchmark's --device cuda command at the
# LFM2-350M shape, with every figure and the machine in one report.
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--budget SECONDS] [--dry-run]
#
#   --out DIR       report (gpu_report-<date>.md) and one log per part; default: $OUT if set, else benchmarks/
#   --budget S      wall seconds for everything (default 540, inside a 600 s command limit); each part
#                   has its own timeout, cut to what is left; a part that fails or times out is recorded
#                   and the next one runs
#   --dry-run       on any machine: print the commands, check that each benchmark accepts its flags
#                   (--help), check the demo script, run the CUDA tests (they skip without a GPU)
#
# Setup without a network: `make setup` needs a package index (it builds .venv and installs torch
# for the machine). When none answers, the script says so and uses the machine's python3 as it is,
# with PYTHONPATH=src and a `kanitts` wrapper (nothing is installed), which needs torch (CUDA),
# transformers, peft, accelerate, datasets, lightning, jsonargparse, soundfile, soxr,
# nanocodec-torch and pytest there; flash-attn and espeak-ng are optional (their tests skip, the
# demo needs espeak-ng). The report lists what was found. PYTHON=/path/to/python picks another
# interpreter for that case.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

OUT_DIR=${OUT:-benchmarks}
BUDGET=540
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT_DIR=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$BUDGET" in ''|*[!0-9]*) echo "--budget takes whole seconds, got '$BUDGET'" >&2; exit 2 ;; esac

mkdir -p "$OUT_DIR/gpu_check_logs"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
LOGS="$OUT_DIR/gpu_check_logs"
STAMP=$(date -u +%Y-%m-%d-%H%M)
REPORT="$OUT_DIR/gpu_report-$STAMP.md"
START=$(date +%s)
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false

left() { echo $(( BUDGET - ($(date +%s) - START) )); }
say() { printf '\033[0;36m==>\033[0m %s\n' "$*"; }
note() { printf '%s\n' "$@" >> "$REPORT"; }
SUMMARY=()

# part NAME TIMEOUT FIGURES COMMAND: run COMMAND (a bash string) with at most TIMEOUT seconds (less
# when the budget is short), log it, and put the lines matching the grep -E pattern FIGURES
# (and the last lines) into the report.
part() {
  local name=$1 limit=$2 figures=$3 command=$4 log="$LOGS/$1.log" rest status rc t0 dt
  rest=$(( $(left) - 5 ))
  [ "$limit" -gt "$rest" ] && limit=$rest
  note "" "## $name" "" '```' "$command" '```'
  if [ "$DRY" = 1 ]; then
    say "[dry run] $name: $command"
    note "" "dry run: not run (timeout would be ${limit} s)"
    SUMMARY+=("| $name | dry run | - |")
    return 0
  fi
  if [ "$limit" -lt 15 ]; then
    say "$name: skipped, the time budget is spent"
    note "" "**skipped**: the time budget (${BUDGET} s) is spent"
    SUMMARY+=("| $name | skipped (no time left) | - |")
    return 0
  fi
  say "$name (at most ${limit} s): $command"
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" bash -c "$command" > "$log" 2>&1
  rc=$?
  dt=$(( $(date +%s) - t0 ))
  case $rc in
    0) status="ok" ;;
    124|137) status="**timed out** after ${limit} s" ;;
    *) status="**failed** (exit $rc)" ;;
  esac
  say "$name: $status in ${dt} s"
  note "" "$status in ${dt} s; full log: \`gpu_check_logs/$name.log\`" "" '```'
  if [ -n "$figures" ]; then
    grep -E "$figures" "$log" | grep -v -E '^\s*$' | head -60 >> "$REPORT"
    note "--- last lines ---"
  fi
  tail -n 12 "$log" >> "$REPORT"
  note '```'
  SUMMARY+=("| $name | $status | $dt |")
}

# --- report head and machine ------------------------------------------------------------------
{
  echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  if commit=$(git rev-parse --short HEAD 2>/dev/null); then
    git diff --quiet HEAD 2>/dev/null || commit="$commit, with local changes"
  else
    commit="unknown (no git checkout)"
  fi
  echo "\`benchmarks/gpu_check.sh$( [ "$DRY" = 1 ] && echo ' --dry-run') --budget $BUDGET\`, commit $commit."
  echo
  echo "## Machine"
  echo
  echo '```'
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1
    nvidia-smi 2>&1 | head -15
  else
    echo "nvidia-smi: not found"
  fi
  echo "CPU: $(nproc) cores, $(uname -srm)"
  echo '```'
} > "$REPORT"

# --- setup: make setup where a package index answers, else the machine's python as it is ---------
index_reachable() {
  python3 - <<'PYEOF' >/dev/null 2>&1
import os, urllib.request
url = (os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple").rstrip("/") + "/pip/"
urllib.request.urlopen(url, timeout=5)
PYEOF
}
venv_has_cuda() { [ -x .venv/bin/python ] && .venv/bin/python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; }

if [ "$DRY" = 1 ]; then
  note "" "## setup" "" "dry run: \`make setup\` not run; $(index_reachable && echo 'a package index answers here' || echo 'no package index answers here')."
  SUMMARY+=("| setup | dry run | - |")
elif venv_has_cuda; then
  note "" "## setup" "" ".venv exists with a CUDA torch: used as it is."
  SUMMARY+=("| setup | .venv present | - |")
elif index_reachable; then
  part setup 240 "" "make setup"
else
  note "" "## setup" "" "**no package index reachable: \`make setup\` skipped.** Using the machine's $(command -v python3) as it is, with PYTHONPATH=src and a \`kanitts\` wrapper (nothing installed)."
  SUMMARY+=("| setup | skipped (offline): machine python | - |")
fi

if venv_has_cuda; then
  PY="$ROOT/.venv/bin/python"
  KANITTS="$ROOT/.venv/bin/kanitts"
else
  PY=${PYTHON:-$(command -v python3)}
  WRAP=$(mktemp -d)
  printf '#!/usr/bin/env bash\nexec %q -m kanitts "$@"\n' "$PY" > "$WRAP/kanitts"
  chmod +x "$WRAP/kanitts"
  KANITTS="$WRAP/kanitts"
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"

{
  echo
  echo "## Software"
  echo
  echo '```'
  echo "python: $PY"
  "$PY" - <<'PYEOF' 2>&1
import importlib, platform
print(f"python {platform.python_version()}")
try:
    import torch
    cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
          f"GPU: {torch.cuda.get_device_name() if cuda else 'none visible'}"
          + (f", bf16 {torch.cuda.is_bf16_supported()}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB" if cuda else ""))
except Exception as exc:
    print(f"torch: cannot import ({exc})")
for name in ["transformers", "peft", "accelerate", "datasets", "lightning", "jsonargparse", "soundfile", "soxr",
             "nanocodec_torch", "pytest", "flash_attn", "safetensors", "tokenizers"]:
    try:
        module = importlib.import_module(name)
        version = getattr(module, "__version__", None)
        if version is None:
            from importlib.metadata import version as dist_version
            version = dist_version(name.replace("_", "-"))
    except Exception as exc:
        version = f"not usable ({type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''})"
    print(f"{name:16s} {version}")
PYEOF
  for tool in espeak-ng; do
    if command -v "$tool" >/dev/null; then echo "$tool: $("$tool" --version 2>/dev/null | head -1)"; else echo "$tool: not installed"; fi
  done
  echo '```'
} >> "$REPORT"

# --- the parts -----------------------------------------------------------------------------------
CUDA_TESTS=$(grep -l '@pytest.mark.cuda' tests/test_*.py | tr '\n' ' ')
TEST_FIGURES='^(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)|passed|failed|frames equal|tokens equal|activation dtypes|loss on cuda|packed bf16 losses'
part tests-cuda 150 "$TEST_FIGURES" \
  "$PY -m pytest -m cuda -rA -s -q -p no:cacheprovider --continue-on-collection-errors $CUDA_TESTS"

DEMO_FIGURES='^== |note:|Error|error:|Done\.|loss|tokens'
if [ -x .venv/bin/python ] && [ "$PY" = "$ROOT/.venv/bin/python" ]; then
  DEMO="DEVICE=cuda DTYPE=bf16 make demo"
else
  DEMO="DEVICE=cuda DTYPE=bf16 PY=$PY KANITTS=$KANITTS bash examples/run_demo.sh"
fi
if [ "$DRY" = 1 ]; then
  part demo 150 "" "$DEMO"
  if bash -n examples/run_demo.sh && grep -q 'DTYPE' examples/run_demo.sh; then
    note "" "dry run: examples/run_demo.sh parses and takes DEVICE/DTYPE."
  else
    note "" "**dry run: examples/run_demo.sh does not parse or ignores DEVICE/DTYPE**"
  fi
else
  part demo 150 "$DEMO_FIGURES" "$DEMO"
fi

# Each benchmark bounded to fit: sizes chosen so that the whole script stays inside the budget.
BENCH_FIGURES='^(device|machine|model|codec|clips|data|buckets|codes|bf16|one|kanitts|batched|reference|packing|ours|memory|speed-up|CPU|decode|encode|round|stream|dynamic|whole|streamed|asr|layout|nanocodec|kanade|generation)|ratio:'
declare -a BENCHES=(
  "bench_train|120|benchmarks/bench_train.py --shape lfm2-350m --device cuda --sequences 256 --max-tokens 8192 --warmup-steps 2"
  "bench_prepare|75|benchmarks/bench_prepare.py --device cuda --clips 64 --batch-seconds 600 --rounds 2"
  "bench_prepare_bf16|75|benchmarks/bench_prepare.py --device cuda --dtype bf16 --clips 64 --batch-seconds 600 --rounds 2"
  "bench_kanade|75|benchmarks/bench_kanade.py --device cuda --clips 16 --rounds 2"
  "bench_generate|100|benchmarks/bench_generate.py --shape lfm2-350m --device cuda --dtype bfloat16 --batch-size 16"
  "bench_eval_metrics|60|benchmarks/bench_eval_metrics.py --shape full --device cuda --clips 64 --batch-size 16 --longest 8"
  "bench_serve|90|benchmarks/bench_serve.py --shape lfm2-350m --device cuda --dtype bfloat16 --clients 16 --max-batch-size 16 --seconds 15 --max-new-tokens 122 --codec full"
  "bench_segment|60|benchmarks/bench_segment.py --device cuda --minutes 5 --rounds 2 --asr-clips 32"
  "bench_codecs|100|benchmarks/bench_codecs.py --shape lfm2-350m --device cuda --clips 96 --max-tokens 8192 --generate-batch 16"
)
for entry in "${BENCHES[@]}"; do
  IFS='|' read -r name limit args <<< "$entry"
  if [ "$DRY" = 1 ]; then
    part "$name" "$limit" "" "$PY $args"
    script=${args%% *}
    help=$("$PY" "$script" --help 2>&1)
    missing=()
    for flag in $(grep -oE -- '--[a-z][a-z-]*' <<< "$args"); do
      grep -q -- "$flag" <<< "$help" || missing+=("$flag")
    done
    if [ ${#missing[@]} -eq 0 ]; then
      note "dry run: \`$script --help\` lists every flag used."
    else
      note "**dry run: \`$script\` does not take ${missing[*]}**"
      SUMMARY+=("| $name flags | **missing ${missing[*]}** | - |")
    fi
  else
    part "$name" "$limit" "$BENCH_FIGURES" "$PY $args"
  fi
done
note "" "\`bench_data.py\` is not run: the dataset step is CPU-only."

# The CUDA tests run for real in a dry run too: without a GPU they are collected and skipped.
if [ "$DRY" = 1 ]; then
  DRY=0
  part tests-cuda-dry-run 300 "$TEST_FIGURES" \
    "$PY -m pytest -m cuda -rA -q -p no:cacheprovider --continue-on-collection-errors $CUDA_TESTS"
  DRY=1
fi

{
  echo
  echo "## Summary"
  echo
  echo "| part | status | seconds |"
  echo "|---|---|---|"
  printf '%s\n' "${SUMMARY[@]}"
  echo
  echo "Total: $(( $(date +%s) - START )) s of a ${BUDGET} s budget."
} >> "$REPORT"
say "report: $REPORT"
