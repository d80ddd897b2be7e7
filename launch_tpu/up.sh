#!/usr/bin/env bash
# create.sh, setup.sh and run.sh in one go, with the flags of all three; every check is made before the TPU is
# created. The TPU stays up after the run: delete it with delete.sh.
#
# usage: launch_tpu/up.sh --name NAME --zone ZONE --type TYPE --repo GIT_URL --config configs/X.py[:ARGS]
#                         [--branch B] [--run-name R] [--bucket B | --workdir DIR] [--version V]
#                         [--spot | --preemptible] [--python P] [--project P] [--dry-run] [-- ARGS...]

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_flags "--type --version --spot --preemptible --repo --branch --python --config --run-name --bucket --workdir" "$@"
check_tpu
check_create
check_setup
check_run
# The three scripts read the same settings from the environment.
export TPU_NAME ZONE TPU_TYPE PROJECT RUNTIME_VERSION CAPACITY REPO_URL BRANCH PYTHON CONFIG RUN_NAME BUCKET WORKDIR DRY_RUN
"$LAUNCH_DIR/create.sh"
"$LAUNCH_DIR/setup.sh"
"$LAUNCH_DIR/run.sh" -- ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
