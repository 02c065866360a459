# shellcheck shell=bash
# Stage functions shared by the ASR and TTS recipes, sourced after parse_options.sh. They read the
# recipe's options: corpus, corpus_dir, download, subsets, model, codec, ngpu, nj, datadir, dumpdir, expdir.

# the project's environment, when the README's set-up made one
_venv=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/.venv/bin
[[ -d "${_venv}" ]] && export PATH="${_venv}:${PATH}"

# Training: one process, or accelerate launch with DeepSpeed ZeRO-2 over --ngpu GPUs.
train_cmd() {
  if (( ngpu > 1 )); then
    accelerate launch --num_processes "${ngpu}" --config_file conf/accelerate_deepspeed.yaml \
      -m speech_lpo.cli "$@" --deepspeed conf/ds_zero2.json
  else
    speech-lpo "$@"
  fi
}

# Generation backend: transformers on CPU, vLLM with one engine per GPU (data parallel) on GPUs.
gen_backend() {
  if (( ngpu > 0 )); then echo "--backend vllm --ngpu ${ngpu}"; else echo "--backend transformers"; fi
}

corpus_stage() {
  if [[ -d "${corpus_dir}" ]] || ${download}; then echo "corpus at ${corpus_dir}"; return; fi
  [[ "${corpus_dir}" == "${datadir}"/corpus/* ]] || { echo "no corpus at ${corpus_dir}" >&2; return 1; }
  speech-lpo synth-corpus --config "${conf_dir}/corpus.yaml" --out "${datadir}/corpus"
}

prepare_stage() {
  local extra=()
  ${download} && extra+=(--download true)
  [[ -n "${subsets}" ]] && extra+=(--subsets ${subsets})
  [[ -n "${pref_utts}" ]] && extra+=(--pref-utts "${pref_utts}")
  # conf/prepare.yaml: the training utterances set aside as the pref split (preference prompts)
  speech-lpo prepare --config "${conf_dir}/prepare.yaml" --corpus "${corpus}" --corpus-dir "${corpus_dir}" \
    --out "${datadir}/manifests" "${extra[@]}"
}

# Sets of a kind (dev or test) that prepare wrote, one a line: AISHELL-1's dev and test; LibriSpeech's
# dev-clean, dev-other, test-clean, test-other, those prepared.
prepared_sets() {
  local m
  for m in "${datadir}/manifests/$1"*.jsonl; do [[ -f "${m}" ]] && basename "${m}" .jsonl; done
  return 0
}

tokenize_stage() {
  speech-lpo tokenize --manifests "${datadir}"/manifests/*.jsonl --out "${dumpdir}/tokens" \
    --codec "${codec}" --fit-manifest "${datadir}/manifests/train.jsonl" --jobs "${nj}"
}

build_model_stage() {
  local extra=()
  [[ -n "${model}" ]] && extra+=(--model "${model}")
  speech-lpo build-model --config "${conf_dir}/model.yaml" --codec "${dumpdir}/tokens/codec" \
    --out "${expdir}/init" --text-manifests "${datadir}/manifests/train.jsonl" "${extra[@]}"
}
