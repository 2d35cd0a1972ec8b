"""The committed toy teacher and the embedded default bundle (clips4rt demo)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "train" / "assets"
MODELS = REPO / "clips4rt" / "models"


def test_teacher_loads_through_open_clip_and_knows_the_toy_world():
    pytest.importorskip("open_clip")
    import torch

    from train import toyworld
    from train.models.clip_loader import load_clip
    from train.toyworld.teacher import presence_recall

    model, name, _, _ = load_clip(
        model_config=ASSETS / "toy-teacher.json", pretrained=str(ASSETS / "toy-teacher.pt")
    )
    sd = torch.load(ASSETS / "toy-teacher.pt", weights_only=True)["state_dict"]
    torch.testing.assert_close(model.visual.conv1.weight, sd["visual.conv1.weight"].float())
    import open_clip

    tok = open_clip.get_tokenizer(name)
    scenes = [toyworld.make_scene(4242, i) for i in range(120)]  # unseen seed
    recall = presence_recall(model, tok, scenes, model.visual.image_size[0])
    torch.manual_seed(0)
    untrained, _, _, _ = load_clip(model_config=ASSETS / "toy-teacher.json")
    base = presence_recall(untrained, tok, scenes, model.visual.image_size[0])
    assert recall > base + 0.1, (recall, base)


def test_committed_artifacts_are_small():
    files = [*ASSETS.glob("toy-teacher.*"), *MODELS.glob("toy*")]
    assert files and sum(f.stat().st_size for f in files) < 20 * 2**20


def test_demo_runs_offline(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "clips4rt", "demo", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "model:" in out.stdout and "% of pixels" in out.stdout
    img = Image.open(tmp_path / "demo_overlay.png")
    img.load()
    scene = Image.open(REPO / "clips4rt" / "data" / "demo_scene.png")
    assert img.size == (4 * scene.size[0], 4 * scene.size[1]) and img.mode == "RGB"  # 128 -> 512
    big = np.asarray(scene.convert("RGB")).repeat(4, 0).repeat(4, 1)
    assert not np.array_equal(np.asarray(img), big)


def test_default_bundle_is_the_student_and_beats_its_teacher():
    """The embedded bundle is the CLIP-S4 student of the toy preset. On 100 held-out toy
    scenes (the evaluation seed 3000) its mIoU is above its teacher's best training-free
    dense setting (SCLIP, 96 px, ImageNet templates), and far above the same teacher
    architecture with random weights."""
    pytest.importorskip("open_clip")
    import tempfile

    import torch

    import clips4rt
    from train import toyworld
    from train.evaluate.metrics import confusion, summarize
    from train.export import export_dense_clip
    from train.models.clip_loader import load_clip

    def miou(seg):
        conf = np.zeros((20, 21), np.int64)
        for i in range(100):
            s = toyworld.make_scene(3000, i)
            r = seg.run(s.image, list(toyworld.CLASSES), threshold=0)
            conf += confusion(s.mask, r.labels, 20)
        return summarize(conf, list(toyworld.CLASSES), [])["miou"]

    student = clips4rt.Segmenter(MODELS / "toy.onnx")
    assert student.info.kind == "clip-s4"
    assert student.info.provenance["pretrained"] == "train/assets/toy-teacher.pt"
    scores = {"student": miou(student)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, pretrained in (("teacher", ASSETS / "toy-teacher.pt"), ("random", None)):
            torch.manual_seed(0)
            model, arch, mean, std = load_clip(
                model_config=ASSETS / "toy-teacher.json",
                pretrained=str(pretrained) if pretrained else None,
            )
            path = f"{tmp}/{name}.onnx"
            export_dense_clip(
                model, arch, None, mean, std, "sclip", path, input_size=96, templates="imagenet"
            )
            scores[name] = miou(clips4rt.Segmenter(path))
    assert scores["student"] > scores["teacher"] > scores["random"] + 4, scores
