# shellcheck shell=bash
# Runs on every TPU worker, as the ssh command that ../run.sh builds: that command starts with `set -- COMMAND`
# (the python -m sparkjax.main line) and CONFIG= and RUN_NAME= lines, then this text without its comments.
# It starts the run in the background and returns at once, leaving ~/sparkjax_logs/RUN_NAME.{log,pid}.
set -euo pipefail
cd ~/sparkjax || { echo "worker $(hostname): no ~/sparkjax; run launch_tpu/setup.sh first" >&2; exit 1; }
mkdir -p ~/sparkjax_logs
# The TPU chips are held by one process: refuse to start next to a run that is still alive.
for pidfile in ~/sparkjax_logs/*.pid; do
  if [ -e "$pidfile" ] && grep -qs sparkjax.main "/proc/$(cat "$pidfile")/cmdline"; then
    echo "worker $(hostname): run $(basename "$pidfile" .pid) is still running; stop it first (launch_tpu/stop.sh)" >&2
    exit 1
  fi
done
if [ ! -f "${CONFIG%%:*}" ]; then
  echo "worker $(hostname): no ${CONFIG%%:*} in ~/sparkjax; push it and run launch_tpu/setup.sh again" >&2
  exit 1
fi
log=~/sparkjax_logs/$RUN_NAME.log
# nohup and all three streams redirected: the run outlives the ssh session. setsid gives it its own process group
# (its pid is the group id), so that stop.sh also ends the processes it starts.
setsid nohup "$@" >"$log" 2>&1 </dev/null &
echo $! >~/sparkjax_logs/"$RUN_NAME".pid
echo "worker $(hostname): started $RUN_NAME (pid $!), log $log"
