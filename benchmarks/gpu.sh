#!/usr/bin/env bash
# The GPU benchmark: one prepared run (under 8 minutes on an H100) that records, at 512 px bf16, s/step of both
# phases, the projected 800-step time, and the peak GPU memory of the default, --low-vram and LoRA modes, plus
# torch.compile and the research code's attention handling for comparison. JSON reports go to $OUT (default
# bench-out/); docs/performance.md says how to read them.
#
#   benchmarks/fetch_wheels.sh          # where PyPI is reachable: diffusers + bitsandbytes wheels into .whl/
#   benchmarks/gpu.sh                   # on the GPU machine (carry .whl/ there)
#
# Packages the machine lacks are installed from $WHEELS (default .whl/) into a private folder; nothing is
# fetched. BENCH_ARGS adds flags to every bench call (the CPU test of this script uses a tiny model);
# GPU_GROUPS picks which of the three measurement groups run (default: all, in this order; not GROUPS, which
# bash keeps for itself: `GROUPS=x gpu.sh` from a bash prompt passes nothing). GPU_GROUPS=world instead
# trains builtin:shapes on the GPU (8x the samples of the CPU recipe; docs/evaluation.md says why) and checks
# it: the pipeline folder, its sample grids and check.txt come back in $OUT/world. WORLD_ARGS adds flags to
# `world train`, WORLD_CHECK_ARGS to `world check` (the CPU test of this script makes both tiny).
# GPU_GROUPS=sdxl measures SDXL-base's architecture (random weights) at 1024 px: the research code's attention,
# the default full phase 2, with the optimiser in the backward pass, --low-vram (the 16 GB claim: its peak memory)
# and LoRA; SDXL_ARGS adds flags to it
# (the CPU test uses the tiny SDXL model). Each configuration builds the 3.5 B-parameter model first.
# GPU_GROUPS=flux measures FLUX.1-dev's architecture (random weights, 12 B + 4.8 B T5) at 1024 px with gradient
# checkpointing: LoRA rank 16 in bf16, the same on an NF4 transformer, and --low-vram (the 24 GB claim: its peak
# memory); FLUX_ARGS adds flags to it (the CPU test uses the tiny FLUX model, where NF4 is refused: no CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
OUT=${OUT:-bench-out}
mkdir -p "$OUT"

if ! "$PY" -c "import diffusers, peft" 2>/dev/null; then
    ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "gpu.sh: diffusers is missing and $WHEELS/ has no wheels; run benchmarks/fetch_wheels.sh" >&2; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/bas-site "$WHEELS"/*.whl
    export PYTHONPATH=/tmp/bas-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error DIFFUSERS_VERBOSITY=error

read -r -a extra <<< "${BENCH_ARGS:-}"
groups=" ${GPU_GROUPS:-modes explicit compile} "
bench() { "$PY" -m breakascene.cli bench --mixed-precision bf16 "${extra[@]}" "$@"; }

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
"$PY" -m breakascene.cli env | tee "$OUT/env.txt"

# 1. The targets: speed of the default, and the memory of the three modes (each JSON is written as soon as
#    its group finishes, so a later group running out of time loses only itself).
[[ $groups == *" modes "* ]] && bench --compare default low-vram lora --steps 5 --warmup 2 --json "$OUT/modes.json"
# 2. The research code's attention handling against ours, same precision.
[[ $groups == *" explicit "* ]] && bench --compare explicit-everywhere default --steps 3 --warmup 1 --json "$OUT/explicit.json"
# 3. torch.compile: the first steps compile (minutes), so more warm-up.
[[ $groups == *" compile "* ]] && bench --compare default compile --steps 5 --warmup 3 --json "$OUT/compile.json"
# 4. (GPU_GROUPS=sdxl only) SDXL at its native size; SDXL_ARGS come last, so they can replace the model.
if [[ $groups == *" sdxl "* ]]; then
    read -r -a sdxl_extra <<< "${SDXL_ARGS:-}"
    bench --model random:sdxl-base --resolution 1024 --compare explicit-everywhere default optim-in-backward low-vram lora \
        --steps 3 --warmup 1 --json "$OUT/sdxl.json" "${sdxl_extra[@]}"
fi
# 5. (GPU_GROUPS=flux only) FLUX.1-dev at its native size; FLUX_ARGS come last, so they can replace the model.
if [[ $groups == *" flux "* ]]; then
    read -r -a flux_extra <<< "${FLUX_ARGS:-}"
    bench --model random:flux-dev --resolution 1024 --gradient-checkpointing --compare lora16 lora16+nf4 low-vram \
        --steps 3 --warmup 1 --json "$OUT/flux.json" "${flux_extra[@]}"
fi
# 6. (GPU_GROUPS=world only) builtin:shapes, trained on the GPU with scene-drawing processes, then checked.
if [[ $groups == *" world "* ]]; then
    read -r -a world_extra <<< "${WORLD_ARGS:-}"
    read -r -a check_extra <<< "${WORLD_CHECK_ARGS:-}"
    "$PY" -m breakascene.cli world train --out "$OUT/world" --device cuda --batch 64 --steps 8000 --workers 12 \
        --overwrite "${world_extra[@]}"
    rm -rf "$OUT/world/checkpoint"  # optimiser state: large, and only for --resume on this machine
    "$PY" -m breakascene.cli world check --model "$OUT/world/pipeline" "${check_extra[@]}" | tee "$OUT/world/check.txt"
fi
echo "gpu.sh: reports in $OUT/"
