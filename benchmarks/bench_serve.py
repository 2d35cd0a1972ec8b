"""clips4rt serve against the in-process run: latency, concurrency, memory.

    python benchmarks/bench_serve.py [--requests 200] [--clients 8] [--per-client 50]

The embedded toy student, the toy world's 20 names, a 640x480 JPEG (skimage's
astronaut, resized). The server runs as its own process (``clips4rt serve --threads 2
--max-concurrent 2`` on 127.0.0.1) so its memory is its own; the client keeps one
connection alive.

- latency: ``--requests`` sequential requests (``format=labels``: the label PNG back)
  and ``format=raw`` (the labels' bytes back) against ``Segmenter(threads=2).run`` on the
  same JPEG bytes in this process, and that run plus the label PNG encoding (the
  server's work besides HTTP for format=labels): p50 and p99, ms, interleaved;
- load: ``--clients`` threads x ``--per-client`` requests at once, each on its own
  keep-alive connection: errors, labels equal to the in-process run's, the server's RSS
  after the first round and after the last (flat = no growth per request), throughput.
"""

from __future__ import annotations

import argparse
import http.client
import io
import socket
import statistics
import subprocess
import sys
import threading
import time
from importlib import resources

import numpy as np
from PIL import Image

import clips4rt
from clips4rt.visualize import label_png

TOY = [c for c in (resources.files("clips4rt") / "models" / "toy.classes.txt").read_text()
       .splitlines() if c.strip()]  # fmt: skip
BOUNDARY = "clips4rt-bench"


def _jpeg() -> bytes:
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((640, 480), Image.BILINEAR).save(
        buf, "JPEG", quality=90
    )
    return buf.getvalue()


def _body(image: bytes, fmt: str = "labels") -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="x.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode()
        + image
        + b"\r\n",
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="classes"\r\n\r\n'
        f"{','.join(TOY)}\r\n".encode(),
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="format"\r\n\r\n{fmt}\r\n'.encode(),
    ]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


HEADERS = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def _labels(png: bytes) -> np.ndarray:
    a = np.asarray(Image.open(io.BytesIO(png))).astype(np.int32)
    return np.where(a == 255, -1, a)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _pct(times: list[float], q: float) -> float:
    return 1000 * float(np.percentile(times, q))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--per-client", type=int, default=50)
    args = ap.parse_args()
    image = _jpeg()
    body = _body(image)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "clips4rt.cli", "serve", "--port", str(port), "--threads", "2",
         "--max-concurrent", "2"], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(200):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/healthz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        seg = clips4rt.Segmenter(threads=2)
        want = seg.run(image, TOY).labels
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

        raw_body = _body(image, "raw")

        def remote(body=body):
            conn.request("POST", "/v1/segment", body=body, headers=HEADERS)
            resp = conn.getresponse()
            return resp.status, resp.read()

        def local_png():
            r = seg.run(image, TOY)
            buf = io.BytesIO()
            label_png(r.labels, len(TOY)).save(buf, format="PNG", compress_level=1)

        runs = {"in-process run": lambda: seg.run(image, TOY), "in-process run + label PNG":
                local_png, "server (keep-alive, format=labels)": remote,
                "server (keep-alive, format=raw)": lambda: remote(raw_body)}  # fmt: skip
        times: dict[str, list[float]] = {k: [] for k in runs}
        for fn in runs.values():
            for _ in range(10):
                fn()  # warm-up: text cache, arenas
        for _ in range(args.requests):  # interleaved
            for k, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        status, raw = remote()
        assert status == 200 and np.array_equal(_labels(raw), want)
        status, raw = remote(raw_body)
        got = np.frombuffer(raw, np.uint8).reshape(want.shape).astype(np.int32)
        assert status == 200 and np.array_equal(np.where(got == 255, -1, got), want)
        base = statistics.median(times["in-process run"])
        print(f"640x480 JPEG, embedded model, {len(TOY)} classes, {args.requests} requests each\n")
        print("| path | p50 ms | p99 ms | p50 x in-process run |")
        print("|---|---:|---:|---:|")
        for k, t in times.items():
            print(f"| {k} | {_pct(t, 50):.2f} | {_pct(t, 99):.2f} | "
                  f"{statistics.median(t) / base:.2f} |")  # fmt: skip

        errors, wrong, lat = [], [0], []
        lock = threading.Lock()

        def client(n: int) -> None:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            for _ in range(n):
                t0 = time.perf_counter()
                try:
                    c.request("POST", "/v1/segment", body=body, headers=HEADERS)
                    resp = c.getresponse()
                    raw = resp.read()
                except OSError as e:
                    errors.append(repr(e))
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                    continue
                with lock:
                    lat.append(time.perf_counter() - t0)
                if resp.status != 200:
                    errors.append(resp.status)
                elif not np.array_equal(_labels(raw), want):
                    wrong[0] += 1

        rss = []
        t_all = time.perf_counter()
        for _round in range(2):
            ts = [threading.Thread(target=client, args=(args.per_client // 2,))
                  for _ in range(args.clients)]  # fmt: skip
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            rss.append(_rss_mb(server.pid))
        total = args.clients * (args.per_client // 2) * 2
        secs = time.perf_counter() - t_all
        print(f"\n{args.clients} clients x {args.per_client} requests: {len(errors)} errors "
              f"({sorted(set(map(str, errors)))[:3]}), {wrong[0]} with labels unlike the "
              f"in-process run; {total / secs:.1f} requests/s; latency p50 {_pct(lat, 50):.1f}"
              f" ms, p99 {_pct(lat, 99):.1f} ms; server RSS {rss[0]:.1f} MB after the first "
              f"half, {rss[1]:.1f} MB after the second")  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
