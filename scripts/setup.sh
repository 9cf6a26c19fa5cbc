#!/usr/bin/env bash
# One-command environment setup, called by `make setup`. Safe to run again: every step checks
# whether it is already done and skips itself.
#
#   PYTHON=python3.12 make setup          pick the interpreter (3.10 to 3.13)
#   TORCH_SPEC="torch==2.13.0" make setup the torch to install on machines without a GPU
#   TORCH_INDEX=<url> make setup          a wheel index for torch (e.g. PyTorch's CPU-only index)
#   EXTRAS="dev,tracking,train" make setup optional parts of the package to install
#   SKIP_APT=1 make setup                 do not install Debian packages
set -euo pipefail

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TORCH_INDEX=${TORCH_INDEX:-}
EXTRAS=${EXTRAS:-dev,tracking,train}
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

# --- torch: the build that fits this machine --------------------------------------------------
HAS_GPU=0
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then HAS_GPU=1; fi
index_args=()
[ -n "$TORCH_INDEX" ] && index_args=(--index-url "$TORCH_INDEX")
if [ "$HAS_GPU" = 1 ]; then
  if "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    say "torch with CUDA already installed"
  else
    say "NVIDIA GPU found: installing a CUDA build of torch"
    "${PIP[@]}" "${index_args[@]}" torch
  fi
else
  if "$PY" -c 'import torch' 2>/dev/null; then
    say "torch already installed ($("$PY" -c 'import torch; print(torch.__version__)'))"
  else
    say "no GPU found: installing $TORCH_SPEC"
    "${PIP[@]}" "${index_args[@]}" "$TORCH_SPEC"
  fi
fi

# --- the package --------------------------------------------------------------------------------
STAMP="$VENV/.kanitts-installed"
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$(cat "$STAMP")" = "$EXTRAS" ]; then
  say "kanitts[$EXTRAS] already installed"
else
  say "installing kanitts[$EXTRAS] (editable)"
  "${PIP[@]}" -e ".[$EXTRAS]"
  echo "$EXTRAS" > "$STAMP"
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
"$PY" - <<'PYEOF'
import importlib, platform
import torch
print(f"  python        {platform.python_version()}")
cuda = f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)" if torch.cuda.is_available() else "CPU only"
print(f"  torch         {torch.__version__} ({cuda})")
for name in ["transformers", "peft", "datasets", "accelerate", "nanocodec_torch", "lightning", "flash_attn", "wandb"]:
    try:
        mod = importlib.import_module(name)
        version = getattr(mod, "__version__", None)
        if version is None:
            from importlib.metadata import version as dist_version
            version = dist_version(name.replace("_", "-"))
    except Exception:
        version = "not installed"
    print(f"  {name:<13} {version}")
PYEOF
for tool in espeak-ng chromium; do
  if command -v "$tool" >/dev/null; then printf '  %-13s %s\n' "$tool" "$("$tool" --version 2>/dev/null | head -1)"; else printf '  %-13s not installed\n' "$tool"; fi
done
say "setup complete: run 'make test' next"
