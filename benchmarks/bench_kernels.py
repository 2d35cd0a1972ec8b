"""Kernel benchmarks: ratios measured side by side in one run.

    python benchmarks/bench_kernels.py --cpu     # C++ post-processing vs numpy reference
    python benchmarks/bench_kernels.py --gpu     # Triton ops vs torch (needs CUDA)

CPU: ``clips4rt.kernels.match_upsample`` (C++, every instruction set this CPU runs) vs
a float32 numpy pipeline of the same math and the obvious OpenCV pipeline (if
installed), on one 1920x1080 frame, D = 512, K = 21, stride 8 (embeddings 240x135),
2 threads, random (worst case) and smooth (image-like) embeddings; label agreement
with the float64 oracle; and the floor: the bytes that must move (embeddings read
once, three (H, W) outputs written once) at the measured copy bandwidth, and the
cosines' FLOPs at numpy's sgemm rate.

GPU: (1) device-to-device copy -> measured memory bandwidth; (2) pixel-segment
contrastive loss forward + backward at N = 65536, M = 8192, D = 128 vs the torch
reference (time, peak memory above the inputs, relative error), fp32 and bf16, over
a few tile configs; (3) prototype matching on Z (8, 512, 128, 128) fp32, K = 21 vs
torch einsum + max + softmax, and vs the time to read Z once at the measured
bandwidth; with 4x bilinear upsampling vs torch einsum + interpolate + reductions.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _min_time(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def numpy_pipeline(emb, protos, out_size, logit_scale):
    """The float32 numpy pipeline of the same math: matmul, separable bilinear
    (align_corners=False), argmax, max, softmax of the winner."""
    from clips4rt.kernels import bilinear_taps

    d, h, w = emb.shape
    H, W = out_size
    cos = (protos @ emb.reshape(d, h * w)).reshape(-1, h, w)
    y0, y1, ly = bilinear_taps(h, H)
    x0, x1, lx = bilinear_taps(w, W)
    ly, lx = ly.astype(np.float32), lx.astype(np.float32)
    a, b = cos[:, :, x0], cos[:, :, x1]
    rows = a + lx * (b - a)
    a, b = rows[:, y0], rows[:, y1]
    up = a + ly[None, :, None] * (b - a)
    labels = up.argmax(0).astype(np.int32)
    vmax = up.max(0)
    return labels, vmax, 1.0 / np.exp(logit_scale * (up - vmax)).sum(0)


def opencv_pipeline(cv2, emb, protos, out_size, logit_scale):
    """The obvious OpenCV pipeline: score maps by matmul, cv2.resize (INTER_LINEAR,
    half-pixel centres like align_corners=False) of the (h, w, K) maps, argmax."""
    d, h, w = emb.shape
    H, W = out_size
    cos = (protos @ emb.reshape(d, h * w)).T.reshape(h, w, -1)
    up = cv2.resize(np.ascontiguousarray(cos), (W, H), interpolation=cv2.INTER_LINEAR)
    labels = up.argmax(2).astype(np.int32)
    vmax = up.max(2)
    return labels, vmax, 1.0 / np.exp(logit_scale * (up - vmax[..., None])).sum(2)


def _inputs(kind, rng, D, K, h, w):
    protos = rng.standard_normal((K, D)).astype(np.float32)
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    if kind == "random":  # independent pixels: no two neighbours agree (worst case)
        emb = rng.standard_normal((D, h, w)).astype(np.float32)
    else:  # smooth: regions of one class with noisy borders, like a real image's
        yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
        wts = np.stack([np.cos(5 * yy + k) * np.sin(4 * xx + 0.7 * k) for k in range(K)])
        emb = np.einsum("khw,kd->dhw", wts, protos).astype(np.float32)
        emb += 0.1 * rng.standard_normal(emb.shape).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=0)
    return emb, protos


def _oracle_at(emb, protos, out_size, ys, xs) -> np.ndarray:
    """(K, n) float64 upsampled cosines at output pixels (ys, xs)."""
    from clips4rt.kernels import bilinear_taps

    d, h, w = emb.shape
    c = (protos.astype(np.float64) @ emb.reshape(d, -1).astype(np.float64)).reshape(-1, h, w)
    y0, y1, ly = (t[ys] for t in bilinear_taps(h, out_size[0]))
    x0, x1, lx = (t[xs] for t in bilinear_taps(w, out_size[1]))
    r0 = c[:, y0, x0] + lx * (c[:, y0, x1] - c[:, y0, x0])
    r1 = c[:, y1, x0] + lx * (c[:, y1, x1] - c[:, y1, x0])
    return r0 + ly * (r1 - r0)


def bench_cpu(repeats: int, threads: int = 2) -> None:
    from clips4rt import kernels as cpu

    if not cpu.HAVE_NATIVE:
        sys.exit("clips4rt._cpu is not built: pip install -e .")
    try:
        import cv2

        cv2.setNumThreads(threads)
    except ImportError:
        cv2 = None
    rng = np.random.default_rng(0)
    D, K, H, W, stride, scale = 512, 21, 1080, 1920, 8, 100.0
    h, w = H // stride, W // stride
    # the floor: bytes that must move, arithmetic that must happen
    big = rng.standard_normal(D * h * w).astype(np.float32)
    t_copy = _min_time(lambda: big.copy(), repeats)
    bw = 2 * big.nbytes / t_copy
    a = rng.standard_normal((2048, 2048)).astype(np.float32)
    gflops = 2 * 2048**3 / _min_time(lambda: a @ a, 3) / 1e9
    moved = D * h * w * 4 + K * D * 4 + H * W * 12
    flops = 2 * K * D * h * w
    exps_naive, exps_ours = K * H * W, 2 * K * h * W
    floor = max(moved / bw, flops / (gflops * 1e9))
    print(
        f"CPU post-processing 1920x1080, D={D}, K={K}, stride {stride} ({h}x{w}), "
        f"logit scale {scale:g}, {threads} threads, min of {repeats}; ISAs "
        f"{cpu.available_isas()}"
    )
    print(
        f"  floor: {moved / 1e6:.1f} MB to move at {bw / 1e9:.1f} GB/s (numpy copy) = "
        f"{moved / bw * 1e3:.2f} ms; {flops / 1e9:.2f} GFLOP of cosines at {gflops:.0f} "
        f"GFLOP/s (numpy sgemm 2048^2) = {flops / gflops / 1e6:.2f} ms; exps "
        f"{exps_naive / 1e6:.1f} M per pixel vs {exps_ours / 1e6:.1f} M with the band recurrence"
    )
    for kind in ("random", "smooth"):
        emb, protos = _inputs(kind, rng, D, K, h, w)
        _bench_one(cpu, cv2, kind, emb, protos, (H, W), scale, threads, repeats, floor)


def _interleaved(timed: dict, repeats: int) -> dict:
    """Min over rounds, each round running every variant once (shared noise)."""
    for f in timed.values():
        f()
    times = {k: [] for k in timed}
    for _ in range(repeats):
        for k, f in timed.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: min(v) for k, v in times.items()}


def _bench_one(cpu, cv2, kind, emb, protos, size, scale, threads, repeats, floor) -> None:
    H, W = size
    out = tuple(np.empty(size, t) for t in (np.int32, np.float32, np.float32))
    timed = {"numpy float32": lambda: numpy_pipeline(emb, protos, size, scale)}
    if cv2 is not None:
        timed["opencv"] = lambda: opencv_pipeline(cv2, emb, protos, size, scale)
    for isa in cpu.available_isas():
        timed[f"C++ {isa}"] = lambda isa=isa: cpu.match_upsample(
            emb, protos, size, scale, threads=threads, isa=isa, out=out
        )
    timed["C++ new outputs"] = lambda: cpu.match_upsample(emb, protos, size, scale, threads=threads)
    timed["C++ labels only"] = lambda: cpu.match_upsample(
        emb, protos, size, scale, threads=threads, labels_only=True, out=out
    )
    times = _interleaved(timed, repeats)
    ref = cpu.match_upsample_reference(emb, protos, size, scale)
    lab = cpu.match_upsample(emb, protos, size, scale, threads=threads)[0]
    differ = lab != ref[0]
    bound = 2 * (cpu.near_tie_bound(emb, protos) + 1e-6)
    ys, xs = np.nonzero(differ)
    gaps = np.diff(np.sort(_oracle_at(emb, protos, size, ys, xs), axis=0)[-2:], axis=0)
    print(
        f"  {kind} embeddings: labels agree with the float64 oracle on "
        f"{1 - differ.mean():.6%} of pixels ({int(differ.sum())} differ, largest oracle "
        f"top-2 gap there {gaps.max() if gaps.size else 0:.1e}, near-tie bound {bound:.1e})"
    )
    base = times["numpy float32"]
    for k, t in times.items():
        extra = f"  numpy/this = {base / t:6.1f}x"
        if k.startswith("C++"):
            extra += f"  floor/this = {floor / t:.2f}"
        print(f"    {k:18s} {t * 1e3:8.2f} ms{extra}")


MED = {"return_mode": "median", "warmup": 50, "rep": 300}


def _rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _bandwidth(torch, do_bench) -> float:
    x = torch.empty(1 << 28, device="cuda", dtype=torch.float32)  # 1 GiB
    y = torch.empty_like(x)
    t = do_bench(lambda: y.copy_(x), **MED) / 1e3
    bw = 2 * x.numel() * 4 / t
    print(f"device-to-device copy 1 GiB: {t * 1e3:.3f} ms -> {bw / 1e12:.2f} TB/s (read + write)")
    return bw


def _bench_contrastive(torch, do_bench, dtype, quick=False, N=65536, M=8192, D=128) -> None:
    from kernels import contrastive
    from kernels.contrastive import contrastive_reference, contrastive_triton

    g = torch.Generator(device="cuda").manual_seed(0)
    unit = lambda n: torch.nn.functional.normalize(  # noqa: E731
        torch.randn(n, D, device="cuda", generator=g), dim=1
    ).to(dtype)
    z, v = unit(N).requires_grad_(), unit(M).requires_grad_()
    own = torch.randint(0, M, (N, 1), device="cuda", generator=g)
    pos = torch.cat([own, (own + 1) % M], 1).to(torch.int32)
    gout = torch.randn(N, device="cuda", generator=g)

    def run(fn, **kw):
        loss = fn(z, v, pos, 12.0, **kw)
        dz, dv = torch.autograd.grad((loss * gout).sum(), (z, v))
        return loss, dz, dv

    ref = run(contrastive_reference)
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    t_ref = do_bench(lambda: run(contrastive_reference), **MED) / 1e3
    peak_ref = torch.cuda.max_memory_allocated() - base
    print(
        f"contrastive N={N} M={M} D={D} {str(dtype)[6:]}: torch reference fwd+bwd "
        f"{t_ref * 1e3:.2f} ms, peak +{peak_ref / 2**20:.0f} MiB"
    )
    with torch.no_grad():
        t_ref_f = do_bench(lambda: contrastive_reference(z, v, pos, 12.0), **MED) / 1e3
    print(f"  (torch forward alone {t_ref_f * 1e3:.2f} ms)")
    # (BN, BM, BD, num_warps, num_stages); None = the library default for D
    cfgs = [
        None,
        (64, 64, 128, 4, 3),
        (128, 64, 128, 8, 2),
        (64, 128, 128, 8, 2),
        (128, 128, 128, 8, 2),
        (32, 64, 128, 4, 3),
        (64, 32, 128, 4, 3),
    ]
    cfgs = cfgs[:1] if quick else cfgs
    variants = [(c, "tf32x3") for c in cfgs] if dtype == torch.float32 else [(c, "-") for c in cfgs]
    if dtype == torch.float32 and not quick:
        variants += [(None, "tf32")]  # fast but inaccurate: shown for its error
    for cfg, prec in variants:
        contrastive.FP32_DOT_PRECISION = prec if prec != "-" else "tf32x3"
        try:
            errs = [_rel(a, b) for a, b in zip(run(contrastive_triton, config=cfg), ref)]
            torch.cuda.reset_peak_memory_stats()
            t_tri = do_bench(lambda cfg=cfg: run(contrastive_triton, config=cfg), **MED) / 1e3
            peak = torch.cuda.max_memory_allocated() - base
            with torch.no_grad():
                t_f = do_bench(lambda cfg=cfg: contrastive_triton(z, v, pos, 12.0, cfg), **MED)
        except Exception as e:  # e.g. out of shared memory for one tile config
            print(f"  triton {str(cfg or 'default'):22s} {prec:6s} failed: {str(e)[:90]}")
            continue
        print(
            f"  triton {str(cfg or 'default'):22s} {prec:6s} {t_tri * 1e3:7.2f} ms "
            f"(triton/torch {t_tri / t_ref:.2f}; fwd {t_f:.2f} ms), peak +{peak / 2**20:.0f} MiB "
            f"(1/{peak_ref / max(peak, 1):.0f} of torch), rel err loss/dz/dv "
            + "/".join(f"{e:.1e}" for e in errs)
        )
    contrastive.FP32_DOT_PRECISION = "tf32x3"


def _bench_matching(torch, do_bench, bw, B=8, D=512, h=128, w=128, K=21) -> None:
    from kernels.matching import match_reference, match_triton

    g = torch.Generator(device="cuda").manual_seed(1)
    z = torch.randn(B, D, h, w, device="cuda", generator=g)
    z = torch.nn.functional.normalize(z, dim=1)
    p = torch.nn.functional.normalize(torch.randn(K, D, device="cuda", generator=g), dim=1)
    floor = z.numel() * 4 / bw
    t_ref = do_bench(lambda: match_reference(z, p, 100.0), **MED) / 1e3
    ridx = match_reference(z, p, 100.0)[0]
    print(
        f"matching Z {tuple(z.shape)} fp32, K={K}: read-Z-once floor {floor * 1e3:.3f} ms; "
        f"torch einsum+max+softmax {t_ref * 1e3:.3f} ms"
    )
    variants = [("fused", c) for c in ((128, 4), (64, 4), (128, 8), (64, 8), (32, 8))]
    variants += [("gemm", c) for c in ((128, 4), (256, 4), (256, 8), (512, 8))]
    for method, cfg in variants:

        def run(cfg=cfg, method=method):
            return match_triton(z, p, 100.0, config=cfg, method=method)

        agree = (run()[0].long() == ridx).float().mean().item()
        t = do_bench(run, **MED) / 1e3
        print(
            f"  triton {method:5s} BP={cfg[0]:3d} warps={cfg[1]}: {t * 1e3:.3f} ms = "
            f"{t / floor:.2f}x "
            f"floor (target <= 1.5), torch/triton {t_ref / t:.2f}, labels agree {agree:.5f}"
        )
    out = (4 * h, 4 * w)
    t_ref = do_bench(lambda: match_reference(z, p, 100.0, out), **MED) / 1e3
    ridx = match_reference(z, p, 100.0, out)[0]
    t = do_bench(lambda: match_triton(z, p, 100.0, out), **MED) / 1e3
    agree = (match_triton(z, p, 100.0, out)[0].long() == ridx).float().mean().item()
    print(
        f"matching + 4x upsample to {out}: torch {t_ref * 1e3:.3f} ms, triton "
        f"{t * 1e3:.3f} ms (torch/triton {t_ref / t:.2f}), labels agree {agree:.5f}"
    )


def bench_gpu(quick: bool = False) -> None:
    import torch
    import triton
    from triton.testing import do_bench

    print(
        f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
        f"triton {triton.__version__}"
    )
    bw = _bandwidth(torch, do_bench)
    _bench_matching(torch, do_bench, bw)
    for dtype in (torch.float32, torch.bfloat16):
        _bench_contrastive(torch, do_bench, dtype, quick)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="CPU: kernel and OpenCV threads")
    ap.add_argument("--quick", action="store_true", help="GPU: default tile configs only")
    args = ap.parse_args()
    if not (args.cpu or args.gpu):
        args.cpu = True
    if args.cpu:
        bench_cpu(args.repeats, args.threads)
    if args.gpu:
        bench_gpu(args.quick)


if __name__ == "__main__":
    main()
