#!/usr/bin/env bash
# `make lock`: resolve requirements/lock.txt, the exact versions `make setup` installs.
#
# The lock is universal: one file for Python 3.10 to 3.13 on every platform, with environment
# markers where a version differs (e.g. numpy for Python 3.10). It holds every dependency of the
# package and of its dev, tracking, train and serve extras, torch at the version of requirements/torch.txt
# and torch's CUDA libraries (installed only with a CUDA build of torch). It is resolved by uv
# (`uv pip compile`) against PyPI.
#
#   make lock              newest releases within pyproject.toml's ranges (refreshes every pin)
#   make lock UPGRADE=0    keep the current pins; only add or fix what pyproject.toml changed
#   UV=/path/to/uv make lock   use this uv instead of the pinned one in .cache/uv
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.8
LOCK=requirements/lock.txt
UPGRADE=${UPGRADE:-1}

if [ -z "${UV:-}" ]; then
  UV=.cache/uv/bin/uv
  if ! [ -x "$UV" ] || [ "$("$UV" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    printf '\033[0;36m==>\033[0m installing uv %s into .cache/uv (used only to write the lock)\n' "$UV_VERSION"
    rm -rf .cache/uv
    "${PYTHON:-python3}" -m venv .cache/uv
    .cache/uv/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
  fi
fi

upgrade=()
[ "$UPGRADE" = 1 ] && upgrade=(--upgrade)
"$UV" pip compile pyproject.toml \
  --extra dev --extra tracking --extra train --extra serve \
  --constraint requirements/torch.txt \
  --universal --python-version 3.10 \
  --custom-compile-command "make lock" \
  "${upgrade[@]}" --quiet --output-file "$LOCK"
printf '\033[0;36m==>\033[0m %s: %s pinned packages; run `make setup` to install them, then `make test`\n' \
  "$LOCK" "$(grep -cE '^[A-Za-z0-9]' "$LOCK")"
