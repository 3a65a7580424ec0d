#!/usr/bin/env bash
# Launch megaraptr.train with the DeepSpeed launcher. Environment overrides:
#   NGPU       processes per node (default: the GPUs nvidia-smi lists, else 1; on CPU set it)
#   HOSTFILE   DeepSpeed hostfile ("node0 slots=8" per line) for several nodes (pdsh/ssh)
#   NUM_NODES  limit the nodes taken from HOSTFILE
#   MASTER_ADDR, MASTER_PORT  rendezvous (default: the launcher's, port 29500)
#   MODEL      bert | gpt                      (default bert)
#   SIZE       tiny | mini | narrow | base | medium | 1.3b | 1.6b   (default base)
#   DS_CONFIG  DeepSpeed JSON with a "raptr" block (default ds_configs/bert_base_raptr_zero2.json)
#   DEEPSPEED  the launcher to run (default: deepspeed on PATH)
# Anything else goes to megaraptr.train: launch/train.sh --train-steps 100000 --save ckpt
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODEL=${MODEL:-bert}
SIZE=${SIZE:-base}
DS_CONFIG=${DS_CONFIG:-$here/ds_configs/bert_base_raptr_zero2.json}
DEEPSPEED=${DEEPSPEED:-deepspeed}
if [ -z "${NGPU:-}" ]; then
  NGPU=$(nvidia-smi -L 2>/dev/null | wc -l || true)
  [ "${NGPU:-0}" -ge 1 ] || NGPU=1
fi
# The launchers ignore USR1 (inherited through exec and by their children): the training
# processes catch it, save after their step and exit 75; a launcher killed by it would
# orphan them mid-save (launch/slurm.sbatch forwards USR1 to every process of the step).
trap '' USR1
launcher=(--num_gpus "$NGPU")
[ -n "${HOSTFILE:-}" ] && launcher+=(--hostfile "$HOSTFILE")
[ -n "${NUM_NODES:-}" ] && launcher+=(--num_nodes "$NUM_NODES")
[ -n "${MASTER_ADDR:-}" ] && launcher+=(--master_addr "$MASTER_ADDR")
[ -n "${MASTER_PORT:-}" ] && launcher+=(--master_port "$MASTER_PORT")
exec "$DEEPSPEED" "${launcher[@]}" --module megaraptr.train \
  --deepspeed_config "$DS_CONFIG" --model "$MODEL" --size "$SIZE" "$@"
