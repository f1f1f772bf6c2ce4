#!/usr/bin/env bash
# The prepared accelerator run (the `device` tool: one GPU, <= 10 minutes a command), from the
# repository root of a copy of the working tree:
#   bash benchmarks/device_check.sh          # results under $OUT (default: benchmarks/results)
# Measures the CNN child executors on the CIFAR-10 workload's shapes (synthetic images: no data
# needed) with child_throughput.py, exact and vmap, against the PyTorch eager peer on the same GPU
# (each a fresh process, one round; the peer's row says "torch not installed" or "no CUDA device"
# where the machine's torch cannot run it), then the LM trainer's tokens/s; each step is bounded
# so that a slow one cannot eat the others' time, and a failed step does not stop the next. Uses
# the machine's python and its JAX (nothing can be installed there: no network); nas_jax is run
# from the tree (PYTHONPATH). The per-round lines of child_throughput are printed as they come,
# so a step cut by its timeout still shows what it measured.
set -uo pipefail
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tee "$out/device.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
    2>&1 | tail -1 | tee -a "$out/device.txt"
timeout 300 python benchmarks/child_throughput.py --workload cifar10_quick --children 16 \
    --executors exact,vmap,torch --repeats 1 --json "$out/child_throughput_cifar10_gpu.json" \
    2>&1 | tail -45
timeout 150 python benchmarks/lm_throughput.py --json "$out/lm_throughput_gpu.json" 2>&1 | tail -15
exit 0   # the results are the files and the lines above; a failed or cut step is reported there
