#!/usr/bin/env bash
# Multi-node launcher for `ascend-v4 train` on 910B/910C clusters (one invocation per node).
#   bash msrun_launcher.sh CONFIG.yaml OUT_DIR WORKERS_TOTAL WORKERS_PER_NODE MASTER_ADDR MASTER_PORT NODE_RANK [LOG_DIR]
# Validates the layout first (`ascend-v4 train --dry-run`), then starts msrun with core binding and a join timeout.
# Every worker runs `ascend-v4 train --device $ASCEND_V4_DEVICE` (default ascend: the 910B/910C NPUs; cpu for a
# host-only rehearsal); a worker asked for ascend on a host without NPU/CANN stops with one `error:` line.
# WORKERS_TOTAL = dp·tp·pp of the config's `parallel` (ep divides dp). Every rank reads
# and writes OUT (checkpoints are gathered to full tensors and written by rank 0): put it on a shared filesystem.
set -euo pipefail
if [ "$#" -lt 7 ]; then
  echo "usage: $0 CONFIG.yaml OUT_DIR WORKERS_TOTAL WORKERS_PER_NODE MASTER_ADDR MASTER_PORT NODE_RANK [LOG_DIR]" >&2
  exit 2
fi
CONFIG=$1; OUT=$2; WORLD=$3; LOCAL=$4; MASTER=$5; PORT=$6; NODE=$7; LOG=${8:-$OUT/msrun_log}
SOC=${ASCEND_V4_SOC:-910b}
DEVICE=${ASCEND_V4_DEVICE:-ascend}
export ASCEND_V4_SOC=$SOC
export GLOG_v=${GLOG_v:-3}
# msrun starts workers with the `python` found on PATH: put this environment's interpreter first.
export PATH="$(dirname "$(command -v ascend-v4)"):$PATH"
ascend-v4 train --config "$CONFIG" --dry-run --soc "$SOC" > /dev/null || {
  ascend-v4 train --config "$CONFIG" --dry-run --soc "$SOC"; exit 1; }
if [ -z "${HCCL_BUFFSIZE:-}" ]; then
  HCCL_BUFFSIZE=$(ascend-v4 train --config "$CONFIG" --dry-run --soc "$SOC" | sed -n 's/^set HCCL_BUFFSIZE=//p')
  [ -n "$HCCL_BUFFSIZE" ] && export HCCL_BUFFSIZE
fi
mkdir -p "$LOG"
exec msrun --bind_core=True --worker_num="$WORLD" --local_worker_num="$LOCAL" --master_addr="$MASTER" \
  --master_port="$PORT" --node_rank="$NODE" --log_dir="$LOG" --join=True --cluster_time_out=600 \
  "$(command -v ascend-v4)" train --device "$DEVICE" --config "$CONFIG" --out "$OUT"
