# shellcheck shell=bash
# Runs on every TPU worker, as the ssh command that ../stop.sh builds: ends the runs that run.sh started.
set -euo pipefail
for pidfile in ~/sparkjax_logs/*.pid; do
  [ -e "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  # Only a pid that is still a sparkjax run: an old pid file may name a pid that now belongs to something else.
  if grep -qs sparkjax.main "/proc/$pid/cmdline"; then
    kill -- "-$pid"
    echo "worker $(hostname): stopped $(basename "$pidfile" .pid) (pid $pid)"
  fi
  rm -f "$pidfile"
done
