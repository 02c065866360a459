#!/usr/bin/env bash
# LibriSpeech ASR with LPO (the paper's Table 7, English). By default: the embedded mini English corpus,
# a tiny Qwen2, CPU (stage times of a recorded run: docs/results/). For the real corpus and model on GPUs:
#   bash run.sh --corpus_dir /data/librispeech --subsets "train-clean-100 dev-clean test-clean" \
#     --model Qwen/Qwen2.5-0.5B --ngpu 8
# (--corpus_dir holds LibriSpeech/; add --download true to fetch it through lhotse.)
# Stages and options: bash run.sh --help
cd "$(dirname "$0")" || exit 1
RECIPE_COMMAND="bash $(pwd)/run.sh $*" exec ../asr.sh --corpus librispeech "$@"
