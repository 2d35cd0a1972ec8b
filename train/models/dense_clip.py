"""Dense CLIP: pixel-level embeddings from an open_clip ViT without training.

The last transformer block is replaced by a training-free dense variant
(DESIGN.md): MaskCLIP (value path only, residual + FFN kept), ClearCLIP
(softmax(qq^T) attention, no residual, no FFN) or SCLIP (softmax(qq^T) +
softmax(kk^T) attention, residual kept, no FFN). ``ln_post`` and ``proj`` are
applied to every patch token. Both modules are export-ready: no data-dependent
Python branches, positional embeddings interpolated in the graph.

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


def dense_mode(name: str):
    """Register the decorated ``f(block, x)`` as the dense mode ``name``."""
    if not re.fullmatch(KIND_PATTERN, name) or name == "clip-s4":  # it becomes the bundle's kind
        raise ValueError(f"dense mode name {name!r} must match {KIND_PATTERN} (not 'clip-s4')")

    def register(fn):
        DENSE_MODES[name] = fn
        return fn

    return register


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


@dense_mode("maskclip")
def _maskclip(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Value path only (each token attends to itself), residual and FFN kept."""
    w_in, b_in, out_proj, _ = _attn_params(blk)
    C = x.shape[-1]
    v = F.linear(blk.ln_1(x), w_in[2 * C :], None if b_in is None else b_in[2 * C :])
    x = x + blk.ls_1(out_proj(v))
    return x + blk.ls_2(blk.mlp(blk.ln_2(x)))


def _self_attention(blk: nn.Module, x: torch.Tensor, keys: bool) -> torch.Tensor:
    """out_proj(softmax(qq^T) v [+ softmax(kk^T) v]): q-q (and k-k) attention."""
    w_in, b_in, out_proj, heads = _attn_params(blk)
    y = blk.ln_1(x)
    B, L, C = y.shape
    q, k, v = (_heads(t, heads) for t in F.linear(y, w_in, b_in).chunk(3, dim=-1))
    scale = (C // heads) ** -0.5
    attn = torch.softmax(q @ q.transpose(-1, -2) * scale, dim=-1)
    if keys:
        attn = attn + torch.softmax(k @ k.transpose(-1, -2) * scale, dim=-1)
    return out_proj((attn @ v).transpose(1, 2).reshape(B, L, C))


@dense_mode("clearclip")
def _clearclip(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """softmax(qq^T) attention, no residual, no FFN."""
    return _self_attention(blk, x, keys=False)


@dense_mode("sclip")
def _sclip(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """softmax(qq^T) + softmax(kk^T) attention, residual kept, no FFN."""
    return x + blk.ls_1(_self_attention(blk, x, keys=True))


class DenseCLIPImage(nn.Module):
    """uint8 (B, H, W, 3) RGB -> float32 (B, D, H/p, W/p) unit-length embeddings.

    H and W must be multiples of the patch size p; any size works (the
    positional embedding grid is resampled bicubically to (H/p, W/p)).
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

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        pos = self.visual.positional_embedding
        grid = pos[1:].reshape(1, self.grid[0], self.grid[1], -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([pos[:1], grid.flatten(2).transpose(1, 2)[0]], dim=0)

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
    """int32 tokens (N, context_length) -> float32 (N, D) unit-length text embeddings.

    Mirrors open_clip's ``CLIP.encode_text`` (argmax pooling on the end token)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        for attr in ("token_embedding", "positional_embedding", "transformer", "ln_final"):
            if not hasattr(model, attr):
                raise ValueError(f"{type(model).__name__} has no built-in text tower ({attr})")
        if getattr(model, "text_pool_type", "argmax") != "argmax":
            raise ValueError(f"text pooling {model.text_pool_type!r} is not supported")
        for blk in model.transformer.resblocks:
            _attn_params(blk)
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        m = self.model
        dtype = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens.long()).to(dtype) + m.positional_embedding.to(dtype)
        for blk in m.transformer.resblocks:
            x = block_forward(blk, x, m.attn_mask)
        x = m.ln_final(x)
        eot = tokens.argmax(dim=-1)  # end token = the largest id of each row
        x = x.gather(1, eot.view(-1, 1, 1).expand(-1, 1, x.shape[-1])).squeeze(1)
        proj = m.text_projection
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return F.normalize(x.float(), dim=-1)
