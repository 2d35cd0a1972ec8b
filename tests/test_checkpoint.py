"""Checkpoints load with weights_only=True: files that would run code are refused, old
ones convert, a truncated newest one is skipped on --resume."""

import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from test_train_loop import TINY as LOOP_TINY  # noqa: E402

from train import checkpoint as C  # noqa: E402
from train.method.config import load_config  # noqa: E402
from train.method.loop import train  # noqa: E402

TINY = [*LOOP_TINY, "--ckpt_every=1"]  # the loop tests' tiny run, a checkpoint every step


def _cfg(out, *extra):
    return load_config("toy", [*TINY, f"--out={out}", *extra])


class _Payload:
    """Unpickling this creates ``marker``: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def _plant(path, marker, **fields):
    torch.save({"model": {"w": torch.zeros(2)}, "payload": _Payload(marker), **fields}, path)


def test_planted_code_never_runs(tmp_path, capsys):
    from train.export import main as export_main

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    _plant(evil, marker)
    with pytest.raises(C.CheckpointError, match="refused.*--convert"):
        C.load(evil)
    rc = export_main(["--checkpoint", str(evil), "--out", str(tmp_path / "b.onnx")])
    assert rc != 0 and "refused" in capsys.readouterr().err
    run = tmp_path / "run"  # --resume over a planted newest checkpoint: refused, no fallback
    train(_cfg(run, "--steps=1"))
    _plant(run / "step_0000001.pt", marker)  # the run's own newest checkpoint, replaced
    with pytest.raises(C.CheckpointError, match="refused"):
        train(_cfg(run, "--steps=12"), resume=True)
    assert C.main(["--convert", str(evil), str(tmp_path / "converted.pt")]) == 2
    assert "convert safely" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "converted.pt").exists()
    # the same file, unpickled without the guard, does run its code (the test is real)
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_everything_train_writes_loads_weights_only(tmp_path):
    last = train(_cfg(tmp_path, "--steps=2"))
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["step"] == 2 and isinstance(ckpt["rng"]["numpy"]["keys"], torch.Tensor)
    assert ckpt["config"]["steps"] == 2 and ckpt["unknown"] is not None
    np.random.seed(5)
    state = C.numpy_rng_state()
    a = np.random.rand(3)
    C.set_numpy_rng_state(state)
    np.testing.assert_array_equal(np.random.rand(3), a)


def test_old_checkpoints_convert(tmp_path, capsys):
    run = tmp_path / "run"
    last = train(_cfg(run, "--steps=2"))
    old = torch.load(last, weights_only=True)
    old["rng"]["numpy"] = np.random.get_state()  # as checkpoints before this format
    torch.save(old, last)
    with pytest.raises(C.CheckpointError, match="train.checkpoint --convert"):
        C.load(last)
    new = tmp_path / "new.pt"
    assert C.main(["--convert", str(last), str(new)]) == 0
    assert torch.load(new, weights_only=True)["step"] == 2
    new.replace(last)
    resumed = train(_cfg(run, "--steps=3"), resume=True)
    assert C.load(resumed)["step"] == 3
    assert C.main(["--convert", str(tmp_path / "missing.pt"), str(new)]) == 2
    assert "error:" in capsys.readouterr().err


def test_resume_skips_a_truncated_newest_checkpoint(tmp_path):
    full = C.load(train(_cfg(tmp_path / "full", "--steps=4")))
    cut = tmp_path / "cut"
    train(_cfg(cut, "--steps=4"), stop_after=3)
    newest = cut / "step_0000003.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # e.g. power lost while writing
    with pytest.raises(C.CheckpointError, match="truncated") as e:
        C.load(newest)
    assert e.value.corrupt
    with pytest.warns(RuntimeWarning, match="skipping .*step_0000003"):
        resumed = C.load(train(_cfg(cut, "--steps=4"), resume=True))
    for k, v in full["model"].items():  # resumed from step 2: still the same run
        torch.testing.assert_close(resumed["model"][k], v, rtol=0, atol=0, msg=k)
    for p in cut.glob("step_*.pt"):
        p.write_bytes(b"")
    with pytest.raises(C.CheckpointError, match="no readable checkpoint"):
        with pytest.warns(RuntimeWarning, match="skipping"):
            train(_cfg(cut, "--steps=4"), resume=True)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "list.pt"
    torch.save([1, 2], p)
    with pytest.raises(C.CheckpointError, match="not a clips4rt"):
        C.load(p)
    with pytest.raises(FileNotFoundError):
        C.load(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(pickle.dumps({"a": 1}) + b"x" * 10)
    with pytest.raises(C.CheckpointError):
        C.load(tmp_path / "junk.pt")


def test_a_new_run_never_mixes_with_another(tmp_path, capsys, monkeypatch):
    import json

    from train.__main__ import main

    out = tmp_path / "run"
    first = C.load(train(_cfg(out, "--steps=2", "--keep=1")))
    run = json.loads((out / "run.json").read_text())
    assert run == {"run_id": first["run_id"], "checkpoints": ["step_0000002.pt"]}
    before = sorted(p.name for p in out.iterdir())
    # a second run without --resume / --overwrite: refused before the teacher loads
    import train.method.loop as loop

    real_teacher = loop.Teacher
    monkeypatch.setattr(loop, "Teacher", lambda *a: pytest.fail("teacher loaded"))
    args = ["--preset", "toy", *TINY, f"--out={out}", "--steps=3"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "holds another run" in err and "--resume" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == before
    with pytest.raises(SystemExit) as e:  # argparse: one or the other
        main([*args, "--resume", "--overwrite"])
    assert e.value.code == 2 and "not allowed with" in capsys.readouterr().err
    monkeypatch.setattr(loop, "Teacher", real_teacher)
    # --overwrite: the old run moves aside whole, the new one starts at step 1
    new = C.load(train(_cfg(out, "--steps=3", "--keep=2"), overwrite=True))
    aside = [p for p in out.iterdir() if p.name.startswith("previous-")]
    assert len(aside) == 1 and sorted(p.name for p in aside[0].iterdir()) == [
        "metrics.csv", "run.json", "step_0000002.pt"]  # fmt: skip
    assert new["run_id"] != first["run_id"]
    rows = (out / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]
    # rotation touches only this run's files: a stray checkpoint stays
    stray = out / "step_0000001.pt"
    torch.save({"foreign": 1}, stray)
    train(_cfg(out, "--steps=5", "--keep=2"), resume=True)
    assert stray.exists()
    assert json.loads((out / "run.json").read_text())["checkpoints"] == [
        "step_0000004.pt", "step_0000005.pt"]  # fmt: skip


def test_metrics_rows_are_not_duplicated_after_a_resume(tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(out, "--steps=6", "--ckpt_every=3")
    train(cfg, stop_after=5)  # "killed" after step 5: checkpoints at 3 and 5
    (out / "step_0000005.pt").unlink()  # as if the kill came before its checkpoint
    train(cfg, resume=True)  # replays steps 4 and 5
    steps = [r.split(",")[0] for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == ["1", "2", "3", "4", "5", "6"]


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    out = tmp_path / "run"
    train(_cfg(out, "--steps=2"))
    other = C.load(out / "step_0000002.pt")
    other["run_id"] = "someone-else"
    torch.save(other, out / "step_0000002.pt")
    with pytest.raises(C.CheckpointError, match="mixes two runs"):
        train(_cfg(out, "--steps=3"), resume=True)


def test_resume_refuses_another_recipe_and_names_the_overrides_that_restore_it(tmp_path):
    """A preset that moved since the run began (toy-vit's temperature did), or an override
    forgotten on the resume, would continue the run with other losses without a word."""
    out = tmp_path / "run"
    train(_cfg(out, "--steps=2"))
    with pytest.raises(ValueError, match=r"with --concentration=10.0 --lr=0.001 \(--steps"):
        train(_cfg(out, "--steps=3", "--lr=0.01", "--concentration=5"), resume=True)
    assert not (out / "step_0000003.pt").exists()  # refused before a step
    # where and how often it writes, its validation and its length may change
    last = train(_cfg(out, "--steps=3", "--keep=1", "--log_every=2", "--workers=0"), resume=True)
    assert C.load(last)["step"] == 3


def test_recipe_changes_skip_fields_a_checkpoint_predates():
    now = load_config("toy", ["--concentration=5"])
    saved = load_config("toy", ["--data=/my data", "--steps=9"]).to_dict()
    assert now.recipe_changes(saved) == ["'--data=/my data'", "--concentration=10.0"]
    del saved["concentration"]  # written before the field existed: not compared
    saved["a_field_from_elsewhere"] = 1  # unknown keys are ignored
    assert now.recipe_changes(saved) == ["'--data=/my data'"]
    assert now.recipe_changes(["not", "a", "dict"]) == []
    saved["lr"] = torch.ones(3)  # a hand-edited value of another type: a change, no crash
    assert now.recipe_changes(saved)[1].startswith("'--lr=tensor(")
    saved["data"] = "x" * 10**6  # a hand-edited value: the message stays short
    assert len(now.recipe_changes(saved)[0]) < 300
