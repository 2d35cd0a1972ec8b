#!/usr/bin/env bash
# One prepared GPU session: the CUDA variants of the Triton tests, then the GPU
# kernel benchmark. Run on a CUDA machine from the repo root:
#   bash benchmarks/gpu_check.sh [--quick]  (logs to ${OUT:-/tmp}/)
set -uo pipefail
out=${OUT:-/tmp}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
timeout 300 python3 -m pytest -q -m cuda -p no:cacheprovider tests/test_triton_kernels.py 2>&1 | tee "$out/pytest_cuda.log" | tail -25
echo "pytest exit: ${PIPESTATUS[0]}"
timeout 300 python3 benchmarks/bench_kernels.py --gpu "$@" 2>&1 | tee "$out/bench_gpu.log"
echo "bench exit: ${PIPESTATUS[0]}"
