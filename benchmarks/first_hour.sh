#!/usr/bin/env bash
# The README's first hour, offline, outside the checkout (issue 27): build the wheel, a
# fresh venv with the wheel + the export extra, random ViT-B-16 weights laid out as
# open_clip's Hugging Face download of ViT-B-16/openai (HF_HUB_OFFLINE=1), then the
# README's commands by model name on a real photo (scikit-image's astronaut), a second
# (cached, torch-free) call timed part by part, and `clips4rt models`.
#
#   bash benchmarks/first_hour.sh [WORKDIR]      # default /tmp/clips4rt-first-hour
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
D=${1:-/tmp/clips4rt-first-hour}
rm -rf "$D" && mkdir -p "$D" && cd "$D"
python3 -m venv venv && . venv/bin/activate
pip wheel -q "$REPO" --no-deps -w dist
pip install -q "$(ls dist/clips4rt-*.whl)[export]" scikit-image
mkdir work && cd work
python - <<'P'
import os, torch, open_clip
rev = "0" * 40
root = "../hf/hub/models--timm--vit_base_patch16_clip_224.openai"
os.makedirs(f"{root}/snapshots/{rev}", exist_ok=True)
os.makedirs(f"{root}/refs", exist_ok=True)
open(f"{root}/refs/main", "w").write(rev)
torch.manual_seed(0)
m = open_clip.create_model("ViT-B-16", force_quick_gelu=True)
torch.save(m.state_dict(), f"{root}/snapshots/{rev}/open_clip_pytorch_model.bin")
P
python -c "from skimage import data; from PIL import Image; Image.fromarray(data.astronaut()).save('photo.jpg')"
export HF_HOME=$D/hf HF_HUB_OFFLINE=1 CLIPS4RT_HOME=$D/home
python -c "import importlib.util as u; assert u.find_spec('train') is None, 'not outside'"
/usr/bin/time -f "first call: %e s wall, %M KB peak" \
  clips4rt segment photo.jpg --model ViT-B-16/openai --classes "person,dog,grass,sky" --out out/
python - <<'P'
import sys, time
t0 = time.perf_counter()
import clips4rt
seg = clips4rt.Segmenter("ViT-B-16/openai", threads=2)
t1 = time.perf_counter()
seg.text_embeddings(["person", "dog", "grass", "sky"])
t2 = time.perf_counter()
r = seg.run("photo.jpg", ["person", "dog", "grass", "sky"])
t3 = time.perf_counter()
r2 = seg.run("photo.jpg", ["person", "dog", "grass", "sky"])
t4 = time.perf_counter()
print(f"second call: load {t1 - t0:.1f} s, 4 classes x {len(seg.info.prompt_templates)} "
      f"templates {t2 - t1:.1f} s, run {t3 - t2:.1f} s, run again {t4 - t3:.1f} s; "
      f"torch imported: {'torch' in sys.modules}; labels {r.labels.shape}")
P
clips4rt models
du -sh "$CLIPS4RT_HOME"/models/*
