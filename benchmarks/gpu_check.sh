#!/usr/bin/env bash
# One prepared GPU session: the CUDA variants of the Triton tests, the GPU kernel
# benchmark, then the runtime on the CUDA provider (benchmarks/bench_device.py).
# Run on a CUDA machine from the repo root:
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
# the runtime on the CUDA provider: host vs in-graph post-processing at 720p / 1080p, for
# the embedded toy student and a ViT-B/16-shaped bundle (random weights) in float32 and fp16
python3 -m train.export --clip ViT-B-16 --dense maskclip --input-size 448 -o "$out/vitb16.onnx" > /dev/null 2>&1
python3 -m train.export --clip ViT-B-16 --dense maskclip --input-size 448 --fp16 -o "$out/vitb16_fp16.onnx" > /dev/null 2>&1
timeout 300 python3 benchmarks/bench_device.py --providers CUDAExecutionProvider,CPUExecutionProvider \
  --bundle clips4rt/models/toy.onnx --bundle "$out/vitb16.onnx" --bundle "$out/vitb16_fp16.onnx" 2>&1 | tee "$out/bench_device.log"
echo "device bench exit: ${PIPESTATUS[0]}"
rm -f "$out"/vitb16*.onnx
