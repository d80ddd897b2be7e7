# shellcheck shell=bash
# Shared by launch_tpu/*.sh: settings from flags or environment, their checks, and the `run` helper.
# Written for bash >= 3.2 (macOS's /bin/bash): no associative arrays, and empty arrays are expanded with
# ${a[@]+"${a[@]}"} because `set -u` rejects "${a[@]}" of an empty array before bash 4.4.
set -euo pipefail

LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCRIPT=launch_tpu/$(basename "$0")

# Every value-taking flag has an environment variable of the same meaning; the flag wins.
TPU_NAME=${TPU_NAME:-}                # --name
ZONE=${ZONE:-}                        # --zone
TPU_TYPE=${TPU_TYPE:-}                # --type
PROJECT=${PROJECT:-}                  # --project (empty: gcloud's configured project)
RUNTIME_VERSION=${RUNTIME_VERSION:-}  # --version (empty: default_runtime of the type)
CAPACITY=${CAPACITY:-}                # --spot / --preemptible (empty: on-demand)
REPO_URL=${REPO_URL:-}                # --repo
BRANCH=${BRANCH:-main}                # --branch
PYTHON=${PYTHON:-python3.11}          # --python: setup.py needs >= 3.11, the TPU images ship 3.10
CONFIG=${CONFIG:-}                    # --config
RUN_NAME=${RUN_NAME:-}                # --run-name
BUCKET=${BUCKET:-}                    # --bucket
WORKDIR=${WORKDIR:-}                  # --workdir
WORKER=${WORKER:-0}                   # --worker
DRY_RUN=${DRY_RUN:-0}                 # --dry-run
EXTRA_ARGS=()                         # after `--`: passed through to python -m sparkjax.main

usage() {  # the comment block at the top of the calling script
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

die() {
  echo "$SCRIPT: error: $*" >&2
  exit 2
}

note() {  # to stderr, so that a dry run's stdout holds only commands
  echo "$SCRIPT: $*" >&2
}

flag_var() {  # the variable a value-taking flag sets
  case $1 in
    --name) echo TPU_NAME ;; --zone) echo ZONE ;; --type) echo TPU_TYPE ;; --project) echo PROJECT ;;
    --version) echo RUNTIME_VERSION ;; --repo) echo REPO_URL ;; --branch) echo BRANCH ;;
    --python) echo PYTHON ;; --config) echo CONFIG ;; --run-name) echo RUN_NAME ;; --bucket) echo BUCKET ;;
    --workdir) echo WORKDIR ;; --worker) echo WORKER ;;
    *) return 1 ;;
  esac
}

# parse_flags "SCRIPT-SPECIFIC FLAGS" "$@": --name --zone --project --dry-run --help are accepted everywhere.
parse_flags() {
  local allowed="--name --zone --project --dry-run --help${1:+ $1}" flag value capacity_flag=''
  shift
  while (($#)); do
    flag=${1%%=*}
    if [[ $1 == -- ]]; then
      shift
      # sparkjax.main has no --dry-run: there it can only be a misplaced one, and the command would really run.
      for value in "$@"; do
        [[ $value != --dry-run ]] || die "--dry-run after '--' would go to sparkjax.main; put it before '--'"
      done
      # shellcheck disable=SC2034  # read by the scripts that source this file
      EXTRA_ARGS=("$@")
      return
    fi
    [[ $flag == -h ]] && flag=--help
    [[ " $allowed " == *" $flag "* ]] || die "unknown argument '$1'; $SCRIPT takes: $allowed (see --help)"
    case $flag in
      --help) usage; exit 0 ;;
      --dry-run) DRY_RUN=1 ;;
      --spot | --preemptible)
        [[ -z $capacity_flag || $capacity_flag == "$flag" ]] || die "--spot and --preemptible exclude each other"
        capacity_flag=$flag
        CAPACITY=${flag#--}
        ;;
      *)
        if [[ $1 == *=* ]]; then
          value=${1#*=}
        elif (($# >= 2)) && [[ $2 != --* ]]; then
          value=$2
          shift
        else
          die "flag $flag needs a value ($flag VALUE or $flag=VALUE)"
        fi
        printf -v "$(flag_var "$flag")" '%s' "$value"
        ;;
    esac
    shift
  done
}

# Checks, one per script, so that up.sh can make them all before it creates anything that costs money.
check_tpu() {  # every script: which TPU, where
  [[ -n $TPU_NAME ]] || die "missing --name (or TPU_NAME): the TPU VM's name, e.g. --name sparkjax-v5p"
  [[ $TPU_NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
    die "--name '$TPU_NAME' is not a valid TPU name: lower-case letters, digits and '-', starting with a letter"
  [[ -n $ZONE ]] || die "missing --zone (or ZONE): a zone that has the TPU type, e.g. --zone us-east5-a"
  [[ $ZONE =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] || die "--zone '$ZONE' is not a zone name like us-east5-a"
  [[ $DRY_RUN == [01] ]] || die "DRY_RUN='$DRY_RUN': expected 0 or 1"
}

check_create() {
  [[ -n $TPU_TYPE ]] || die "missing --type (or TPU_TYPE): the accelerator type, e.g. v5p-64, v5litepod-16, v6e-8"
  [[ $TPU_TYPE != v5e-* ]] || die "--type '$TPU_TYPE': gcloud calls v5e 'v5litepod', e.g. v5litepod-${TPU_TYPE#v5e-}"
  [[ $TPU_TYPE =~ ^(v5p|v5litepod|v6e)-[1-9][0-9]*$ ]] ||
    die "--type '$TPU_TYPE' is not supported: expected v5p-N, v5litepod-N (v5e) or v6e-N, e.g. v5p-64"
  [[ -z $CAPACITY || $CAPACITY == spot || $CAPACITY == preemptible ]] ||
    die "CAPACITY='$CAPACITY': expected spot, preemptible or empty (on-demand)"
}

check_setup() {
  [[ -n $REPO_URL ]] || die "missing --repo (or REPO_URL): the git URL every worker clones, e.g. --repo https://github.com/ORG/sparkjax.git"
  [[ -n $BRANCH ]] || die "--branch is empty: expected the branch to check out, e.g. --branch main"
}

check_run() {
  [[ -n $CONFIG ]] || die "missing --config (or CONFIG): the experiment, e.g. --config configs/qwen25_math_7b_grpo.py"
  [[ ${CONFIG%%:*} == *.py ]] || die "--config '$CONFIG': expected configs/NAME.py[:ARGS], relative to the repo"
  # The same name must reach every worker, so it is fixed here rather than on the workers.
  RUN_NAME=${RUN_NAME:-$(basename "${CONFIG%%:*}" .py)-$(date +%Y%m%d-%H%M%S)}
  check_run_name
}

check_run_name() {  # it becomes a file name on the workers and part of the workdir
  [[ $RUN_NAME =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "--run-name '$RUN_NAME': expected letters, digits, '.', '_', '-'"
}

default_runtime() {  # the TPU software version Google documents for JAX on each generation
  case $1 in
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
  esac
}

q() {  # print one word shell-quoted: bare when that is safe, else in single quotes
  local safe='^[-A-Za-z0-9_./:=@%+,]+$' sq="'\\''"
  if [[ $1 =~ $safe ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/$sq}"; fi
}

run() {  # run a command, or with --dry-run print it as a line that can be pasted into a shell
  if [[ $DRY_RUN == 1 ]]; then
    local sep='' word
    for word in "$@"; do printf '%s' "$sep"; q "$word"; sep=' '; done
    printf '\n'
  else
    command -v "$1" >/dev/null || die "$1 not found: install the Google Cloud CLI (launch_tpu/README.md), or use --dry-run"
    "$@"
  fi
}

# remote_script NAME VAR...: the text of remote/NAME.sh, preceded by VAR=value lines and, when there are extra
# arguments, `set -- ARGS`; full-line comments are dropped to keep the command (and a dry run) short.
remote_script() {
  local name=$1 var
  shift
  for var in "$@"; do printf '%s=' "$var"; q "${!var}"; printf '\n'; done
  sed -e '/^[[:space:]]*#/d' -e '/^[[:space:]]*$/d' "$LAUNCH_DIR/remote/$name.sh"
}

tpu_ssh() {  # tpu_ssh WORKER SCRIPT: run SCRIPT (bash) on one worker or on all of them at once
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" ${PROJECT:+--project "$PROJECT"} \
    "--worker=$1" --command "$2"
}
