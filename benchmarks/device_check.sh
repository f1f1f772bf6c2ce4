#!/usr/bin/env bash
# The prepared accelerator run (the `device` tool: one GPU, <= 10 minutes a command), from the
# repository root of a copy of the working tree:
#   bash benchmarks/device_check.sh          # results under $OUT (default: benchmarks/results)
# Measures the CNN child executors on the CIFAR-10 workload's shapes (synthetic images: no data
# needed) with child_throughput.py, exact and vmap, then the LM trainer's tokens/s; each step is
# bounded so that a slow one cannot eat the others' time. Uses the machine's python and its JAX
# (nothing can be installed there: no network); nas_jax is run from the tree (PYTHONPATH).
set -uo pipefail
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tee "$out/device.txt"
timeout 240 python benchmarks/child_throughput.py --workload cifar10_quick --children 16 \
    --executors exact,vmap --json "$out/child_throughput_cifar10_gpu.json" 2>&1 | tail -30
timeout 150 python benchmarks/lm_throughput.py --json "$out/lm_throughput_gpu.json" 2>&1 | tail -15
