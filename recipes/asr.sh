#!/usr/bin/env bash
# ASR with LPO: the stages shared by recipes/aishell and recipes/librispeech (as ESPnet's asr.sh).
# A recipe's run.sh sets its corpus options and calls this script from its own directory, where data/,
# dump/ and exp/ are written and conf/ is read. With no --corpus_dir the embedded mini corpus is
# synthesised (stage 0) and everything runs on CPU.
set -euo pipefail

help_message="Usage: $0 [options]; stages: 0 corpus, 1 prepare, 2 tokenize, 3 build-model, 4 sft,
5 candidates, 6 pairs, 7 ref-logps, 8 tune_lr (learning rates on dev) and train (LPO grid + DPO), 9 decode,
10 score + RESULTS.md"

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
ngpu=0                # >1: training through accelerate launch + DeepSpeed, generation through vLLM, one engine per GPU
nj=2                  # parallel jobs for tokenisation
methods="model perturb"   # candidate methods: model-sampled and/or perturbation-based rejected transcripts
pref_utts=""          # training utterances set aside before SFT as the pref split; empty: conf/prepare.yaml's
pref_prompts=600      # pref utterances (a fixed random subset) given candidates / perturbations; 0: all
r2_grid="1.0 2.0 3.0" # one LPO run per value and method
lr_grid="1e-5 5e-5 2e-4"  # learning rates LPO and DPO each choose from on dev (stage 8); empty: the conf's
epoch_curves="dpo lpo_r2_2.0"  # systems (of the first method) decoded at every epoch for Figure 2
whisper_row=auto      # LibriSpeech: the bundled Whisper tiny.en's WER as a reference row; auto: with a real
                      # --corpus_dir only (97.5% on the embedded corpus: docs/results/librispeech/RUN.md)
seeds="0"             # training seeds: every preference system is trained, decoded and scored once per seed
sft_seeds=false       # true: SFT (and its candidates, pairs, reference log-probs) once per seed as well
seed_jobs=2           # seeds trained / decoded at once, one process and one BLAS thread each
datadir=data          # corpus (when synthesised) and manifests
dumpdir=dump          # audio tokens and the fitted codec
expdir=exp            # models, outputs, logs and .done sentinels
conf_dir=conf          # stage configs (conf/ci: the reduced run CI makes; conf/paper: Table 9, Qwen2.5, 8 GPUs)
option_names="stage stop_stage force corpus corpus_dir download subsets test_sets valid_set benchmark model codec ngpu
nj methods pref_utts pref_prompts r2_grid lr_grid epoch_curves whisper_row seeds sft_seeds seed_jobs datadir dumpdir expdir conf_dir"

resume_command="${RECIPE_COMMAND:-$0 $*}"
utils=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/utils
. "${utils}/parse_options.sh"
. "${utils}/stages.sh"
. "${utils}/common.sh"
. "${utils}/seeds.sh"

benchmark=${benchmark:-$([[ ${corpus} == aishell ]] && echo aishell1 || echo librispeech)}
[[ ${whisper_row} != auto ]] || whisper_row=$([[ -n ${corpus_dir} ]] && echo true || echo false)
[[ -n "${corpus_dir}" ]] || corpus_dir=${datadir}/corpus/$([[ ${corpus} == aishell ]] && echo aishell1 || echo librispeech)

# Stages 4-7 run once (SEED "") or, with --sft_seeds true, once per seed under $expdir/seed<SEED>.
sft_one() {  # sft_one SEED
  local root; root=$(sft_root "$1")
  train_cmd sft --config "${conf_dir}/sft.yaml" --task asr --data "${dumpdir}/tokens/train" \
    --eval_data "${dumpdir}/tokens/${valid_set:-$(prepared_sets dev | head -n 1)}" --model "${expdir}/init" \
    --output_dir "${root}/sft" ${1:+--seed "$1"}
}

candidates_one() {  # candidates_one SEED
  [[ " ${methods} " == *" model "* ]] || { echo "no model-based method requested"; return; }
  local root; root=$(sft_root "$1")
  speech-lpo generate --config "${conf_dir}/generate.yaml" $(gen_backend) --task asr --model "${root}/sft" \
    --data "${dumpdir}/tokens/pref" --max-prompts "${pref_prompts}" --out "${root}/candidates" ${1:+--seed "$1"}
}

pairs_one() {  # pairs_one SEED
  local root method; root=$(sft_root "$1")
  for method in ${methods}; do
    if [[ ${method} == model ]]; then
      speech-lpo make-pairs --config "${conf_dir}/pairs.yaml" --method model --model "${root}/sft" \
        --candidates "${root}/candidates" --out "${root}/pairs/model.jsonl"
    else
      speech-lpo make-pairs --config "${conf_dir}/perturb.yaml" --method perturb --model "${root}/sft" \
        --data "${dumpdir}/tokens/pref" --max-prompts "${pref_prompts}" --out "${root}/pairs/perturb.jsonl" \
        ${1:+--seed "$1"}
    fi
  done
}

ref_logps_one() {  # ref_logps_one SEED
  local root method; root=$(sft_root "$1")
  for method in ${methods}; do
    # launched as train is (accelerate + DeepSpeed with --ngpu > 1): the same precision, so x1 = x2 = 0 at step 0
    train_cmd ref-logps --config "${conf_dir}/ref_logps.yaml" --model "${root}/sft" \
      --groups "${root}/pairs/${method}.jsonl" --output "${root}/pairs/${method}.ref.jsonl"
  done
}

# Stage 8 first: each loss's learning rate chosen on the dev set at equal compute. LPO (at the middle r2 of
# --r2_grid) and DPO are trained once per rate of --lr_grid on the first seed's pairs of the first method;
# every epoch's checkpoint is scored on dev; select-lr keeps per loss the rate best at the last epoch.
tune_one() {  # tune_one LOSS:RATE
  local loss=${1%%:*} lr=${1#*:} s=${seeds%% *} root extra=()
  root=$(seed_sft_root "${s}")
  if [[ ${loss} == lpo ]]; then local r2s=(${r2_grid}); extra+=(--r2 "${r2s[$(( ${#r2s[@]} / 2 ))]}"); fi
  train_cmd train --config "${conf_dir}/${loss}.yaml" --groups "${root}/pairs/${methods%% *}.ref.jsonl" \
    --model "${root}/sft" --output_dir "${expdir}/tune_lr/${loss}_lr${lr}" --seed "${s}" --learning_rate "${lr}" \
    "${extra[@]}"
}

tune_lr_stage() {
  [[ -n ${lr_grid} ]] || { echo "no --lr_grid: every loss trains at its conf's learning rate"; return; }
  local dir=${expdir}/tune_lr dev runs=() models=() outs=() loss lr run ckpt
  dev=${valid_set:-$(prepared_sets dev | head -n 1)}
  for loss in lpo dpo; do for lr in ${lr_grid}; do runs+=("${loss}:${lr}"); done; done
  for_each_seed tune_one "${runs[*]}"
  models=("$(seed_sft_root "${seeds%% *}")/sft"); outs=("${dir}/decode/sft")
  for run in "${dir}"/*_lr*/; do
    for ckpt in "${run}"checkpoint-*; do models+=("${ckpt}"); outs+=("${dir}/decode/$(basename "${run}")/${ckpt##*/}"); done
  done
  speech-lpo decode --config "${conf_dir}/decode.yaml" --data "${dumpdir}/tokens/${dev}" --model "${models[@]}" \
    --out-dir "${outs[@]}"
  local score=(speech-lpo score asr --ref "${datadir}/manifests/kaldi/${dev}/text" --benchmark "${benchmark}"
    --out-dir "${dir}/score" --tag test_set="${dev}" --tag benchmark="${benchmark}")
  "${score[@]}" --hyp "${dir}/decode/sft/text" --name sft --tag method=sft
  for run in "${dir}"/*_lr*/; do
    run=$(basename "${run}"); loss=${run%%_lr*}; lr=${run#*_lr}
    for ckpt in "${dir}/decode/${run}"/checkpoint-*; do
      "${score[@]}" --hyp "${ckpt}/text" --name "${run}_${ckpt##*/}" --tag method="${loss}" --tag lr="${lr}" \
        --tag epoch="$(epoch_of "${dir}/${run}/${ckpt##*/}")"
    done
  done
  speech-lpo select-lr --scores "${dir}"/score/summary-*.json --runs "${dir}"/*_lr* --out "${dir}/selection.json"
}

# --learning_rate RATE as chosen on dev for a loss (lpo, dpo); nothing without --lr_grid (the conf's rate)
chosen_lr() {
  [[ -n ${lr_grid} ]] || return 0
  python -c "import json, sys; print('--learning_rate', json.load(open(sys.argv[1]))['chosen'][sys.argv[2]])" \
    "${expdir}/tune_lr/selection.json" "$1"
}

# Trained systems: <method>/lpo_r2_<r2> for each r2 and <method>/dpo, under $expdir/seed<S>/train.
systems() {
  for method in ${methods}; do
    for r2 in ${r2_grid}; do echo "${method}/lpo_r2_${r2}"; done
    echo "${method}/dpo"
  done
}

train_one() {  # train_one SEED: every system, trained with this seed
  local root system; root=$(seed_sft_root "$1")
  for system in $(systems); do
    local method=${system%%/*} name=${system#*/} conf="${conf_dir}/lpo.yaml" extra=()
    if [[ ${name} == dpo ]]; then conf="${conf_dir}/dpo.yaml"; else extra+=(--r2 "${name#lpo_r2_}"); fi
    extra+=($(chosen_lr "${name%%_*}"))
    echo "== ${system}"
    train_cmd train --config "${conf}" --groups "${root}/pairs/${method}.ref.jsonl" --model "${root}/sft" \
      --output_dir "${expdir}/seed$1/train/${system}" --seed "$1" "${extra[@]}"
  done
}

# Test sets: --test_sets, or every test set prepared (AISHELL-1: test; LibriSpeech: test-clean test-other).
eval_sets() { echo "${test_sets:-$(prepared_sets test)}"; }

# decode_seed SEED: on each test set, the systems of one seed (and the SFT it starts from) in one process;
# hypotheses in <root>/decode/<test set>/<system>
decode_seed() {
  local dir="${expdir}/seed$1" first=${methods%% *} test system ckpt
  for test in $(eval_sets); do
    local models=() outs=()
    # the shared SFT is decoded with the first seed
    if ${sft_seeds} || [[ $1 == "${seeds%% *}" ]]; then
      models+=("$(seed_sft_root "$1")/sft"); outs+=("$(seed_sft_root "$1")/decode/${test}/sft")
    fi
    for system in $(systems); do
      models+=("${dir}/train/${system}"); outs+=("${dir}/decode/${test}/${system}")
      if [[ " ${epoch_curves} " == *" ${system#*/} "* && ${system%%/*} == "${first}" ]]; then
        for ckpt in "${dir}/train/${system}"/checkpoint-*; do
          models+=("${ckpt}"); outs+=("${dir}/decode/${test}/${system}/epochs/${ckpt##*/}")
        done
      fi
    done
    speech-lpo decode --config "${conf_dir}/decode.yaml" --data "${dumpdir}/tokens/${test}" \
      --model "${models[@]}" --out-dir "${outs[@]}"
  done
}

decode_stage() { for_each_seed decode_seed; }

# epoch reached by a training output dir or checkpoint (its trainer_state.json)
epoch_of() { python -c "import json,sys; print(round(json.load(open(sys.argv[1]))['epoch']))" "$1/trainer_state.json"; }

# score_one TEST_SET DECODE_DIR NAME BASELINE_DIR TAGS...: against the data dir's Kaldi text of the test set,
# so an utterance that prepare kept but tokenize or decode lost counts as deletions; BASELINE_DIR is the SFT
# decode the system is paired with ("" for an SFT itself)
score_one() {
  local test=$1 dir=$2 name=$3 baseline=$4; shift 4
  local extra=()
  for t in "$@"; do extra+=(--tag "$t"); done
  [[ -z ${baseline} ]] || extra+=(--baseline-hyp "${baseline}/text")
  speech-lpo score asr --ref "${datadir}/manifests/kaldi/${test}/text" --hyp "${dir}/text" \
    --benchmark "${benchmark}" --out-dir "${expdir}/score/${test}" --name "${name}" \
    --tag benchmark="${benchmark}" --tag test_set="${test}" "${extra[@]}"
}

# reference_one TEST_SET: an outside yardstick for the systems trained here, English only: the bundled
# Whisper tiny.en's transcripts of the test set (offline), scored as they are
reference_one() {
  local dir="${expdir}/decode/$1/whisper_tiny_en"
  speech-lpo score transcribe --manifest "${datadir}/manifests/$1.jsonl" --out-dir "${dir}"
  score_one "$1" "${dir}" whisper_tiny_en "" method="Whisper tiny.en (bundled)" row=reference
}

score_stage() {
  local test s system r2 runs=() first=${methods%% *}
  for s in ${seeds}; do
    for r2 in ${r2_grid}; do runs+=("${expdir}/seed${s}/train/${first}/lpo_r2_${r2}"); done
    runs+=("${expdir}/seed${s}/train/${first}/dpo")
  done
  for test in $(eval_sets); do
    local sft_decode=${expdir}/decode/${test}/sft
    ${sft_seeds} || score_one "${test}" "${sft_decode}" sft "" method=sft
    if [[ ${corpus} == librispeech ]] && ${whisper_row}; then reference_one "${test}"; fi
    for s in ${seeds}; do
      local dir="${expdir}/seed${s}"
      if ${sft_seeds}; then
        sft_decode=${dir}/decode/${test}/sft
        score_one "${test}" "${sft_decode}" "seed${s}_sft" "" method=sft seed="${s}"
      fi
      for system in $(systems); do
        local method=${system%%/*} name=${system#*/} r2=- loss=dpo
        [[ ${name} == lpo_r2_* ]] && { r2=${name#lpo_r2_}; loss=lpo; }
        local tags=(candidates="${method}" method="${loss}" r2="${r2}" seed="${s}")
        score_one "${test}" "${dir}/decode/${test}/${system}" "seed${s}_${method}_${name}" "${sft_decode}" \
          "${tags[@]}" epoch="$(epoch_of "${dir}/train/${system}")"
        for ckpt in "${dir}/decode/${test}/${system}"/epochs/checkpoint-*; do
          [[ -d ${ckpt} ]] || continue
          score_one "${test}" "${ckpt}" "seed${s}_${method}_${name}_${ckpt##*/}" "${sft_decode}" "${tags[@]}" \
            epoch="$(epoch_of "${dir}/train/${system}/${ckpt##*/}")"
        done
      done
    done
  done
  # shellcheck disable=SC2046  # one report path per line, no spaces
  speech-lpo score table "${expdir}"/score/*/summary-*.json --out RESULTS.md --plot-dir "${expdir}/plots" \
    --runs "${runs[@]}" --pairs $(find "${expdir}" -path '*/pairs/*.report.json' | sort) \
    $([[ -f ${expdir}/tune_lr/selection.json ]] && echo --lr-selection "${expdir}/tune_lr/selection.json")
}

sft_stage() { for_each_sft sft_one; }
candidates_stage() { for_each_sft candidates_one; }
pairs_stage() { for_each_sft pairs_one; }
ref_logps_stage() { for_each_sft ref_logps_one; }
train_stage() { for_each_seed train_one; }

run_stage 0 corpus corpus_stage
run_stage 1 prepare prepare_stage
run_stage 2 tokenize tokenize_stage
run_stage 3 build_model build_model_stage
run_stage 4 sft sft_stage
run_stage 5 candidates candidates_stage
run_stage 6 pairs pairs_stage
run_stage 7 ref_logps ref_logps_stage
run_stage 8 tune_lr tune_lr_stage
run_stage 8 train train_stage
run_stage 9 decode decode_stage
run_stage 10 score score_stage
echo "$0: stages ${stage}-${stop_stage} finished; results in $(pwd)/RESULTS.md"
