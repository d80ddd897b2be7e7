#!/usr/bin/env bash
# Follow a run's log (tail -F; Ctrl-C stops following, not the run) on one worker or on all of them.
#
# usage: launch_tpu/logs.sh --name NAME --zone ZONE [--run-name RUN_NAME] [--worker 0|N|all] [--project P]
#                           [--dry-run]
#   --run-name  default: the newest log on the worker
#   --worker    default 0, the worker that writes the metrics; `all` interleaves every worker's log
# Each flag can also come from the environment: TPU_NAME, ZONE, RUN_NAME, WORKER, PROJECT, DRY_RUN=1.

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_flags "--run-name --worker" "$@"
check_tpu
[[ $WORKER =~ ^([0-9]+|all)$ ]] || die "--worker '$WORKER': expected a worker number (0, 1, ...) or all"
# shellcheck disable=SC2016,SC2088  # the ~ and $(...) are for the worker's shell
if [[ -n $RUN_NAME ]]; then
  check_run_name
  log="~/sparkjax_logs/$RUN_NAME.log"
else
  log='"$(ls -t ~/sparkjax_logs/*.log | head -n 1)"'
fi
tpu_ssh "$WORKER" "tail -n 200 -F $log"
