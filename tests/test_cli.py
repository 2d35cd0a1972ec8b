"""The clips4rt command as a user runs it (subprocesses), on the embedded model."""

import subprocess
import sys

import numpy as np
from PIL import Image

import clips4rt


def _cli(*args, cwd=None, **kw):
    return subprocess.run(
        [sys.executable, "-m", "clips4rt.cli", *args], capture_output=True, text=True, cwd=cwd,
        **kw,
    )  # fmt: skip


def _photo(path, seed=0, size=(40, 30)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), np.uint8)).save(path)
    return path


def test_version_and_default_model():
    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"clips4rt {clips4rt.__version__}"
    assert clips4rt.default_model().is_file()
    seg = clips4rt.Segmenter()  # no path: the embedded toy model
    assert seg.path == clips4rt.default_model() and seg.info.kind == "clip-s4"


def test_segment_folders_globs_and_no_collisions(tmp_path):
    for d in ("a", "b", "b/c"):
        (tmp_path / "in" / d).mkdir(parents=True)
    _photo(tmp_path / "in" / "a" / "x.png")
    _photo(tmp_path / "in" / "b" / "x.png", 1)
    _photo(tmp_path / "in" / "b" / "c" / "y.jpg", 2)
    (tmp_path / "in" / "b" / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    r = _cli("segment", str(tmp_path / "in"), "--classes", "sky,grass", "--out", str(out))
    assert r.returncode == 0, r.stderr
    made = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert made == ["a/x_labels.png", "a/x_overlay.png", "b/c/y_labels.png",
                    "b/c/y_overlay.png", "b/x_labels.png", "b/x_overlay.png"]  # fmt: skip
    out2 = tmp_path / "out2"
    r = _cli("segment", str(tmp_path / "in" / "*" / "x.png"), "--classes", "sky", "--out",
             str(out2), "--size", "64", "--templates", "imagenet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out2.rglob("*_overlay.png")) == ["x_overlay.png"] * 2
    r = _cli("segment", str(tmp_path / "in"), "--classes", "sky", "--size", "0")
    assert r.returncode == 2 and "size" in r.stderr and "Traceback" not in r.stderr
    r = _cli("segment", str(tmp_path / "in"), "--classes", "sky", "--templates", "nope")
    assert r.returncode == 2 and "--templates" in r.stderr


def test_more_than_255_classes_give_16_bit_label_pngs(tmp_path):
    img = _photo(tmp_path / "p.png")
    names = ",".join(f"thing {i}" for i in range(300))
    r = _cli("segment", str(img), "--classes", names, "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    lab = Image.open(tmp_path / "o" / "p_labels.png")
    values = np.unique(np.asarray(lab))
    assert lab.mode.startswith("I") and ((values < 300) | (values == 65535)).all()
    assert 65535 in values  # pixels the negative vocabulary won: the 16-bit background value
    r = _cli("segment", str(img), "--classes", names, "--out", str(tmp_path / "n"),
             "--no-negatives")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert np.asarray(Image.open(tmp_path / "n" / "p_labels.png")).max() < 300


def test_info_into_a_closed_pipe_is_quiet():
    # the reader is gone before the first write: deterministic EPIPE
    r = subprocess.run(
        f"(sleep 1; {sys.executable} -m clips4rt.cli info; echo rc=$? >&2) | true",
        shell=True, capture_output=True, text=True,
    )  # fmt: skip
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
    assert "rc=1" in r.stderr


def test_default_bundle_refuses_to_overwrite_the_shipped_model(tmp_path):
    import pytest

    pytest.importorskip("torch")
    pytest.importorskip("open_clip")
    shipped = clips4rt.default_model()
    before = shipped.read_bytes()
    r = subprocess.run([sys.executable, "-m", "train.export.default_bundle", "--dense", "sclip"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and "--force" in r.stderr and "--out" in r.stderr
    assert shipped.read_bytes() == before
    r = subprocess.run([sys.executable, "-m", "train.export.default_bundle", "--dense", "sclip",
                        "--out", str(tmp_path)], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "toy.onnx").is_file() and shipped.read_bytes() == before
    seg = clips4rt.Segmenter(tmp_path / "toy.onnx")
    assert seg.info.kind == "sclip"
