#!/usr/bin/env bash
# TTS with LPO (the paper's Table 6 setting): three sampled candidates per prompt, each a rejected response
# against the reference; LPO with r2 0.4 against DPO. By default: the embedded mini English corpus, a tiny
# Qwen2, CPU. Stage 10 measures the paper's Table 6 (pocketsphinx WER, resemblyzer SIM, DNSMOS, silence,
# truncation, repetition, duration ratio; the original recordings and the codec round trip as rows; paired
# tests against SFT), nothing downloaded; stage 11 packages a listening test for `speech-lpo mos serve`.
# For a real corpus and model on GPUs:
#   bash run.sh --corpus_dir /data/librispeech --model Qwen/Qwen2.5-0.5B --ngpu 8
# Stages and options: bash run.sh --help
set -euo pipefail
cd "$(dirname "$0")"

help_message="Usage: $0 [options]; stages: 0 corpus, 1 prepare, 2 tokenize, 3 build-model, 4 sft,
5 candidates, 6 pairs, 7 ref-logps, 8 train (LPO + DPO), 9 synthesize, 10 metrics + RESULTS.md,
11 listening-test package"

stage=0               # first stage to run
stop_stage=100        # last stage to run
force=false           # redo stages that are already done
corpus_dir=""         # LibriSpeech-layout corpus; empty: synthesise the embedded mini corpus
download=false        # let lhotse download the corpus into --corpus_dir
subsets=""            # LibriSpeech subsets to prepare (default: prepare's own)
model=""              # Qwen2.5 checkpoint (local dir or hub id); empty: tiny Qwen2 from conf/model.yaml
codec=../../tokenizers/melvq_20hz.yaml   # audio tokenizer spec (tokenizers/*.yaml)
ngpu=0                # >1: training through accelerate launch + DeepSpeed, generation through vLLM with TP
nj=2                  # parallel jobs for tokenisation
pref_prompts=400      # training utterances (a fixed random subset) given candidates; 0: all
r2=0.4                # LPO r2 for TTS (the paper's Table 9)
mos_utterances=8      # test sentences in the listening-test package
datadir=data          # corpus (when synthesised) and manifests
dumpdir=dump          # audio tokens and the fitted codec
expdir=exp            # models, outputs, logs and .done sentinels
conf_dir=conf          # stage configs (conf/ci: the reduced run CI makes; conf/paper: Table 9, Qwen2.5, 8 GPUs)
option_names="stage stop_stage force corpus_dir download subsets model codec ngpu nj pref_prompts r2 mos_utterances
datadir dumpdir expdir conf_dir"

resume_command="bash $(pwd)/run.sh $*"
. ../utils/parse_options.sh
. ../utils/stages.sh
. ../utils/common.sh
corpus=librispeech
corpus_dir=${corpus_dir:-${datadir}/corpus/librispeech}
systems="sft lpo_r2_${r2} dpo"

model_of() { if [[ $1 == sft ]]; then echo "${expdir}/sft"; else echo "${expdir}/train/$1"; fi; }

sft_stage() {
  train_cmd sft --config "${conf_dir}/sft.yaml" --task tts --data "${dumpdir}/tokens/train" \
    --eval_data "${dumpdir}/tokens/$(prepared_sets dev | head -n 1)" --model "${expdir}/init" \
    --output_dir "${expdir}/sft"
}

candidates_stage() {
  speech-lpo generate --config "${conf_dir}/generate.yaml" $(gen_backend) --task tts --model "${expdir}/sft" \
    --data "${dumpdir}/tokens/train" --max-prompts "${pref_prompts}" --out "${expdir}/candidates"
}

pairs_stage() {
  speech-lpo make-pairs --method model --model "${expdir}/sft" --candidates "${expdir}/candidates" \
    --out "${expdir}/pairs/model.jsonl"
}

ref_logps_stage() {
  speech-lpo ref-logps --config "${conf_dir}/ref_logps.yaml" --model "${expdir}/sft" \
    --groups "${expdir}/pairs/model.jsonl" --output "${expdir}/pairs/model.ref.jsonl"
}

train_stage() {
  train_cmd train --config "${conf_dir}/lpo.yaml" --r2 "${r2}" --groups "${expdir}/pairs/model.ref.jsonl" \
    --model "${expdir}/sft" --output_dir "${expdir}/train/lpo_r2_${r2}"
  train_cmd train --config "${conf_dir}/dpo.yaml" --groups "${expdir}/pairs/model.ref.jsonl" \
    --model "${expdir}/sft" --output_dir "${expdir}/train/dpo"
}

synthesize_stage() {
  for system in ${systems}; do
    speech-lpo synthesize --config "${conf_dir}/synthesize.yaml" --model "$(model_of "${system}")" \
      --data "${dumpdir}/tokens/$(prepared_sets test | head -n 1)" --out-dir "${expdir}/synth/${system}"
  done
}

metrics_stage() {
  local common=(--lang en --manifest "${datadir}/manifests/test.jsonl" --out-dir "${expdir}/score")
  # the embedded corpus's texts come from a small grammar: pocketsphinx listens for its words only
  [[ -f "${corpus_dir}/corpus_words.jsgf" ]] && common+=(--grammar "${corpus_dir}/corpus_words.jsgf")
  # each system's audio, and once per test set the original recordings and the codec round trip (every
  # synth dir holds the same round trips: the reference codes through the same codec); nj at a time
  local jobs=() pids=()
  for system in ${systems}; do jobs+=("--synth-dir ${expdir}/synth/${system}"); done
  jobs+=("--synth-dir ${expdir}/synth/sft --roundtrip" "--originals")
  for job in "${jobs[@]}"; do
    if (( ${#pids[@]} >= nj )); then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
    # shellcheck disable=SC2086  # a job is its options, split on spaces
    speech-lpo score tts ${job} "${common[@]}" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "${pid}"; done
  speech-lpo score table "${expdir}"/score/tts-summary-*.json --out RESULTS.md --plot-dir "${expdir}/plots" \
    --runs "${expdir}/train/lpo_r2_${r2}" "${expdir}/train/dpo"
}

# A listening test over the synthesised test sentences (speech-lpo mos serve --definition exp/mos/mos_tts.yaml)
listening_test_stage() {
  local pairs=()
  for system in ${systems}; do pairs+=("${system}=${expdir}/synth/${system}"); done
  speech-lpo mos package --systems "${pairs[@]}" --manifest "${datadir}/manifests/$(prepared_sets test | head -n 1).jsonl" \
    --template ../../eval/mos_tts.yaml --out "${expdir}/mos" -n "${mos_utterances}"
}

run_stage 0 corpus corpus_stage
run_stage 1 prepare prepare_stage
run_stage 2 tokenize tokenize_stage
run_stage 3 build_model build_model_stage
run_stage 4 sft sft_stage
run_stage 5 candidates candidates_stage
run_stage 6 pairs pairs_stage
run_stage 7 ref_logps ref_logps_stage
run_stage 8 train train_stage
run_stage 9 synthesize synthesize_stage
run_stage 10 metrics metrics_stage
run_stage 11 listening_test listening_test_stage
echo "$0: stages ${stage}-${stop_stage} finished; results in $(pwd)/RESULTS.md"
