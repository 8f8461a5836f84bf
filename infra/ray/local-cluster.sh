#!/usr/bin/env bash
# A two-node Ray cluster on loopback, for trying multi-node training on one machine.
#
#   infra/ray/local-cluster.sh start    # head on 127.0.0.2:6390, worker node on 127.0.0.3
#   infra/ray/local-cluster.sh status   # `ray status` against the head
#   infra/ray/local-cluster.sh stop     # ends this cluster's processes (and nothing else)
#
#   vlforge run train --family clip --data shapes --ray-address 127.0.0.2:6390
#
# Every address is on loopback: the head's GCS, both raylets and the dashboard (127.0.0.1) are unreachable from
# other machines, and token auth is off (RAY_AUTH_MODE=disabled), which is only acceptable for that reason.
#
# Settings (environment):
#   VLFORGE_RAY_HEAD_IP         head node address               (127.0.0.2)
#   VLFORGE_RAY_WORKER_IP       worker node address             (127.0.0.3)
#   VLFORGE_RAY_PORT            head GCS port                   (6390)
#   VLFORGE_RAY_DASHBOARD_PORT  dashboard port on 127.0.0.1     (8265)
#   VLFORGE_RAY_HEAD_CPUS       CPUs the head node advertises   (Ray's guess: all of them)
#   VLFORGE_RAY_WORKER_CPUS     CPUs the worker node advertises (Ray's guess: all of them)
#   VLFORGE_RAY_TMP             Ray's temp dir for this cluster (/tmp/vlforge-ray-$VLFORGE_RAY_PORT)
#   VLFORGE_RAY_START_TIMEOUT   seconds `start` waits for both nodes to show in `ray status` (60)
#   VLFORGE_RAY_STOP_GRACE      seconds `stop` waits for SIGTERM before SIGKILL (15)
#   VENV                        virtualenv whose `ray` to use; relative paths are from the repository root (.venv);
#                               without one, `ray` from PATH
#
# `stop` does not call `ray stop` (that ends every Ray process of every cluster on the machine, including a
# local vlforge run's private Ray): it ends only the Ray daemons started with this cluster's temp dir, and their
# children (agents and Ray's worker processes).
set -euo pipefail

HEAD_IP=${VLFORGE_RAY_HEAD_IP:-127.0.0.2}
WORKER_IP=${VLFORGE_RAY_WORKER_IP:-127.0.0.3}
PORT=${VLFORGE_RAY_PORT:-6390}
DASHBOARD_PORT=${VLFORGE_RAY_DASHBOARD_PORT:-8265}
HEAD_CPUS=${VLFORGE_RAY_HEAD_CPUS:-}
WORKER_CPUS=${VLFORGE_RAY_WORKER_CPUS:-}
# Short on purpose: Ray's unix socket paths live under it and must stay under ~107 characters.
TMP_DIR=${VLFORGE_RAY_TMP:-/tmp/vlforge-ray-$PORT}
STOP_GRACE=${VLFORGE_RAY_STOP_GRACE:-15}
START_TIMEOUT=${VLFORGE_RAY_START_TIMEOUT:-60}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${VENV:-.venv}
case "$VENV" in /*) ;; *) VENV="$REPO/$VENV" ;; esac
if [[ -x "$VENV/bin/ray" ]]; then
  RAY="$VENV/bin/ray"
elif command -v ray >/dev/null 2>&1; then
  RAY=$(command -v ray)
else
  echo "local-cluster: no ray in $VENV/bin or on PATH (run 'make install' first)" >&2
  exit 1
fi

export RAY_AUTH_MODE=disabled
export RAY_USAGE_STATS_ENABLED=0
ADDRESS="$HEAD_IP:$PORT"

cpus_flag() { [[ -n "$1" ]] && printf -- '--num-cpus=%s' "$1" || true; }

# PIDs of this cluster: processes with a `--flag=TMP_DIR[/...]` argument (every daemon `ray start` launches has one:
# --temp-dir, --session-dir, --log_dir, --raylet_socket_name...) plus all their descendants (agents, workers). A
# `tail -f TMP_DIR/...` is not matched. TMP_DIR reaches awk through the environment, so awk never matches itself.
cluster_pids() {
  ps -A -o pid= -o ppid= -o args= | CLUSTER_DIR="$TMP_DIR" awk '
    {
      pid = $1; ppid = $2; parent[pid] = ppid
      line = $0 " "
      dir = ENVIRON["CLUSTER_DIR"]
      n = length(dir)
      while ((i = index(line, "=" dir)) > 0) {
        after = substr(line, i + 1 + n, 1)
        if (after == "/" || after == " ") { hit[pid] = 1; break }
        line = substr(line, i + 1 + n)
      }
    }
    END {
      do {
        changed = 0
        for (p in parent) if (!(p in hit) && (parent[p] in hit)) { hit[p] = 1; changed = 1 }
      } while (changed)
      for (p in hit) print p
    }'
}

# Nodes `ray status` lists as active (0 if it fails)
active_nodes() {
  { "$RAY" status --address="$ADDRESS" 2>/dev/null || true; } | awk '
    /^Active:/ { on = 1; next }
    /^[A-Za-z]/ { on = 0 }
    on && /node_/ { n += $1 }
    END { print n + 0 }'
}

# Quick (`ray status` against a dead address waits ~40 s for the GCS).
is_up() { [[ -n "$(cluster_pids)" ]]; }

# A zombie still answers `kill -0`, so ask ps for the state.
alive() {
  local state
  state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [[ -n "$state" && "$state" != Z* ]]
}

# SIGTERM the given PIDs, wait up to STOP_GRACE/3 seconds, then SIGKILL what is left.
terminate() {
  local pids="$*" left i steps
  [[ -z "${pids// /}" ]] && return 0
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  steps=$((STOP_GRACE * 5 / 3 + 1))
  for ((i = 0; i < steps; i++)); do
    left=""
    for p in $pids; do alive "$p" && left="$left $p"; done
    [[ -z "$left" ]] && return 0
    sleep 0.2
  done
  echo "local-cluster: SIGKILL to$left (still running after SIGTERM)" >&2
  # shellcheck disable=SC2086
  kill -KILL $left 2>/dev/null || true
}

stop_cluster() {
  local pids raylets="" gcs="" others="" p comm
  pids=$(cluster_pids | tr '\n' ' ')
  if [[ -z "${pids// /}" ]]; then
    echo "local-cluster: nothing running under $TMP_DIR"
    return 0
  fi
  # The order `ray stop` uses: raylets first (their agents and workers follow them), GCS last.
  for p in $pids; do
    comm=$(ps -o comm= -p "$p" 2>/dev/null || true)
    case "$comm" in
      raylet) raylets="$raylets $p" ;;
      gcs_server) gcs="$gcs $p" ;;
      *) others="$others $p" ;;
    esac
  done
  # shellcheck disable=SC2086
  terminate $raylets
  # shellcheck disable=SC2086
  terminate $others
  # shellcheck disable=SC2086
  terminate $gcs
  # What `ray stop` does for the default temp dir: forget this cluster's address
  rm -f "$TMP_DIR/ray_current_cluster"
  echo "local-cluster: stopped (temp dir $TMP_DIR, logs under $TMP_DIR/session_latest/logs)"
}

start_cluster() {
  if is_up; then
    echo "local-cluster: a cluster is already running under $TMP_DIR (stop it first)" >&2
    exit 1
  fi
  mkdir -p "$TMP_DIR"
  # A half-started cluster is worse than none.
  trap 'echo "local-cluster: start failed, stopping what started" >&2; stop_cluster >&2' ERR
  # shellcheck disable=SC2046
  "$RAY" start --head \
    --node-ip-address="$HEAD_IP" --port="$PORT" \
    --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
    --temp-dir="$TMP_DIR" --disable-usage-stats $(cpus_flag "$HEAD_CPUS")
  # The worker node inherits the head's temp dir (Ray only lets the head choose it).
  # shellcheck disable=SC2046
  "$RAY" start --address="$ADDRESS" --node-ip-address="$WORKER_IP" \
    --disable-usage-stats $(cpus_flag "$WORKER_CPUS")
  # `ray start` returns before the autoscaler's view (what `ray status` prints) lists the new node
  local i n=0
  for ((i = 0; i < START_TIMEOUT; i++)); do
    n=$(active_nodes)
    [[ "$n" -ge 2 ]] && break
    sleep 1
  done
  trap - ERR
  if [[ "$n" -lt 2 ]]; then
    echo "local-cluster: only $n node(s) active after ${START_TIMEOUT}s, stopping" >&2
    stop_cluster >&2
    exit 1
  fi
  echo
  echo "local-cluster: up, 2 nodes ($HEAD_IP head, $WORKER_IP worker), dashboard http://127.0.0.1:$DASHBOARD_PORT"
  echo "  vlforge run train --family clip --data shapes --ray-address $ADDRESS"
}

case "${1:-}" in
  start) start_cluster ;;
  stop) stop_cluster ;;
  status)
    if ! is_up; then
      echo "local-cluster: not running (nothing under $TMP_DIR)" >&2
      exit 1
    fi
    exec "$RAY" status --address="$ADDRESS"
    ;;
  address) echo "$ADDRESS" ;;
  *)
    echo "usage: $0 start|stop|status|address" >&2
    exit 2
    ;;
esac
