#!/usr/bin/env bash
# The multi-GPU check, for a machine with 2 or more GPUs (NCCL): what the CPU tests can only run over gloo.
#
#   bench/multi_gpu_check.sh DATA [OUT]      from the repository root
#
#   DATA  CIFAR-10 in the hub layout (a local folder, e.g. a copy of ../shared/datasets/cifar10)
#   OUT   where every log goes (default runs/multi-gpu-check-<date>-<time>); summary.md there holds the table
#
# Steps, each on 2 GPUs through `accelerate launch --multi_gpu --num_processes 2`:
#   uneven-shards   tests/uneven_shards.py: 5 images shared 3/2, passes of 2 (DDP's no_sync): the averaged gradient
#                   is the whole step's
#   stop-agreement  tests/stop_agreement.py: a signal on rank 1 stops both at the same check, over the gloo group
#                   the trainer makes beside NCCL
#   train           2 epochs on 10,240 images with the defaults (BatchNorm per GPU)
#   train-syncbn    the same with train.sync_batchnorm=true
#   resume          the train run stopped by SIGINT after its first epoch line, then resumed to the end
# Each step's log is OUT/<step>.log; a failed step does not stop the later ones. Until it has run on GPUs, the
# README says multi-GPU training has run only over gloo on the CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?"usage: bench/multi_gpu_check.sh DATA [OUT] (DATA: CIFAR-10 in the hub layout, e.g. a local copy)"}
OUT=${2:-runs/multi-gpu-check-$(date +%Y%m%d-%H%M%S)}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
LAUNCH=("$PYTHON" -m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1 --dynamo_backend no
        --mixed_precision no)
TRAIN=(trainer/main.py "data.name=$DATA" data.train_limit=10240 data.test_limit=10000 train.epochs=2 tracker=none
       explain.num_images=4)

step() {  # step NAME COMMAND...: runs it, logs to OUT/NAME.log, records the exit status and seconds
  local name=$1; shift
  echo "== $name: $*"
  local started=$SECONDS
  "$@" > "$OUT/$name.log" 2>&1
  echo "$name $? $(( SECONDS - started ))" >> "$OUT/steps.txt"
  tail -n 3 "$OUT/$name.log"
}

resume() {
  local run="$OUT/resume-run"
  "${LAUNCH[@]}" "${TRAIN[@]}" "output_dir=$run" &
  local pid=$!
  until [[ -s "$run/train.log" ]] || ! kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  kill -INT "$pid" 2>/dev/null
  wait "$pid"
  local stopped=$?
  echo "first run: exit $stopped (non-zero: stopped by the Ctrl-C), $(grep -c "Epoch:" "$run/train.log") epoch line(s)"
  [[ $stopped != 0 ]] || { echo "the run ended before the Ctrl-C reached it: nothing to resume"; return 1; }
  "${LAUNCH[@]}" trainer/main.py "resume=$run" && [[ $(grep -c "Epoch:" "$run/train.log") == 2 ]]
}

nvidia-smi -L > "$OUT/gpus.txt" 2>&1
rm -f "$OUT/steps.txt"
step uneven-shards "${LAUNCH[@]}" tests/uneven_shards.py
step stop-agreement "${LAUNCH[@]}" tests/stop_agreement.py
step train "${LAUNCH[@]}" "${TRAIN[@]}" "output_dir=$OUT/train-run"
step train-syncbn "${LAUNCH[@]}" "${TRAIN[@]}" train.sync_batchnorm=true "output_dir=$OUT/train-syncbn-run"
step resume resume

{
  echo "# Multi-GPU check"
  echo
  sed 's/^/    /' "$OUT/gpus.txt"
  echo
  echo "| step | exit status | seconds | last line |"
  echo "| --- | --- | --- | --- |"
  while read -r name status seconds; do
    echo "| $name | $status | $seconds | $(grep -v '^\s*$' "$OUT/$name.log" | tail -n 1 | cut -c1-120) |"
  done < "$OUT/steps.txt"
} > "$OUT/summary.md"
cat "$OUT/summary.md"
