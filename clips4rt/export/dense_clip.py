"""Dense CLIP: pixel-level embeddings from an open_clip ViT without training.

The last transformer block is replaced by a training-free dense variant, each as its
official code computes it (the equations are in each mode's docstring): MaskCLIP
(value path only, residual + FFN kept), SCLIP (softmax(qq^T) + softmax(kk^T)
attention, residual + FFN kept), ClearCLIP (softmax(qq^T) attention, no residual, no
FFN). ``ln_post`` and ``proj`` are applied to every patch token. Both modules are
export-ready: no data-dependent Python branches, positional embeddings interpolated in
the graph with the official rule of each mode (``pos_extent``).

The modes are a registry (``DENSE_MODES``, name -> last-block function): a new mode is
one function under ``@dense_mode("name")``; the exporter writes its name as the
bundle's ``kind`` and the runtime, which never branches on it, needs no change.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from clips4rt.bundle import KIND_PATTERN

#: name -> f(block, tokens (B, L, C)) -> tokens: the last block's dense replacement
DENSE_MODES: dict[str, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {}
#: name -> pad of the positional-embedding resampling (see ``resample_matrix``): 0.1 is
#: SCLIP's and ClearCLIP's ``scale_factor=(n + 0.1) / N`` (DINO's), 0 MaskCLIP's ``size=n``
POS_PAD: dict[str, float] = {}


def dense_mode(name: str, pos_pad: float = 0.0):
    """Register the decorated ``f(block, x)`` as the dense mode ``name``; ``pos_pad`` is
    its official positional-embedding interpolation (``POS_PAD``)."""
    if not re.fullmatch(KIND_PATTERN, name) or name == "clip-s4":  # it becomes the bundle's kind
        raise ValueError(f"dense mode name {name!r} must match {KIND_PATTERN} (not 'clip-s4')")

    def register(fn):
        DENSE_MODES[name] = fn
        POS_PAD[name] = float(pos_pad)
        return fn

    return register


def resample_matrix(n_out, n_in: int, pad, device=None) -> torch.Tensor:
    """(n_out, n_in) float32 matrix (on ``device``) of torch's bicubic resampling (a = -0.75,
    align_corners=False, border taps clamped) from ``n_in`` to ``n_out`` samples, with
    source coordinates ``(i + 0.5) * n_in / (n_out + pad) - 0.5``: ``pad`` = 0 is
    ``F.interpolate(size=n_out)``, ``pad`` = 0.1 is ``scale_factor=(n_out + 0.1) / n_in``.

    Written with arange and comparisons so that ``n_out`` stays a dynamic dimension in
    an exported graph (F.interpolate's ``scale_factor`` would be baked in)."""
    dst = torch.arange(n_out, dtype=torch.float32, device=device)
    src = (dst + 0.5) * (n_in / (n_out + pad)) - 0.5
    base = torch.floor(src)
    t = src - base
    a = -0.75
    near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # noqa: E731  |x| <= 1
    far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # noqa: E731  1 < |x| < 2
    cols = torch.arange(n_in, dtype=torch.float32, device=device)
    m = torch.zeros(dst.numel(), n_in, device=device)
    for k, wk in zip((-1, 0, 1, 2), (far(t + 1), near(t), near(1 - t), far(2 - t))):
        idx = torch.clamp(base + k, 0, n_in - 1)
        m = m + wk[:, None] * (idx[:, None] == cols[None, :]).float()
    return m


def _attn_params(blk: nn.Module):
    """(in_proj_weight, in_proj_bias, out_proj, heads) of an open_clip block's attention."""
    attn = blk.attn
    if isinstance(attn, nn.MultiheadAttention):
        if not attn._qkv_same_embed_dim:
            raise ValueError("separate q/k/v projections are not supported")
        return attn.in_proj_weight, attn.in_proj_bias, attn.out_proj, attn.num_heads
    extras = ("logit_scale", "head_scale")
    if (
        any(getattr(attn, e, None) is not None for e in extras)
        or not isinstance(getattr(attn, "ln_inner", nn.Identity()), nn.Identity)
        or not isinstance(getattr(attn, "ln_q", nn.Identity()), nn.Identity)
    ):
        raise ValueError(
            "attention with scaled-cosine, head scale, qk-norm or inner norm is "
            "not supported by the dense modes"
        )
    if not isinstance(getattr(blk, "ln_attn", nn.Identity()), nn.Identity):
        raise ValueError("blocks with ln_attn are not supported by the dense modes")
    return attn.in_proj_weight, attn.in_proj_bias, attn.out_proj, attn.num_heads


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    B, L, C = x.shape
    return x.reshape(B, L, heads, C // heads).transpose(1, 2)


def block_forward(blk: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None = None):
    """One open_clip residual attention block on batch-first (B, L, C) tokens.

    The same math as the block's own forward, written with plain ops: the
    TorchScript exporter bakes nn.MultiheadAttention's batch size and length
    into Reshape nodes, which breaks dynamic shapes."""
    w_in, b_in, out_proj, heads = _attn_params(blk)
    B, L, C = x.shape
    q, k, v = (_heads(t, heads) for t in F.linear(blk.ln_1(x), w_in, b_in).chunk(3, dim=-1))
    logits = q @ k.transpose(-1, -2) * (C // heads) ** -0.5
    if attn_mask is not None:
        logits = logits + attn_mask.to(logits.dtype)
    o = (torch.softmax(logits, dim=-1) @ v).transpose(1, 2).reshape(B, L, C)
    x = x + blk.ls_1(out_proj(o))
    return x + blk.ls_2(blk.mlp(blk.ln_2(x)))


@dense_mode("maskclip", pos_pad=0.0)
def _maskclip(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """MaskCLIP (Zhou et al., ECCV 2022; chongzhou/MaskCLIP, ``vit.py`` last layer):
    ``y = x + out(W_v ln_1(x)); y = y + mlp(ln_2(y))``: value path only (each token
    attends to itself), residual and FFN kept. Positional embedding: ``size=n``."""
    w_in, b_in, out_proj, _ = _attn_params(blk)
    C = x.shape[-1]
    v = F.linear(blk.ln_1(x), w_in[2 * C :], None if b_in is None else b_in[2 * C :])
    x = x + blk.ls_1(out_proj(v))
    return x + blk.ls_2(blk.mlp(blk.ln_2(x)))


def _self_attention(blk: nn.Module, x: torch.Tensor, keys: bool) -> torch.Tensor:
    """``out(softmax(q q^T / sqrt(d)) v [+ softmax(k k^T / sqrt(d)) v])`` per head, with
    q, k, v = in_proj(ln_1(x)): q-q (and k-k) attention."""
    w_in, b_in, out_proj, heads = _attn_params(blk)
    y = blk.ln_1(x)
    B, L, C = y.shape
    q, k, v = (_heads(t, heads) for t in F.linear(y, w_in, b_in).chunk(3, dim=-1))
    scale = (C // heads) ** -0.5
    attn = torch.softmax(q @ q.transpose(-1, -2) * scale, dim=-1)
    if keys:
        attn = attn + torch.softmax(k @ k.transpose(-1, -2) * scale, dim=-1)
    return out_proj((attn @ v).transpose(1, 2).reshape(B, L, C))


@dense_mode("clearclip", pos_pad=0.1)
def _clearclip(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ClearCLIP (Lan et al., ECCV 2024; mc-lan/ClearCLIP): ``y = out(softmax(q q^T /
    sqrt(d)) v)``: q-q attention, no residual, no FFN. Positional embedding:
    ``scale_factor=(n + 0.1) / N``, the raw one at the native grid."""
    return _self_attention(blk, x, keys=False)


@dense_mode("sclip", pos_pad=0.1)
def _sclip(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """SCLIP (Wang et al., ECCV 2024; wangf3014/SCLIP, ``clip/model.py``): correlative
    self-attention ``y = x + out((softmax(q q^T / sqrt(d)) + softmax(k k^T / sqrt(d))) v)``,
    then the block's FFN ``y = y + mlp(ln_2(y))`` (the official code keeps it).
    Positional embedding: ``scale_factor=(n + 0.1) / N``, the raw one at the native grid."""
    x = x + blk.ls_1(_self_attention(blk, x, keys=True))
    return x + blk.ls_2(blk.mlp(blk.ln_2(x)))


def resample_pos_embed(pos: torch.Tensor, grid: tuple[int, int], h, w, pad: float = 0.0):
    """(1 + gh*gw, C) positional embedding (class token first) -> (1 + h*w, C), the grid
    resampled bicubically (``resample_matrix``; ``h``, ``w`` may be traced sizes). With
    ``pad`` > 0, as the official SCLIP/ClearCLIP code: the raw embedding at the native
    grid (both sides), ``(n + pad)`` scaling otherwise (pad switched off arithmetically,
    no Python branch on a traced size). Computed on ``pos``'s device."""
    gh, gw = grid
    dev = pos.device
    native = torch.as_tensor((h == gh) & (w == gw), dtype=torch.float32, device=dev)
    pad = pad * (1.0 - native)
    mh, mw = resample_matrix(h, gh, pad, dev), resample_matrix(w, gw, pad, dev)
    out = torch.einsum("ia,abc,jb->ijc", mh, pos[1:].reshape(gh, gw, -1).float(), mw)
    return torch.cat([pos[:1], out.reshape(-1, pos.shape[-1]).to(pos.dtype)], dim=0)


class DenseCLIPImage(nn.Module):
    """uint8 (B, H, W, 3) RGB -> float32 (B, D, H/p, W/p) unit-length embeddings.

    H and W must be multiples of the patch size p; any size works (the
    positional embedding grid is resampled bicubically to (H/p, W/p) with the mode's
    official rule, ``POS_PAD``; at the native grid it is used as it is).
    """

    def __init__(self, visual: nn.Module, mode: str, mean, std):
        super().__init__()
        if mode not in DENSE_MODES:
            raise ValueError(f"unknown dense mode {mode!r}; choose one of {tuple(DENSE_MODES)}")
        if not hasattr(visual, "conv1") or not hasattr(visual, "transformer"):
            raise ValueError(f"{type(visual).__name__} is not an open_clip VisionTransformer")
        if getattr(visual, "attn_pool", None) is not None or visual.proj is None:
            raise ValueError(
                "vision towers with attentional pooling or no projection are not supported"
            )
        ph, pw = visual.patch_size
        if ph != pw:
            raise ValueError(f"non-square patches {visual.patch_size} are not supported")
        for blk in visual.transformer.resblocks:  # fail early on unsupported blocks
            _attn_params(blk)
        self.visual, self.mode, self.stride = visual, mode, ph
        self.grid = tuple(visual.grid_size)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255.0)

    def _pos_embed(self, h, w) -> torch.Tensor:
        return resample_pos_embed(self.visual.positional_embedding, self.grid, h, w,
                                  POS_PAD[self.mode])  # fmt: skip

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        v = self.visual
        x = image.permute(0, 3, 1, 2).to(self.mean.dtype)
        x = ((x - self.mean) / self.std).to(v.conv1.weight.dtype)
        x = v.conv1(x)  # (B, C, h, w)
        B, C, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).view(1, 1, C).expand(B, 1, C)
        x = torch.cat([cls, x], dim=1) + self._pos_embed(h, w).to(x.dtype)
        x = v.ln_pre(x)
        blocks = v.transformer.resblocks
        for blk in blocks[:-1]:
            x = block_forward(blk, x)
        x = DENSE_MODES[self.mode](blocks[-1], x)
        x = v.ln_post(x[:, 1:]) @ v.proj
        x = F.normalize(x.float(), dim=-1)
        return x.transpose(1, 2).reshape(B, -1, h, w)


class CLIPText(nn.Module):
    """int32 tokens (N, L) -> float32 (N, D) unit-length text embeddings, for any
    L <= context_length: the positional embedding and the causal mask are sliced to the
    batch's length in the graph.

    Mirrors open_clip's ``CLIP.encode_text`` (argmax pooling on the end token). The text
    tower is causal: the end token's features depend only on the positions up to it, so
    a batch cut after its longest prompt's end token embeds exactly as one padded to
    context_length with zeros (the runtime cuts; older graphs keep a fixed length)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        for attr in ("token_embedding", "positional_embedding", "transformer", "ln_final"):
            if not hasattr(model, attr):
                raise ValueError(f"{type(model).__name__} has no built-in text tower ({attr})")
        if getattr(model, "text_pool_type", "argmax") != "argmax":
            raise ValueError(f"text pooling {model.text_pool_type!r} is not supported")
        if getattr(model, "attn_mask", None) is None:
            # without a causal mask the padding is attended to: cutting it would change
            # the embeddings (and open_clip's CLIP text towers are all causal)
            raise ValueError("text towers without a causal attention mask are not supported")
        for blk in model.transformer.resblocks:
            _attn_params(blk)
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        m = self.model
        dtype = m.transformer.get_cast_dtype()
        n = tokens.shape[1]  # traced: a dynamic length in the exported graph
        x = m.token_embedding(tokens.long()).to(dtype) + m.positional_embedding[:n].to(dtype)
        mask = m.attn_mask[:n, :n]
        for blk in m.transformer.resblocks:
            x = block_forward(blk, x, mask)
        x = m.ln_final(x)
        eot = tokens.argmax(dim=-1)  # end token = the largest id of each row
        x = x.gather(1, eot.view(-1, 1, 1).expand(-1, 1, x.shape[-1])).squeeze(1)
        proj = m.text_projection
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return F.normalize(x.float(), dim=-1)
