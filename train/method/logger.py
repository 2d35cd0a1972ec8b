"""What a run reports while it trains: ``metrics.csv`` (losses; ``alike``, the share of
(pixel, segment) pairs whose teacher targets agree under ``--false_negatives``; learning
rate, speed, the share of time spent waiting for data, GPU memory, validation mIoU), a
tqdm progress bar on rank 0 when attached to a terminal, and TensorBoard scalars on
request."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import torch

COLUMNS = ["step", "total", "contrastive", "embedding", "semantic", "pixel", "alike", "lr",
           "s_per_step", "images_per_s", "data_wait", "gpu_mem_gb", "val_miou", "val_known",
           "val_unknown"]  # fmt: skip
LOSSES = ("total", "contrastive", "embedding", "semantic", "pixel", "alike")


def _prepare_csv(path: Path, step: int) -> bool:
    """Keep the rows up to ``step`` (a resume logs the replayed steps again) under the
    current header (rows of an older header are padded); True if the file is new."""
    if not path.exists() or step == 0:
        return True
    rows = list(csv.reader(path.read_text().splitlines()))
    if not rows:
        return True
    old = rows[0]
    keep = [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= step]
    if old != COLUMNS:
        keep = [[dict(zip(old, r)).get(c, "") for c in COLUMNS] for r in keep]
    tmp = path.with_suffix(".tmp")
    try:
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows([COLUMNS, *keep])
        os.replace(tmp, path)
    except BaseException:  # the old file stays whole
        tmp.unlink(missing_ok=True)
        raise
    return False


class MetricsLog:
    """Counts steps and data-wait time between rows; rank 0 writes."""

    def __init__(self, out: Path, step: int, steps: int, batch: int, main: bool,
                 tensorboard: bool = False, device=None):  # fmt: skip
        from tqdm import tqdm

        self.main, self.batch, self.device = main, batch, device
        self.file = self.writer = self.tb = None
        if main:
            path = out / "metrics.csv"
            new = _prepare_csv(path, step)
            self.file = open(path, "w" if new else "a", newline="")
            self.writer = csv.writer(self.file)
            if new:
                self.writer.writerow(COLUMNS)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:
                    raise ValueError(
                        "--tensorboard=true needs the tensorboard package: pip install tensorboard"
                    ) from None
                self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=step)
        self.bar = tqdm(total=steps, initial=step, desc="train", unit="step",
                        disable=None if main else True, dynamic_ncols=True)  # fmt: skip
        self._reset()

    def _reset(self) -> None:
        self._t, self._wait, self._steps = time.perf_counter(), 0.0, 0

    def waited(self, seconds: float) -> None:
        """Time this process spent waiting for a batch."""
        self._wait += seconds

    def stepped(self) -> None:
        self._steps += 1
        self.bar.update(1)

    def row(self, step: int, losses: dict, lr: float, val: dict | None = None) -> None:
        """One row: ``losses`` (floats, averaged over ranks) and ``val`` (a validation
        report, or None) at ``step``; speed and data wait since the previous row."""
        elapsed = max(time.perf_counter() - self._t, 1e-9)
        n = max(self._steps, 1)
        gpu = ""
        if self.device is not None and torch.device(self.device).type == "cuda":
            gpu = f"{torch.cuda.max_memory_allocated(self.device) / 2**30:.2f}"
        speed = self.batch * self._steps / elapsed
        values = {
            **{k: f"{losses[k]:.5f}" for k in LOSSES},
            "step": step,
            "lr": f"{lr:.3e}",
            "s_per_step": f"{elapsed / n:.3f}",
            "images_per_s": f"{speed:.1f}",
            "data_wait": f"{self._wait / elapsed:.3f}",
            "gpu_mem_gb": gpu,
        }
        if val is not None:
            values.update(val_miou=f"{val['miou']:.2f}", val_known=f"{val['miou_known']:.2f}",
                          val_unknown=f"{val['miou_unknown']:.2f}")  # fmt: skip
        if self.main:
            self.writer.writerow([values.get(c, "") for c in COLUMNS])
            self.file.flush()
            post = {"loss": f"{losses['total']:.3f}", "img/s": f"{speed:.0f}"}
            if val is not None:
                post["val"] = f"{val['miou']:.1f}"
            self.bar.set_postfix(post, refresh=False)
            if self.tb is not None:
                for c in COLUMNS[1:]:
                    if values.get(c, "") != "":
                        self.tb.add_scalar(c, float(values[c]), step)
        if self._steps:
            self._reset()

    def close(self) -> None:
        self.bar.close()
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()
