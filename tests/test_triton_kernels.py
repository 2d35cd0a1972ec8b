"""Triton ops against their torch references (CPU: TRITON_INTERPRET=1; CUDA: marked)."""

import os
import subprocess
import sys
import warnings

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from kernels.contrastive import contrastive_reference, contrastive_triton, pixel_segment_contrastive  # noqa: E402,E501
from kernels.matching import match_prototypes, match_reference, match_triton  # noqa: E402

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
# Loss tolerance (rtol, atol) per input dtype, against float32 torch math on the same
# inputs: losses are differences of log-sum-exps of size ~k, so float32 rounding
# leaves ~k * 1e-7 absolute.
LOSS_TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (1e-3, 1e-3)}
# Gradient error model: the softmax weights enter the second dot with relative error
# c (2^-8 when rounded to bf16 on GPU; ~1e-6 for float32 through tf32x3 or IEEE), and
# dV sums N such terms, which cancel exactly when M = 1. So
#   |err dz[n, d]| <= c k |g_n| max_m |v[m, d]|,   |err dv[m, d]| <= c k sum_n |g_n z[n, d]|,
# plus the rounding of the stored results (rtol: one bf16 ulp, 2^-7 relative at worst,
# since the kernel and the reference each round to bf16).
GRAD_C = {torch.float32: 2e-6, torch.bfloat16: 2.0**-8}
GRAD_RTOL = {torch.float32: 1e-5, torch.bfloat16: 2.0**-7}
DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture(autouse=True)
def _quiet_interpreter():
    with warnings.catch_warnings():  # log(0) of pixels without positives, by design
        warnings.filterwarnings("ignore", message="divide by zero", category=RuntimeWarning)
        yield


def _close(a, b, tol):
    assert torch.isfinite(a).all(), "non-finite values in the kernel output"
    torch.testing.assert_close(a.float(), b.float(), rtol=tol[0], atol=tol[1])


def _within(a, b, bound, rtol, name):
    assert torch.isfinite(a).all(), f"non-finite values in {name}"
    err = (a.float() - b.float()).abs()
    allowed = bound + rtol * b.float().abs() + 1e-7
    worst = (err / allowed).max().item()
    assert worst <= 1.0, f"{name}: error reaches {worst:.2f}x the error bound"


def _rel(a, b):
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all(), "non-finite values in the kernel output"
    return ((a - b).norm() / b.norm()).item()


def _unit(*shape, dim, device, dtype, gen):
    x = torch.randn(*shape, generator=gen, dtype=torch.float32)
    return torch.nn.functional.normalize(x, dim=dim).to(device=device, dtype=dtype)


def _positives(N, M, P, gen):
    own = torch.randint(0, M, (N, 1), generator=gen)
    if P == 1:
        return own
    others = (own + 1 + torch.arange(P - 1)) % M  # distinct from own when M >= P
    drop = torch.rand(N, P - 1, generator=gen) < 0.3  # variable number of positives
    pos = torch.cat([own, torch.where(drop, -1, others)], 1)
    pos[::17] = -1  # some pixels without positives
    return pos


# (N, M, D, P): N not a multiple of the block, M = 1, odd M, D from 64 to 1024
CONTRASTIVE_SHAPES = [
    (100, 37, 64, 2),
    (65, 1, 64, 1),
    (130, 70, 128, 3),
    (33, 9, 200, 2),
    (40, 13, 512, 2),
    (20, 5, 1024, 2),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,M,D,P", CONTRASTIVE_SHAPES)
def test_contrastive_forward_backward(device, dtype, N, M, D, P):
    gen = torch.Generator().manual_seed(N * 1000 + M + D)
    z = _unit(N, D, dim=1, device=device, dtype=dtype, gen=gen).requires_grad_()
    v = _unit(M, D, dim=1, device=device, dtype=dtype, gen=gen).requires_grad_()
    pos = _positives(N, M, min(P, M), gen).to(device)
    g = torch.randn(N, generator=gen).to(device)
    out = contrastive_triton(z, v, pos, 12.0)
    dz, dv = torch.autograd.grad((out * g).sum(), (z, v))
    ref = contrastive_reference(z, v, pos, 12.0)
    rdz, rdv = torch.autograd.grad((ref * g).sum(), (z, v))
    assert out.dtype == torch.float32 and dz.dtype == dtype and dv.dtype == dtype
    _close(out, ref, LOSS_TOL[dtype])
    c, k, ga = GRAD_C[dtype], 12.0, g.abs()[:, None]
    zf, vf = z.detach().float().abs(), v.detach().float().abs()
    _within(dz, rdz, c * k * ga * vf.max(0).values[None, :], GRAD_RTOL[dtype], "dz")
    _within(dv, rdv, c * k * (ga * zf).sum(0)[None, :], GRAD_RTOL[dtype], "dv")
    none = (pos < 0).all(1)
    assert (out[none] == 0).all() and (dz[none] == 0).all()
    assert (out[~none] > -1e-6).all()  # -log of a probability <= 1


def test_contrastive_known_value():
    """Two orthogonal segments, the pixel on the first: loss = log(1 + e^-k)."""
    z = torch.tensor([[1.0, 0.0]] * 16)
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos = torch.zeros(16, 1, dtype=torch.int32)
    out = contrastive_triton(z, v, pos, 10.0)
    torch.testing.assert_close(out, torch.full((16,), torch.log1p(torch.exp(torch.tensor(-10.0)))))


def test_contrastive_reductions_and_errors():
    gen = torch.Generator().manual_seed(0)
    z = _unit(50, 64, dim=1, device="cpu", dtype=torch.float32, gen=gen)
    v = _unit(7, 64, dim=1, device="cpu", dtype=torch.float32, gen=gen)
    pos = _positives(50, 7, 2, gen)
    per = pixel_segment_contrastive(z, v, pos, reduction="none", backend="triton")
    valid = (pos >= 0).any(1)
    mean = pixel_segment_contrastive(z, v, pos, backend="triton")
    torch.testing.assert_close(mean, per[valid].mean())  # exact here; the kernel reduces in
    # another order than torch (float32 default tolerance)
    torch.testing.assert_close(
        pixel_segment_contrastive(z, v, pos, reduction="sum"), per.sum(), rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError, match="reduction"):
        pixel_segment_contrastive(z, v, pos, reduction="max")
    with pytest.raises(ValueError, match="\\(M, D\\)"):
        pixel_segment_contrastive(z, v[:, :32], pos)
    with pytest.raises(TypeError, match="dtype"):
        pixel_segment_contrastive(z, v.bfloat16(), pos)
    with pytest.raises(ValueError, match="pos"):
        pixel_segment_contrastive(z, v, pos.float())
    with pytest.raises(TypeError, match="float32"):
        pixel_segment_contrastive(z.double(), v.double(), pos)


# (B, D, h, w, K, out_size): K = 1, K not a power of two, K over one tile, D up to 1024
MATCH_SHAPES = [
    (2, 64, 7, 9, 5, None),
    (1, 130, 5, 6, 21, (17, 23)),
    (2, 64, 8, 8, 1, None),
    (1, 512, 4, 5, 70, (9, 11)),
    (1, 64, 6, 6, 3, (3, 3)),
    (1, 1024, 3, 3, 21, None),
    (3, 96, 11, 13, 21, (88, 104)),
]


# with out_size the scores always come from a matmul: "gemm" only without it
MATCH_CASES = [("fused", *s) for s in MATCH_SHAPES] + [
    ("gemm", *s) for s in MATCH_SHAPES if s[-1] is None
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method,B,D,h,w,K,out_size", MATCH_CASES)
def test_matching(device, dtype, method, B, D, h, w, K, out_size):
    gen = torch.Generator().manual_seed(B + D + K)
    z = _unit(B, D, h, w, dim=1, device=device, dtype=dtype, gen=gen)
    p = _unit(K, D, dim=1, device=device, dtype=dtype, gen=gen)
    idx, score, prob = match_triton(z, p, 50.0, out_size, method=method)
    ridx, rscore, rprob = match_reference(z, p, 50.0, out_size)
    H, W = out_size or (h, w)
    assert idx.shape == score.shape == prob.shape == (B, H, W)
    s = torch.einsum("kd,bdhw->bkhw", p.float(), z.float())
    if out_size is not None:
        s = torch.nn.functional.interpolate(s, size=out_size, mode="bilinear")
    gap = s.topk(min(2, K), 1).values
    clear = (gap[:, 0] - gap[:, -1] > 1e-4) if K > 1 else torch.ones_like(idx, dtype=torch.bool)
    assert clear.float().mean() > 0.9
    assert (idx.long()[clear] == ridx[clear]).all()
    assert _rel(score, rscore) < 1e-5 and _rel(prob, rprob) < 1e-4
    assert ((idx >= 0) & (idx < K)).all() and (prob <= 1 + 1e-6).all() and (prob > 0).all()


def test_match_dispatch_and_errors():
    z = torch.randn(1, 16, 4, 4)
    p = torch.randn(3, 16)
    i, s, pr = match_prototypes(z, p)  # CPU tensors: the torch reference
    assert i.dtype == torch.int64
    with pytest.raises(ValueError, match="backend"):
        match_prototypes(z, p, backend="cuda")
    with pytest.raises(ValueError, match="protos"):
        match_prototypes(z, p[:, :8])
    with pytest.raises(ValueError, match="out_size"):
        match_prototypes(z, p, out_size=(0, 4))
    with pytest.raises(ValueError, match="method"):
        match_triton(z, p, method="magic")


def test_import_without_gpu_or_interpreter():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "import kernels, kernels.contrastive, kernels.matching; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    code = "import sys, kernels; print(sorted(m for m in ('torch', 'triton') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "[]", out.stderr
