"""Concurrency and soak checks of the runtime and the trainer (not in CI: minutes).

    python benchmarks/soak.py [--frames 10000] [--size 640x360] [--skip-train]

1. threads: one ``Segmenter`` (embedded toy student) shared by 8 threads, each with
   its own class list, 25 frames each: every result equals the serial result for the
   same (frame, classes); then 8 threads asking for 5 000+ distinct prompts in all
   (the in-memory text cache holds 4 096: eviction while other threads read).
2. memory: ``--frames`` frames through ``run`` and then ``stream``, the process's RSS
   sampled every 500 frames; target: flat within 5 % after the first 1 000 (warm-up).
3. kill and resume: ``python -m train`` (toy preset, tiny) killed with SIGKILL at a
   random moment after a random checkpoint (2..10 of 12), resumed with ``--resume``, and compared
   with an uninterrupted run: the final weights must be identical (CPU). Then the
   newest checkpoint is truncated and ``--resume`` must fall back to the one before
   with a warning.
4. hostile inputs (``--hostile N`` rounds; ``--only hostile`` runs it alone): a shard
   whose header size is negative base-256, brace patterns of 10^8 and 10^9 names, a
   prompt-cache file whose header claims 400 GB and a FIFO at a cache file's name, a
   video whose --labels-dir holds the user's PNGs, one whose output is its input, and
   one interrupted mid-way; every case must end (each round timed), RSS stay flat
   (last round vs the first after warm-up) and the folders hold only the user's files.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

import clips4rt

REPO = Path(__file__).resolve().parent.parent
MODEL = Path(clips4rt.__file__).parent / "models" / "toy.onnx"
CLASSES = ["sky", "grass", "water", "sand", "brick wall", "snow", "road", "ball", "box",
           "star", "heart", "pyramid", "ring", "cross", "moon", "tree", "house", "fish",
           "flower", "car", "kite"]  # fmt: skip


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def frames(n: int, size: tuple[int, int]) -> list[np.ndarray]:
    from train.toyworld import make_scene

    w, h = size
    return [
        np.asarray(Image.fromarray(make_scene(3000, i, 256).image).resize((w, h), Image.BILINEAR))
        for i in range(n)
    ]


def _on_threads(fn, n: int) -> float:
    """Run fn(0) .. fn(n - 1) on n threads at once; seconds until all are done."""
    t0 = time.perf_counter()
    ths = [threading.Thread(target=fn, args=(t,)) for t in range(n)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    return time.perf_counter() - t0


def soak_threads(seg: clips4rt.Segmenter, imgs: list[np.ndarray]) -> None:
    rng = random.Random(0)
    lists = [rng.sample(CLASSES, rng.randint(2, 12)) for _ in range(8)]
    serial = {(i, t): seg.run(imgs[i], lists[t]).labels for t in range(8) for i in range(25)}
    bad, errors = [], []

    def worker(t):
        try:
            for i in rng.sample(range(25), 25):
                if not np.array_equal(seg.run(imgs[i], lists[t]).labels, serial[(i, t)]):
                    bad.append((t, i))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    dt = _on_threads(worker, 8)
    print(
        f"threads: 8 threads x 25 frames, own class lists: {200 - len(bad)}/200 equal the "
        f"serial results, {len(errors)} errors ({dt:.1f} s)"
    )

    def prompts(t):
        try:
            for i in range(0, 700, 35):
                names = [f"thing {t} {j}" for j in range(i, i + 35)] + ["sky", "tree"]
                out = seg.text_embeddings(names)
                assert out.shape == (len(names), seg.info.embed_dim)
                assert np.allclose(out[-2:], seg.text_embeddings(["sky", "tree"]))
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    dt = _on_threads(prompts, 8)
    print(
        f"text cache: 8 threads, {8 * 700 + 2} distinct prompts (cache holds 4096): "
        f"{len(errors)} errors, cache size {len(seg.text._cache)} ({dt:.1f} s)"
    )


def soak_memory(seg: clips4rt.Segmenter, imgs: list[np.ndarray], n: int) -> None:
    for mode in ("run", "stream"):
        samples = []
        t0 = time.perf_counter()
        if mode == "run":
            for i in range(n):
                r = seg.run(imgs[i % len(imgs)], CLASSES)
                r.labels  # noqa: B018
                if (i + 1) % 500 == 0:
                    samples.append(rss_mb())
        else:
            source = (imgs[i % len(imgs)] for i in range(n))
            for i, _ in enumerate(seg.stream(source, CLASSES)):
                if (i + 1) % 500 == 0:
                    samples.append(rss_mb())
        dt = time.perf_counter() - t0
        after = samples[1:] if len(samples) > 2 else samples
        drift = (max(after) - min(after)) / min(after)
        print(
            f"memory, {mode}: {n} frames in {dt:.0f} s ({n / dt:.0f} fps); RSS every 500 "
            f"frames (MB): {' '.join(f'{s:.0f}' for s in samples)}; after the first 1000: "
            f"max/min - 1 = {100 * drift:.2f} % (target <= 5 %)"
        )


TINY = ["--toy_pool=12", "--batch=3", "--image_size=64", "--teacher_size=96", "--segments=4",
        "--log_every=1", "--ckpt_every=1", "--unknown_prototypes=2", "--unknown_refresh=1",
        "--warmup=2", "--steps=12", "--keep=20"]  # fmt: skip


def soak_train(seed: int) -> None:
    import torch

    from train import checkpoint as C

    def cmd(out, *extra):
        return [sys.executable, "-m", "train", "--preset", "toy", *TINY, f"--out={out}", *extra]

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(cmd(d / "full"), check=True, capture_output=True, env=env, cwd=REPO)
        rng = random.Random(seed)
        p = subprocess.Popen(cmd(d / "cut"), env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
        k = rng.randint(2, 10)  # killed during the step after checkpoint k
        while not (d / "cut" / f"step_{k:07d}.pt").exists():
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.3))
        p.send_signal(signal.SIGKILL)
        p.wait()
        done = sorted(x.name for x in (d / "cut").glob("step_*.pt"))
        subprocess.run(cmd(d / "cut") + ["--resume"], check=True, capture_output=True,
                       env=env, cwd=REPO)  # fmt: skip
        a = C.load(d / "full" / "step_0000012.pt")["model"]
        b = C.load(d / "cut" / "step_0000012.pt")["model"]
        same = all(torch.equal(a[k], b[k]) for k in a)
        print(
            f"kill + resume: SIGKILL after {done[-1]} ({len(done)} checkpoints on disk), "
            f"resumed to step 12: final weights {'identical' if same else 'DIFFER'} to the "
            "uninterrupted run's"
        )
        newest = d / "cut" / "step_0000012.pt"
        newest.write_bytes(newest.read_bytes()[:4096])
        r = subprocess.run(cmd(d / "cut", "--steps=13") + ["--resume"], capture_output=True,
                           text=True, env=env, cwd=REPO)  # fmt: skip
        warned = "skipping" in r.stderr and "step_0000012" in r.stderr
        print(
            f"truncated newest checkpoint: --resume exit {r.returncode}, warned "
            f"{'yes' if warned else 'NO'}, continued from step_0000011 to step 13: "
            f"{(d / 'cut' / 'step_0000013.pt').exists()}"
        )


def soak_hostile(rounds: int) -> None:
    import io
    import tarfile
    import warnings

    from clips4rt import video
    from train.method import data as D

    warnings.simplefilter("ignore")
    png = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(png, "PNG")
    png = png.getvalue()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        shard = d / "shards" / "bad.tar"
        shard.parent.mkdir()
        with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as t:
            for i in range(3):
                info = tarfile.TarInfo(f"{i}.png")
                info.size = len(png)
                t.addfile(info, io.BytesIO(png))
        raw = bytearray(shard.read_bytes())
        off = [m.offset for m in tarfile.open(shard)][1]
        raw[off + 124 : off + 136] = bytes([0xFF]) + (256**11 - off - 1024).to_bytes(11, "big")
        raw[off + 148 : off + 156] = b" " * 8
        raw[off + 148 : off + 156] = b"%06o\0 " % sum(raw[off : off + 512])
        shard.write_bytes(bytes(raw))
        seg = clips4rt.Segmenter(MODEL, cache_dir=d / "cache")
        img = frames(1, (96, 64))[0]
        ref = seg.run(img, ["sky", "sand"]).labels
        cache = seg.text._disk
        header = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000000000,), }"
        npy = b"\x93NUMPY\x01\x00" + (header + " " * (117 - len(header)) + "\n").encode()
        av = video._av()
        clip = d / "clip.avi"
        with av.open(str(clip), "w") as out:
            st = out.add_stream("mpeg4", rate=12)
            st.width, st.height, st.pix_fmt = 64, 48, "yuv420p"
            for f in frames(6, (64, 48)):
                for pk in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    out.mux(pk)
            for pk in st.encode():
                out.mux(pk)
        labels = d / "labels"
        labels.mkdir()
        for i in range(3):
            (labels / f"{i:06d}.png").write_bytes(b"user %d" % i)
        user = {p.name: p.read_bytes() for p in labels.iterdir()}
        real_frames = video.frames

        def interrupted(container):
            for i, f in enumerate(real_frames(container)):
                if i == 3:
                    raise KeyboardInterrupt
                yield f

        rss, times, failures = [], [], []
        for r in range(rounds):
            t0 = time.perf_counter()
            if len(D.catalog(str(shard.parent))) != 1:
                failures.append(f"round {r}: negative-size shard")
            for pattern in ("s-{00000000..99999999}.tar", "{0..999}{0..999}{0..999}"):
                try:
                    D.catalog(str(d / pattern))
                    failures.append(f"round {r}: {pattern} accepted")
                except ValueError:
                    pass
            cache._path("sky", tuple(seg.info.prompt_templates)).write_bytes(npy)
            fifo = cache._path("sand", tuple(seg.info.prompt_templates))
            fifo.unlink(missing_ok=True)
            os.mkfifo(fifo)
            fresh = clips4rt.Segmenter(MODEL, cache_dir=d / "cache")
            if not np.array_equal(fresh.run(img, ["sky", "sand"]).labels, ref):
                failures.append(f"round {r}: cache")
            fifo.unlink()
            for out, lab in ((d / "o.mp4", labels), (clip, None)):
                try:
                    video.segment_video(seg, clip, ["sky", "sand"], out, labels_dir=lab,
                                        progress=False)  # fmt: skip
                    failures.append(f"round {r}: video to {out.name} accepted")
                except clips4rt.VideoError:
                    pass
            video.frames = interrupted
            try:
                video.segment_video(seg, clip, ["sky", "sand"], d / "o.mp4",
                                    labels_dir=d / "mine", progress=False)  # fmt: skip
            except KeyboardInterrupt:
                pass
            finally:
                video.frames = real_frames
            times.append(time.perf_counter() - t0)
            rss.append(rss_mb())
        stray = sorted(p.name for p in d.iterdir()) != ["cache", "clip.avi", "labels", "mine",
                                                          "shards"]  # fmt: skip
        stray = stray or list((d / "mine").iterdir()) or list(d.glob(".*"))
        kept = {p.name: p.read_bytes() for p in labels.iterdir()} == user
        warm = rss[min(5, len(rss) - 1) :] or rss
        print(
            f"hostile inputs: {rounds} rounds, {len(failures)} failures {failures[:3]}; "
            f"slowest round {max(times):.2f} s, median {sorted(times)[len(times) // 2]:.2f} s; "
            f"RSS (MB) after round 5 {warm[0]:.0f}, last {warm[-1]:.0f} "
            f"({100 * (warm[-1] / warm[0] - 1):+.1f} %); stray files: {'YES' if stray else 'none'}"
            f"; the user's label PNGs {'intact' if kept else 'CHANGED'}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=10000)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--hostile", type=int, default=50, help="rounds of the hostile-input run")
    ap.add_argument("--only", choices=("hostile",), help="run one part alone")
    args = ap.parse_args()
    if args.only == "hostile":
        soak_hostile(args.hostile)
        return
    w, h = (int(x) for x in args.size.split("x"))
    seg = clips4rt.Segmenter(MODEL, threads=args.threads)
    imgs = frames(50, (w, h))
    print(f"soak: embedded toy student, {w}x{h} frames, threads={args.threads}")
    soak_threads(seg, imgs)
    soak_memory(seg, imgs, args.frames)
    if not args.skip_train:
        soak_train(args.seed)
    soak_hostile(args.hostile)


if __name__ == "__main__":
    main()
