"""CLIP-S4 students: image -> unit-length pixel embeddings (B, D, H/stride, W/stride).

Backbones (chosen by config, registry ``BACKBONES``):
- ``resnet18`` / ``mobilenetv3_small_100`` / ``mobilenetv3_large_100``...: a timm CNN
  (random init offline; ImageNet weights with ``pretrained=True`` when the user has
  internet) + an FPN decoder down to stride 8 (or 4). Light, for edge and video.
- ``vit``: the teacher's own ViT (a trainable copy of open_clip's VisionTransformer,
  positional embedding interpolated to any size) + a pixel decoder that upsamples the
  patch features 2x. Heavier, higher quality.

Inputs are float (B, 3, H, W) normalised images; :class:`UInt8Input` wraps a student
for export (uint8 (B, H, W, 3) RGB in, as the bundle contract wants).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from clips4rt.export.dense_clip import block_forward, resample_pos_embed

CNN_BACKBONES = (
    "resnet10t",
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenetv3_small_100",
    "mobilenetv3_large_100",
    "mobilenetv4_conv_small",
    "lcnet_100",
    "efficientnet_b0",
)
BACKBONES = CNN_BACKBONES + ("vit",)


NORMS = ("bn", "gn")


def _conv(cin: int, cout: int, k: int = 3, norm: str = "bn") -> nn.Sequential:
    if norm not in NORMS:
        raise ValueError(f"unknown decoder norm {norm!r}; choose one of {NORMS}")
    layer = nn.BatchNorm2d(cout) if norm == "bn" else nn.GroupNorm(min(32, cout // 4), cout)
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), layer, nn.ReLU(inplace=True)
    )


class FPNStudent(nn.Module):
    """timm CNN features at strides 4..``top_stride`` (32, or 16 to drop the deepest
    stage: most of a ResNet's weights, and a 3x3 map on a 96 px view), top-down FPN to
    ``stride``, 1x1 to D."""

    def __init__(
        self,
        embed_dim: int,
        backbone: str = "resnet18",
        stride: int = 8,
        width: int = 128,
        pretrained: bool = False,
        norm: str = "bn",
        top_stride: int = 32,
    ):
        super().__init__()
        import timm

        if backbone not in CNN_BACKBONES:
            raise ValueError(f"unknown CNN backbone {backbone!r}; choose one of {CNN_BACKBONES}")
        if stride not in (4, 8):
            raise ValueError(f"stride must be 4 or 8, got {stride}")
        if top_stride not in (16, 32):
            raise ValueError(f"top_stride must be 16 or 32, got {top_stride}")
        info = timm.create_model(backbone, features_only=True).feature_info.reduction()
        # stages deeper than top_stride are not built at all (timm truncates the body)
        indices = tuple(i for i, r in enumerate(info) if r <= top_stride)
        try:
            self.body = timm.create_model(
                backbone, features_only=True, pretrained=pretrained, out_indices=indices
            )
        except Exception as e:  # offline, no cache: timm's hub download fails
            if not pretrained:
                raise
            raise RuntimeError(
                f"the ImageNet weights of {backbone} could not be loaded ({type(e).__name__}: "
                f"{str(e)[:200]}); train from random weights with --imagenet_init=false, or "
                "go online once (timm caches them under HF_HOME)"
            ) from None
        reductions = self.body.feature_info.reduction()
        channels = self.body.feature_info.channels()
        keep = [i for i, r in enumerate(reductions) if r >= stride]
        self.levels = keep
        self.lateral = nn.ModuleList(nn.Conv2d(channels[i], width, 1) for i in keep)
        self.smooth = _conv(width, width, norm=norm)
        self.head = nn.Sequential(_conv(width, width, norm=norm), nn.Conv2d(width, embed_dim, 1))
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.body(x)
        out = None
        for lvl, lat in zip(reversed(self.levels), reversed(self.lateral)):
            f = lat(feats[lvl])
            out = (
                f
                if out is None
                else f + F.interpolate(out, size=f.shape[-2:], mode="bilinear", align_corners=False)
            )
        out = self.head(self.smooth(out))
        size = (x.shape[-2] // self.stride, x.shape[-1] // self.stride)
        if out.shape[-2:] != size:
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return F.normalize(out, dim=1)


class ViTStudent(nn.Module):
    """The teacher's ViT (trainable copy) + 2x pixel decoder: stride = patch / 2."""

    def __init__(self, visual: nn.Module, embed_dim: int, width: int = 128, norm: str = "bn"):
        super().__init__()
        self.visual = copy.deepcopy(visual)
        self.grid = tuple(self.visual.grid_size)
        self.patch = self.visual.patch_size[0]
        self.stride = self.patch // 2
        self.decoder = nn.Sequential(
            _conv(embed_dim, width, norm=norm),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            _conv(width, width, norm=norm),
            nn.Conv2d(width, embed_dim, 1),
        )

    def _pos(self, h, w) -> torch.Tensor:  # in-graph bicubic resampling (size=, as before)
        return resample_pos_embed(self.visual.positional_embedding, self.grid, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.visual
        x = v.conv1(x)
        B, C, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.view(1, 1, C).expand(B, 1, C)
        x = torch.cat([cls, x], dim=1) + self._pos(h, w)
        x = v.ln_pre(x)
        for blk in v.transformer.resblocks:
            x = block_forward(blk, x)
        x = v.ln_post(x[:, 1:]) @ v.proj  # (B, hw, D): CLIP space
        x = x.transpose(1, 2).reshape(B, -1, h, w)
        up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return F.normalize(up + self.decoder(x), dim=1)


class UInt8Input(nn.Module):
    """uint8 (B, H, W, 3) RGB -> normalised float -> student (export wrapper)."""

    def __init__(self, student: nn.Module, mean, std):
        super().__init__()
        self.student = student
        self.stride = student.stride
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image.permute(0, 3, 1, 2).float() - self.mean) / self.std
        return self.student(x)


def build_student(
    backbone: str,
    embed_dim: int,
    teacher_visual: nn.Module | None = None,
    stride: int = 8,
    width: int = 128,
    pretrained: bool = False,
    norm: str = "bn",
    top_stride: int = 32,
) -> nn.Module:
    """Registry: a student by backbone name (see ``BACKBONES``). ``norm``: the
    decoder's normalisation, "bn" or "gn" (GroupNorm: no batch statistics, so a
    distributed run computes what one process would; the vit student then has no
    BatchNorm at all)."""
    if backbone == "vit":
        if teacher_visual is None:
            raise ValueError("the vit student needs the teacher's visual tower")
        return ViTStudent(teacher_visual, embed_dim, width, norm)
    if backbone in CNN_BACKBONES:
        return FPNStudent(embed_dim, backbone, stride, width, pretrained, norm, top_stride)
    raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")
