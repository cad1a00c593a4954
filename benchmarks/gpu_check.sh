#!/usr/bin/env bash
# One command for a GPU machine: the memory claims measured with CUDA's own allocator, next to the CPU tracker.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]     # a few minutes on one H200 (not yet run: no GPU lent so far)
#
# benchmarks/memory_single_gpu.py --cases all: real SFT, reward and PPO steps of GPT-2 sizes, OPT-1.3B and
# Llama-2-7B 8-bit (bf16, 8-bit and 4-bit) with torch.cuda.max_memory_allocated / max_memory_reserved against the
# plan, then the planner's headline table. The CPU tracker's figures (benchmarks/memory_depth_sweep.py) are the
# device-independent part; this run adds what only CUDA has (allocator rounding and slack, kernel workspaces).
#
# Packages the machine lacks travel as wheels in .whl (git-ignored): download them here with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl \
#       trl==1.16.0 bitsandbytes==0.50.2 datasets evaluate vaderSentiment multiprocess dill xxhash
# and the script installs them into /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-benchmarks/results/gpu}}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 benchmarks/memory_single_gpu.py --steps 2 --cases all 2>&1 | tee "$OUT/single.log"
cp benchmarks/results/memory_single_gpu.* "$OUT/"
