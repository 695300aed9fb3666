#!/usr/bin/env bash
# Speed on one GPU: every way this trainer can run, with its compile time, and a real 25-epoch run with the fastest.
#
#   bench/gpu_speed.sh DATA [OUT]            from the repository root, on a machine with one GPU
#   QUICK=1 bench/gpu_speed.sh DATA OUT      the same steps with tiny limits, in a few minutes, also on a CPU: a
#                                            dry run, so that nothing fails for a typo on a GPU
#
#   DATA  CIFAR-10 in the hub layout (a local folder such as a copy of ../shared/datasets/cifar10, or a hub id)
#   OUT   where the logs go (default runs/gpu-speed-<date>-<time>); OUT/speed.md holds the table
#
# Steps: (1) python -m trainer.bench with train.compile no, blocks (regional compilation) and model, each in two
# fresh processes sharing an empty TorchInductor cache (cold, then warm: the warm one is timed), next to the plain
# reference loop; (2) the reference recipe for 25 epochs with the variant of the shortest projected 25-epoch time,
# with its test passes and the end-of-training hooks. Two processes on one GPU are not run: Accelerate gives every
# process of a multi-GPU launch the NCCL backend, which refuses two ranks on one device, and has no setting for gloo
# outside the trainer's code.
#
# Environment: PYTHON (default python3); no internet is needed when DATA is a local folder.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?"usage: bench/gpu_speed.sh DATA [OUT] (DATA: CIFAR-10 in the hub layout, e.g. a local copy)"}
OUT=${2:-runs/gpu-speed-$(date +%Y%m%d-%H%M%S)}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled

if [[ "${QUICK:-0}" == 1 ]]; then
  BENCH=(--steps 1 --warmup 1 --test-images 64 model.dim=32 model.depth=2 train.batch_size=128)
  RUN=(data.train_limit=1024 data.test_limit=256 model.dim=32 model.depth=2 train.batch_size=128 train.epochs=1
       explain.num_images=2)
else
  BENCH=()
  RUN=()
fi

echo "== bench: the plain loop and train.compile=no, blocks, model (cold and warm)"
"$PYTHON" -m trainer.bench --data "$DATA" --compile blocks,model --json "$OUT/bench.json" "${BENCH[@]}" \
  2>&1 | tee "$OUT/bench.log"

FASTEST=$("$PYTHON" - "$OUT/bench.json" <<'PY'
import json, sys
runs = [run for run in json.load(open(sys.argv[1]))["runs"] if run["side"] == "trainer"]
print(min(runs, key=lambda run: run["projected_recipe_seconds"])["compile"])
PY
)
echo "== the reference recipe, 25 epochs, train.compile=$FASTEST"
"$PYTHON" -m trainer "data.name=$DATA" tracker=none "train.compile=$FASTEST" "output_dir=$OUT/reference" "${RUN[@]}" \
  2>&1 | tee "$OUT/reference.log"

"$PYTHON" - "$OUT" <<'PY' | tee "$OUT/speed.md"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
bench, run = json.loads((out / "bench.json").read_text()), json.loads((out / "reference" / "summary.json").read_text())
print(f"{bench['hardware']}, {bench['train_images']:,} training and {bench['test_images']:,} test images "
      f"({bench['data']})\n")
print("| run | train img/s | eval img/s | warm-up cold / warm | 25 epochs + test passes, projected |")
print("| --- | --- | --- | --- | --- |")
for r in bench["runs"]:
    warmup = f"{r['warmup_seconds_cold']:.1f} s / {r['warmup_seconds']:.1f} s" if "warmup_seconds" in r else ""
    projected = f"{r['projected_recipe_seconds']:.0f} s" if "projected_recipe_seconds" in r else ""
    print(f"| {r['name']} | {r['train_images_per_second']:,.0f} | {r['eval_images_per_second']:,.0f} | {warmup} | "
          f"{projected} |")
epochs = f"{run['epochs']} epoch" + ("s" if run["epochs"] != 1 else "")
print(f"\nThe reference recipe with train.compile={run.get('compile', '?')}: {epochs}, test accuracy "
      f"{run['final_test_acc']:.4f}, {run['wall_seconds']} s for the epochs with their test passes and the "
      f"end-of-training hooks ({run['mixed_precision']}).")
PY
