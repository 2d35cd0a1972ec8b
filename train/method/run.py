"""A training run's folder and state: ``step_*.pt`` checkpoints (written atomically,
rotated), ``run.json`` (the run's id and its checkpoints: rotation and ``--resume`` touch
only those), ``metrics.csv``, and the RNG states a checkpoint carries so that
``--resume`` is exact. A new run into a folder that holds another one is refused unless
``--overwrite`` moves the old files aside."""

from __future__ import annotations

import json
import os
import random
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


def _run_state(out: Path) -> dict | None:
    try:
        state = json.loads((out / RUN_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise C.CheckpointError(f"{out / RUN_FILE} is unreadable ({e}); fix or remove it") from None
    if not (isinstance(state.get("run_id"), str) and isinstance(state.get("checkpoints"), list)):
        raise C.CheckpointError(f"{out / RUN_FILE} is not a clips4rt run file")
    return state


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
