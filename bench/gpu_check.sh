#!/usr/bin/env bash
# The GPU check, for the days a GPU machine is lent (the device tool's `status` says whether it is):
#   1. the real-shape rehearsal (tests/test_real_shape.py: Qwen2.5-0.5B- and 7B-shaped models, real
#      tokenizer, every LM stage) with training in bf16 autocast and SDPA attention, on the GPU;
#   2. the throughput benchmark (bench/train_throughput.py) on the GPU.
# It prints the device, the library versions, each stage's time and peak CUDA memory, and the benchmark's
# table and JSON line. FlashAttention-2 is reported when installed; the stages load models with SDPA (the
# packed groups' 4-D float mask rules FlashAttention-2 out for ref-logps and train).
#
#   bash bench/gpu_check.sh            # from the repository root, after the README's set-up
#   THROUGHPUT_ARGS="--rounds 1" bash bench/gpu_check.sh   # options for the benchmark
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

echo "== device"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"${python}" - <<'EOF'
import importlib.util

import torch
import transformers

if not torch.cuda.is_available():
    raise SystemExit("no CUDA device visible to torch: this check needs a GPU")
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}")
print(f"GPU: {torch.cuda.get_device_name(0)}, bf16 supported: {torch.cuda.is_bf16_supported()}")
print("FlashAttention-2:", "installed" if importlib.util.find_spec("flash_attn") else "not installed")
EOF

echo "== real-shape rehearsal, bf16, SDPA"
REAL_SHAPE_BF16=1 "${python}" -m pytest -m slow tests/test_real_shape.py -s -q -p no:cacheprovider

echo "== training throughput"
# shellcheck disable=SC2086  # THROUGHPUT_ARGS is a list of options
"${python}" bench/train_throughput.py ${THROUGHPUT_ARGS:-}
