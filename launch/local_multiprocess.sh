#!/usr/bin/env bash
# Runs N JAX processes on this machine with CPU devices, like N hosts of a cluster.
#
#   launch/local_multiprocess.sh 2 configs/toy_score.py /tmp/run [extra main flags...]
#   launch/local_multiprocess.sh 2 configs/toy_score.py /tmp/run --config.training.n_iters=200
#
# Process i runs `python -m ebm_vs_score.main --config=CONFIG --workdir=WORKDIR
# --coordinator_address=127.0.0.1:PORT --num_processes=N --process_id=i [extra...]` with
# JAX_PLATFORMS=cpu, and writes its output to LOG_DIR/process_i.log. The script waits for
# all of them; if one fails it stops the others and exits 1, showing the end of the
# failed logs. Ctrl-C (or SIGTERM) asks every process to checkpoint and stop: they agree on
# the step, save it once and exit 75 (preempted), and so does this script, so that a
# scheduler requeues it; rerunning the same command resumes bit-identically.
#
# Environment: PORT (coordinator port; default: a free one), DEVICES_PER_PROCESS (CPU
# devices per process, default 1), LOG_DIR (default WORKDIR/logs), PYTHON (default python).
set -euo pipefail

usage() {
  cat >&2 <<EOF
usage: $0 N CONFIG WORKDIR [extra ebm_vs_score.main flags...]
  N        number of processes (a positive integer)
  CONFIG   config file, e.g. configs/toy_score.py
  WORKDIR  run directory shared by the processes
EOF
  exit 2
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
if (($# < 3)); then
  echo "error: expected N CONFIG WORKDIR, got $# argument(s)" >&2
  usage
fi
num_processes=$1
config=$2
workdir=$3
shift 3
if ! [[ "${num_processes}" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: N must be a positive integer, got '${num_processes}'" >&2
  usage
fi
if [[ ! -f "${config%%:*}" ]]; then  # config_flags allows `file.py:arg`
  echo "error: config file '${config%%:*}' does not exist" >&2
  exit 2
fi

python=${PYTHON:-python}
port=${PORT:-$("${python}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
log_dir=${LOG_DIR:-${workdir}/logs}
mkdir -p "${log_dir}"

export JAX_PLATFORMS=cpu
export JAX_CPU_COLLECTIVES_IMPLEMENTATION=${JAX_CPU_COLLECTIVES_IMPLEMENTATION:-gloo}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-1}"
export PYTHONUNBUFFERED=1

pids=()
for ((i = 0; i < num_processes; i++)); do
  "${python}" -m ebm_vs_score.main --config="${config}" --workdir="${workdir}" \
    --coordinator_address="127.0.0.1:${port}" --num_processes="${num_processes}" \
    --process_id="${i}" "$@" >"${log_dir}/process_${i}.log" 2>&1 &
  pids+=("$!")
done
echo "started ${num_processes} processes (coordinator 127.0.0.1:${port}), logs in ${log_dir}/"

stop_all() {
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM "${pid}" 2>/dev/null || true
  done
}
# shellcheck disable=SC2317  # called by the trap
on_signal() {
  interrupted=1
  echo "stopping: SIGTERM to every process (each saves a checkpoint)" >&2
  stop_all
}
trap on_signal INT TERM

PREEMPTED=75  # ebm_vs_score.errors.PREEMPTED_EXIT_STATUS
statuses=()
running=${num_processes}
preempted=0
failed=0
first_failed=-1
interrupted=0
while ((running > 0)); do
  for ((i = 0; i < num_processes; i++)); do
    if [[ -n "${statuses[i]:-}" ]] || kill -0 "${pids[i]}" 2>/dev/null; then
      continue
    fi
    rc=0
    wait "${pids[i]}" || rc=$?
    statuses[i]=${rc}
    running=$((running - 1))
    if ((rc == PREEMPTED)); then
      preempted=1
    elif ((rc != 0 && failed == 0)); then
      failed=1
      first_failed=${i}
      echo "process ${i} failed (exit ${rc}); stopping the others" >&2
      stop_all
    fi
  done
  if ((running > 0)); then
    sleep 0.2
  fi
done

for ((i = 0; i < num_processes; i++)); do
  echo "process ${i}: exit ${statuses[i]}, log ${log_dir}/process_${i}.log"
done
if ((failed)); then
  echo "end of ${log_dir}/process_${first_failed}.log (the first to fail):" >&2
  tail -n 20 "${log_dir}/process_${first_failed}.log" | sed "s/^/  | /" >&2
  exit 1
fi
if ((preempted)); then
  echo "preempted: checkpoint saved; rerun the same command to resume" >&2
  exit "${PREEMPTED}"
fi
if ((interrupted)); then
  exit 130
fi
