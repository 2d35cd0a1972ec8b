"""clips4rt segment over Ray actors against the serial CLI, on this machine.

    python benchmarks/bench_ray.py [--images 200]

``--images`` toy-world scenes (held-out seed 3000) at 640x480 in a temporary folder, the
embedded model, the toy world's 20 names, label PNG + overlay PNG written per image.
Times the whole command (files included) of: the serial CLI (``--threads 2``), and
``--ray`` with 1 actor x 2 threads and 2 actors x 1 thread, on a local Ray started once
before (its start-up is reported apart). Outputs of every run are compared with the
serial run's, byte for byte.
"""

from __future__ import annotations

import argparse
import filecmp
import tempfile
import time
from importlib import resources
from pathlib import Path

from PIL import Image

from clips4rt import raydata
from clips4rt.cli import main as cli
from train.toyworld import make_scene

TOY = [c for c in (resources.files("clips4rt") / "models" / "toy.classes.txt").read_text()
       .splitlines() if c.strip()]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        src = d / "in"
        src.mkdir()
        for i in range(args.images):
            img = Image.fromarray(make_scene(3000, i, 256).image).resize((640, 480))
            img.save(src / f"s{i:05d}.png")
        t0 = time.perf_counter()
        raydata.init(None, num_cpus=2)
        start = time.perf_counter() - t0
        base = [str(src), "--classes", ",".join(TOY), "--quiet"]
        runs = {
            "serial, --threads 2": ["--threads", "2"],
            "--ray, 1 actor x 2 threads": ["--threads", "2", "--ray", "--ray-actors", "1"],
            "--ray, 2 actors x 1 thread": ["--threads", "1", "--ray", "--ray-actors", "2"],
        }
        secs = {}
        for k, extra in runs.items():
            out = d / f"out{len(secs)}"
            t0 = time.perf_counter()
            assert cli(["segment", *base, "--out", str(out), *extra]) == 0
            secs[k] = time.perf_counter() - t0
            if len(secs) > 1:
                files = [p.relative_to(out) for p in out.rglob("*") if p.is_file()]
                _, bad, err = filecmp.cmpfiles(d / "out0", out, files, shallow=False)
                assert not bad and not err and len(files) == 1 + 2 * args.images
        serial = secs["serial, --threads 2"]
        print(
            f"{args.images} images 640x480, embedded model, {len(TOY)} classes; local Ray "
            f"start-up {start:.1f} s (not in the times below)\n"
        )
        print("| run | s | images/s | x serial | ms / image over serial |")
        print("|---|---:|---:|---:|---:|")
        for k, t in secs.items():
            print(f"| {k} | {t:.1f} | {args.images / t:.1f} | {serial / t:.2f} | "
                  f"{1000 * (t - serial) / args.images:+.1f} |")  # fmt: skip
        print("\nall outputs byte-identical to the serial run's")


if __name__ == "__main__":
    main()
