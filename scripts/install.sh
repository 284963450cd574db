#!/usr/bin/env bash
# Create or reuse the project's virtual environment and install ctfm into it.
# torch: a torch already in the venv (e.g. a GPU user's CUDA build) is kept; otherwise machines without an
# NVIDIA GPU get the CPU build pinned in TORCH_CPU_SPEC (a local wheel on our machines, no multi-GB CUDA
# download), and machines with one get the default build. Override with TORCH_SPEC="torch==X".
set -euo pipefail
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_CPU_SPEC=${TORCH_CPU_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS:-dev}
stamp="$VENV/.ctfm-installed"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
  exit 0
fi

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if [ -n "${TORCH_SPEC:-}" ]; then
    spec=$TORCH_SPEC
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    spec=torch
  else
    spec=$TORCH_CPU_SPEC
  fi
  echo "ctfm install: $spec"
  "${pip[@]}" "$spec"
fi
echo "ctfm install: project with extras [$EXTRAS]"
"${pip[@]}" -e ".[$EXTRAS]"
touch "$stamp"
