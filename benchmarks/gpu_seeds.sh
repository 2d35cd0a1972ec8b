#!/usr/bin/env bash
# Issue 31 on a lent GPU, in one call: five seeds each of `--preset toy-vit` recipes
# (default: session 18's three, spelled out - "preset" = batch 16 at temperature 10 as the
# preset then was, "conc5" = that with --concentration=5, "batch32" = batch 32 at 10; the
# preset now is batch 32 at 5, session 19) trained side by side on the card
# (bf16 autocast), exported, and scored by train.evaluate on the CPU cores (CPU provider,
# one thread each) on the four held-out folders, unsupervised first, then language, then
# probe, until the deadline (benchmarks/recipe_seeds.py). From the repo root, with
# data/toy_val{,_4000,_7000,_8000} written (docs/toy-world.md) and open_clip's wheels in
# .whl/ where the machine lacks it:
#   bash benchmarks/gpu_seeds.sh [--recipe NAME=OVERRIDES ...]   (results under ${OUT:-/tmp/gpu_seeds})
set -uo pipefail
out=${OUT:-/tmp/gpu_seeds}
work=${WORK:-/tmp/seeds}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
nproc
python3 -c "import torch, onnxruntime as o, open_clip; print('torch', torch.__version__, 'ort', o.__version__, o.get_available_providers(), 'open_clip', open_clip.__version__)"
# the runtime's C++ kernels, as `pip install -e .` builds them (else the numpy fallback)
if ! python3 -c "import clips4rt._cpu" 2>/dev/null; then
  { timeout 180 cmake -S . -B /tmp/b -G Ninja -DSKBUILD_PROJECT_NAME=clips4rt \
      -DPython_EXECUTABLE="$(command -v python3)" && timeout 180 cmake --build /tmp/b -j 16 \
      && cp /tmp/b/_cpu*.so clips4rt/; } > "$out/native_build.log" 2>&1
  python3 -c "from clips4rt import kernels as k; print('native kernels:', k.HAVE_NATIVE, k.available_isas())"
fi
[ $# -gt 0 ] || set -- --recipe "preset=--batch=16 --concentration=10" \
  --recipe "conc5=--batch=16 --concentration=5" --recipe batch32=--concentration=10
python3 benchmarks/recipe_seeds.py "$@" --seeds "${SEEDS:-0,1,2,3,4}" --steps "${STEPS:-500}" \
  --data data/toy_val,data/toy_val_4000,data/toy_val_7000,data/toy_val_8000 \
  --out "$work" --slots "${SLOTS:-16}" --deadline "${DEADLINE:-420}" 2>&1 | tee "$out/driver.log"
nvidia-smi --query-gpu=name,clocks.sm --format=csv,noheader
# what comes back (at most 8 files): reports, logs and metrics in one archive, the
# students' image graphs three to an archive, least scored first (the text graph is the
# teacher's, the same for every student: one copy)
(cd "$work" && tar czf "$out/reports.tgz" reports logs summary.json runs/*/metrics.csv \
  runs/*/run.json 2>/dev/null)
models=$(cd "$work" && python3 -c '
import glob, os
runs = sorted(glob.glob("runs/*/model.onnx"))
def scored(p):
    name = os.path.basename(os.path.dirname(p))
    return len(glob.glob("reports/student_%s_*.json" % name))
print("\n".join(sorted(runs, key=scored)))')
text=$(cd "$work" && ls runs/*/model.text.onnx 2>/dev/null | head -1)
[ -n "$text" ] && cp "$work/$text" "$out/model.text.onnx"
i=0
set -- $models  # the recipe arguments are used: the positional list now holds the graphs
while [ $# -gt 0 ] && [ $i -lt "${MODEL_TARS:-4}" ]; do
  chunk=("${@:1:3}"); shift $(( $# < 3 ? $# : 3 ))
  (cd "$work" && tar cf "$out/models$i.tar" "${chunk[@]}")
  i=$((i + 1))
done
ls -la "$out"
