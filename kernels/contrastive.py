"""Pixel-segment contrastive loss (CLIP-S4 / SegSort), fused in Triton.

For pixel n with embedding z_n, segments v_1..v_M and positive set S+_n:

    loss_n = logsumexp_m(k z_n.v_m) - logsumexp_{s in S+_n}(k z_n.v_s)

i.e. -log(sum_{S+} exp / sum_{all} exp), k the concentration. The Triton forward
and backward stream over tiles of M with an online log-sum-exp and never
materialise the N x M logits: memory is O((N + M) * D). Gradients flow to Z and V.

Positives come as an int tensor ``pos`` (N, P): segment indices, -1 = padding
(each pixel has its own segment and its counterpart in the other view, so P = 2
usually; a row of only -1 is a pixel without positives, which gets loss 0 and is
left out of the mean). Indices in a row must be distinct.
"""

from __future__ import annotations

import torch

from kernels._triton import HAVE_TRITON, INTERPRET, check_float, use_triton

__all__ = ["pixel_segment_contrastive", "contrastive_reference", "contrastive_triton"]


def _check(z, v, pos):
    check_float("z", z, 2)
    check_float("v", v, 2)
    if z.shape[1] != v.shape[1]:
        raise ValueError(f"z is (N, D) = {tuple(z.shape)}, v is (M, D) = {tuple(v.shape)}")
    if z.dtype != v.dtype:
        raise TypeError(f"z and v must share a dtype, got {z.dtype} and {v.dtype}")
    if pos.dtype not in (torch.int32, torch.int64) or pos.ndim != 2 or pos.shape[0] != z.shape[0]:
        raise ValueError(f"pos must be an int tensor (N, P), got {pos.dtype} {tuple(pos.shape)}")
    if v.shape[0] < 1 or z.shape[1] < 1:
        raise ValueError("need at least one segment and D >= 1")


def contrastive_reference(z, v, pos, scale: float = 10.0) -> torch.Tensor:
    """Per-pixel losses (N,) float32, materialising the N x M logits (the oracle)."""
    _check(z, v, pos)
    logits = scale * (z.float() @ v.float().T)
    valid = pos >= 0
    pos_logits = logits.gather(1, pos.long().clamp(min=0)).masked_fill(~valid, float("-inf"))
    loss = torch.logsumexp(logits, 1) - torch.logsumexp(pos_logits, 1)
    return torch.where(valid.any(1), loss, torch.zeros_like(loss))


if HAVE_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _lse_update(m, l, s):
        # online log-sum-exp: (m, l) summarises exp(x - m) summed; s a new (rows, cols) tile
        m_new = tl.maximum(m, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l = l * tl.exp(m - m_safe) + tl.sum(tl.exp(s - m_safe[:, None]), 1)
        return m_new, l

    @triton.jit
    def _dot_t(a, b, UPCAST: tl.constexpr, PREC: tl.constexpr):
        # a (R, D) . b (C, D)^T -> (R, C) float32
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        return tl.dot(a, tl.trans(b), input_precision=PREC)

    @triton.jit
    def _pos_logit(Z32, V, idx, ok, rd, md, D, scale):
        v = tl.load(V + idx[:, None] * D + rd[None, :], mask=ok[:, None] & md[None, :], other=0.0)
        v = v.to(tl.float32)
        s = tl.where(ok, tl.sum(Z32 * v, 1) * scale, float("-inf"))
        return s, v

    @triton.jit
    def _fwd_kernel(
        Z,
        V,
        POS,
        LOSS,
        LSE,
        LSEP,
        N,
        M,
        D,
        scale,
        NPOS: tl.constexpr,
        BN: tl.constexpr,
        BM: tl.constexpr,
        BD: tl.constexpr,
        UPCAST: tl.constexpr,
        PREC: tl.constexpr,
    ):
        rn = tl.program_id(0) * BN + tl.arange(0, BN)
        rd = tl.arange(0, BD)
        mn, md = rn < N, rd < D
        z = tl.load(Z + rn[:, None] * D + rd[None, :], mask=mn[:, None] & md[None, :], other=0.0)
        m_i = tl.full((BN,), float("-inf"), tl.float32)
        l_i = tl.zeros((BN,), tl.float32)
        for start in range(0, M, BM):
            rm = start + tl.arange(0, BM)
            mm = rm < M
            v = tl.load(
                V + rm[:, None] * D + rd[None, :], mask=mm[:, None] & md[None, :], other=0.0
            )
            s = _dot_t(z, v, UPCAST, PREC) * scale
            s = tl.where(mm[None, :], s, float("-inf"))
            m_i, l_i = _lse_update(m_i, l_i, s)
        lse = m_i + tl.log(l_i)
        z32 = z.to(tl.float32)
        mp = tl.full((BN,), float("-inf"), tl.float32)
        lp = tl.zeros((BN,), tl.float32)
        for j in tl.static_range(NPOS):
            idx = tl.load(POS + rn * NPOS + j, mask=mn, other=-1)
            s, _ = _pos_logit(z32, V, idx, idx >= 0, rd, md, D, scale)
            mp, lp = _lse_update(mp, lp, s[:, None])
        lsep = mp + tl.log(lp)
        valid = mp > float("-inf")
        tl.store(LOSS + rn, tl.where(valid, lse - lsep, 0.0), mask=mn)
        tl.store(LSE + rn, lse, mask=mn)
        tl.store(LSEP + rn, tl.where(valid, lsep, 0.0), mask=mn)

    @triton.jit
    def _bwd_dz_kernel(
        Z,
        V,
        POS,
        G,
        LSE,
        LSEP,
        DZ,
        DV,
        N,
        M,
        D,
        scale,
        NPOS: tl.constexpr,
        BN: tl.constexpr,
        BM: tl.constexpr,
        BD: tl.constexpr,
        UPCAST: tl.constexpr,
        PREC: tl.constexpr,
    ):
        rn = tl.program_id(0) * BN + tl.arange(0, BN)
        rd = tl.arange(0, BD)
        mn, md = rn < N, rd < D
        z = tl.load(Z + rn[:, None] * D + rd[None, :], mask=mn[:, None] & md[None, :], other=0.0)
        g = tl.load(G + rn, mask=mn, other=0.0)
        lse = tl.load(LSE + rn, mask=mn, other=0.0)
        lsep = tl.load(LSEP + rn, mask=mn, other=0.0)
        acc = tl.zeros((BN, BD), tl.float32)
        for start in range(0, M, BM):
            rm = start + tl.arange(0, BM)
            mm = rm < M
            v = tl.load(
                V + rm[:, None] * D + rd[None, :], mask=mm[:, None] & md[None, :], other=0.0
            )
            s = _dot_t(z, v, UPCAST, PREC) * scale
            p = tl.where(mm[None, :], tl.exp(s - lse[:, None]), 0.0)
            if UPCAST:
                acc += tl.dot(p, v.to(tl.float32), input_precision=PREC)
            else:
                acc += tl.dot(p.to(v.dtype), v, input_precision=PREC)
        z32 = z.to(tl.float32)
        g = g * scale  # G is already 0 for pixels without positives (see backward)
        for j in tl.static_range(NPOS):
            idx = tl.load(POS + rn * NPOS + j, mask=mn, other=-1)
            ok = idx >= 0
            s, vj = _pos_logit(z32, V, idx, ok, rd, md, D, scale)
            w = tl.where(ok, tl.exp(s - lsep), 0.0)
            acc -= w[:, None] * vj
            tl.atomic_add(
                DV + idx[:, None] * D + rd[None, :],
                -(g * w)[:, None] * z32,
                mask=ok[:, None] & md[None, :],
            )
        dz = g[:, None] * acc
        tl.store(
            DZ + rn[:, None] * D + rd[None, :],
            dz.to(DZ.dtype.element_ty),
            mask=mn[:, None] & md[None, :],
        )

    @triton.jit
    def _bwd_dv_kernel(
        Z,
        V,
        G,
        LSE,
        DV,
        N,
        M,
        D,
        scale,
        CHUNK,
        BN: tl.constexpr,
        BM: tl.constexpr,
        BD: tl.constexpr,
        UPCAST: tl.constexpr,
        PREC: tl.constexpr,
    ):
        # program (i, j): segments [i*BM, (i+1)*BM) x pixels [j*CHUNK, (j+1)*CHUNK)
        rm = tl.program_id(0) * BM + tl.arange(0, BM)
        n_lo = tl.program_id(1) * CHUNK
        n_hi = tl.minimum(n_lo + CHUNK, N)
        rd = tl.arange(0, BD)
        mm, md = rm < M, rd < D
        v = tl.load(V + rm[:, None] * D + rd[None, :], mask=mm[:, None] & md[None, :], other=0.0)
        acc = tl.zeros((BM, BD), tl.float32)
        for start in range(n_lo, n_hi, BN):
            rn = start + tl.arange(0, BN)
            mn = rn < n_hi
            z = tl.load(
                Z + rn[:, None] * D + rd[None, :], mask=mn[:, None] & md[None, :], other=0.0
            )
            g = tl.load(G + rn, mask=mn, other=0.0)
            lse = tl.load(LSE + rn, mask=mn, other=0.0)
            s = _dot_t(v, z, UPCAST, PREC) * scale  # (BM, BN)
            p = tl.where(mn[None, :], tl.exp(s - lse[None, :]) * g[None, :], 0.0)
            if UPCAST:
                acc += tl.dot(p, z.to(tl.float32), input_precision=PREC)
            else:
                acc += tl.dot(p.to(z.dtype), z, input_precision=PREC)
        # positives' share was (or will be) subtracted atomically by the dz kernel
        tl.atomic_add(
            DV + rm[:, None] * D + rd[None, :], acc * scale, mask=mm[:, None] & md[None, :]
        )


def _blocks(D: int, dtype: torch.dtype) -> tuple[int, int, int, int, int]:
    """(BN, BM, BD, num_warps, num_stages) by embedding width. Whole rows of Z and V
    are tiles; fewer pipeline stages for wide rows keep shared memory under the
    H200's 227 KiB (D = 1024 fp32 with 3 stages asked for 320 KiB)."""
    BD = max(16, triton.next_power_of_2(D))
    if BD <= 64:
        return 64, 64, BD, 4, 3
    if BD <= 128:
        # H200, N=65536 M=8192 D=128 fwd+bwd: fp32 (tf32x3) 23.1 ms at (32, 64, 4 warps)
        # vs 30.8 ms at (64, 64, 8 warps); bf16 2.39 ms at (64, 64, 4) vs 3.92 ms.
        return (32 if dtype == torch.float32 else 64), 64, BD, 4, 3
    if BD <= 256:
        return 32, 64, BD, 8, 2
    if BD <= 512:
        return 32, 32, BD, 8, 1
    return 16, 16, BD, 8, 1


def _dv_split(N: int, M: int, BN: int, BM: int) -> tuple[int, int]:
    """(programs along N, pixels per program) so that the dV grid has ~1024 programs:
    one program per segment block alone gives M / BM (128 at M = 8192) on 132 SMs."""
    split = max(1, min(triton.cdiv(N, BN), triton.cdiv(1024, triton.cdiv(M, BM))))
    chunk = triton.cdiv(triton.cdiv(N, split), BN) * BN
    return triton.cdiv(N, chunk), chunk


# float32 dots: "ieee" (CUDA cores) or "tf32x3" (three tensor-core passes, ~float32
# accuracy). Plain tf32 would put ~1e-3 relative error on logits that the
# concentration (~10-16) then amplifies.
# Measured on an H200 (BENCHMARKS.md): "ieee" ran 24x slower than "tf32x3" at equal
# accuracy (1.6e-6 relative on dZ/dV), so tf32x3 is the default.
FP32_DOT_PRECISION = "tf32x3"


def _precision(dtype: torch.dtype) -> tuple[bool, str]:
    upcast = INTERPRET and dtype != torch.float32
    if upcast or INTERPRET:
        return upcast, "ieee"
    return upcast, (FP32_DOT_PRECISION if dtype == torch.float32 else "tf32")


class _ContrastiveFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, v, pos, scale, config):
        z, v, pos = z.contiguous(), v.contiguous(), pos.to(torch.int32).contiguous()
        (N, D), M = z.shape, v.shape[0]
        BN, BM, BD, warps, stages = config or _blocks(D, z.dtype)
        upcast, prec = _precision(z.dtype)
        loss = torch.empty(N, device=z.device, dtype=torch.float32)
        lse, lsep = torch.empty_like(loss), torch.empty_like(loss)
        _fwd_kernel[(triton.cdiv(N, BN),)](
            z,
            v,
            pos,
            loss,
            lse,
            lsep,
            N,
            M,
            D,
            float(scale),
            NPOS=pos.shape[1],
            BN=BN,
            BM=BM,
            BD=BD,
            UPCAST=upcast,
            PREC=prec,
            num_warps=warps,
            num_stages=stages,
        )
        ctx.save_for_backward(z, v, pos, lse, lsep)
        ctx.scale, ctx.config = float(scale), (BN, BM, BD, warps, stages)
        return loss

    @staticmethod
    def backward(ctx, g):
        z, v, pos, lse, lsep = ctx.saved_tensors
        (N, D), M = z.shape, v.shape[0]
        BN, BM, BD, warps, stages = ctx.config
        upcast, prec = _precision(z.dtype)
        # pixels without positives have loss 0: zero their gradient once, here
        g = torch.where((pos >= 0).any(1), g.float(), 0.0).contiguous()
        dz = torch.empty_like(z)
        dv = torch.zeros(v.shape, device=v.device, dtype=torch.float32)
        common = dict(
            BN=BN,
            BM=BM,
            BD=BD,
            UPCAST=upcast,
            PREC=prec,
            num_warps=warps,
            num_stages=stages,
        )
        split, chunk = _dv_split(N, M, BN, BM)
        _bwd_dv_kernel[(triton.cdiv(M, BM), split)](
            z, v, g, lse, dv, N, M, D, ctx.scale, chunk, **common
        )
        _bwd_dz_kernel[(triton.cdiv(N, BN),)](
            z, v, pos, g, lse, lsep, dz, dv, N, M, D, ctx.scale, NPOS=pos.shape[1], **common
        )
        return dz, dv.to(v.dtype), None, None, None


def contrastive_triton(z, v, pos, scale: float = 10.0, config=None) -> torch.Tensor:
    """Per-pixel losses (N,) float32 through the Triton kernels (CUDA, or the interpreter).

    ``config`` = (BN, BM, BD, num_warps, num_stages) overrides the tiles (benchmarks sweep it)."""
    _check(z, v, pos)
    if not HAVE_TRITON:
        raise RuntimeError("triton is not installed: pip install triton (Linux)")
    return _ContrastiveFn.apply(z, v, pos, scale, config)


def pixel_segment_contrastive(
    z, v, pos, scale: float = 10.0, reduction: str = "mean", backend: str | None = None
) -> torch.Tensor:
    """Pixel-segment contrastive loss.

    Args:
        z: (N, D) pixel embeddings, float32/bfloat16 (unit length expected).
        v: (M, D) segment embeddings, same dtype.
        pos: (N, P) int32/int64 positive segment indices per pixel, -1 = none.
        scale: concentration k.
        reduction: "mean" (over pixels with positives), "sum" or "none" (N,).
        backend: "triton", "torch" or None (Triton on CUDA, torch elsewhere).
    """
    if backend is None:
        backend = "triton" if use_triton(z, v) and z.is_cuda else "torch"
    if backend not in ("triton", "torch"):
        raise ValueError(f"backend must be 'triton' or 'torch', got {backend!r}")
    fn = contrastive_triton if backend == "triton" else contrastive_reference
    loss = fn(z, v, pos, scale)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / (pos >= 0).any(1).sum().clamp(min=1)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
