"""The layers of README "Architecture", checked on the source: every import points
down, the runtime imports no torch, and no package imports another's private names.
Also: config defaults are the default preset, and the training commands run from any
working directory."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# lower rank = lower layer; a module may import its own rank or below
RANKS = {
    "kernels": 0,
    "clips4rt": 1,
    "clips4rt.export": 2,  # in the wheel, imports torch: never imported by the runtime
    "train": 3,  # train/__init__ and SHARED: used by all above
    "train.toyworld": 4,
    "train.evaluate": 5,
    "train.method": 6,  # validation during training uses train.evaluate
    "train.export": 7,
    "train.__main__": 8,
    "train.pretrain_teacher": 8,  # old command names, forwarding to the new homes
    "train.default_bundle": 8,
}
SHARED = {"train.checkpoint", "train.schedule", "train.kmeans", "train.shards"}
# upward imports allowed inside a function only (never at import time): the runtime's two
# doors to its export layer, each behind clips4rt.export.require()
LAZY_UP = {("clips4rt.hub", "clips4rt.export"), ("clips4rt.cli", "clips4rt.export")}


def _layer(module: str) -> str | None:
    if module in SHARED:
        return "train"
    parts = module.split(".")
    for n in (2, 1):
        if ".".join(parts[:n]) in RANKS:
            return ".".join(parts[:n])
    return None


def _modules():
    for top in ("kernels", "clips4rt", "train"):
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join(parts), path


def _imports(module: str, path: Path, top_only: bool = False):
    """(imported module, imported names) of every import statement, nested ones too
    (``top_only``: those that run when the module is imported)."""
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text())
    nodes = ast.walk(tree)
    if top_only:  # module level, and inside module-level if/try blocks
        nodes = [n for top in tree.body if not isinstance(top, (ast.FunctionDef,
                 ast.AsyncFunctionDef, ast.ClassDef)) for n in ast.walk(top)]  # fmt: skip
    for node in nodes:
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                pkg = module.split(".") if is_pkg else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            yield base, [a.name for a in node.names]


def test_every_import_points_down():
    bad = []
    for module, path in _modules():
        own = _layer(module)
        assert own is not None, f"{module} is in no layer of RANKS: add it"
        top = {(t, tuple(n)) for t, n in _imports(module, path, top_only=True)}
        for target, names in _imports(module, path):
            for full in [target] + [f"{target}.{n}" for n in names]:
                layer = _layer(full)
                lazy = (target, tuple(names)) not in top
                if layer is not None and RANKS[layer] > RANKS[own]:
                    if lazy and (module, layer) in LAZY_UP:
                        continue
                    bad.append(f"{module} imports {full} ({layer} is above {own})")
                    break
    assert not bad, "\n".join(bad)


def test_runtime_imports_no_training_code():
    heavy = ("torch", "triton", "open_clip", "onnx", "scipy", "train", "kernels")
    for module, path in _modules():
        if _layer(module) != "clips4rt":
            continue
        for target, _ in _imports(module, path):
            assert target.split(".")[0] not in heavy, f"{module} imports {target}"


def test_no_private_names_across_packages():
    bad = []
    for module, path in _modules():
        for target, names in _imports(module, path):
            if _layer(target) is None or _layer(target).split(".")[0] == module.split(".")[0]:
                continue
            tail = target.split(".")[-1]
            privs = [n for n in names if n.startswith("_")]
            if privs or (tail.startswith("_") and tail != "__init__"):
                bad.append(f"{module} imports private {target} {privs}")
    # the runtime wraps its own compiled module: clips4rt.kernels -> clips4rt._cpu is
    # inside one package and not listed here
    assert not bad, "\n".join(bad)


def test_config_defaults_are_the_default_preset():
    pytest.importorskip("torch")
    from train.method.config import TrainConfig, load_config

    assert TrainConfig() == load_config("toy")


@pytest.mark.slow
def test_training_commands_run_from_any_directory(tmp_path):
    pytest.importorskip("open_clip")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    tiny = ["--toy_pool=6", "--batch=2", "--image_size=64", "--teacher_size=96",
            "--segments=4", "--steps=1", "--unknown_prototypes=2", "--warmup=1"]  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "train", "--preset", "toy", *tiny, "--out=run"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    ckpt = tmp_path / "run" / "step_0000001.pt"
    assert ckpt.is_file()
    exp = subprocess.run(
        [sys.executable, "-m", "train.export", "--checkpoint", str(ckpt), "-o", "s.onnx"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert exp.returncode == 0, exp.stderr[-2000:]
    for cmd in (["train.toyworld", "--count", "2", "--size", "64", "--out", "val"],
                ["train.evaluate", "--model", "s.onnx", "--data", "val"]):  # fmt: skip
        done = subprocess.run([sys.executable, "-m", *cmd], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
