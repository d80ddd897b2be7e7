#!/usr/bin/env bash
# Delete the TPU VM or pod slice, without asking. Billing stops only then; its disks, logs and any local
# workdir go with it (a gs:// workdir stays).
#
# usage: launch_tpu/delete.sh --name NAME --zone ZONE [--project P] [--dry-run]
# Each flag can also come from the environment: TPU_NAME, ZONE, PROJECT, DRY_RUN=1.

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_flags "" "$@"
check_tpu
run gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone "$ZONE" ${PROJECT:+--project "$PROJECT"} --quiet
