#!/usr/bin/env bash
# One-command environment setup, called by `make setup`. Safe to run again: every step checks
# whether it is already done and skips itself.
#
# By default it installs exactly the versions the test suite was run with: torch from
# requirements/torch.txt (the CPU build without a GPU, the CUDA build with one), everything else
# from requirements/lock.txt (written by `make lock`). NEWEST=1 installs the newest releases
# within pyproject.toml's ranges instead (torch stays at requirements/torch.txt unless TORCH_SPEC
# says otherwise).
#
#   NEWEST=1 make setup                   newest releases instead of the lock
#   VENV=.venv-newest make setup          the environment's folder (default .venv)
#   PYTHON=python3.12 make setup          pick the interpreter (3.10 to 3.13)
#   TORCH_SPEC="torch==2.12.0" make setup another torch than requirements/torch.txt
#   TORCH_INDEX=<url> make setup          a wheel index for torch (e.g. PyTorch's CPU-only index)
#   EXTRAS="dev,tracking,train,serve" make setup optional parts of the package to install
#   SKIP_APT=1 make setup                 do not install Debian packages
set -euo pipefail

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
NEWEST=${NEWEST:-0}
LOCK_FILE=requirements/lock.txt
TORCH_PIN=$(grep -E '^torch==' requirements/torch.txt)
TORCH_SPEC=${TORCH_SPEC:-}
TORCH_INDEX=${TORCH_INDEX:-}
EXTRAS=${EXTRAS:-dev,tracking,train,serve}
APT_PACKAGES=(espeak-ng sox chromium chromium-driver)

say() { printf '\033[0;36m==>\033[0m %s\n' "$*"; }
warn() { printf '\033[1;33mwarning:\033[0m %s\n' "$*" >&2; }

# --- Python -----------------------------------------------------------------------------------
if ! command -v "$PYTHON" >/dev/null; then
  echo "error: $PYTHON not found. Install Python 3.10-3.13 or run: make setup PYTHON=/path/to/python3" >&2
  exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 13)))'; then
  echo "error: $("$PYTHON" --version) is not supported; use Python 3.10 to 3.13 (make setup PYTHON=python3.12)" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $("$PYTHON" --version)"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)
torch_version() { "$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || true; }

# The lock as pip constraints: only what gets installed is pinned, so any EXTRAS works. The package
# step leaves torch and its CUDA libraries out: the torch step below has installed them already.
if [ "$NEWEST" = 1 ]; then
  MODE=newest
else
  MODE="lock $(cksum < "$LOCK_FILE" | cut -d' ' -f1)"
  grep -vE '^(torch|triton|nvidia-[a-z0-9-]+|cuda-[a-z-]+)==' "$LOCK_FILE" > "$VENV/kanitts-constraints.txt"
fi

# --- torch: the build that fits this machine --------------------------------------------------
HAS_GPU=0
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then HAS_GPU=1; fi
torch_args=()
[ -n "$TORCH_INDEX" ] && torch_args+=(--index-url "$TORCH_INDEX")
# the tested torch from the usual index brings its CUDA libraries at the locked versions too
[ -z "$TORCH_SPEC$TORCH_INDEX" ] && [ "$NEWEST" != 1 ] && torch_args+=(--constraint "$LOCK_FILE")
spec=${TORCH_SPEC:-$TORCH_PIN}
before=$(torch_version)
if [ -z "$before" ]; then
  if [ "$HAS_GPU" = 1 ]; then say "NVIDIA GPU found: installing the CUDA build of $spec"; else say "no GPU found: installing $spec"; fi
fi
"${PIP[@]}" "${torch_args[@]}" "$spec"
after=$(torch_version)
if [ "$before" = "$after" ]; then say "torch $after already installed"
elif [ -n "$before" ]; then say "torch $before -> $after"; fi
if [ "$HAS_GPU" = 1 ] && ! "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  warn "an NVIDIA GPU is present but torch $after cannot use it (a CPU build, or a driver older than its CUDA): remove $VENV and run 'make setup' again, or set TORCH_INDEX to a CUDA wheel index"
fi

# --- the package --------------------------------------------------------------------------------
STAMP="$VENV/.kanitts-installed"
if [ "$MODE" != newest ] && [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$(cat "$STAMP")" = "$MODE $EXTRAS" ]; then
  say "kanitts[$EXTRAS] already installed ($LOCK_FILE)"
elif [ "$MODE" = newest ]; then
  say "installing kanitts[$EXTRAS] (editable) with the newest releases pyproject.toml allows"
  echo "torch==$(torch_version)" > "$VENV/kanitts-constraints.txt"
  "${PIP[@]}" --upgrade --upgrade-strategy eager --constraint "$VENV/kanitts-constraints.txt" -e ".[$EXTRAS]"
  echo "$MODE $EXTRAS" > "$STAMP"
else
  say "installing kanitts[$EXTRAS] (editable) at the versions of $LOCK_FILE"
  "${PIP[@]}" --constraint "$VENV/kanitts-constraints.txt" -e ".[$EXTRAS]"
  echo "$MODE $EXTRAS" > "$STAMP"
fi

if [ "$HAS_GPU" = 1 ]; then
  if "$PY" -c 'import flash_attn' 2>/dev/null; then
    say "flash-attn already installed"
  else
    say "trying flash-attn (optional; training falls back to PyTorch SDPA without it)"
    "${PIP[@]}" flash-attn --no-build-isolation || warn "flash-attn did not build; continuing with SDPA"
  fi
fi

# --- Debian packages for tests and the demo -------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  say "Debian packages present: ${APT_PACKAGES[*]}"
elif [ "${SKIP_APT:-0}" = 1 ]; then
  warn "not installing ${missing[*]} (SKIP_APT=1); tests that need them are skipped"
elif ! command -v apt-get >/dev/null; then
  warn "apt-get not found: install ${missing[*]} with your package manager; tests that need them are skipped"
else
  SUDO=()
  if [ "$(id -u)" != 0 ]; then
    if sudo -n true 2>/dev/null; then SUDO=(sudo -n); else
      warn "need root to install ${missing[*]}: run 'sudo apt-get install -y ${missing[*]}'; tests that need them are skipped"
      missing=()
    fi
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    if ! { "${SUDO[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "${missing[@]}"; } >/tmp/kanitts-apt.log 2>&1; then
      warn "apt-get failed (see /tmp/kanitts-apt.log); tests that need ${missing[*]} are skipped"
    fi
  fi
fi

# --- summary ----------------------------------------------------------------------------------------
say "versions"
KANITTS_MODE=${MODE%% *} KANITTS_LOCK=$LOCK_FILE "$PY" - <<'PYEOF'
import os
import platform
from importlib.metadata import PackageNotFoundError, distributions, version

import torch
from packaging.requirements import Requirement


def installed(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


print(f"  python          {platform.python_version()}")
cuda = f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)" if torch.cuda.is_available() else "CPU only"
print(f"  torch           {installed('torch')} ({cuda})")
for name in ["transformers", "peft", "datasets", "accelerate", "nanocodec-torch", "lightning", "flash-attn", "wandb"]:
    print(f"  {name:<15} {installed(name)}")

# Every locked package this environment has must be at its locked version.
if os.environ["KANITTS_MODE"] == "lock":
    have = {d.metadata["Name"].lower().replace("_", "-"): d.version for d in distributions()}
    checked, wrong = 0, []
    for line in open(os.environ["KANITTS_LOCK"]):
        if not line[:1].isalnum():
            continue
        pin = Requirement(line.strip())
        if pin.marker is not None and not pin.marker.evaluate():
            continue
        name = pin.name.lower().replace("_", "-")
        if name in have:
            checked += 1
            if not pin.specifier.contains(have[name], prereleases=True):
                wrong.append(f"{name} {have[name]} (locked {pin.specifier})")
    if wrong:
        print(f"\033[1;33mwarning:\033[0m not at the locked version: {', '.join(wrong)}")
    else:
        print(f"  {checked} installed packages match {os.environ['KANITTS_LOCK']}")
else:
    print("  newest releases within pyproject.toml's ranges (not the lock)")
PYEOF
for tool in espeak-ng chromium; do
  if command -v "$tool" >/dev/null; then printf '  %-15s %s\n' "$tool" "$("$tool" --version 2>/dev/null | head -1)"; else printf '  %-15s not installed\n' "$tool"; fi
done
say "setup complete: run 'make test' next"
