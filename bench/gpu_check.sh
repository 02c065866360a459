#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py: long-TTS step time and memory with SDPA and FlexAttention, against TRL
# at its GPU settings, x1 at step 0 in matched precision, candidates per second), for a session lent a GPU
# machine (the device tool). That machine has no package registry: the check runs on its image as it is
# (python3 with torch 2.11, transformers 5.17, accelerate 1.15, peft, pyarrow, pandas, ...) plus the wheels
# that bench/gpu_check_wheels.txt names, carried in the ignored .whl/ (about 4 MB). vLLM is too large to
# carry: generation is measured with the transformers backend. Its last line is one JSON object.
#
#   bash bench/gpu_check.sh --fetch-wheels   # here, once: .whl/ for the image's Python 3.12 and for this one
#   bash bench/gpu_check.sh                  # on the GPU machine: device run, carry [".whl"]; 8 minutes at most
#   bash bench/gpu_check.sh --cpu-rehearsal  # here: the same script on CPU at toy size, in a venv pinned to
#                                            # the image's versions, installed from downloaded wheels only
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-gpu}
wheels=.whl
requirements=bench/gpu_check_wheels.txt

fetch_wheels() {
  local reqs platforms=()
  reqs=$(grep -v '^#' "${requirements}")
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    platforms+=(--platform "$p")
  done
  # shellcheck disable=SC2086  # one requirement a word
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "${wheels}" ${reqs}
  # shellcheck disable=SC2086
  python3 -m pip download -q --no-deps --only-binary=:all: -d "${wheels}" ${reqs}  # this Python: rehearsal
}

# The carried wheels by name, so that pip takes each one's build for the running Python (the image's 3.12
# or the rehearsal's), none of their dependencies (the image has them), nothing from a registry.
install_carried() {  # python, target dir
  "$1" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$2" \
    --find-links "${wheels}" -r "${requirements}"
}

case "${mode}" in
  --fetch-wheels)
    fetch_wheels
    du -sh "${wheels}"
    exit 0
    ;;
  --cpu-rehearsal)
    # The image's versions on CPU: torch 2.11.0 is PyPI's CUDA build (it runs on CPU, with the CUDA libraries
    # installed beside it); downloaded once into build/gpu_check/image-wheels, the venv built from there alone.
    image=build/gpu_check/image-wheels
    venv=build/gpu_check/venv
    pins=(torch==2.11.0 transformers==5.17.0 accelerate==1.15.0 peft psutil pyarrow pandas xxhash requests)
    [ -d "${wheels}" ] || fetch_wheels
    if ! "${venv}/bin/python" -c "import torch, transformers, accelerate, peft" 2>/dev/null; then
      [ -d "${image}" ] || python3 -m pip download -q --only-binary=:all: -d "${image}" "${pins[@]}"
      python3 -m venv --clear "${venv}"
      "${venv}/bin/pip" install -q --no-index --find-links "${image}" "${pins[@]}"
    fi
    python="${venv}/bin/python"
    site=build/gpu_check/site
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1  # the shared CPU cores
    args=(--toy --shape tts --steps 2 --prompts 8 --max-new-tokens 32)
    ;;
  gpu)
    python=python3
    site=/tmp/gpu_check_site
    args=()
    "${python}" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    ;;
  *)
    echo "usage: bash bench/gpu_check.sh [--cpu-rehearsal | --fetch-wheels]" >&2
    exit 2
    ;;
esac

install_carried "${python}" "${site}"
export PYTHONPATH="${site}:${PWD}${PYTHONPATH:+:${PYTHONPATH}}"
export PYTHONUNBUFFERED=1
timeout 480 "${python}" bench/gpu_check.py "${args[@]}"
