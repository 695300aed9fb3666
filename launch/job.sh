# The part every sbatch script in launch/ shares (sourced by them, not run on its own): the run folder, offline
# W&B, one srun task per machine running launch/task.sh, and the requeue after Slurm's warning signal.
#
#   RUN_DIR     the run folder (default runs/slurm-<job name>-<job id>). A requeued job keeps its job id, finds its
#               checkpoint there and resumes. To continue an old run: sbatch --export=ALL,RUN_DIR=runs/... <script>
#   WANDB_MODE  offline by default (compute nodes often have no internet): `wandb sync <run>/wandb/offline-run-*`
#   GLOO_SOCKET_IFNAME  the network interface of the CPU-side group that agrees on stop requests, on clusters where
#               the hostname resolves to an interface the nodes cannot reach each other on (e.g. ib0 or eth0)
#   PROCESSES_PER_TASK  trainer processes per machine (launch/task.sh); "gpus": as many as the job has GPUs per node,
#               however it asked for them (--gpus-per-node=4, --gpus-per-node=a100:4, --gres=gpu:4, --gpus=4)
set -uo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"

gpus_per_node() {
  local count=${SLURM_GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-}}
  count=${count##*:}  # "a100:4" -> 4
  if [[ -z $count && -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
    local visible
    IFS=, read -ra visible <<< "$CUDA_VISIBLE_DEVICES"
    count=${#visible[@]}
  fi
  echo "$count"
}
if [[ ${PROCESSES_PER_TASK:-1} == gpus ]]; then
  PROCESSES_PER_TASK=$(gpus_per_node)
  if ! [[ $PROCESSES_PER_TASK =~ ^[1-9][0-9]*$ ]]; then
    echo "error: this job has no GPUs that Slurm reports (SLURM_GPUS_PER_NODE, SLURM_GPUS_ON_NODE and" \
         "CUDA_VISIBLE_DEVICES are empty). Ask for them with --gpus-per-node=N or --gres=gpu:N, or set" \
         "PROCESSES_PER_TASK to the number of trainer processes per machine." >&2
    exit 2
  fi
  export PROCESSES_PER_TASK
fi
export RUN_DIR=${RUN_DIR:-runs/slurm-${SLURM_JOB_NAME:-job}-${SLURM_JOB_ID:-0}}
export WANDB_MODE=${WANDB_MODE:-offline}
export PYTHONUNBUFFERED=1
echo "job ${SLURM_JOB_ID:-?} (start $(( ${SLURM_RESTART_COUNT:-0} + 1 ))) on ${SLURM_JOB_NODELIST:-?}: run folder $RUN_DIR"

warned=0
on_warning() {
  warned=1
  echo "warning signal from Slurm: the trainer saves a checkpoint after its current step and stops"
  kill -USR1 "$tasks" 2>/dev/null  # srun passes it on to every task
}
trap on_warning USR1

# --kill-on-bad-exit: if one task fails, Slurm ends the others at once instead of leaving them waiting.
# --cpus-per-task again: since Slurm 22.05 srun no longer takes it from sbatch, and tasks would get one CPU each.
srun --kill-on-bad-exit=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" launch/task.sh "$@" &
tasks=$!
while true; do
  wait "$tasks"
  status=$?
  kill -0 "$tasks" 2>/dev/null || break  # wait was only interrupted by the trapped signal
done

if (( warned )) && [[ $(python -m trainer.run_folder "$RUN_DIR") == resumable ]]; then
  echo "requeueing job $SLURM_JOB_ID: it resumes from the checkpoint in $RUN_DIR"
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
