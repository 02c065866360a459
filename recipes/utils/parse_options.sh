# shellcheck shell=bash
# Kaldi-style options, sourced by a recipe after it has set its defaults:
#   --foo_bar VALUE, --foo-bar VALUE or --foo_bar=VALUE sets the shell variable foo_bar.
# Only variables the recipe defined are options; anything else is an error. Booleans (default true, false
# or auto) take true/false (or auto): anything else is an error.
# --help prints the recipe's $help_message and the options with their current values.
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help)
      echo "${help_message:-}"
      echo "Options (current values):"
      for _var in ${option_names}; do printf '  --%s %q\n' "$_var" "${!_var}"; done
      exit 0 ;;
    --*=*) _name=${1%%=*}; _value=${1#*=}; shift ;;
    --*)
      [[ $# -ge 2 ]] || { echo "$0: option $1 needs a value" >&2; exit 2; }
      _name=$1; _value=$2; shift 2 ;;
    *) echo "$0: unexpected argument '$1' (options are --name value)" >&2; exit 2 ;;
  esac
  _var=${_name#--}; _var=${_var//-/_}
  if [[ " ${option_names//$'\n'/ } " != *" ${_var} "* ]]; then
    echo "$0: unknown option ${_name} (see $0 --help)" >&2; exit 2
  fi
  # a boolean (its default true, false or auto) takes only those words: `${flag} && ...` runs the value
  case "${!_var}:${_value}" in
    true:true|true:false|false:true|false:false|auto:auto|auto:true|auto:false) ;;
    true:*|false:*|auto:*)
      echo "$0: ${_name} takes true or false$([[ ${!_var} == auto ]] && echo ' (or auto)'), not '${_value}'" >&2
      exit 2 ;;
  esac
  printf -v "${_var}" '%s' "${_value}"
done
unset _name _value _var
