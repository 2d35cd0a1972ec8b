"""The wheel: built from this checkout, it installs the one namespaced package
``clips4rt`` (runtime, compiled extension inside it) and nothing of the training side;
installed alone, the runtime segments with its embedded model from any directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-build-isolation",
        "--no-deps",
        "-w",
        str(out),
        f"--config-settings=build-dir={out / 'build'}",
        str(REPO),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    (whl,) = out.glob("clips4rt-*.whl")
    return whl


def test_wheel_installs_only_the_namespaced_runtime(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"clips4rt", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    assert any(re.fullmatch(r"clips4rt/_cpu\..*(so|pyd)", n) for n in names), names
    assert "clips4rt/models/toy.onnx" in names  # the embedded default model
    assert not [n for n in names if n.endswith((".pt", ".pth", ".safetensors"))]
    with zipfile.ZipFile(wheel) as z:  # no torch code in the runtime
        for n in names:
            if n.endswith(".py"):
                text = z.read(n).decode()
                assert not re.search(r"^\s*(import|from) (torch|triton|open_clip)\b", text, re.M), n
                assert not re.search(r"^\s*(import|from) (train|kernels)\b", text, re.M), n


def test_installed_wheel_runs_outside_the_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    assert size < 20 * 2**20, f"runtime install is {size / 2**20:.1f} MiB"
    # -S: no site hooks, so neither the editable install's path nor this checkout is
    # importable; numpy, onnxruntime and pillow come from this environment.
    paths = [str(target), sysconfig.get_path("purelib")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    work = tmp_path / "elsewhere"
    work.mkdir()
    code = (
        "import importlib.util, sys, clips4rt\n"
        "assert clips4rt.__file__.startswith(sys.argv[1]), clips4rt.__file__\n"
        "assert importlib.util.find_spec('train') is None\n"
        "assert importlib.util.find_spec('kernels') is None\n"
        "from clips4rt import kernels\n"
        "assert kernels.HAVE_NATIVE\n"
        "r = clips4rt.Segmenter().run(clips4rt.default_model().parent.parent / 'data' /"
        " 'demo_scene.png', ['sky', 'grass', 'water'])\n"
        "assert 'torch' not in sys.modules\n"
        "print(r.labels.shape, sorted(set(r.labels.ravel().tolist())))\n"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", code, str(target)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "(" in done.stdout
    done = subprocess.run(
        [sys.executable, "-S", "-m", "clips4rt", "demo", "--out", "demo"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (work / "demo").is_dir() and any((work / "demo").iterdir())
