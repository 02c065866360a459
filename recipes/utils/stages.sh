# shellcheck shell=bash
# Stage runner for recipes, sourced after parse_options.sh. A recipe defines stage functions and calls
#   run_stage N NAME FUNCTION
# which runs FUNCTION when stage <= N <= stop_stage, logs its output to $expdir/logs/stageN.NAME.log,
# and on success writes the sentinel $expdir/.done/stageN.NAME: a re-run skips the stage (--force true
# redoes it). On failure it shows the end of the log and the command that resumes from this stage.

run_stage() {
  local n=$1 name=$2 fn=$3
  (( n >= stage && n <= stop_stage )) || return 0
  local sentinel="${expdir}/.done/stage${n}.${name}" log="${expdir}/logs/stage${n}.${name}.log"
  mkdir -p "${expdir}/.done" "${expdir}/logs"
  if [[ -f "${sentinel}" && "${force}" != true ]]; then
    echo "stage ${n} (${name}): already done, skipped (--force true redoes it)"
    return 0
  fi
  echo "stage ${n} (${name}): started $(date +%T), log ${log}"
  local start=${SECONDS}
  if ! ( set -euo pipefail; "${fn}" ) >"${log}" 2>&1; then
    echo "stage ${n} (${name}) FAILED; the end of ${log}:" >&2
    tail -n 25 "${log}" >&2
    echo "To resume from this stage: ${resume_command} --stage ${n}" >&2
    exit 1
  fi
  touch "${sentinel}"
  echo "stage ${n} (${name}): done in $(( SECONDS - start ))s"
}
