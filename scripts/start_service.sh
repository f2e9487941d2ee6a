#!/usr/bin/env bash
# Start wanserve on this machine: detect the devices, pick the layout from the settings, print the
# plan, then run `wanserve serve` (API + worker groups). Settings come from the environment or .env;
# see README "Settings". Extra arguments go to `wanserve serve`.
#
#   MODEL_CKPT_DIR=/models/Wan2.1-I2V-14B-480P ULYSSES_SIZE=8 T5_CPU=true ./scripts/start_service.sh
#   START_DRY_RUN=1 ./scripts/start_service.sh      # print the plan only
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -x .venv/bin/wanserve ]; then
  . .venv/bin/activate
fi
if ! command -v wanserve >/dev/null 2>&1; then
  echo "wanserve is not installed: run ./scripts/setup.sh first" >&2
  exit 1
fi

# Read .env the way the service will (the environment wins), so the plan shows what will run.
if [ -f .env ]; then
  while IFS='=' read -r key value; do
    [[ -z "$key" || "$key" =~ ^[[:space:]]*# ]] && continue
    key=$(echo "$key" | tr -d '[:space:]')
    [ -z "${!key:-}" ] && export "$key=$value"
  done < .env
fi

device_kind=cpu
device_count=1
device_names=""
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  device_kind=cuda
  device_count=$(nvidia-smi -L | grep -c '^GPU')
  device_names=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | sort | uniq -c | sed 's/^ *//' | paste -sd ';' -)
elif command -v npu-smi >/dev/null 2>&1 && npu-smi info >/dev/null 2>&1; then
  device_kind=npu
  # `npu-smi info -l` prints "Total Count : N" and one "NPU ID : i" per card.
  device_count=$(npu-smi info -l 2>/dev/null | awk -F: '/Total Count/ {gsub(/ /, "", $2); print $2; exit}')
  [ -n "$device_count" ] || device_count=$(npu-smi info -l 2>/dev/null | grep -ci 'NPU ID' || true)
  [ "${device_count:-0}" -gt 0 ] || device_count=1
  device_names="Ascend NPU"
else
  # No vendor tool: ask torch (covers containers without nvidia-smi).
  read -r device_kind device_count < <(python - <<'PY'
import importlib.util
import torch
if torch.cuda.is_available():
    print("cuda", torch.cuda.device_count())
elif importlib.util.find_spec("torch_npu") is not None:
    import torch_npu  # noqa: F401
    print("npu", torch.npu.device_count()) if torch.npu.is_available() else print("cpu", 1)
else:
    print("cpu", 1)
PY
)
fi
if [ "${DEVICE:-auto}" != "auto" ]; then
  device_kind=$DEVICE
fi

if [ "$device_kind" = npu ]; then
  # The Ascend settings the original service description runs with.
  export ASCEND_LAUNCH_BLOCKING=${ASCEND_LAUNCH_BLOCKING:-0}
  export HCCL_TIMEOUT=${HCCL_TIMEOUT:-2400}
  export HCCL_BUFFSIZE=${HCCL_BUFFSIZE:-512}
  export PYTORCH_NPU_ALLOC_CONF=${PYTORCH_NPU_ALLOC_CONF:-expandable_segments:True}
fi

ulysses=${ULYSSES_SIZE:-1}
ring=${RING_SIZE:-1}
cfg=${CFG_PARALLEL:-1}
group_size=$((ulysses * ring * cfg))
if [ -n "${DEVICES:-}" ] && [ "${DEVICES}" != auto ]; then
  if [[ "$DEVICES" == *,* ]] || [ "$device_kind" != cpu ]; then
    usable=$(echo "$DEVICES" | tr ',' '\n' | grep -c .)
    [[ "$DEVICES" == *,* ]] || usable=$DEVICES
  else
    usable=$DEVICES
  fi
else
  usable=$([ "$device_kind" = cpu ] && echo "$group_size" || echo "$device_count")
fi
if [ $((usable % group_size)) -ne 0 ]; then
  echo "error: $usable device(s) cannot be split into groups of $group_size (ULYSSES_SIZE x RING_SIZE x CFG_PARALLEL)" >&2
  exit 2
fi
groups=$((usable / group_size))
[ "${WORKER_GROUPS:-0}" -gt 0 ] && groups=$WORKER_GROUPS

cat <<EOF
wanserve start plan
  devices      : $device_kind x $device_count${device_names:+ ($device_names)}
  model        : ${MODEL_CKPT_DIR:-built-in demo model (random weights: videos are noise)}
  layout       : $groups group(s) of $group_size rank(s) (ulysses $ulysses, ring $ring, cfg $cfg)
  memory       : T5_CPU=${T5_CPU:-false} DIT_FSDP=${DIT_FSDP:-false} T5_FSDP=${T5_FSDP:-false} VAE_PARALLEL=${VAE_PARALLEL:-false}
  step cache   : USE_ATTENTION_CACHE=${USE_ATTENTION_CACHE:-false}
  queue        : ${DATABASE_URL:-sqlite file under ${DATA_DIR:-./wanserve-data}}
  limits       : MAX_CONCURRENT_TASKS=${MAX_CONCURRENT_TASKS:-64} TASK_TIMEOUT=${TASK_TIMEOUT:-1800}s
  listening on : http://${SERVER_HOST:-127.0.0.1}:${SERVER_PORT:-8088}  (docs: /docs, web page: /)
EOF
if [ "$device_kind" = npu ]; then
  echo "  npu env      : ASCEND_LAUNCH_BLOCKING=$ASCEND_LAUNCH_BLOCKING HCCL_TIMEOUT=$HCCL_TIMEOUT HCCL_BUFFSIZE=$HCCL_BUFFSIZE PYTORCH_NPU_ALLOC_CONF=$PYTORCH_NPU_ALLOC_CONF"
fi

if [ -n "${START_DRY_RUN:-}" ]; then
  exit 0
fi
exec wanserve serve "$@"
