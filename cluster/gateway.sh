#!/usr/bin/env bash
# Starts the prime-ray gateway in the background on the head node, replacing the one this script started
# before (a `ray up` that restarts Ray restarts the gateway too), and waits until it answers.
#
# It reads the gateway's PRIME_RAY_* variables (docs/configuration.md) from the environment. Unless they
# are set: jobs go to this head's Jobs API (its dashboard port), and artifacts to the shared storage that
# cluster/mount-shared.sh mounts. Its pid file and log live in PRIME_RAY_RUN_DIR (default ~/.prime-ray).
set -euo pipefail

run_dir=${PRIME_RAY_RUN_DIR:-$HOME/.prime-ray}
mkdir -p "$run_dir"
pid_file=$run_dir/gateway.pid
log_file=$run_dir/gateway.log
export PRIME_RAY_RAY_ADDRESS=${PRIME_RAY_RAY_ADDRESS:-http://127.0.0.1:${PRIME_RAY_DASHBOARD_PORT:-8265}}
export PRIME_RAY_ARTIFACT_ROOT=${PRIME_RAY_ARTIFACT_ROOT:-${PRIME_RAY_SHARED_DIR:-/mnt/prime-ray}/artifacts}

if [[ -s $pid_file ]] && kill -0 "$(<"$pid_file")" 2>/dev/null; then
  old=$(<"$pid_file")
  kill "$old"
  for _ in $(seq 50); do kill -0 "$old" 2>/dev/null || break; sleep 0.2; done
fi

nohup prime-ray gateway >>"$log_file" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$pid_file"

host=${PRIME_RAY_HOST:-127.0.0.1}
[[ $host == 0.0.0.0 ]] && host=127.0.0.1
url="http://$host:${PRIME_RAY_PORT:-8000}/healthz"
for _ in $(seq 120); do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "gateway.sh: the gateway exited; the end of $log_file:" >&2
    tail -n 30 "$log_file" >&2
    exit 1
  fi
  if python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$url" 2>/dev/null; then
    echo "gateway.sh: gateway $pid answers at $url (jobs go to $PRIME_RAY_RAY_ADDRESS; log: $log_file)"
    exit 0
  fi
  sleep 0.5
done
echo "gateway.sh: the gateway did not answer at $url within 60 s; see $log_file" >&2
exit 1
