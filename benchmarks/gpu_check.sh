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
# ---- a short ViT training on the card: the toy teacher + the vit student, bf16 autocast
# (every ViT run failed at step 1 on CUDA from cb170eb until 2026-12-04: a CPU constant)
timeout 240 python3 -m train --preset toy-vit --steps=20 --ckpt_every=20 "--out=$out/toyvit" 2>&1 | tail -2
echo "toy-vit GPU exit: ${PIPESTATUS[0]}"; rm -rf "$out/toyvit"
# ---- the edge preset (issue 30): training throughput on one GPU, alone and under torchrun
# (nccl), then the student's end-to-end rate at 720p on TensorRT fp16 / CUDA. Random weights
# (no download on the device machine): speed does not depend on them.
if [ "${EDGE:-1}" = 1 ]; then
  python3 - "$out/edge_images" <<'PY'
import sys, pathlib, numpy as np
from PIL import Image
out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
for i in range(256):  # 640x480 JPEGs, textured: the decoders' real work
    a = rng.integers(0, 255, (60, 80, 3), np.uint8)
    Image.fromarray(a).resize((640, 480), Image.BICUBIC).save(out / f"{i:04d}.jpg", quality=90)
PY
  printf 'person\ncar\nroad\ntree\nsky\nbuilding\n' > "$out/edge_classes.txt"
  common=(--preset edge "--data=$out/edge_images" "--known_classes=$out/edge_classes.txt"
          --pretrained=None --imagenet_init=false --steps=60 --log_every=10 --ckpt_every=60
          --workers=8)
  timeout 240 python3 -m train "${common[@]}" "--out=$out/edge_1gpu" 2>&1 | tail -3
  echo "edge 1 GPU exit: ${PIPESTATUS[0]}"; tail -4 "$out/edge_1gpu/metrics.csv"
  timeout 240 torchrun --standalone --nproc_per_node=1 -m train "${common[@]}" \
    "--out=$out/edge_torchrun" 2>&1 | tail -3
  echo "edge torchrun exit: ${PIPESTATUS[0]}"; tail -4 "$out/edge_torchrun/metrics.csv"
  python3 benchmarks/bench_edge.py build --out "$out/edge" --backbones mobilenetv4_conv_small \
    > "$out/edge_build.log" 2>&1
  timeout 300 python3 benchmarks/bench_edge.py measure --out "$out/edge" \
    --backbones mobilenetv4_conv_small --reps 50 2>&1 | tee "$out/bench_edge_gpu.log" | tail -8
  echo "edge bench exit: ${PIPESTATUS[0]}"
  rm -rf "$out/edge" "$out/edge_images" "$out"/edge_*/step_*.pt
fi
