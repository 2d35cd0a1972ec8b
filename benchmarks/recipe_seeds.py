"""Several seeds of several training recipes, trained side by side and scored on the
three tasks (issue 31): the comparison one seed cannot make.

    python benchmarks/recipe_seeds.py --recipe preset= --recipe conc5=--concentration=5 \\
        --seeds 0,1,2,3,4 --data data/toy_val,data/toy_val_4000 --out out/seeds \\
        [--slots 16] [--deadline 480]

Each recipe is ``NAME=OVERRIDES`` (space-separated ``--key=value`` for ``python -m train
--preset <--preset>``; empty = the preset itself). Every (recipe, seed) trains to
``<out>/runs/NAME_sS`` and is exported (``--templates imagenet``); then every student is
scored by ``train.evaluate`` at ``--size`` on every folder of ``--data`` in the modes of
``--modes`` (in that order of priority: all students' first mode before any second).
Reports are cached as ``benchmarks/three_tasks.py`` caches them (``<out>/reports``,
student name ``NAME_sS``), so ``three_tasks.py --out <out>/reports --student
NAME_sS=...`` reuses them. ``--slots`` processes run at a time (a training or an
evaluation takes one; trainings first); after ``--deadline`` seconds nothing new starts
and what runs is stopped. Last: a table of each recipe's mean (and range) over the seeds
scored, per task and folder; ``<out>/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from three_tasks import _eval, _report  # noqa: E402


def _env(threads: int) -> dict:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(threads)
    return env


def _train_cmd(args, name: str, overrides: str, seed: int, run: Path) -> str:
    py = sys.executable
    train = [
        py,
        "-m",
        "train",
        "--preset",
        args.preset,
        f"--seed={seed}",
        f"--out={run}",
        f"--steps={args.steps}",
        f"--ckpt_every={args.steps}",
    ] + shlex.split(overrides)
    ckpt = run / f"step_{args.steps:07d}.pt"
    export = [py, "-m", "train.export", "--checkpoint", str(ckpt), "-o", str(run / "model.onnx"),
              "--templates", "imagenet"]  # fmt: skip
    return " ".join(map(shlex.quote, train)) + " && " + " ".join(map(shlex.quote, export))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", action="append", default=[], help="NAME=OVERRIDES")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--preset", default="toy-vit")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--data", default="data/toy_val,data/toy_val_4000")
    ap.add_argument("--modes", default="unsupervised,language,probe")
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--kmeans-runs", type=int, default=5)
    ap.add_argument("--out", default=str(REPO / "out" / "seeds"))
    ap.add_argument("--slots", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--deadline", type=float, default=0, help="seconds (0 = none)")
    ap.add_argument("--summary", action="store_true", help="only print the table of the "
                    "reports already in --out")  # fmt: skip
    ap.add_argument("--eval-one", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.eval_one:  # one evaluation, in its own process: bundle data mode report size runs
        bundle, data, mode, report, size, runs = args.eval_one
        # the protocol's provider everywhere: the CPU one (no TensorRT/CUDA where
        # onnxruntime-gpu is installed), one thread
        _eval(Path(report), Path(bundle), data, mode, int(size), 0, 1, int(runs),
              providers=["CPUExecutionProvider"])  # fmt: skip
        return
    if not args.recipe:
        ap.error("give at least one --recipe NAME=OVERRIDES")
    out = Path(args.out).expanduser()
    recipes = [r.split("=", 1) for r in args.recipe]
    seeds = [int(s) for s in args.seeds.split(",")]
    datas, modes = args.data.split(","), args.modes.split(",")
    if args.summary:
        _summary(out, recipes, seeds, datas, modes, args.size, args.kmeans_runs)
        return
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "reports").mkdir(exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    t0 = time.monotonic()
    trains = [(name, ov, s) for s in seeds for name, ov in recipes]  # seed-major
    ready: list[str] = []  # students exported, in the order they finished
    evals_done: set = set()
    running: dict = {}  # Popen -> (kind, key, its open log file)
    failed = []

    def start(cmd: str, kind: str, key, log: Path) -> None:
        f = open(log, "w")
        p = subprocess.Popen(cmd, shell=True, cwd=REPO, env=_env(1), stdout=f,
                             stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        running[p] = (kind, key, f)

    def next_eval():
        for mode in modes:  # priority: every student's first mode first
            for who in ready:
                for data in datas:
                    key = (who, data, mode)
                    if key in evals_done or any(v[1] == key for v in running.values()):
                        continue
                    rep = _report(out / "reports", f"student {who} {args.size}", data, mode,
                                  args.kmeans_runs)  # fmt: skip
                    if rep.is_file():
                        evals_done.add(key)
                        continue
                    return key, rep
        return None

    while True:
        over = args.deadline and time.monotonic() - t0 > args.deadline
        for p in [p for p in running if p.poll() is not None]:
            kind, key, f = running.pop(p)
            f.close()
            if p.returncode != 0:  # reported at the end, not retried
                failed.append((kind, key, p.returncode))
                evals_done.add(key)
            elif kind == "train":
                ready.append(key)
            else:
                evals_done.add(key)
        if over:
            for p, (kind, key, _) in running.items():
                os.killpg(p.pid, 9)
                print(f"deadline: stopped {kind} {key}", flush=True)
            break
        while len(running) < args.slots:
            if trains:
                name, ov, s = trains.pop(0)
                who = f"{name}_s{s}"
                run = out / "runs" / who
                if (run / "model.onnx").is_file():  # trained and exported before
                    ready.append(who)
                    continue
                start(_train_cmd(args, name, ov, s, run), "train", who, out / "logs" / f"{who}.log")
                continue
            task = next_eval()
            if task is None:
                break
            (who, data, mode), rep = task
            bundle = out / "runs" / who / "model.onnx"
            cmd = " ".join(map(shlex.quote, [sys.executable, __file__, "--eval-one", str(bundle),
                                             data, mode, str(rep), str(args.size),
                                             str(args.kmeans_runs)]))  # fmt: skip
            start(cmd, "eval", (who, data, mode), out / "logs" / f"eval_{rep.stem}.log")
        if not running and not trains and next_eval() is None:
            break
        time.sleep(1)
    print(f"{time.monotonic() - t0:.0f} s; failed: {failed}", flush=True)
    _summary(out, recipes, seeds, datas, modes, args.size, args.kmeans_runs)


def _summary(out: Path, recipes, seeds, datas, modes, size, runs) -> None:
    """Per recipe and task: the mean over the seeds scored (range, count) on each folder,
    the mean over folders, and the difference of the means from the first recipe's."""
    rows = {}
    for name, _ in recipes:
        for mode in modes:
            for data in datas:
                vals = {}
                for s in seeds:
                    rep = _report(out / "reports", f"student {name}_s{s} {size}", data, mode, runs)
                    if rep.is_file():
                        vals[s] = json.loads(rep.read_text())["miou"]
                rows[f"{name} {mode} {Path(data).name}"] = vals
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    mean = lambda v: sum(v) / len(v) if v else None  # noqa: E731
    names = [Path(d).name for d in datas]
    print("\n| recipe | task | " + " | ".join(names) + " | mean of folders | - first recipe |")
    print("| --- | --- |" + " --- |" * (len(datas) + 2))
    for mode in modes:
        ref = None
        for i, (name, _) in enumerate(recipes):
            vs = [list(rows[f"{name} {mode} {d}"].values()) for d in names]
            cells = [f"{mean(v):.2f} ({min(v):.1f}..{max(v):.1f}, n={len(v)})" if v else ""
                     for v in vs]  # fmt: skip
            m = mean([mean(v) for v in vs]) if all(vs) else None
            ref = m if i == 0 else ref  # the first recipe's mean (None: no differences)
            diff = f"{m - ref:+.2f}" if m is not None and ref is not None else ""
            cells += [f"{m:.2f}" if m is not None else "", diff]
            print(f"| {name} | {mode} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
