# ruff: noqa: E501  (the mutant table quotes source lines as they are)
"""Mutation check: plausible one-line bugs, applied one at a time, against the tests
that guard the module. A mutant is *killed* when those tests fail.

    python benchmarks/mutants.py [--only NAME[,NAME]] [--list]

Each mutant is (module, the exact text replaced, its replacement, the test files run).
The working tree is restored after every mutant (also on Ctrl-C). Prints one row per
mutant and the score per module; exits 1 if any mutant survives. Add a mutant whenever a
bug slips past the suite, and a test that kills it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# name: (module, old, new, tests)
MUTANTS = {
    "no optimiser step": (
        "train/method/loop.py", "            opt.step()\n", "            pass\n",
        ["tests/test_semantics.py::test_every_step_moves_the_weights_by_about_the_learning_rate"]),
    "resume without the scheduler": (
        "train/method/loop.py", '        sched.load_state_dict(ckpt["scheduler"])\n', "",
        ["tests/test_semantics.py::test_resume_restores_every_piece_of_state"]),
    "resume without the unknown prototypes": (
        "train/method/loop.py", '            unknown.load_state_dict(ckpt["unknown"])\n',
        "            pass\n",
        ["tests/test_semantics.py::test_resume_restores_every_piece_of_state"]),
    "cosine decays to half": (
        "train/schedule.py", "0.5 * (1 + math.cos(", "0.5 * (1.5 + 0.5 * math.cos(",
        ["tests/test_semantics.py::test_warmup_cosine_values"]),
    "teacher softmax at the student's scale": (
        "train/method/losses.py", "torch.softmax(teacher_scale * cos", "torch.softmax(student_scale * cos",
        ["tests/test_semantics.py", "tests/test_train_parts.py"]),
    "no Hungarian matching": (
        "train/evaluate/modes.py", "    mapping = hungarian_match(conf)\n",
        "    mapping = np.arange(conf.shape[1] - 1)\n",
        ["tests/test_semantics.py::test_unsupervised_and_probe_find_a_known_answer"]),
    "SCLIP without its FFN": (
        "clips4rt/export/dense_clip.py",
        "    x = x + blk.ls_1(_self_attention(blk, x, keys=True))\n    return x + blk.ls_2(blk.mlp(blk.ln_2(x)))\n",
        "    return x + blk.ls_1(_self_attention(blk, x, keys=True))\n",
        ["tests/test_dense_parity.py"]),
    "SCLIP's k-k attention as q-k": (
        "clips4rt/export/dense_clip.py", "torch.softmax(k @ k.transpose(-1, -2) * scale, dim=-1)",
        "torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)", ["tests/test_dense_parity.py"]),
    "SCLIP interpolates like MaskCLIP": (
        "clips4rt/export/dense_clip.py", '@dense_mode("sclip", pos_pad=0.1)',
        '@dense_mode("sclip", pos_pad=0.0)', ["tests/test_dense_parity.py"]),
    "windows not averaged": (
        "clips4rt/window.py", "    acc /= count[None]\n", "", ["tests/test_window.py"]),
    "windows not moved back to the border": (
        "clips4rt/window.py", "max(min(i * stride + window, n) - window, 0)", "i * stride",
        ["tests/test_window.py"]),
    "synonyms not mapped to their class": (
        "clips4rt/vocab.py", "        if self.owner is None:\n", "        if True:\n",
        ["tests/test_vocab.py"]),
    "per-call logit scale ignored": (
        "clips4rt/segmenter.py", "win, float(logit_scale))", "win, float(self.info.logit_scale))",
        ["tests/test_vocab.py"]),
    "no negative vocabulary": (
        "clips4rt/background.py", "        return list(info.negative_classes or info.known_classes)",
        "        return []", ["tests/test_find_x.py"]),
    "negatives never dropped near a query name": (
        "clips4rt/background.py", "if float(row.max()) < max_cosine]", "]",
        ["tests/test_find_x.py"]),
    "run.json entries not checked": (
        "train/method/run.py", "    if bad:\n        raise C.CheckpointError(", "    if False:\n        raise C.CheckpointError(",
        ["tests/test_hostile_run.py"]),
    "brace patterns not counted": (
        "train/method/data.py", "    if n > MAX_PATTERNS:\n", "    if False:\n",
        ["tests/test_hostile_data.py::test_brace_patterns_are_counted_before_expanding"]),
    "PNG chunk scan without the rewind": (
        "clips4rt/images.py", "    def __enter__(self):\n        self.f.seek(0)\n",
        "    def __enter__(self):\n", ["tests/test_semantics.py::test_truncated_png_as_bytes"]),
    "label PNG background 0": (
        "clips4rt/visualize.py", "idx = np.where(labels < 0, 255, labels)", "idx = np.where(labels < 0, 0, labels)",
        ["tests/test_semantics.py::test_label_png_background_values"]),
}  # fmt: skip


def run(name: str) -> tuple[bool, float]:
    module, old, new, tests = MUTANTS[name]
    path = REPO / module
    original = path.read_text()
    if original.count(old) != 1:
        raise SystemExit(f"{name}: the text to replace occurs {original.count(old)} times in "
                         f"{module}; update the mutant")  # fmt: skip
    t0 = time.perf_counter()
    try:
        path.write_text(original.replace(old, new))
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                            *tests], cwd=REPO, capture_output=True, text=True)  # fmt: skip
    finally:
        path.write_text(original)
    return r.returncode != 0, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--only", help="comma-separated mutant names")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    names = list(MUTANTS) if not args.only else [n.strip() for n in args.only.split(",")]
    if args.list:
        print("\n".join(f"{n}: {MUTANTS[n][0]}" for n in names))
        return 0
    print("| module | mutant | killed | seconds |\n| --- | --- | --- | --- |")
    score: dict[str, list[bool]] = {}
    for n in names:
        killed, secs = run(n)
        score.setdefault(MUTANTS[n][0], []).append(killed)
        print(f"| {MUTANTS[n][0]} | {n} | {'yes' if killed else 'NO'} | {secs:.0f} |", flush=True)
    print("\n| module | killed / mutants |\n| --- | --- |")
    for m, ks in score.items():
        print(f"| {m} | {sum(ks)} / {len(ks)} |")
    return 0 if all(k for ks in score.values() for k in ks) else 1


if __name__ == "__main__":
    sys.exit(main())
