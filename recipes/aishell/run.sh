#!/usr/bin/env bash
# AISHELL-1 ASR with LPO (the paper's Table 7, Chinese). By default: the embedded mini Mandarin corpus,
# a tiny Qwen2, CPU (stage times of a recorded run: docs/results/). For the real corpus and model on GPUs:
#   bash run.sh --corpus_dir /data/aishell1 --model Qwen/Qwen2.5-0.5B --ngpu 8
# (--corpus_dir holds data_aishell/; add --download true to fetch it through lhotse.)
# Stages and options: bash run.sh --help
cd "$(dirname "$0")" || exit 1
RECIPE_COMMAND="bash $(pwd)/run.sh $*" exec ../asr.sh --corpus aishell "$@"
