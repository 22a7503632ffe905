#!/usr/bin/env bash
# Downloads the wheels benchmarks/gpu.sh installs on a GPU machine that has PyTorch, transformers, accelerate,
# peft and safetensors but no network and no diffusers (the lent H100/H200 machines: Python 3.12, x86_64).
# Run it where PyPI is reachable; the wheels land in .whl/ (git-ignored, about 50 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.whl}
PYVER=${PYVER:-3.12}
mkdir -p "$WHEELS"
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 any; do
    platforms+=(--platform "$tag")
done
# diffusers and what the GPU image lacks of its requirements; bitsandbytes for 8-bit Adam (--low-vram).
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    "${platforms[@]}" -d "$WHEELS" "diffusers==${DIFFUSERS_VERSION:-0.42.1}" importlib_metadata bitsandbytes
ls -1 "$WHEELS"
