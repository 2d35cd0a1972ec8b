"""The dense modes against an independent re-derivation of each paper's last block.

The reference below is written from the papers' equations and the official
repositories' layout (sequence-first tokens, open_clip's own block forward for the
first L-1 blocks, ``F.interpolate`` for the positional embedding exactly as each
official repository calls it), sharing no code with ``clips4rt.export.dense_clip``. The
tiny CLIP gets non-trivial LayerNorm weights and biases, so that a dropped or
misplaced norm, residual or FFN shows.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")
import torch.nn.functional as F  # noqa: E402

from clips4rt.export.dense_clip import DenseCLIPImage  # noqa: E402


def _pos_official(visual, h, w, mode):
    """Positional embedding as each official repository adds it."""
    pos = visual.positional_embedding
    n = pos.shape[0] - 1
    side = int(math.sqrt(n))
    grid = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    if mode == "maskclip":  # mmseg resize_pos_embed: size=
        if (h, w) == (side, side):
            return pos
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
    else:  # SCLIP / ClearCLIP interpolate_pos_encoding (from DINO): scale_factor (n + 0.1)/N
        if h * w == n and h == w:
            return pos
        grid = F.interpolate(grid, scale_factor=((h + 0.1) / side, (w + 0.1) / side),
                             mode="bicubic")  # fmt: skip
        assert grid.shape[-2:] == (h, w)
    return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(h * w, -1)], dim=0)


def _last_block_official(blk, x, mode):
    """x: (L, B, C) sequence-first, as the official code holds it."""
    attn = blk.attn
    L, bsz, C = x.shape
    heads = attn.num_heads
    hd = C // heads
    y = blk.ln_1(x)
    q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(L, bsz * heads, hd).transpose(0, 1) for t in (q, k, v))
    if mode == "maskclip":
        out = attn.out_proj(v.transpose(0, 1).reshape(L, bsz, C))
        x = x + out
        return x + blk.mlp(blk.ln_2(x))
    qq = F.softmax(torch.bmm(q, q.transpose(1, 2)) * hd**-0.5, dim=-1)
    if mode == "clearclip":
        w = qq
    else:
        w = qq + F.softmax(torch.bmm(k, k.transpose(1, 2)) * hd**-0.5, dim=-1)
    out = attn.out_proj(torch.bmm(w, v).transpose(0, 1).reshape(L, bsz, C))
    if mode == "clearclip":
        return out
    x = x + out
    return x + blk.mlp(blk.ln_2(x))


def official_dense(visual, pixels, mode):
    """(B, 3, H, W) normalised pixels -> (B, D, H/p, W/p) unit patch embeddings."""
    x = visual.conv1(pixels)
    B, C, h, w = x.shape
    x = x.reshape(B, C, -1).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding + torch.zeros(B, 1, C), x], dim=1)
    x = x + _pos_official(visual, h, w, mode)
    x = visual.ln_pre(x).permute(1, 0, 2)
    for blk in visual.transformer.resblocks[:-1]:  # open_clip's own forward
        x = blk(x.permute(1, 0, 2)).permute(1, 0, 2)
    x = _last_block_official(visual.transformer.resblocks[-1], x, mode)
    x = visual.ln_post(x.permute(1, 0, 2)) @ visual.proj
    x = F.normalize(x[:, 1:], dim=-1)
    return x.transpose(1, 2).reshape(B, -1, h, w)


@pytest.fixture(scope="module")
def clip_with_norms():
    from clips4rt.export.clip_loader import load_clip
    from tests.conftest import TINY_CONFIG

    torch.manual_seed(3)
    model, *_ = load_clip(model_config=TINY_CONFIG)
    with torch.no_grad():
        for m in model.visual.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("mode", ["maskclip", "clearclip", "sclip"])
# native 4x4 (32 px, patch 8); 4x3 keeps the native height only (the raw embedding is for
# the native grid in both sides, not one)
@pytest.mark.parametrize("grid", [(4, 4), (6, 5), (3, 7), (4, 3)])
def test_dense_mode_equals_official(clip_with_norms, mode, grid):
    visual = clip_with_norms.visual
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)
    dense = DenseCLIPImage(visual, mode, mean, std).eval()
    g = torch.Generator().manual_seed(7)
    img = torch.randint(0, 256, (2, grid[0] * 8, grid[1] * 8, 3), generator=g, dtype=torch.uint8)
    pixels = (img.permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / (
        torch.tensor(std).view(1, 3, 1, 1)
    )
    with torch.no_grad():
        ours = dense(img)
        ref = official_dense(visual, pixels, mode)
    assert ours.shape == ref.shape == (2, visual.output_dim, *grid)
    cos = (ours * ref).sum(1)
    assert torch.isfinite(cos).all()
    assert cos.min().item() > 1 - 1e-5, (mode, grid, cos.min().item())


def test_modes_are_not_interchangeable(clip_with_norms):
    """The reference tells the modes apart (a parity test that any mode passed would
    prove nothing): each mode is far from the other modes' references."""
    visual = clip_with_norms.visual
    img = torch.randint(0, 256, (1, 40, 48, 3), generator=torch.Generator().manual_seed(1),
                        dtype=torch.uint8)  # fmt: skip
    mean, std = (0.5,) * 3, (0.25,) * 3
    pixels = (img.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    modes = ("maskclip", "clearclip", "sclip")
    with torch.no_grad():
        ours = {m: DenseCLIPImage(visual, m, mean, std)(img) for m in modes}
        refs = {m: official_dense(visual, pixels, m) for m in modes}
    for a in modes:
        for b in modes:
            if a != b:
                assert (ours[a] * refs[b]).sum(1).min() < 0.999, (a, b)


@pytest.mark.parametrize("mode", ["maskclip", "clearclip", "sclip"])
def test_dense_modes_and_vit_student_stay_on_the_models_device(clip_with_norms, mode):
    """Every tensor the forward makes lives on the model's device: run on torch's "meta"
    device (shapes only), a constant made on the CPU is a device mismatch, as on a GPU.
    (The positional embedding's resampling matrix was built on the CPU: every ViT
    teacher and the vit student failed on CUDA, found on a lent H200 2026-12-04.)"""
    import copy

    from clips4rt.export.student import build_student

    visual = copy.deepcopy(clip_with_norms.visual)
    dense = DenseCLIPImage(visual, mode, (0.5,) * 3, (0.25,) * 3).to("meta")
    for h, w in ((32, 32), (48, 40)):  # the native grid, and a resampled one
        img = torch.zeros(2, h, w, 3, dtype=torch.uint8, device="meta")
        assert dense(img).shape == (2, visual.output_dim, h // 8, w // 8)
    student = build_student("vit", visual.output_dim, visual).to("meta")
    out = student(torch.zeros(2, 3, 48, 40, device="meta"))
    assert out.shape == (2, visual.output_dim, 12, 10) and out.device.type == "meta"
