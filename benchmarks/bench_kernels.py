"""Kernel benchmarks: ratios measured side by side in one run.

    python benchmarks/bench_kernels.py --cpu     # C++ post-processing vs numpy reference
    python benchmarks/bench_kernels.py --gpu     # Triton ops vs torch (needs CUDA)

CPU: ``kernels.cpu.match_upsample`` (C++) vs ``match_upsample_reference`` (numpy) on
one 1920x1080 frame, D = 512, K = 21, stride 8 (embeddings 240x135). Effective
bandwidth counts the bytes that must move: embeddings + prototypes read once, the
three (H, W) outputs written once.

GPU: (1) device-to-device copy -> measured memory bandwidth; (2) pixel-segment
contrastive loss forward + backward at N = 65536, M = 8192, D = 128 vs the torch
reference (time, peak memory above the inputs, relative error), fp32 and bf16, over
a few tile configs; (3) prototype matching on Z (8, 512, 128, 128) fp32, K = 21 vs
torch einsum + max + softmax, and vs the time to read Z once at the measured
bandwidth; with 4x bilinear upsampling vs torch einsum + interpolate + reductions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _median_time(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def bench_cpu(repeats: int) -> None:
    from kernels import cpu

    if not cpu.HAVE_NATIVE:
        sys.exit("kernels._cpu is not built: pip install -e .")
    rng = np.random.default_rng(0)
    D, K, H, W, stride = 512, 21, 1080, 1920, 8
    h, w = H // stride, W // stride
    emb = rng.standard_normal((D, h, w)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=0)
    protos = rng.standard_normal((K, D)).astype(np.float32)
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    a = cpu.match_upsample(emb, protos, (H, W), 100.0, native=True)
    b = cpu.match_upsample_reference(emb, protos, (H, W), 100.0)
    same = float((a[0] == b[0]).mean())
    t_c = _median_time(lambda: cpu.match_upsample(emb, protos, (H, W), 100.0, native=True), repeats)
    t_1 = _median_time(
        lambda: cpu.match_upsample(emb, protos, (H, W), 100.0, threads=1, native=True), repeats
    )
    t_np = _median_time(lambda: cpu.match_upsample_reference(emb, protos, (H, W), 100.0), repeats)
    moved = emb.nbytes + protos.nbytes + H * W * 12
    print(
        f"CPU match_upsample 1920x1080, D={D}, K={K}, stride {stride} "
        f"(median of {repeats}); labels identical on {same:.6%} of pixels"
    )
    print(f"  numpy reference   {t_np * 1e3:8.1f} ms")
    print(f"  C++ 1 thread      {t_1 * 1e3:8.1f} ms  numpy/C++ = {t_np / t_1:5.1f}x")
    print(
        f"  C++ all threads   {t_c * 1e3:8.1f} ms  numpy/C++ = {t_np / t_c:5.1f}x "
        f"(target >= 5x), {moved / t_c / 1e9:.2f} GB/s effective"
    )


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
    ap.add_argument("--quick", action="store_true", help="GPU: default tile configs only")
    args = ap.parse_args()
    if not (args.cpu or args.gpu):
        args.cpu = True
    if args.cpu:
        bench_cpu(args.repeats)
    if args.gpu:
        bench_gpu(args.quick)


if __name__ == "__main__":
    main()
