#!/usr/bin/env bash
# One Slurm task: runs `accelerate launch trainer/main.py` for this task's share of the job and passes the
# preemption warning on to the trainer. The sbatch scripts in launch/ start it with srun, one task per machine.
#
#   PROCESSES_PER_TASK  trainer processes this task starts (GPUs per node; 1 on the CPU)
#   RUN_DIR             the run folder: a requeued job finds its checkpoint there and resumes
#   LAUNCH_ARGS         extra `accelerate launch` flags (e.g. "--mixed_precision bf16")
#   "$@"                the trainer's own settings, section.key=value
set -uo pipefail

machines=${SLURM_NTASKS:-1}
machine_rank=${SLURM_PROCID:-0}
per_task=${PROCESSES_PER_TASK:-1}
# CPU threads per trainer process: this task's CPUs shared out (Accelerate would otherwise pick 1).
threads=$(( ${SLURM_CPUS_PER_TASK:-1} / per_task ))
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( threads > 0 ? threads : 1 ))}
main_host=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" | head -n 1)
# One port per job, the same on every task, away from the well-known range.
port=$(( 20000 + ${SLURM_JOB_ID:-0} % 20000 ))

# The run folder's state (new, resumable or finished) comes from the one place that knows its layout.
if [[ $(python -m trainer.run_folder "$RUN_DIR") != new ]]; then
  where="resume=$RUN_DIR"      # a requeued or resubmitted job: continue from the checkpoint
else
  where="output_dir=$RUN_DIR"
fi

# --multi_gpu makes Accelerate start a torch.distributed group; on machines without a GPU the
# trainer then runs it on the CPU over gloo.
distributed=()
if (( machines * per_task > 1 )); then
  distributed=(--multi_gpu --num_machines "$machines" --machine_rank "$machine_rank"
               --main_process_ip "$main_host" --main_process_port "$port" --rdzv_backend static)
fi
# srun passes the batch shell's USR1 (Slurm's warning before the time limit) and TERM to this task, and Slurm may
# deliver them to every process of the task, the launcher included. PyTorch's launcher handles TERM but would die
# of USR1 (and a task that fails makes srun kill the others mid-step), so it starts with USR1 ignored; the trainers
# it starts inherit that and put their own handler in its place: they save a checkpoint after the current step and
# exit, and the launcher then ends too.
trap '' USR1
# shellcheck disable=SC2086  # LAUNCH_ARGS is a list of flags
accelerate launch "${distributed[@]}" --num_processes $(( machines * per_task )) --dynamo_backend no \
  ${LAUNCH_ARGS:-} trainer/main.py "$@" "$where" &
launcher=$!

# A signal that reaches this script alone goes on to the trainer processes, the launcher's children.
forward() { pkill "-$1" -P "$launcher" 2>/dev/null || true; }
trap 'forward USR1' USR1
trap 'forward TERM' TERM
while true; do
  wait "$launcher"
  status=$?
  kill -0 "$launcher" 2>/dev/null || break  # wait was only interrupted by a trapped signal
done
exit "$status"
