"""Mutation score of the core modules, with cosmic-ray: a seeded sample of mutants per
module, each run against the fast tests that guard that module.

    pip install cosmic-ray==8.7.0
    python benchmarks/mutation.py [--per-module 12] [--seed 0] [--lanes 2]
                                  [--only train/schedule.py,...] [--out DIR]

What it does, per module: copies the tracked files into a lane of its own under --out
(the working tree is never touched), runs the module's tests once unmutated (the
baseline), lets `cosmic-ray init` list every mutant of the module, keeps a sample of
--per-module mutants drawn with --seed among the operators that model plausible bugs
(arithmetic, comparisons, boolean operators, constants, `not`, loops that do not run,
swapped exceptions, removed decorators), marks the rest skipped, and runs `cosmic-ray
exec` on the sample. A mutant is killed when the tests fail or time out (3x the
baseline plus 30 s). The sample depends only on the module's source and the seed, so a
rerun after adding tests draws the same mutants.

The copy must import its own code: the editable install's import hook is switched off
for the runs (SKBUILD_EDITABLE_SKIP) and PYTHONPATH points at the copy, which also gets
the compiled CPU kernel. Survivors that are equivalent to the original (no test can
tell them apart) are listed in EQUIVALENT with the reason and leave the score's
denominator; every other survivor is printed with its diff and makes the exit code 1.
The report (per module and per mutant, with diffs) is written to --out/report.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

FAST = ["-x", "-q", "-p", "no:cacheprovider"]

# module: the test files run against its mutants
MODULES = {
    "train/schedule.py": ["tests/test_semantics.py", "tests/test_train_parts.py"],
    "train/method/losses.py": ["tests/test_semantics.py", "tests/test_train_parts.py"],
    "train/method/prototypes.py": ["tests/test_semantics.py", "tests/test_train_parts.py"],
    "train/method/loop.py": ["tests/test_semantics.py", "tests/test_train_loop.py"],
    "train/evaluate/metrics.py": ["tests/test_metrics.py", "tests/test_semantics.py"],
    "train/evaluate/modes.py": ["tests/test_evaluate.py", "tests/test_semantics.py"],
    "clips4rt/export/dense_clip.py": [
        "tests/test_dense_parity.py",
        "tests/test_train_parts.py",
        "tests/test_export.py",
    ],
    "clips4rt/window.py": ["tests/test_window.py", "tests/test_semantics.py"],
    "clips4rt/background.py": ["tests/test_find_x.py", "tests/test_semantics.py"],
    "clips4rt/vocab.py": ["tests/test_vocab.py"],
    "clips4rt/result.py": [
        "tests/test_segmenter.py",
        "tests/test_find_x.py",
        "tests/test_semantics.py",
    ],
    "clips4rt/segmenter.py": [
        "tests/test_segmenter.py",
        "tests/test_vocab.py",
        "tests/test_window.py",
        "tests/test_find_x.py",
        "tests/test_errors.py",
        "tests/test_stream.py",
    ],
    "clips4rt/bundle.py": [
        "tests/test_errors.py",
        "tests/test_fuzz.py",
        "tests/test_segmenter.py",
        "tests/test_semantics.py",
    ],
}

# cosmic-ray operators kept in the draw (prefixes): the plausible slips of a hand. Left
# out: bitwise and shift operators in place of arithmetic, and the variable
# replacer/inserter, whose mutants are mostly type errors.
PLAUSIBLE = (
    *(
        f"core/ReplaceBinaryOperator_{a}_{b}"
        for a in ("Add", "Sub", "Mul", "Div", "FloorDiv", "Pow", "Mod")
        for b in ("Add", "Sub", "Mul", "Div", "FloorDiv", "Pow", "Mod")
        if a != b
    ),
    "core/ReplaceComparisonOperator_",
    "core/ReplaceUnaryOperator_",
    "core/AddNot",
    "core/ReplaceTrueWithFalse",
    "core/ReplaceFalseWithTrue",
    "core/ReplaceAndWithOr",
    "core/ReplaceOrWithAnd",
    "core/ReplaceBreakWithContinue",
    "core/ReplaceContinueWithBreak",
    "core/ExceptionReplacer",
    "core/NumberReplacer",
    "core/RemoveDecorator",
    "core/ZeroIterationForLoop",
)

# (module, operator, the source line stripped): why no test can tell the mutant apart
_MD = "its tensors are (M, D) / (M, K) by contract (the docstring): dim 1 is dim -1"
EQUIVALENT: dict[tuple[str, str, str], str] = {
    ("train/method/losses.py", "core/ReplaceUnaryOperator_USub_UAdd",
     "target = torch.softmax(teacher_scale * cos, dim=-1)"): _MD,
    ("train/method/losses.py", "core/ReplaceUnaryOperator_USub_UAdd",
     "logp = torch.log_softmax(student_scale * F.normalize(v, dim=-1) @ protos.T, dim=-1)"): _MD,
    ("train/method/losses.py", "core/ReplaceUnaryOperator_Delete_USub",
     "cos = (F.normalize(v, dim=-1) * F.normalize(t.detach(), dim=-1)).sum(-1)"): _MD,
    ("train/method/loop.py", "core/ReplaceComparisonOperator_Eq_GtE",
     'model, device_ids=[device.index] if device.type == "cuda" else None'):
        "DDP's device_ids: 'cpu' >= 'cuda' is False as 'cpu' == 'cuda' is; the two differ "
        "only for device types this loop does not run on (after 'cuda' in the alphabet)",
    ("train/evaluate/modes.py", "core/ReplaceComparisonOperator_NotEq_Lt",
     "keep = small.reshape(-1) != 255"):
        "label masks are uint8: != 255 and < 255 are the same test",
    ("train/evaluate/modes.py", "core/NumberReplacer",
     'Path(args.json).write_text(json.dumps(report, indent=2) + "\\n")'):
        "the JSON report's indentation: the same JSON to any reader",
    ("clips4rt/bundle.py", "core/ReplaceComparisonOperator_NotEq_Lt",
     'if image.get_inputs()[0].type != "tensor(uint8)":'):
        "every other ONNX tensor type's name sorts before tensor(uint8) (no type name "
        "starts after 'u'; uint8 sorts last of the uint types)",
    ("train/method/prototypes.py", "core/ReplaceUnaryOperator_Delete_USub",
     "return F.normalize(protos + gap, dim=-1)"): _MD,
    ("clips4rt/vocab.py", "core/ReplaceComparisonOperator_Eq_Is",
     "if e.errno == errno.EINVAL:"):
        "errno values are small ints, which CPython keeps one object each of",
    ("clips4rt/vocab.py", "core/ReplaceComparisonOperator_Eq_Is",
     "if e.errno == errno.EFBIG:"):
        "errno values are small ints, which CPython keeps one object each of",
    ("train/method/loop.py", "core/ReplaceComparisonOperator_Eq_Lt", 'if device.type == "cuda":'):
        "SyncBatchNorm on the CPU too ('cpu' < 'cuda'): over gloo it computes the global "
        "batch's statistics, which is what the DDP test's single-process reference computes; "
        "converting on CUDA only is a speed choice",
}  # fmt: skip


def _editable_skip() -> str:
    """The build path that switches the editable install's import hook off."""
    paths = [
        getattr(f, "path", None)
        for f in sys.meta_path
        if type(f).__name__ == "ScikitBuildRedirectingFinder"
    ]
    return os.pathsep.join(p for p in paths if p)


def _copy_tree(dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    files = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    import clips4rt._cpu as cpu  # the compiled kernel the copy cannot build itself

    shutil.copy2(cpu.__file__, dest / "clips4rt" / Path(cpu.__file__).name)


def _env(lane: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(lane), PYTHONDONTWRITEBYTECODE="1")
    env["SKBUILD_EDITABLE_SKIP"] = _editable_skip()
    return env


def _draw(db_path: Path, module: str, n: int, seed: int) -> int:
    """Keep a seeded sample of n plausible mutants; mark the rest skipped."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with use_db(str(db_path), WorkDB.Mode.open) as db:
        items = list(db.pending_work_items)

        def key(it):
            m = it.mutations[0]
            return (tuple(m.start_pos), m.operator_name, m.occurrence)

        pool = sorted(
            (it for it in items if it.mutations[0].operator_name.startswith(PLAUSIBLE)), key=key
        )
        rng = random.Random(seed * 1_000_003 + zlib.crc32(module.encode()))
        keep = {it.job_id for it in rng.sample(pool, min(n, len(pool)))}
        skip = [it.job_id for it in items if it.job_id not in keep]
        db.set_multiple_results(
            skip, WorkResult(output="not drawn", worker_outcome=WorkerOutcome.SKIPPED)
        )
    return len(pool)


def _results(db_path: Path, lane: Path, module: str) -> list[dict]:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome

    source = (lane / module).read_text().splitlines()
    rows = []
    with use_db(str(db_path), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            m = item.mutations[0]
            line = source[m.start_pos[0] - 1].strip()
            outcome = str(
                result.test_outcome.value if result.test_outcome else result.worker_outcome.value
            )
            reason = EQUIVALENT.get((module, m.operator_name, line))
            rows.append(
                {
                    "operator": m.operator_name,
                    "line": m.start_pos[0],
                    "source": line,
                    "outcome": outcome,
                    "equivalent": reason,
                    "diff": result.diff if outcome != "killed" else None,
                    "timeout": result.output == "timeout",
                }
            )
    return sorted(rows, key=lambda r: (r["line"], r["operator"]))


def run_module(lane: Path, module: str, n: int, seed: int) -> dict:
    tests = MODULES[module]
    env = _env(lane)
    cmd = [sys.executable, "-m", "pytest", *FAST, *tests]
    t0 = time.monotonic()
    base = subprocess.run(cmd, cwd=lane, env=env, capture_output=True, text=True)
    baseline = time.monotonic() - t0
    if base.returncode != 0:
        return {"module": module, "error": "baseline fails:\n" + base.stdout[-2000:]}
    work = lane / ".mutation"
    work.mkdir(exist_ok=True)
    stem = module.replace("/", "_")
    cfg, db = work / f"{stem}.toml", work / f"{stem}.sqlite"
    cfg.write_text(
        "[cosmic-ray]\n"
        f'module-path = "{module}"\n'
        f"timeout = {3 * baseline + 30:.0f}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(' '.join(cmd))}\n"
        "[cosmic-ray.distributor]\n"
        'name = "local"\n'
    )
    if db.exists():
        db.unlink()

    def cosmic_ray(command: str) -> None:
        subprocess.run(["cosmic-ray", command, str(cfg), str(db)], cwd=lane, env=env,
                       check=True, capture_output=True)  # fmt: skip

    cosmic_ray("init")
    pool = _draw(db, module, n, seed)
    t0 = time.monotonic()
    cosmic_ray("exec")
    rows = _results(db, lane, module)
    killed = sum(r["outcome"] == "killed" for r in rows)
    equivalent = sum(r["outcome"] not in ("killed", "incompetent") and bool(r["equivalent"])
                     for r in rows)  # fmt: skip
    # cosmic-ray could not apply these (its ExceptionReplacer on some except clauses):
    # never run, so outside the score
    not_applied = sum(r["outcome"] == "incompetent" for r in rows)
    return {
        "module": module,
        "plausible": pool,
        "drawn": len(rows),
        "not_applied": not_applied,
        "killed": killed,
        "equivalent": equivalent,
        "baseline_s": round(baseline, 1),
        "seconds": round(time.monotonic() - t0),
        "mutants": rows,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-module", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lanes", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated module paths")
    ap.add_argument("--out", type=Path, default=Path("/tmp/clips4rt-mutation"))
    args = ap.parse_args(argv)
    if shutil.which("cosmic-ray") is None:
        ap.error("cosmic-ray is not installed: pip install cosmic-ray==8.7.0")
    modules = [m for m in (args.only.split(",") if args.only else MODULES) if m]
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        ap.error(f"unknown module(s) {unknown}; known: {', '.join(MODULES)}")
    out = args.out.expanduser()
    out.mkdir(parents=True, exist_ok=True)
    queue, lock, reports = list(modules), threading.Lock(), []

    def lane_worker(i: int) -> None:
        lane = out / f"lane{i}"
        _copy_tree(lane)
        while True:
            with lock:
                if not queue:
                    return
                module = queue.pop(0)
            rep = run_module(lane, module, args.per_module, args.seed)
            with lock:
                reports.append(rep)
                print(_line(rep), flush=True)

    threads = [
        threading.Thread(target=lane_worker, args=(i,))
        for i in range(max(1, min(args.lanes, len(modules))))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reports.sort(key=lambda r: modules.index(r["module"]))
    (out / "report.json").write_text(json.dumps(reports, indent=1))
    print(f"\nseed {args.seed}, {args.per_module} drawn per module; report: {out / 'report.json'}")
    bad = 0
    for rep in reports:
        for r in rep.get("mutants", ()):
            if r["outcome"] not in ("killed", "incompetent") and not r["equivalent"]:
                bad += 1
                print(f"\nSURVIVED {rep['module']}:{r['line']} {r['operator']}\n{r['diff']}")
        bad += "error" in rep
    return 1 if bad else 0


def _line(rep: dict) -> str:
    if "error" in rep:
        return f"{rep['module']:<30} {rep['error']}"
    live = rep["drawn"] - rep["equivalent"] - rep["not_applied"]
    return (
        f"{rep['module']:<30} killed {rep['killed']:>2} / {live:<2} "
        f"(equivalent {rep['equivalent']}, not applied {rep['not_applied']}, "
        f"pool {rep['plausible']}, {rep['seconds']} s)"
    )


if __name__ == "__main__":
    sys.exit(main())
