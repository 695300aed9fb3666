#!/usr/bin/env bash
# The GPU check: on a fresh GPU machine, one command says whether the GPU path works and how fast it is.
#
#   bench/gpu_check.sh DATA [OUT]      from the repository root; 2 min 41 s on one H200
#
#   DATA  CIFAR-10 in the hub layout: a local folder (e.g. a copy of ../shared/datasets/cifar10) or a hub id
#   OUT   where every log goes (default runs/gpu-check-<date>-<time>); summary.md there holds the final table
#
# Steps: versions and the GPU; the CUDA-only tests (tests/test_cuda.py, among them the per-step sync check under
# torch.cuda.set_sync_debug_mode("warn"): it lists every host-device synchronisation and fails on any) with the CPU
# tests of the GPU path; a short train + explain run; a resume check (SIGINT mid-run, resume, finish); the
# benchmark (python -m trainer.bench: the plain reference loop against this trainer). Each step's log is OUT/<step>.log; a failed step does not stop the later ones.
#
# Environment: PYTHON (default python3); GPU_CHECK_QUICK=1 shrinks every step to seconds, also on a machine without
# a GPU (a dry run of this script); no internet is needed when DATA is a local folder and the packages are installed
# (README, "GPU check", says how to bring them as wheels).
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?"usage: bench/gpu_check.sh DATA [OUT] (DATA: CIFAR-10 in the hub layout, e.g. a local copy)"}
OUT=${2:-runs/gpu-check-$(date +%Y%m%d-%H%M%S)}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled

if [[ "${GPU_CHECK_QUICK:-0}" == 1 ]]; then
  TRAIN=(data.train_limit=1024 data.test_limit=256 model.dim=32 model.depth=2 train.batch_size=128)
  RESUME_IMAGES=2048 BENCH=(--steps 1 --warmup 1 --test-images 64)
else
  TRAIN=(data.train_limit=10240 data.test_limit=2000)
  RESUME_IMAGES=20480 BENCH=()
fi
RUN=("$PYTHON" -m trainer "data.name=$DATA" tracker=none)

step() {  # step NAME COMMAND...: runs it, logs to OUT/NAME.log, records the exit status and seconds
  local name=$1; shift
  echo "== $name: $*"
  local started=$SECONDS
  "$@" > "$OUT/$name.log" 2>&1
  local status=$?
  echo "$name $status $(( SECONDS - started ))" >> "$OUT/steps.txt"
  tail -n 5 "$OUT/$name.log"
  return $status
}

resume_check() {
  local run="$OUT/resume-run"
  "${RUN[@]}" "${TRAIN[@]}" "data.train_limit=$RESUME_IMAGES" train.epochs=3 explain.enabled=false \
    "output_dir=$run" &
  local pid=$!
  until [[ -s "$run/train.log" ]] || ! kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  kill -INT "$pid" 2>/dev/null   # as Ctrl-C: a checkpoint after the current step, then exit 130
  wait "$pid"
  local stopped=$?
  echo "first run: exit $stopped (130 = stopped by SIGINT), $(wc -l < "$run/train.log") epoch line(s)"
  [[ $stopped == 130 ]] || { echo "the run was not stopped by the signal"; return 1; }
  "$PYTHON" -m trainer "resume=$run" || return 1
  local lines
  lines=$(grep -c "Epoch:" "$run/train.log")
  echo "after resuming: $lines epoch lines"
  [[ $lines == 3 ]]
}

step versions "$PYTHON" - <<'PY'
import platform, torch, torchvision, accelerate
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
      f"{torch.backends.cudnn.version()}), torchvision {torchvision.__version__}, accelerate {accelerate.__version__}")
for name in ("datasets", "pytorch_grad_cam", "omegaconf", "pytest"):
    try:
        module = __import__(name)
        print(f"{name} {getattr(module, '__version__', 'present')}")
    except ImportError as error:
        print(f"{name} MISSING ({error})")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU: {p.name}, compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB, "
          f"{torch.cuda.device_count()} device(s)")
else:
    print("GPU: none (torch.cuda.is_available() is False)")
PY
step tests "$PYTHON" -m pytest -q -rA -p no:cacheprovider tests/test_cuda.py tests/test_gpu_path.py tests/test_augment.py
step train-explain "${RUN[@]}" "${TRAIN[@]}" train.epochs=2 "output_dir=$OUT/train-run"
step resume resume_check
step bench "$PYTHON" -m trainer.bench --data "$DATA" --json "$OUT/bench.json" "${BENCH[@]}"

"$PYTHON" - "$OUT" <<'PY' | tee "$OUT/summary.md"
import json, pathlib, re, sys
out = pathlib.Path(sys.argv[1])
rows = [line.split() for line in (out / "steps.txt").read_text().splitlines()]
versions = (out / "versions.log").read_text().splitlines()
print("| step | result | seconds | figures |\n| --- | --- | --- | --- |")
for name, status, seconds in rows:
    log = (out / f"{name}.log").read_text()
    figures = ""
    if name == "versions":
        figures = "; ".join(line for line in versions if line.startswith(("GPU", "python")))
    elif name == "tests":
        sync = re.findall(r"(PASSED|FAILED|SKIPPED) tests/test_cuda.py::test_training_steps_never_synchronise\S*", log)
        figures = (re.findall(r"(\d+ (?:passed|failed)[^\n]*?) in [\d.]+s", log) or ["?"])[-1] + f"; per-step sync check: {sync or 'not run'}"
    elif name == "train-explain":
        summary = out / "train-run" / "summary.json"
        if summary.exists():
            s = json.loads(summary.read_text())
            figures = (f"test acc {s['final_test_acc']:.4f}, {s['mixed_precision']}, wall {s['wall_seconds']} s, "
                       f"gallery: {(out / 'train-run' / 'explain' / 'gallery.png').exists()}, "
                       f"report: {(out / 'train-run' / 'report.md').exists()}")
    elif name == "resume":
        figures = "; ".join(re.findall(r"(Resuming .*?\.)\s*$", log, re.M) + re.findall(r"after resuming: .*", log))
    elif name == "bench" and (out / "bench.json").exists():
        bench = json.loads((out / "bench.json").read_text())
        figures = "<br>".join(f"{run['name']}: train {run['train_images_per_second']:,.0f} img/s, eval "
                              f"{run['eval_images_per_second']:,.0f} img/s"
                              + (f", 25-epoch projection {run['projected_recipe_seconds']:.0f} s"
                                 if "projected_recipe_seconds" in run else "") for run in bench["runs"])
        if "train_speedup" in bench:
            figures += f"<br>speed-up against the faster plain loop: train {bench['train_speedup']:.2f}x, eval {bench['eval_speedup']:.2f}x"
    print(f"| {name} | {'ok' if status == '0' else 'FAILED (exit ' + status + ')'} | {seconds} | {figures} |")
print(f"\nLogs: {out}/")
PY
! grep -qv " 0 [0-9]*$" "$OUT/steps.txt"
