"""The wheel: built from this checkout, it installs the one namespaced package
``clips4rt`` (runtime, compiled extension inside it, and the export in
``clips4rt.export``) and nothing of the training side; installed alone, the runtime
segments with its embedded model from any directory, and with the export extra's
packages it exports a CLIP and builds a model by name there, no checkout needed."""

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
    assert "clips4rt/data/index.html" in names  # clips4rt serve's page
    assert not [n for n in names if n.endswith((".pt", ".pth", ".safetensors"))]
    assert "clips4rt/export/graphs.py" in names  # `clips4rt export` without a checkout
    with zipfile.ZipFile(wheel) as z:  # no torch code in the runtime; none of train anywhere
        for n in names:
            if n.endswith(".py"):
                text = z.read(n).decode()
                heavy = re.search(r"^\s*(import|from) (torch|triton|open_clip)\b", text, re.M)
                assert not heavy or n.startswith("clips4rt/export/"), n
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


def test_installed_wheel_exports_and_builds_by_name_outside_the_checkout(wheel, tmp_path):
    """The export extra's packages (torch, open_clip, onnx) from this environment, the
    wheel's clips4rt, no checkout: export a CLIP from its config, then a model by name
    (open_clip's download served from a local state dict), then a real photo."""
    pytest.importorskip("open_clip")
    target = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         str(wheel)], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    paths = [str(target), sysconfig.get_path("purelib")]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "CLIPS4RT_HOME": str(work / "c")}
    config = REPO / "train" / "configs" / "tiny-vit.json"
    done = subprocess.run(
        [sys.executable, "-S", "-m", "clips4rt", "export", "--model-config", str(config),
         "--dense", "sclip", "--templates", "simple", "-o", "tiny.onnx"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert (work / "tiny.onnx").is_file() and (work / "tiny.text.onnx").is_file()
    code = (
        "import importlib.util, sys, json, torch, open_clip\n"
        "import open_clip.factory as F, open_clip.pretrained as P\n"
        "import clips4rt\n"
        "assert clips4rt.__file__.startswith(sys.argv[1]), clips4rt.__file__\n"
        "assert importlib.util.find_spec('train') is None\n"
        "open_clip.add_model_config(sys.argv[2])\n"
        "torch.manual_seed(0)\n"
        "torch.save(open_clip.create_model('tiny-vit').state_dict(), 'w.bin')\n"
        "P._PRETRAINED['tiny-vit'] = {'wheeltag': {'url': '', 'hf_hub': ''}}\n"
        "F.download_pretrained = P.download_pretrained = lambda *a, **k: 'w.bin'\n"
        "from skimage import data\n"
        "r = clips4rt.Segmenter('tiny-vit/wheeltag').run(data.coffee(), ['cup', 'table'])\n"
        "print(r.labels.shape)\n"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", code, str(target), str(config)],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "(400, 600)" in done.stdout and "built tiny-vit/wheeltag" in done.stderr
    assert (work / "c" / "models" / "tiny-vit--wheeltag" / "model.onnx").is_file()
