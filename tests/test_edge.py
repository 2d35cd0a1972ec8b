"""The edge preset: a ViT-B/16 teacher distilled into a small CNN. Two steps on this
CPU with random weights (no download: speed and shapes do not depend on them), then the
export and the bundle checks, as a user's GPU run would end."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")
skimage_data = pytest.importorskip("skimage.data")

import clips4rt  # noqa: E402
from train.__main__ import main as train_main  # noqa: E402
from train.export import main as export_main  # noqa: E402
from train.method.config import PRESETS, load_config  # noqa: E402


def test_the_preset_is_the_documented_recipe():
    cfg = load_config("edge", [])
    assert (cfg.clip, cfg.pretrained, cfg.teacher_dense) == ("ViT-B-16", "openai", "sclip")
    assert cfg.backbone == "mobilenetv4_conv_small" and cfg.imagenet_init
    assert cfg.teacher_targets == "both" and cfg.teacher_center == 1.0
    raw = json.loads((PRESETS / "edge.json").read_text())
    assert raw["data"].startswith("REPLACE") and raw["known_classes"].startswith("REPLACE")


def test_edge_preset_trains_two_steps_on_the_cpu_and_exports_a_checked_bundle(tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        Image.fromarray(getattr(skimage_data, name)()).convert("RGB").save(images / f"{name}.jpg")
    classes = tmp_path / "classes.txt"
    classes.write_text("person\ncup\ncat\nrocket\nsky\n")
    run = tmp_path / "run"
    rc = train_main(["--preset", "edge", "--steps=2", "--batch=2", f"--data={images}",
                     f"--known_classes={classes}", "--pretrained=None", "--imagenet_init=false",
                     "--workers=0", f"--out={run}", "--ckpt_every=2",
                     # the recipe, lighter: 2 x 4 crops a view through ViT-B/16, not 2 x 16
                     "--teacher_size=224", "--image_size=128", "--segments=4",
                     "--templates=simple"])  # fmt: skip
    assert rc == 0
    last = sorted(run.glob("step_*.pt"))[-1]
    assert last.name == "step_0000002.pt"
    out = tmp_path / "edge.onnx"
    assert export_main(["--checkpoint", str(last), "-o", str(out)]) == 0
    seg = clips4rt.Segmenter(out, threads=2)  # loading runs the bundle checks
    info = seg.info
    assert info.kind == "clip-s4" and info.embed_dim == 512 and info.stride == 8
    assert info.provenance["backbone"] == "mobilenetv4_conv_small"
    assert info.known_classes == ("person", "cup", "cat", "rocket", "sky")
    photo = skimage_data.astronaut()
    r = seg.run(photo, ["person", "sky", "rocket"])
    assert r.labels.shape == photo.shape[:2]
    emb = seg.embed_image(photo)
    assert emb.shape[0] == 512 and np.allclose(np.linalg.norm(emb, axis=0), 1, atol=1e-3)


def test_imagenet_init_offline_names_the_fix(monkeypatch):
    import timm

    from clips4rt.export.student import FPNStudent

    def offline(*a, pretrained=False, **k):
        if pretrained:
            raise OSError("we cannot find the requested files in the local cache")
        return create(*a, **k)

    create = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match="--imagenet_init=false"):
        FPNStudent(512, "mobilenetv4_conv_small", pretrained=True)


def test_teacher_windows_average_the_crops_features():
    """--teacher_window: the dense targets as the mean of crops' features (the runtime's
    sliding windows), checked against a direct computation; a window of the whole image
    is one pass; a window off the patch grid is refused naming the fix."""
    import torch
    import torch.nn.functional as F

    from train.method.loop import Teacher

    cfg = load_config("toy", ["--teacher_window=64"])
    t = Teacher(cfg, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (2, 128, 128, 3), generator=g, dtype=torch.uint8)
    got = t.features(images)
    p = t.dense.stride
    want = torch.zeros_like(got)
    count = torch.zeros(1, 1, 128 // p, 128 // p)
    for y in (0, 32, 64):
        for x in (0, 32, 64):
            want[:, :, y // p : (y + 64) // p, x // p : (x + 64) // p] += t.dense(
                images[:, y : y + 64, x : x + 64]
            )
            count[:, :, y // p : (y + 64) // p, x // p : (x + 64) // p] += 1
    torch.testing.assert_close(got, F.normalize(want / count, dim=1), atol=1e-5, rtol=0)
    assert not torch.allclose(got, t.dense(images), atol=1e-2)  # windows change the targets
    t.window = 128
    torch.testing.assert_close(t.features(images), t.dense(images))
    for bad in ("--teacher_window=40", "--teacher_window=256"):
        with pytest.raises(ValueError, match="teacher_window"):
            Teacher(load_config("toy", [bad]), torch.device("cpu"))
    with pytest.raises(ValueError, match="w_pixel"):
        Teacher(load_config("toy", ["--w_pixel=1", "--teacher_targets=crops"]), torch.device("cpu"))
    assert load_config("edge", []).teacher_window == 224
    same = load_config("toy", ["--teacher_window=0"]).model_hash()
    assert load_config("toy", []).model_hash() == same  # older checkpoints keep their hash
