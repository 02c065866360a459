#!/usr/bin/env bash
# TTS with LPO (the paper's Table 6 setting): three sampled candidates per prompt, each a rejected response
# against the reference; LPO with r2 0.4 against DPO. By default: the embedded mini English corpus, a tiny
# Qwen2, CPU. Stage 10 measures the paper's Table 6 (Whisper tiny.en WER, resemblyzer SIM, DNSMOS, silence,
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
codec=../../tokenizers/worldvq_25hz.yaml # audio tokenizer spec (tokenizers/*.yaml; melvq_20hz.yaml: the old default)
ngpu=0                # >1: training through accelerate launch + DeepSpeed, generation through vLLM, one engine per GPU
nj=2                  # parallel jobs for tokenisation
pref_utts=""          # training utterances set aside before SFT as the pref split; empty: conf/prepare.yaml's
pref_prompts=400      # pref utterances (a fixed random subset) given candidates; 0: all
r2=0.4                # LPO r2 for TTS (the paper's Table 9)
mos_utterances=8      # test sentences in the listening-test package (of the first seed)
seeds="0"             # training seeds: LPO and DPO are trained, synthesised and scored once per seed
sft_seeds=false       # true: SFT (and its candidates, pairs, reference log-probs) once per seed as well
seed_jobs=2           # seeds trained / synthesised at once, one process and one BLAS thread each
datadir=data          # corpus (when synthesised) and manifests
dumpdir=dump          # audio tokens and the fitted codec
expdir=exp            # models, outputs, logs and .done sentinels
conf_dir=conf          # stage configs (conf/ci: the reduced run CI makes; conf/paper: Table 9, Qwen2.5, 8 GPUs)
option_names="stage stop_stage force corpus_dir download subsets model codec ngpu nj pref_utts pref_prompts r2 mos_utterances
seeds sft_seeds seed_jobs datadir dumpdir expdir conf_dir"

resume_command="bash $(pwd)/run.sh $*"
. ../utils/parse_options.sh
. ../utils/stages.sh
. ../utils/common.sh
. ../utils/seeds.sh
corpus=librispeech
corpus_dir=${corpus_dir:-${datadir}/corpus/librispeech}
trained="lpo_r2_${r2} dpo"  # per seed, under $expdir/seed<S>/train
first_seed=${seeds%% *}

# Stages 4-7 run once (SEED "") or, with --sft_seeds true, once per seed under $expdir/seed<SEED>.
sft_one() {  # sft_one SEED
  local root; root=$(sft_root "$1")
  train_cmd sft --config "${conf_dir}/sft.yaml" --task tts --data "${dumpdir}/tokens/train" \
    --eval_data "${dumpdir}/tokens/$(prepared_sets dev | head -n 1)" --model "${expdir}/init" \
    --output_dir "${root}/sft" ${1:+--seed "$1"}
}

candidates_one() {  # candidates_one SEED
  local root; root=$(sft_root "$1")
  speech-lpo generate --config "${conf_dir}/generate.yaml" $(gen_backend) --task tts --model "${root}/sft" \
    --data "${dumpdir}/tokens/pref" --max-prompts "${pref_prompts}" --out "${root}/candidates" ${1:+--seed "$1"}
}

pairs_one() {  # pairs_one SEED
  local root; root=$(sft_root "$1")
  speech-lpo make-pairs --config "${conf_dir}/pairs.yaml" --method model --model "${root}/sft" \
    --candidates "${root}/candidates" --out "${root}/pairs/model.jsonl"
}

ref_logps_one() {  # ref_logps_one SEED
  local root; root=$(sft_root "$1")
  # launched as train is (accelerate + DeepSpeed with --ngpu > 1): the same precision, so x1 = x2 = 0 at step 0
  train_cmd ref-logps --config "${conf_dir}/ref_logps.yaml" --model "${root}/sft" \
    --groups "${root}/pairs/model.jsonl" --output "${root}/pairs/model.ref.jsonl"
}

train_one() {  # train_one SEED
  local root; root=$(seed_sft_root "$1")
  train_cmd train --config "${conf_dir}/lpo.yaml" --r2 "${r2}" --groups "${root}/pairs/model.ref.jsonl" \
    --model "${root}/sft" --output_dir "${expdir}/seed$1/train/lpo_r2_${r2}" --seed "$1"
  train_cmd train --config "${conf_dir}/dpo.yaml" --groups "${root}/pairs/model.ref.jsonl" \
    --model "${root}/sft" --output_dir "${expdir}/seed$1/train/dpo" --seed "$1"
}

synthesize_one() {  # synthesize_one MODEL_DIR OUT_DIR: the first test set prepared
  speech-lpo synthesize --config "${conf_dir}/synthesize.yaml" --model "$1" \
    --data "${dumpdir}/tokens/$(prepared_sets test | head -n 1)" --out-dir "$2"
}

synthesize_seed() {  # synthesize_seed SEED: its systems, and its SFT when SFT is trained per seed
  local dir="${expdir}/seed$1" system
  ${sft_seeds} && synthesize_one "${dir}/sft" "${dir}/synth/sft"
  for system in ${trained}; do synthesize_one "${dir}/train/${system}" "${dir}/synth/${system}"; done
}

synthesize_stage() {
  ${sft_seeds} || synthesize_one "${expdir}/sft" "${expdir}/synth/sft"
  for_each_seed synthesize_seed
}

metrics_stage() {
  local test s system job runs=() jobs=() pids=() sft_synth="${expdir}/synth/sft"
  test=$(prepared_sets test | head -n 1)
  local common=(--lang en --manifest "${datadir}/manifests/${test}.jsonl")
  # the embedded corpus's texts come from a small grammar: its words are Whisper's hotwords
  [[ -f "${corpus_dir}/corpus_words.jsgf" ]] && common+=(--grammar "${corpus_dir}/corpus_words.jsgf")
  # each system's audio (per seed), and once per test set the original recordings and the codec round trip
  # (every synth dir holds the same round trips: the reference codes through the same codec); nj at a time
  ${sft_seeds} && sft_synth="${expdir}/seed${first_seed}/synth/sft"
  ${sft_seeds} || jobs+=("--synth-dir ${expdir}/synth/sft --out-dir ${expdir}/score/sft")
  for s in ${seeds}; do
    ${sft_seeds} && jobs+=("--synth-dir ${expdir}/seed${s}/synth/sft --out-dir ${expdir}/score/seed${s}/sft")
    for system in ${trained}; do
      jobs+=("--synth-dir ${expdir}/seed${s}/synth/${system} --out-dir ${expdir}/score/seed${s}/${system}")
    done
    runs+=("${expdir}/seed${s}/train/lpo_r2_${r2}" "${expdir}/seed${s}/train/dpo")
  done
  jobs+=("--synth-dir ${sft_synth} --roundtrip --out-dir ${expdir}/score/roundtrip")
  jobs+=("--originals --out-dir ${expdir}/score/original")
  for job in "${jobs[@]}"; do
    if (( ${#pids[@]} >= nj )); then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
    # shellcheck disable=SC2086  # a job is its options, split on spaces
    speech-lpo score tts ${job} "${common[@]}" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "${pid}"; done
  speech-lpo score table $(find "${expdir}/score" -name 'tts-summary-*.json' | sort) --out RESULTS.md \
    --plot-dir "${expdir}/plots" --runs "${runs[@]}" --pairs $(find "${expdir}" -path '*/pairs/*.report.json' | sort)
}

# A listening test over the synthesised test sentences (speech-lpo mos serve --definition exp/mos/mos_tts.yaml)
listening_test_stage() {
  local pairs=() system sft_synth="${expdir}/synth/sft"
  ${sft_seeds} && sft_synth="${expdir}/seed${first_seed}/synth/sft"
  pairs+=("sft=${sft_synth}")
  for system in ${trained}; do pairs+=("${system}=${expdir}/seed${first_seed}/synth/${system}"); done
  speech-lpo mos package --systems "${pairs[@]}" \
    --manifest "${datadir}/manifests/$(prepared_sets test | head -n 1).jsonl" \
    --template ../../eval/mos_tts.yaml --out "${expdir}/mos" -n "${mos_utterances}"
}

run_stage 0 corpus corpus_stage
run_stage 1 prepare prepare_stage
run_stage 2 tokenize tokenize_stage
run_stage 3 build_model build_model_stage
sft_stage() { for_each_sft sft_one; }
candidates_stage() { for_each_sft candidates_one; }
pairs_stage() { for_each_sft pairs_one; }
ref_logps_stage() { for_each_sft ref_logps_one; }
train_stage() { for_each_seed train_one; }

run_stage 4 sft sft_stage
run_stage 5 candidates candidates_stage
run_stage 6 pairs pairs_stage
run_stage 7 ref_logps ref_logps_stage
run_stage 8 train train_stage
run_stage 9 synthesize synthesize_stage
run_stage 10 metrics metrics_stage
run_stage 11 listening_test listening_test_stage
echo "$0: stages ${stage}-${stop_stage} finished; results in $(pwd)/RESULTS.md"
