"""A training run's folder and state: ``step_*.pt`` checkpoints (written atomically,
rotated), ``run.json`` (the run's id and its checkpoints: rotation and ``--resume`` touch
only those), ``metrics.csv``, and the RNG states a checkpoint carries so that
``--resume`` is exact. A new run into a folder that holds another one is refused unless
``--overwrite`` moves the old files aside.

The folder is untrusted input: ``run.json`` may name only ``step_<digits>.pt`` files of
the folder itself (a hand-edited entry like ``../x`` or ``/etc/passwd`` used to be
rotated away), and one process trains in it at a time (``RunLock``, an exclusive
``flock`` on ``<out>/.lock``)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import re
import tempfile
import time
import warnings
from pathlib import Path

import torch

from train import checkpoint as C


def rng_state(gen: torch.Generator) -> dict:
    return {
        "gen": gen.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": C.numpy_rng_state(),
        "python": random.getstate(),
    }


def set_rng_state(gen: torch.Generator, s: dict) -> None:
    gen.set_state(s["gen"])
    torch.set_rng_state(s["torch"])
    C.set_numpy_rng_state(s["numpy"])
    random.setstate(s["python"])


RUN_FILE = "run.json"
LOCK_FILE = ".lock"
CHECKPOINT_NAME = re.compile(r"step_\d{1,12}\.pt")  # what run.json may list
MAX_RUN_FILE = 1 << 20


def _run_state(out: Path) -> dict | None:
    path = out / RUN_FILE
    if path.exists() and not path.is_file():  # a FIFO or folder: never opened
        raise C.CheckpointError(f"{path} is not a regular file; remove it")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_RUN_FILE + 1)
        if len(raw) > MAX_RUN_FILE:
            raise ValueError(f"over {MAX_RUN_FILE} bytes")
        state = json.loads(raw)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise C.CheckpointError(f"{path} is unreadable ({e}); fix or remove it") from None
    if not (
        isinstance(state, dict)
        and isinstance(state.get("run_id"), str)
        and isinstance(state.get("checkpoints"), list)
    ):
        raise C.CheckpointError(
            f"{path} is not a clips4rt run file (an object with run_id and checkpoints); "
            "fix or remove it"
        )
    bad = [
        n for n in state["checkpoints"] if not (isinstance(n, str) and CHECKPOINT_NAME.fullmatch(n))
    ]
    if bad:
        raise C.CheckpointError(
            f"{path} lists {bad[:3]!r}, not checkpoint names of this folder "
            "(step_<digits>.pt): the file was edited; fix or remove it (nothing was deleted)"
        )
    return state


def open_out(out: Path) -> Path:
    """``--out`` expanded (``~``), created, and checked writable before anything loads;
    ValueError naming the fix otherwise."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder: choose a folder for the run")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except (NotADirectoryError, FileExistsError):
        raise ValueError(f"--out {out}: a part of the path is a file, not a folder") from None
    except OSError as e:
        raise ValueError(f"--out {out} cannot be written ({e.strerror or e}): choose a folder "
                         "you can write to") from None  # fmt: skip
    return out


class RunLock:
    """One training process per folder: an exclusive ``flock`` on ``<out>/.lock``, held
    while the run lives (the OS drops it when the process ends, however it ends)."""

    def __init__(self, out: Path, enabled: bool = True):
        self.path, self.enabled, self.fd = Path(out) / LOCK_FILE, enabled, None

    def __enter__(self) -> RunLock:
        if not self.enabled:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ValueError(
                f"--out {self.path.parent} is in use by another training run ({holder}): "
                "wait for it to end, or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _write_run_state(out: Path, state: dict) -> None:
    tmp = out / (RUN_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / RUN_FILE)


def _run_files(out: Path) -> list[Path]:
    names = ("metrics.csv", RUN_FILE, "best.pt", "tensorboard")
    return sorted(p for p in out.glob("*") if p.name in names or p.match("step_*.pt"))


def prepare_out(out: Path, resume: bool, overwrite: bool, main: bool) -> None:
    """Refuse to start a new run over another run's files, or move them aside."""
    if resume or not out.exists():
        return
    old = _run_files(out)
    if not old:
        return
    if not overwrite:
        raise ValueError(
            f"--out {out} holds another run ({len(old)} files: "
            f"{', '.join(p.name for p in old[:4])}{', ...' if len(old) > 4 else ''}): continue "
            "it with --resume, start over with --overwrite (the old files move to "
            f"{out}/previous-<time>/), or choose another --out"
        )
    if main:
        aside = out / time.strftime("previous-%Y%m%d-%H%M%S")
        n = 0
        while aside.exists():
            n += 1
            aside = aside.with_name(f"{aside.name.split('.')[0]}.{n}")
        aside.mkdir()
        for p in old:
            os.replace(p, aside / p.name)


def save_best(path: Path, state: dict) -> None:
    """The best checkpoint by validation mIoU (``best.pt``), written atomically; not
    in the rotation."""
    C.save(state, path)


def save_checkpoint(path: Path, state: dict, keep: int) -> None:
    """Write atomically (temp file, fsync, rename), list it in run.json, then keep the
    newest ``keep`` of this run's checkpoints (0 = all); other files are not touched."""
    C.save(state, path)
    out = path.parent
    run = _run_state(out) or {"run_id": state["run_id"], "checkpoints": []}
    names = [n for n in run["checkpoints"] if n != path.name] + [path.name]
    names.sort()
    drop = names[:-keep] if keep > 0 else []
    run["checkpoints"] = [n for n in names if n not in drop]
    _write_run_state(out, run)
    for name in drop:
        (out / name).unlink(missing_ok=True)


def latest_checkpoint(out: Path) -> Path | None:
    run = _run_state(out)
    ckpts = (
        [out / n for n in run["checkpoints"] if (out / n).exists()]
        if run
        else sorted(out.glob("step_*.pt"))
    )
    return ckpts[-1] if ckpts else None


def load_resume(out: Path) -> tuple[Path, dict]:
    """The newest readable checkpoint of the run in ``out``: a truncated or corrupt
    newer one (a crash or full disk while writing) is skipped with a warning; an unsafe
    one, or one of another run, stops."""
    run = _run_state(out)
    if run is None:  # a folder written before run.json existed
        ckpts = sorted(out.glob("step_*.pt"), reverse=True)
    else:
        ckpts = [out / n for n in reversed(run["checkpoints"]) if (out / n).exists()]
    if not ckpts:
        raise FileNotFoundError(f"--resume: no checkpoint in {out}; drop --resume to start fresh")
    for path in ckpts:
        try:
            ckpt = C.load(path)
        except C.CheckpointError as e:
            if not e.corrupt:
                raise
            warnings.warn(f"--resume: skipping {e}", RuntimeWarning, stacklevel=3)
            continue
        if run is not None and ckpt.get("run_id") not in (None, run["run_id"]):
            raise C.CheckpointError(
                f"--resume: {path} belongs to run {ckpt.get('run_id')}, but {out / RUN_FILE} "
                f"is run {run['run_id']}: the folder mixes two runs; move one away"
            )
        return path, ckpt
    raise C.CheckpointError(
        f"--resume: no readable checkpoint in {out} ({len(ckpts)} corrupt); drop --resume "
        "to start fresh",
        corrupt=True,
    )
