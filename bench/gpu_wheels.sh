#!/usr/bin/env bash
# Wheels for a GPU machine without internet that already has PyTorch (a stock CUDA PyTorch image): run this where
# pip reaches PyPI, copy DIR over with the repository and the data, and there:
#   python3 -m pip install --no-index --no-deps --target deps DIR/*.whl && export PYTHONPATH=$PWD/deps:$PWD
#   bench/gpu_check.sh /path/to/cifar10
#
#   bench/gpu_wheels.sh DIR [PYTHON_VERSION]      PYTHON_VERSION: the GPU machine's, e.g. 3.12 (default)
#
# The list is what this project needs beyond torch, torchvision, accelerate, numpy, pandas, pyarrow, matplotlib,
# huggingface-hub, pyyaml, tqdm, safetensors, einops, opencv, scipy, scikit-learn and pytest, which such images
# carry. W&B is left out: run with tracker=none there, or add wandb and its dependencies. Check that the machine's
# pyarrow and fsspec suit the datasets version below (datasets 5.2 wants pyarrow >= 24 and fsspec <= 2026.9).
set -euo pipefail
DIR=${1:?"usage: bench/gpu_wheels.sh DIR [PYTHON_VERSION]"}
VERSION=${2:-3.12}
mkdir -p "$DIR"
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
python3 -m pip download --no-deps --only-binary=:all: --python-version "$VERSION" --implementation cp "${platforms[@]}" \
  -d "$DIR" datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 xxhash torchinfo==1.8.0 ttach==0.0.3 omegaconf==2.3.0
# Published as source only; pure Python, so a wheel built here runs anywhere.
python3 -m pip wheel --no-deps -w "$DIR" grad-cam==1.5.7 antlr4-python3-runtime==4.9.3
ls -1 "$DIR"
