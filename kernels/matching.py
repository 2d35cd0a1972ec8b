"""Prototype matching in Triton: per-pixel argmax / max score / winner probability.

Given pixel embeddings Z (B, D, h, w) and prototypes P (K, D), with scores
s_k = P_k . Z[:, :, y, x]:

    index = argmax_k s_k,  score = max_k s_k,  prob = softmax(logit_scale * s)_index

optionally after bilinear resampling of the K score maps to (H, W)
(``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``).

Without resampling one kernel reads Z once and keeps only running reductions
over tiles of K (no (B, K, h, w) scores in memory). With resampling the low-res
scores (B, K, h, w) come from one matmul and a second kernel fuses the
interpolation with the reductions, so the (B, K, H, W) map is never written.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels._triton import HAVE_TRITON, INTERPRET, check_float, use_triton

__all__ = ["match_prototypes", "match_reference", "match_triton"]


def _check(z, protos, out_size):
    check_float("z", z, 4)
    check_float("protos", protos, 2)
    if protos.shape[1] != z.shape[1]:
        raise ValueError(f"protos is (K, D) = {tuple(protos.shape)}, z is {tuple(z.shape)}")
    if protos.shape[0] < 1:
        raise ValueError("need at least one prototype")
    if out_size is not None and (len(out_size) != 2 or min(out_size) < 1):
        raise ValueError(f"out_size must be (H, W) with H, W >= 1, got {out_size}")


def match_reference(z, protos, logit_scale: float = 100.0, out_size=None):
    """(index int64, score float32, prob float32), each (B, H, W), in plain torch."""
    _check(z, protos, out_size)
    s = torch.einsum("kd,bdhw->bkhw", protos.float(), z.float())
    if out_size is not None:
        s = F.interpolate(s, size=tuple(out_size), mode="bilinear", align_corners=False)
    score, index = s.max(1)
    prob = 1.0 / torch.exp(logit_scale * (s - score[:, None])).sum(1)
    return index, score, prob


if HAVE_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _reduce_tile(s, rk, best_s, best_i, l_i, scale):
        # running argmax (first index on ties) + sum exp(scale * (s - max)) over K tiles
        tile_max = tl.max(s, 1)
        is_max = s == tile_max[:, None]
        tile_arg = tl.min(tl.where(is_max, rk[None, :], 2147483647), 1)
        new_best = tile_max > best_s
        m_new = tl.maximum(best_s, tile_max)
        l_i = l_i * tl.exp(scale * (best_s - m_new)) + tl.sum(
            tl.exp(scale * (s - m_new[:, None])), 1
        )
        best_i = tl.where(new_best, tile_arg, best_i)
        return m_new, best_i, l_i

    @triton.jit
    def _match_kernel(
        Z,
        P,
        IDX,
        SCORE,
        PROB,
        HW,
        K,
        D,
        scale,
        BP: tl.constexpr,
        BK: tl.constexpr,
        BD: tl.constexpr,
        UPCAST: tl.constexpr,
        PREC: tl.constexpr,
    ):
        b = tl.program_id(1)
        rp = tl.program_id(0) * BP + tl.arange(0, BP)
        mp = rp < HW
        zb = Z + b * D * HW
        best_s = tl.full((BP,), float("-inf"), tl.float32)
        best_i = tl.zeros((BP,), tl.int32)
        l_i = tl.zeros((BP,), tl.float32)
        for k0 in range(0, K, BK):
            rk = k0 + tl.arange(0, BK)
            mk = rk < K
            s = tl.zeros((BP, BK), tl.float32)
            for d0 in range(0, D, BD):
                rd = d0 + tl.arange(0, BD)
                md = rd < D
                # Z[b, d, p] is contiguous along p: coalesced (BD, BP) loads
                zt = tl.load(
                    zb + rd[:, None] * HW + rp[None, :], mask=md[:, None] & mp[None, :], other=0.0
                )
                pt = tl.load(
                    P + rk[:, None] * D + rd[None, :], mask=mk[:, None] & md[None, :], other=0.0
                )
                if UPCAST:
                    zt = zt.to(tl.float32)
                    pt = pt.to(tl.float32)
                else:
                    pt = pt.to(zt.dtype)
                s += tl.dot(tl.trans(zt), tl.trans(pt), input_precision=PREC)
            s = tl.where(mk[None, :], s, float("-inf"))
            best_s, best_i, l_i = _reduce_tile(s, rk, best_s, best_i, l_i, scale)
        out = b * HW + rp
        tl.store(IDX + out, best_i, mask=mp)
        tl.store(SCORE + out, best_s, mask=mp)
        tl.store(PROB + out, 1.0 / l_i, mask=mp)

    @triton.jit
    def _upsample_match_kernel(
        S, IDX, SCORE, PROB, K, h, w, H, W, sy, sx, scale, BP: tl.constexpr, BK: tl.constexpr
    ):
        b = tl.program_id(1)
        rp = tl.program_id(0) * BP + tl.arange(0, BP)
        mp = rp < H * W
        oy, ox = rp // W, rp % W
        # torch bilinear, align_corners=False: src = (dst + 0.5) * in/out - 0.5, clamped at 0
        fy = tl.maximum((oy.to(tl.float32) + 0.5) * sy - 0.5, 0.0)
        fx = tl.maximum((ox.to(tl.float32) + 0.5) * sx - 0.5, 0.0)
        y0 = tl.minimum(fy.to(tl.int32), h - 1)
        x0 = tl.minimum(fx.to(tl.int32), w - 1)
        y1 = tl.minimum(y0 + 1, h - 1)
        x1 = tl.minimum(x0 + 1, w - 1)
        ly = fy - y0.to(tl.float32)
        lx = fx - x0.to(tl.float32)
        best_s = tl.full((BP,), float("-inf"), tl.float32)
        best_i = tl.zeros((BP,), tl.int32)
        l_i = tl.zeros((BP,), tl.float32)
        sb = S + b * K * h * w
        for k0 in range(0, K, BK):
            rk = k0 + tl.arange(0, BK)
            m2 = mp[:, None] & (rk < K)[None, :]
            base = sb + rk[None, :] * (h * w)
            a = tl.load(base + (y0 * w + x0)[:, None], mask=m2, other=0.0)
            c = tl.load(base + (y0 * w + x1)[:, None], mask=m2, other=0.0)
            d = tl.load(base + (y1 * w + x0)[:, None], mask=m2, other=0.0)
            e = tl.load(base + (y1 * w + x1)[:, None], mask=m2, other=0.0)
            top = (1.0 - lx[:, None]) * a + lx[:, None] * c
            bot = (1.0 - lx[:, None]) * d + lx[:, None] * e
            s = (1.0 - ly[:, None]) * top + ly[:, None] * bot
            s = tl.where((rk < K)[None, :], s, float("-inf"))
            best_s, best_i, l_i = _reduce_tile(s, rk, best_s, best_i, l_i, scale)
        out = b * H * W + rp
        tl.store(IDX + out, best_i, mask=mp)
        tl.store(SCORE + out, best_s, mask=mp)
        tl.store(PROB + out, 1.0 / l_i, mask=mp)


def match_triton(
    z, protos, logit_scale: float = 100.0, out_size=None, config=None, method: str = "fused"
):
    """Triton version of :func:`match_reference` (index is int32 here).

    ``method`` (without out_size): "fused" = one kernel computes the scores tile by tile
    and reduces them; "gemm" = torch matmul writes the (B, K, h, w) scores, then the
    reduction kernel reads them. With out_size the scores always come from a matmul.
    ``config`` = (BP, num_warps) overrides the pixel tile (benchmarks sweep it)."""
    if method not in ("fused", "gemm"):
        raise ValueError(f"method must be 'fused' or 'gemm', got {method!r}")
    _check(z, protos, out_size)
    if not HAVE_TRITON:
        raise RuntimeError("triton is not installed: pip install triton (Linux)")
    z, protos = z.contiguous(), protos.contiguous()
    B, D, h, w = z.shape
    K = protos.shape[0]
    H, W = (h, w) if out_size is None else (int(out_size[0]), int(out_size[1]))
    idx = torch.empty((B, H, W), device=z.device, dtype=torch.int32)
    score = torch.empty((B, H, W), device=z.device, dtype=torch.float32)
    prob = torch.empty_like(score)
    BK = min(64, max(16, triton.next_power_of_2(K)))
    # H200, Z (8, 512, 128, 128) fp32, K = 21: (128, 8) 0.162 ms, (128, 4) 0.201 ms,
    # (64, 8) 0.277 ms; the "gemm" method 0.43 ms (BENCHMARKS.md).
    BP, warps = config or (128, 8)
    if out_size is None and method == "fused":
        BD = min(64, max(16, triton.next_power_of_2(D)))
        upcast = INTERPRET and z.dtype != torch.float32
        # float32: tf32x3 (three tensor-core passes, ~float32 accuracy); "ieee" ran 24x
        # slower in the contrastive kernels on an H200. The interpreter knows only ieee.
        prec = "ieee" if INTERPRET else "tf32x3"
        grid = (triton.cdiv(h * w, BP), B)
        _match_kernel[grid](
            z,
            protos,
            idx,
            score,
            prob,
            h * w,
            K,
            D,
            float(logit_scale),
            BP=BP,
            BK=BK,
            BD=BD,
            UPCAST=upcast,
            PREC=prec,
            num_warps=warps,
        )
    else:  # at H, W = h, w the resampling is the identity (weights 0 and 1 exactly)
        s = torch.einsum("kd,bdhw->bkhw", protos.float(), z.float()).contiguous()
        grid = (triton.cdiv(H * W, BP), B)
        _upsample_match_kernel[grid](
            s,
            idx,
            score,
            prob,
            K,
            h,
            w,
            H,
            W,
            h / H,
            w / W,
            float(logit_scale),
            BP=BP,
            BK=BK,
            num_warps=warps,
        )
    return idx, score, prob


def match_prototypes(
    z, protos, logit_scale: float = 100.0, out_size=None, backend: str | None = None
):
    """Per-pixel (index, score, prob), each (B, H, W); Triton on CUDA, torch elsewhere.

    Args:
        z: (B, D, h, w) float32/bfloat16 pixel embeddings.
        protos: (K, D) prototypes.
        logit_scale: softmax temperature multiplier for ``prob``.
        out_size: (H, W) to resample the scores to before the reduction; None = (h, w).
        backend: "triton", "torch" or None (auto).
    """
    if backend is None:
        backend = "triton" if use_triton(z, protos) and z.is_cuda else "torch"
    if backend == "triton":
        return match_triton(z, protos, logit_scale, out_size)
    if backend == "torch":
        return match_reference(z, protos, logit_scale, out_size)
    raise ValueError(f"backend must be 'triton' or 'torch', got {backend!r}")
