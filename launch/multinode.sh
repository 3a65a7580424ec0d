#!/usr/bin/env bash
# Multi-node megaraptr.train with the DeepSpeed launcher, in one of two modes.
#
# 1. From one node, over ssh (pdsh by default): the launcher starts every node listed in the
#    hostfile ("node0 slots=8" per line; passwordless ssh from this node to all of them):
#      HOSTFILE=hosts MASTER_ADDR=node0 bash launch/multinode.sh --train-steps 100000 --save ckpt
#    LAUNCHER picks DeepSpeed's multi-node backend (pdsh, openmpi, mvapich, slurm; default pdsh).
#
# 2. Per node, without ssh (NODE_RANK set): run this on every node, each with its own rank, the
#    same hostfile (it gives the node count and the slots per node) and the same MASTER_ADDR
#    (node 0's address, reachable from all nodes) and MASTER_PORT. SLURM does this through
#    launch/slurm.sbatch; by hand:
#      node0$ NODE_RANK=0 HOSTFILE=hosts MASTER_ADDR=node0 bash launch/multinode.sh ...
#      node1$ NODE_RANK=1 HOSTFILE=hosts MASTER_ADDR=node0 bash launch/multinode.sh ...
#
# Environment: MODEL (bert), SIZE (base), DS_CONFIG (ds_configs/bert_base_raptr_zero2.json),
# MASTER_PORT (29500), DEEPSPEED (the launcher command, default "deepspeed"). Anything else goes
# to megaraptr.train. Every node must see the same code, config and data paths; checkpoints
# (--save) belong on a filesystem all nodes share. At the end every node prints its ranks'
# subnetwork digest: the digests are identical when all nodes trained the same subnetworks
# (the consistency check also compares them during the run, every consistency_check_interval).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
: "${HOSTFILE:?set HOSTFILE to a DeepSpeed hostfile, one line per node: host slots=N}"
[ -f "$HOSTFILE" ] || { echo "multinode.sh: HOSTFILE $HOSTFILE: no such file" >&2; exit 2; }
: "${MASTER_ADDR:?set MASTER_ADDR to the address of node 0, reachable from every node}"
MODEL=${MODEL:-bert}
SIZE=${SIZE:-base}
DS_CONFIG=${DS_CONFIG:-$here/ds_configs/bert_base_raptr_zero2.json}
MASTER_PORT=${MASTER_PORT:-29500}
# The launchers ignore USR1 (inherited through exec and by their children): the training
# processes catch it, save after their step and exit 75; a launcher killed by it would
# orphan them mid-save (launch/slurm.sbatch forwards USR1 to every process of the step).
trap '' USR1
read -ra DEEPSPEED_CMD <<< "${DEEPSPEED:-deepspeed}"
launcher=(--hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
if [ -n "${NODE_RANK:-}" ]; then
  launcher+=(--no_ssh --node_rank "$NODE_RANK")
else
  launcher+=(--launcher "${LAUNCHER:-pdsh}")
fi
exec "${DEEPSPEED_CMD[@]}" "${launcher[@]}" --module megaraptr.train \
  --deepspeed_config "$DS_CONFIG" --model "$MODEL" --size "$SIZE" "$@"
