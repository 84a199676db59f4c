#!/usr/bin/env bash
# One-command set-up: creates .venv in the project root, installs everything, then runs the quickstart
# pretraining job (a tiny model on a built-in corpus, ~2 minutes on 2 CPU cores, no downloads).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"

"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 is required"'
[ -d .venv ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
$PIP install -q -r requirements.txt
# Composer, streaming and mcli pin torch<2.7.1 / numpy<2.3 / transformers<5: install them without their
# pins; their real runtime dependencies are listed in requirements.txt.
$PIP install -q --no-deps -r requirements-mosaicml.txt
$PIP install -q --no-deps -e .
# On a CUDA machine, optionally: .venv/bin/pip install flash-attn --no-build-isolation

if [ "${SKIP_QUICKSTART:-0}" != "1" ]; then
  .venv/bin/composer main.py yamls/quickstart.yaml
fi
