#!/usr/bin/env bash
# Stop the sparkjax runs that run.sh started, on every worker (the TPU VM stays up; its files stay).
#
# usage: launch_tpu/stop.sh --name NAME --zone ZONE [--project P] [--dry-run]
# Each flag can also come from the environment: TPU_NAME, ZONE, PROJECT, DRY_RUN=1.

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_flags "" "$@"
check_tpu
tpu_ssh all "$(remote_script stop)"
