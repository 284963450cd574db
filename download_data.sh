#!/usr/bin/env bash
# Download the public CVPR26 3D CT benchmark (AMOS classification set) from the Hugging Face Hub.
# Usage: ./download_data.sh [DEST] [extra `ctfm data download` options, e.g. --include 'AMOS-clf-tr-val/labels/*']
# DEST defaults to ./data/CVPR26 (where configs/cvpr26.yaml looks). The token comes from HF_TOKEN (or
# `huggingface-cli login`); re-running resumes.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
DEST="${1:-data/CVPR26}"
shift || true
CTFM=ctfm
if [ -x "$HERE/.venv/bin/ctfm" ]; then CTFM="$HERE/.venv/bin/ctfm"; fi
exec "$CTFM" data download --dest "$DEST" "$@"
