#!/usr/bin/env bash
# ASR with LPO: the stages shared by recipes/aishell and recipes/librispeech (as ESPnet's asr.sh).
# A recipe's run.sh sets its corpus options and calls this script from its own directory, where data/,
# dump/ and exp/ are written and conf/ is read. With no --corpus_dir the embedded mini corpus is
# synthesised (stage 0) and everything runs on CPU.
set -euo pipefail

help_message="Usage: $0 [options]; stages: 0 corpus, 1 prepare, 2 tokenize, 3 build-model, 4 sft,
5 candidates, 6 pairs, 7 ref-logps, 8 train (LPO grid + DPO), 9 decode, 10 score + RESULTS.md"

# options (every variable here can be set with --name value)
stage=0               # first stage to run
stop_stage=100        # last stage to run
force=false           # redo stages that are already done
corpus=aishell        # aishell | librispeech
corpus_dir=""         # corpus in its release layout; empty: synthesise the embedded mini corpus
download=false        # let lhotse download the corpus into --corpus_dir
subsets=""            # LibriSpeech parts to prepare (and download); default: every part present
test_sets=""          # sets decoded and scored, one RESULTS.md column each; default: every test set prepared
valid_set=""          # set SFT validates on; default: the first dev set prepared (dev, dev-clean)
benchmark=""          # name in eval/scoring.yaml (picks the normaliser); default: from --corpus
model=""              # Qwen2.5 checkpoint (local dir or hub id); empty: tiny Qwen2 from conf/model.yaml
codec=../../tokenizers/melvq_20hz.yaml   # audio tokenizer spec (tokenizers/*.yaml)
ngpu=0                # >1: training through accelerate launch + DeepSpeed, generation through vLLM with TP
nj=2                  # parallel jobs for tokenisation
methods="model perturb"   # candidate methods: model-sampled and/or perturbation-based rejected transcripts
pref_prompts=600      # training utterances (a fixed random subset) given candidates / perturbations; 0: all
r2_grid="1.0 2.0 3.0" # one LPO run per value and method
epoch_curves="dpo lpo_r2_2.0"  # systems (of the first method) decoded at every epoch for Figure 2
datadir=data          # corpus (when synthesised) and manifests
dumpdir=dump          # audio tokens and the fitted codec
expdir=exp            # models, outputs, logs and .done sentinels
conf_dir=conf          # stage configs (conf/ci: the reduced run CI makes; conf/paper: Table 9, Qwen2.5, 8 GPUs)
option_names="stage stop_stage force corpus corpus_dir download subsets test_sets valid_set benchmark model codec ngpu
nj methods pref_prompts r2_grid epoch_curves datadir dumpdir expdir conf_dir"

resume_command="${RECIPE_COMMAND:-$0 $*}"
utils=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/utils
. "${utils}/parse_options.sh"
. "${utils}/stages.sh"
. "${utils}/common.sh"

benchmark=${benchmark:-$([[ ${corpus} == aishell ]] && echo aishell1 || echo librispeech)}
[[ -n "${corpus_dir}" ]] || corpus_dir=${datadir}/corpus/$([[ ${corpus} == aishell ]] && echo aishell1 || echo librispeech)

sft_stage() {
  train_cmd sft --config "${conf_dir}/sft.yaml" --task asr --data "${dumpdir}/tokens/train" \
    --eval_data "${dumpdir}/tokens/${valid_set:-$(prepared_sets dev | head -n 1)}" --model "${expdir}/init" \
    --output_dir "${expdir}/sft"
}

candidates_stage() {
  [[ " ${methods} " == *" model "* ]] || { echo "no model-based method requested"; return; }
  speech-lpo generate --config "${conf_dir}/generate.yaml" $(gen_backend) --task asr --model "${expdir}/sft" \
    --data "${dumpdir}/tokens/train" --max-prompts "${pref_prompts}" --out "${expdir}/candidates"
}

pairs_stage() {
  for method in ${methods}; do
    if [[ ${method} == model ]]; then
      speech-lpo make-pairs --method model --model "${expdir}/sft" --candidates "${expdir}/candidates" \
        --out "${expdir}/pairs/model.jsonl"
    else
      speech-lpo make-pairs --config "${conf_dir}/perturb.yaml" --method perturb --model "${expdir}/sft" \
        --data "${dumpdir}/tokens/train" --max-prompts "${pref_prompts}" --out "${expdir}/pairs/perturb.jsonl"
    fi
  done
}

ref_logps_stage() {
  for method in ${methods}; do
    speech-lpo ref-logps --config "${conf_dir}/ref_logps.yaml" --model "${expdir}/sft" \
      --groups "${expdir}/pairs/${method}.jsonl" --output "${expdir}/pairs/${method}.ref.jsonl"
  done
}

# Trained systems: <method>/lpo_r2_<r2> for each r2 and <method>/dpo, under $expdir/train.
systems() {
  for method in ${methods}; do
    for r2 in ${r2_grid}; do echo "${method}/lpo_r2_${r2}"; done
    echo "${method}/dpo"
  done
}

train_stage() {
  for system in $(systems); do
    local method=${system%%/*} name=${system#*/} conf="${conf_dir}/lpo.yaml" extra=()
    if [[ ${name} == dpo ]]; then conf="${conf_dir}/dpo.yaml"; else extra+=(--r2 "${name#lpo_r2_}"); fi
    echo "== ${system}"
    train_cmd train --config "${conf}" --groups "${expdir}/pairs/${method}.ref.jsonl" --model "${expdir}/sft" \
      --output_dir "${expdir}/train/${system}" "${extra[@]}"
  done
}

# Test sets: --test_sets, or every test set prepared (AISHELL-1: test; LibriSpeech: test-clean test-other).
eval_sets() { echo "${test_sets:-$(prepared_sets test)}"; }

decode_one() {  # decode_one MODEL_DIR TEST_SET SYSTEM: hypotheses in $expdir/decode/TEST_SET/SYSTEM
  speech-lpo decode --config "${conf_dir}/decode.yaml" --model "$1" --data "${dumpdir}/tokens/$2" \
    --out-dir "${expdir}/decode/$2/$3"
}

decode_stage() {
  local first=${methods%% *} test
  for test in $(eval_sets); do
    decode_one "${expdir}/sft" "${test}" sft
    for system in $(systems); do
      decode_one "${expdir}/train/${system}" "${test}" "${system}"
      if [[ " ${epoch_curves} " == *" ${system#*/} "* && ${system%%/*} == "${first}" ]]; then
        for ckpt in "${expdir}/train/${system}"/checkpoint-*; do
          decode_one "${ckpt}" "${test}" "${system}/epochs/${ckpt##*/}"
        done
      fi
    done
  done
}

# epoch reached by a training output dir or checkpoint (its trainer_state.json)
epoch_of() { python -c "import json,sys; print(round(json.load(open(sys.argv[1]))['epoch']))" "$1/trainer_state.json"; }

# score_one TEST_SET DECODE_DIR NAME TAGS...: against the data dir's Kaldi text of the test set, so an
# utterance that prepare kept but tokenize or decode lost counts as deletions
score_one() {
  local test=$1 dir=$2 name=$3; shift 3
  local extra=()
  for t in "$@"; do extra+=(--tag "$t"); done
  [[ ${name} == sft ]] || extra+=(--baseline-hyp "${expdir}/decode/${test}/sft/text")
  speech-lpo score asr --ref "${datadir}/manifests/kaldi/${test}/text" --hyp "${dir}/text" \
    --benchmark "${benchmark}" --out-dir "${expdir}/score/${test}" --name "${name}" \
    --tag benchmark="${benchmark}" --tag test_set="${test}" "${extra[@]}"
}

score_stage() {
  local test
  for test in $(eval_sets); do
    score_one "${test}" "${expdir}/decode/${test}/sft" sft method=sft
    for system in $(systems); do
      local method=${system%%/*} name=${system#*/} r2=- loss=dpo dir="${expdir}/decode/${test}/${system}"
      [[ ${name} == lpo_r2_* ]] && { r2=${name#lpo_r2_}; loss=lpo; }
      score_one "${test}" "${dir}" "${method}_${name}" candidates="${method}" method="${loss}" r2="${r2}" \
        epoch="$(epoch_of "${expdir}/train/${system}")"
      for ckpt in "${dir}"/epochs/checkpoint-*; do
        [[ -d ${ckpt} ]] || continue
        score_one "${test}" "${ckpt}" "${method}_${name}_${ckpt##*/}" candidates="${method}" method="${loss}" \
          r2="${r2}" epoch="$(epoch_of "${expdir}/train/${system}/${ckpt##*/}")"
      done
    done
  done
  local first=${methods%% *} runs=()
  for r2 in ${r2_grid}; do runs+=("${expdir}/train/${first}/lpo_r2_${r2}"); done
  speech-lpo score table "${expdir}"/score/*/summary-*.json --out RESULTS.md --plot-dir "${expdir}/plots" \
    --runs "${runs[@]}" "${expdir}/train/${first}/dpo"
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
run_stage 9 decode decode_stage
run_stage 10 score score_stage
echo "$0: stages ${stage}-${stop_stage} finished; results in $(pwd)/RESULTS.md"
