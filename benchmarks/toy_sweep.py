"""Toy-world sweep: teacher variants -> training-free baselines -> CLIP-S4 students.

    python benchmarks/toy_sweep.py --out out/sweep [--deadline 540] [--tiny]

Each teacher variant (``VARIANTS``) is pretrained (``train.toyworld.teacher``), its
dense baselines are evaluated (``benchmarks/toy_baselines.py``, ImageNet templates,
96 and 128 px) and CLIP-S4 students (``python -m train --preset toy``, one per backbone
in ``BACKBONES``) are trained on it, exported and evaluated at 192 px on the held-out
split (toy world seed 3000, 500 scenes). Variants run as parallel pipelines, meant
for a GPU machine: on an H200 (16 cores) five 3000-step teachers in parallel ran at
0.10 s/step (0.15 with region crops; the per-sample crop and caption work on the CPU
is the limit), so a whole pipeline needs ~12 min: give --deadline room, or fewer
variants / --teacher-steps. On 2 CPU cores a full variant takes hours. The default
variants (``w32rc``, ``w32rc-p4``) train on fresh scenes (``--refresh``), the recipe
the next GPU session is to try: fixed-pool teachers memorise their captions and never
learned the thing classes (BENCHMARKS.md, teacher section). ``--tiny``
runs a few steps of everything on tiny data (a smoke test of this script on the CPU).
Writes ``<out>/results.json`` and prints a table. A stage still running at the
deadline is killed and reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

BASE_TEACHER = json.loads((REPO / "train" / "configs" / "toy-teacher.json").read_text())


def _teacher_config(text_width: int, patch: int = 8, vision_layers: int = 4) -> dict:
    cfg = json.loads(json.dumps(BASE_TEACHER))
    cfg["text_cfg"].update(width=text_width, heads=max(2, text_width // 16))
    cfg["vision_cfg"].update(patch_size=patch, layers=vision_layers)
    return cfg


# name -> (open_clip config, pretrain_teacher flags). The "r" variants see fresh scenes
# (--refresh: 64 of the 6000 pool scenes replaced every step, made by 3 worker processes
# while the step trains); the others train on the fixed pool, which 3000 steps memorise.
FRESH = ["--refresh", "64", "--workers", "3", "--measure-every", "1000"]
VARIANTS = {
    "w32rc": (_teacher_config(32), ["--crop-prob", "0.5", *FRESH]),
    "w32rc-p4": (_teacher_config(32, patch=4), ["--crop-prob", "0.5", *FRESH]),
    "w32": (_teacher_config(32), ["--crop-prob", "0"]),
    "w64": (_teacher_config(64), ["--crop-prob", "0"]),
    "w64c": (_teacher_config(64), ["--crop-prob", "0.5"]),
    "w128c": (_teacher_config(128), ["--crop-prob", "0.5"]),
    "w64c-p4": (_teacher_config(64, patch=4), ["--crop-prob", "0.5"]),
}
BACKBONES = ("resnet10t",)  # the toy preset's student


class Runner:
    def __init__(self, out: Path, deadline: float, threads: int):
        self.out, self.deadline, self.threads = out, deadline, threads
        self.lock = threading.Lock()
        self.results: dict = {}

    def run(self, name: str, args: list[str], log: Path) -> bool:
        left = self.deadline - time.time()
        if left < 5:
            self.note(name, "skipped: deadline")
            return False
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), PYTHONPATH=path)
        t0 = time.time()
        with open(log, "w") as f:
            try:
                rc = subprocess.run(
                    args, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=left
                ).returncode
            except subprocess.TimeoutExpired:
                self.note(name, f"killed at the deadline after {time.time() - t0:.0f} s")
                return False
        self.note(name, f"rc {rc} in {time.time() - t0:.0f} s")
        return rc == 0

    def note(self, key: str, value) -> None:
        with self.lock:
            self.results.setdefault("stages", {})[key] = value
            print(f"[{time.strftime('%H:%M:%S')}] {key}: {value}", flush=True)

    def put(self, variant: str, key: str, value) -> None:
        with self.lock:
            self.results.setdefault(variant, {})[key] = value
            (self.out / "results.json").write_text(json.dumps(self.results, indent=2))


def pipeline(r: Runner, name: str, cfg: dict, flags: list[str], args) -> None:
    d = r.out / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "toy-teacher.json").write_text(json.dumps(cfg, indent=2) + "\n")
    teacher = [PY, "-m", "train.toyworld.teacher", "--config", str(d / "toy-teacher.json")]
    teacher += ["--out", str(d), "--steps", str(args.teacher_steps), *flags]
    if args.tiny:
        teacher += ["--pool", "64", "--batch", "16", "--heldout", "40"]
    if not r.run(f"{name}/teacher", teacher, d / "teacher.log"):
        return
    r.put(name, "teacher", json.loads((d / "toy-teacher.report.json").read_text()))
    students = [threading.Thread(target=student, args=(r, name, d, bk, args)) for bk in BACKBONES]
    for t in students:
        t.start()
    base = [PY, "benchmarks/toy_baselines.py", "--data", str(args.data), "--out"]
    base += [str(d / "baselines"), "--model-config", str(d / "toy-teacher.json")]
    base += ["--pretrained", str(d / "toy-teacher.pt"), "--templates", "imagenet", "--no-extra"]
    base += ["--threads", str(r.threads)]
    if args.tiny:
        base += ["--modes", "sclip", "--sizes", "96"]
    if r.run(f"{name}/baselines", base, d / "baselines.log"):
        rows = json.loads((d / "baselines" / "summary.json").read_text())
        r.put(name, "baselines", [{k: v for k, v in x.items() if k != "per_class"} for x in rows])
        best = max(rows, key=lambda x: x["miou"])
        r.put(name, "best_baseline", best)
    for t in students:
        t.join()


def student(r: Runner, name: str, d: Path, backbone: str, args) -> None:
    s = d / f"student-{backbone}"
    train = [PY, "-m", "train", "--preset", "toy", f"--backbone={backbone}", f"--out={s}"]
    train += [f"--model_config={d / 'toy-teacher.json'}", f"--pretrained={d / 'toy-teacher.pt'}"]
    train += [f"--steps={args.student_steps}", "--log_every=25"]
    if args.tiny:
        train += ["--batch=4", "--toy_pool=16"]
    if not r.run(f"{name}/{backbone}/train", train, s.with_suffix(".train.log")):
        return
    ckpts = sorted(s.glob("step_*.pt"))
    onnx = s / "model.onnx"
    export = [PY, "-m", "train.export", "--checkpoint", str(ckpts[-1]), "-o", str(onnx)]
    export += ["--templates", "imagenet"]
    if not r.run(f"{name}/{backbone}/export", export, s.with_suffix(".export.log")):
        return
    rep = s / "language.json"
    ev = [PY, "-m", "train.evaluate", "--model", str(onnx), "--data", str(args.data)]
    ev += ["--size", "192", "--json", str(rep), "--threads", str(r.threads)]
    if r.run(f"{name}/{backbone}/eval", ev, s.with_suffix(".eval.log")):
        r.put(name, f"student-{backbone}", json.loads(rep.read_text()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=REPO / "out" / "sweep")
    ap.add_argument("--data", type=Path, default=REPO / "data" / "toy_val")
    ap.add_argument("--deadline", type=float, default=540, help="seconds from start")
    ap.add_argument("--teacher-steps", type=int, default=3000)
    ap.add_argument("--student-steps", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads per process")
    ap.add_argument("--variants", default="w32rc,w32rc-p4")
    ap.add_argument("--tiny", action="store_true", help="smoke test: a few steps of everything")
    args = ap.parse_args()
    if args.tiny:
        args.teacher_steps, args.student_steps = 3, 2
    sys.path.insert(0, str(REPO))
    from train import toyworld

    if not (args.data / "classes.txt").is_file():
        toyworld.write_dataset(args.data, 3000, 20 if args.tiny else 500)
    args.out.mkdir(parents=True, exist_ok=True)
    r = Runner(args.out, time.time() + args.deadline, args.threads)
    threads = [
        threading.Thread(target=pipeline, args=(r, v, *VARIANTS[v], args))
        for v in args.variants.split(",")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("\n| teacher | recall@k | best baseline | mIoU | known | unknown |", end="")
    print(" " + " | ".join(f"{b} mIoU / known / unknown" for b in BACKBONES) + " |")
    for v in args.variants.split(","):
        res = r.results.get(v, {})
        rec = res.get("teacher", {}).get("presence_recall_at_k", float("nan"))
        b = res.get("best_baseline", {})
        cells = [f"{v}", f"{rec:.3f}", f"{b.get('mode', '-')}@{b.get('input_size', '-')}"]
        cells += [f"{b.get(k, float('nan')):.1f}" for k in ("miou", "miou_known", "miou_unknown")]
        for bk in BACKBONES:
            s = res.get(f"student-{bk}", {})
            keys = ("miou", "miou_known", "miou_unknown")
            cells.append(" / ".join(f"{s.get(k, float('nan')):.1f}" for k in keys))
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
