# shellcheck shell=bash
# Shared by the launch scripts: running or, with --dry-run, printing each command, and refusing bad flags.

dry_run=0

# Prints an argument as a shell word: as is when it is plain, else in single quotes (for --flag=value, the value).
quote() {
  local prefix="" word=$1
  if [[ $word =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then
    prefix=${BASH_REMATCH[1]}
    word=${BASH_REMATCH[2]}
  fi
  if [[ $word =~ ^[A-Za-z0-9_./:=,@%+-]+$ || (-n $prefix && -z $word) ]]; then
    printf '%s%s' "$prefix" "$word"
  else
    printf "%s'%s'" "$prefix" "${word//\'/\'\\\'\'}"
  fi
}

# The arguments as one line of shell words (for a remote shell, or to show a command).
quote_all() {
  local separator=""
  for word in "$@"; do
    printf '%s' "$separator"
    quote "$word"
    separator=" "
  done
}

# Runs a command; with --dry-run, prints it instead (one line, ready to paste).
run() {
  if ((dry_run)); then
    quote_all "$@"
    printf '\n'
  else
    "$@"
  fi
}

die() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

# The value of a --flag=value argument.
value_of() {
  [[ $1 == *=* ]] || die "$1 needs a value: ${1}=VALUE"
  printf '%s' "${1#*=}"
}
