# shellcheck shell=bash
# Training seeds for recipes, sourced after parse_options.sh. Options read: seeds (one run of every
# preference system per seed), sft_seeds (true: SFT, its candidates, pairs and reference log-probs once per
# seed too; false: once, shared by every seed), seed_jobs (seeds run at once), expdir.
# Per-seed outputs live under $expdir/seed<S>/; what every seed shares stays directly under $expdir.

# The dir holding sft/, candidates/ and pairs/ for a seed ("" : the shared one).
sft_root() { if [[ -n "$1" ]]; then echo "${expdir}/seed$1"; else echo "${expdir}"; fi; }

# The sft_root that a seed's preference systems start from.
seed_sft_root() { if ${sft_seeds}; then sft_root "$1"; else sft_root ""; fi; }

# for_each_seed FUNCTION [SEEDS]: FUNCTION SEED for every seed, --seed_jobs at a time (one with --ngpu),
# each in its own process with one BLAS thread (the cores go to the seeds) and its own log, printed in seed
# order after.
for_each_seed() {
  local fn=$1 list=${2:-${seeds}} batch=() s failed=0
  local logdir="${expdir}/logs/${fn}"
  mkdir -p "${logdir}"
  run_batch() {
    local pids=() i
    for s in "${batch[@]}"; do
      ( set -euo pipefail; "${fn}" "${s}" ) >"${logdir}/seed${s}.log" 2>&1 &
      pids+=($!)
    done
    for i in "${!pids[@]}"; do
      wait "${pids[$i]}" || { echo "seed ${batch[$i]} FAILED (log ${logdir}/seed${batch[$i]}.log)"; failed=1; }
    done
    for s in "${batch[@]}"; do echo "== seed ${s}"; cat "${logdir}/seed${s}.log"; done
    batch=()
  }
  # on GPUs every seed already uses them all (--ngpu): one seed at a time
  local jobs=${seed_jobs}
  (( ${ngpu:-0} == 0 )) || jobs=1
  if (( jobs > 1 )); then export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1; fi
  for s in ${list}; do
    batch+=("${s}")
    (( ${#batch[@]} < jobs )) || run_batch
  done
  (( ${#batch[@]} == 0 )) || run_batch
  return "${failed}"
}

# for_each_sft FUNCTION: FUNCTION for every SFT run (see sft_seed_of): per seed, or once with "".
for_each_sft() { if ${sft_seeds}; then for_each_seed "$1"; else "$1" ""; fi; }
