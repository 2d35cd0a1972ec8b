"""Hostile run folders, full disks, ``~`` paths and prompt caches (issue 26, items 1, 5,
7, 8, 9, 12, 15)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

import clips4rt
from clips4rt import device as DV

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from tests.test_train_loop import TINY as LOOP_TINY  # noqa: E402
from train import checkpoint as C  # noqa: E402
from train.__main__ import main  # noqa: E402
from train.method import loop  # noqa: E402
from train.method import run as R  # noqa: E402
from train.method.config import load_config  # noqa: E402

TINY = [*LOOP_TINY, "--ckpt_every=1", "--warmup=1"]  # later flags win


def _cfg(out, *extra):
    return load_config("toy", [*TINY, f"--out={out}", *extra])


@pytest.mark.parametrize("entries", [["../victim.txt"], ["/VICTIM"], ["step_1.pt/../../x"],
                                     ["a.pt"], [None], [3]])  # fmt: skip
def test_run_json_never_names_files_outside_the_run(tmp_path, entries):
    out = tmp_path / "run"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    entries = [str(victim) if e == "/VICTIM" else e for e in entries]
    (out / "run.json").write_text(json.dumps({"run_id": "x", "checkpoints": entries}))
    with pytest.raises(C.CheckpointError, match="not checkpoint names"):
        R.save_checkpoint(out / "step_0000009.pt", {"run_id": "x"}, keep=1)
    assert victim.read_text() == "keep me"
    with pytest.raises(C.CheckpointError):
        R.load_resume(out)


def test_a_run_json_that_is_not_a_file_never_blocks(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    os.mkfifo(out / "run.json")
    got = []

    def resume():
        try:
            R.load_resume(out)
        except C.CheckpointError as e:
            got.append(str(e))

    t = threading.Thread(target=resume, daemon=True)
    t.start()
    t.join(20)
    if t.is_alive():  # unblock the reader before failing
        with open(out / "run.json", "wb"):
            pass
        pytest.fail("reading a FIFO run.json blocked")
    assert got and "not a regular file" in got[0]


@pytest.mark.parametrize("text", ["[]", '"a string"', "null", "3", '{"run_id": 1}', "{"])
def test_a_run_json_of_another_shape_is_one_clear_error(tmp_path, text, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(text)
    with pytest.raises(C.CheckpointError, match="run.json"):
        R.load_resume(out)
    assert main(["--preset", "toy", *TINY, f"--out={out}", "--steps=2", "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "run.json" in err and "Traceback" not in err


def test_one_run_per_folder(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with R.RunLock(out):
        with pytest.raises(ValueError, match="in use by another training run"):
            loop.train(_cfg(out, "--steps=1"))
        assert main(["--preset", "toy", *TINY, f"--out={out}", "--steps=1"]) == 2
        assert f"pid {os.getpid()}" in capsys.readouterr().err
        assert not any(out.glob("step_*"))
    loop.train(_cfg(out, "--steps=1"))  # the lock is released with its holder
    assert (out / "step_0000001.pt").is_file()


def test_a_full_disk_keeps_the_first_error_and_leaves_no_partial_files(tmp_path, monkeypatch):
    out = tmp_path / "run"
    loop.train(_cfg(out, "--steps=2"))  # a run to resume, with metrics rows
    rows = (out / "metrics.csv").read_text().splitlines()
    real = torch.save

    def full(obj, f, *a, **k):
        f.write(b"x" * 4096)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(C.torch, "save", full)
    from train.method.logger import MetricsLog

    def close_fails(self):  # a full disk fails the log's flush on close too
        raise OSError(28, "No space left on device (close)")

    monkeypatch.setattr(MetricsLog, "close", close_fails)
    with pytest.raises(OSError) as e:
        loop.train(_cfg(out, "--steps=4"), resume=True)
    assert "close" not in str(e.value)  # the checkpoint's error, not the close's
    assert not list(out.glob("*.tmp")), list(out.iterdir())
    assert (out / "metrics.csv").read_text().splitlines()[: len(rows)] == rows
    monkeypatch.setattr(C.torch, "save", real)
    monkeypatch.undo()
    last = loop.train(_cfg(out, "--steps=4"), resume=True)  # --resume works afterwards
    assert last.name == "step_0000004.pt"


def test_metrics_rewrite_keeps_the_old_file_when_the_disk_is_full(tmp_path, monkeypatch):
    from train.method import logger

    path = tmp_path / "metrics.csv"
    path.write_text(",".join(logger.COLUMNS) + "\n1,0.5\n2,0.4\n3,0.3\n")
    before = path.read_text()

    class Full:
        def __init__(self, f):
            pass

        def writerows(self, rows):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(logger.csv, "writer", Full)
    with pytest.raises(OSError):
        logger._prepare_csv(path, 2)
    assert path.read_text() == before and not list(tmp_path.glob("*.tmp"))


def test_bad_out_values_are_one_line_before_the_teacher_loads(tmp_path, capsys, monkeypatch):
    def no_teacher(*a, **k):
        raise AssertionError("the teacher loaded before --out was checked")

    monkeypatch.setattr(loop, "Teacher", no_teacher)
    afile = tmp_path / "afile"
    afile.write_text("user data")
    for out, words in ((afile, "is a file"), (afile / "sub", "part of the path is a file")):
        assert main(["--preset", "toy", *TINY, f"--out={out}", "--steps=1"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and words in err and "Traceback" not in err
    assert afile.read_text() == "user data"


def test_tilde_paths_expand_to_home(tmp_path, monkeypatch, rng):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    out = R.open_out(Path("~/runs/a"))
    assert out == tmp_path / "home" / "runs" / "a" and out.is_dir()
    seg = clips4rt.Segmenter(cache_dir="~/.cache/clips4rt")
    seg.run(rng.integers(0, 255, (40, 40, 3), np.uint8), ["sky", "sand"])
    assert any((tmp_path / "home" / ".cache" / "clips4rt").rglob("*.npy"))
    DV.trt_options("~/trt", 8, 64)
    assert (tmp_path / "home" / "trt").is_dir()
    shutil_model = tmp_path / "home" / "m"
    shutil_model.mkdir()
    import shutil

    shutil.copy(clips4rt.default_model(), shutil_model / "toy.onnx")
    shutil.copy(clips4rt.default_model().with_name("toy.text.onnx"), shutil_model)
    assert clips4rt.Segmenter("~/m/toy.onnx").info.kind == "clip-s4"
    assert not (tmp_path / "~").exists()


def test_trt_max_side_zero_is_an_error(tmp_path):
    for bad in (0, -5, 1.5, True):
        with pytest.raises(ValueError, match="trt_max_side"):
            DV.trt_options(tmp_path, 8, 64, max_side=bad)


def _cache_file(seg, cache, name) -> Path:
    path = seg.text._disk._path(name, tuple(seg.info.prompt_templates))
    assert path.parent.parent == cache and path.is_file()
    return path


def test_hostile_prompt_cache_files_are_ignored(tmp_path, rng):
    cache = tmp_path / "cache"
    seg = clips4rt.Segmenter(cache_dir=cache)
    img = rng.integers(0, 255, (40, 40, 3), np.uint8)
    ref = seg.run(img, ["sky", "sand"]).labels
    huge = _cache_file(seg, cache, "sky")
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000000000,), }"
    raw = b"\x93NUMPY\x01\x00" + (header + " " * (117 - len(header)) + "\n").encode()
    huge.write_bytes(raw)  # 128 bytes claiming 400 GB of floats
    fifo = _cache_file(seg, cache, "sand")
    fifo.unlink()
    os.mkfifo(fifo)
    fresh = clips4rt.Segmenter(cache_dir=cache)
    got = []
    t = threading.Thread(target=lambda: got.append(fresh.run(img, ["sky", "sand"]).labels),
                         daemon=True)  # fmt: skip
    t.start()
    t.join(30)
    if t.is_alive():
        with open(fifo, "wb"):
            pass
        t.join(5)
        pytest.fail("a FIFO in the prompt cache blocked run()")
    np.testing.assert_array_equal(got[0], ref)
