#!/usr/bin/env bash
# Start `python -m sparkjax.main --config=CONFIG --workdir=WORKDIR [ARGS]` on every worker, in the background;
# each worker logs to ~/sparkjax_logs/RUN_NAME.log. On a pod slice the same command runs on all workers and
# jax.distributed finds its peers from the TPU environment.
#
# usage: launch_tpu/run.sh --name NAME --zone ZONE --config configs/X.py[:ARGS] [--run-name RUN_NAME]
#                          [--bucket BUCKET | --workdir DIR] [--project P] [--dry-run] [-- ARGS...]
#   --run-name  default: the config's name and the time, e.g. qwen25_math_7b_grpo-20250101-120000
#   --bucket    workdir gs://BUCKET/runs/RUN_NAME; without it (and without --workdir) each worker writes to
#               ~/sparkjax_runs/RUN_NAME on its own disk
#   -- ARGS     passed to sparkjax.main as they are, e.g. -- --config.rl.kl_coef=0
# Each flag can also come from the environment: TPU_NAME, ZONE, CONFIG, RUN_NAME, BUCKET, WORKDIR, PROJECT,
# DRY_RUN=1.

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_flags "--config --run-name --bucket --workdir" "$@"
check_tpu
check_run
if [[ -z $WORKDIR && -n $BUCKET ]]; then
  BUCKET=${BUCKET#gs://}
  WORKDIR=gs://${BUCKET%/}/runs/$RUN_NAME
fi
if [[ -n $WORKDIR ]]; then
  workdir_arg=$(q "--workdir=$WORKDIR")
else
  # "$HOME" is expanded on the worker; a multi-host run needs a shared workdir for its checkpoints.
  workdir_arg="--workdir=\"\$HOME\"/sparkjax_runs/$RUN_NAME"
  note "workdir ~/sparkjax_runs/$RUN_NAME is on each worker's own disk; a pod slice needs --bucket for checkpoints"
fi
command_line="set -- ~/sparkjax_venv/bin/python -m sparkjax.main $(q "--config=$CONFIG") $workdir_arg"
for arg in ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}; do command_line+=" $(q "$arg")"; done
tpu_ssh all "$command_line"$'\n'"$(remote_script run CONFIG RUN_NAME)"
note "follow it with: launch_tpu/logs.sh --name $TPU_NAME --zone $ZONE --run-name $RUN_NAME"
