#!/usr/bin/env bash
# Create a Cloud TPU VM or pod slice (all its workers).
#
# usage: launch_tpu/create.sh --name NAME --zone ZONE --type TYPE [--project P] [--version RUNTIME]
#                             [--spot | --preemptible] [--dry-run]
#   --type     v5p-N | v5litepod-N (v5e) | v6e-N, e.g. v5p-64, v5litepod-16, v6e-8
#   --version  TPU software version; default by generation: v5p v2-alpha-tpuv5, v5e v2-alpha-tpuv5-lite,
#              v6e v2-alpha-tpuv6e
#   --spot     cheaper capacity that Google can reclaim at any time (--preemptible: the older kind)
#   --dry-run  print the gcloud command instead of running it (or DRY_RUN=1)
# Each flag can also come from the environment: TPU_NAME, ZONE, TPU_TYPE, PROJECT, RUNTIME_VERSION,
# CAPACITY=spot|preemptible.

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_flags "--type --version --spot --preemptible" "$@"
check_tpu
check_create
run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" ${PROJECT:+--project "$PROJECT"} \
  --accelerator-type "$TPU_TYPE" --version "${RUNTIME_VERSION:-$(default_runtime "$TPU_TYPE")}" \
  ${CAPACITY:+"--$CAPACITY"}
