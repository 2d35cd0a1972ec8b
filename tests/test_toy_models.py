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

    from clips4rt.export.clip_loader import load_clip
    from train import toyworld
    from train.toyworld.measure import presence_recall

    model, name, _, _ = load_clip(
        model_config=ASSETS / "toy-teacher.json", pretrained=str(ASSETS / "toy-teacher.pt")
    )
    sd = torch.load(ASSETS / "toy-teacher.pt", weights_only=True)["state_dict"]
    torch.testing.assert_close(model.visual.conv1.weight, sd["visual.conv1.weight"].float(),
                               rtol=0, atol=0)  # loaded as stored  # fmt: skip
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


def test_demo_finds_the_two_things_of_its_scene():
    """The demo scene (toy world seed 7, scene 0) shows sand, a brick wall, a pyramid and
    a car (an unknown class, never named in training). The embedded student, run as the
    demo runs it (default background rule), finds both things: IoU 0.55 (pyramid) and
    0.54 (car) when the bundle was made; the test asks 0.4 of each."""
    import clips4rt
    from train import toyworld

    scene = toyworld.make_scene(7, 0)
    shipped = np.asarray(Image.open(REPO / "clips4rt" / "data" / "demo_scene.png").convert("RGB"))
    np.testing.assert_array_equal(shipped, scene.image)
    classes = (MODELS / "toy.classes.txt").read_text().splitlines()
    assert classes == list(toyworld.CLASSES)  # what the demo names
    r = clips4rt.Segmenter().run(scene.image, classes)
    iou = {}
    for c in scene.classes:
        k = classes.index(c)
        gt, pred = scene.mask == k, r.labels == k
        iou[c] = (gt & pred).sum() / (gt | pred).sum()
    assert [c for c in scene.classes if c in toyworld.THINGS] == ["pyramid", "car"]
    assert iou["pyramid"] >= 0.4 and iou["car"] >= 0.4, iou


def test_default_bundle_is_the_student_and_beats_its_teacher():
    """The embedded bundle is the CLIP-S4 student of the toy preset. On 100 held-out toy
    scenes (the evaluation seed 3000) it is ahead of its teacher's best training-free
    dense mode (MaskCLIP, SCLIP or ClearCLIP at 128 px with the export's default sliding
    windows of the native 96 px, ImageNet templates, the best by mIoU) on all classes, on
    the 15 known and on the 5 unknown ones, and the teacher is far above the same
    architecture with random weights."""
    pytest.importorskip("open_clip")
    import tempfile

    import torch

    import clips4rt
    from clips4rt.export.clip_loader import load_clip
    from train import toyworld
    from train.evaluate.metrics import confusion, summarize
    from train.export import export_dense_clip

    unknown = list(toyworld.UNKNOWN_CLASSES)

    def scores(seg):
        conf = np.zeros((20, 21), np.int64)
        for i in range(100):
            s = toyworld.make_scene(3000, i)
            r = seg.run(s.image, list(toyworld.CLASSES), threshold=0, negatives=False)
            conf += confusion(s.mask, r.labels, 20)
        return summarize(conf, list(toyworld.CLASSES), unknown)

    student = clips4rt.Segmenter(MODELS / "toy.onnx")
    assert student.info.kind == "clip-s4"
    assert student.info.provenance["pretrained"] == "train/assets/toy-teacher.pt"
    got = {"student": scores(student)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, pretrained, modes in (
            ("teacher", ASSETS / "toy-teacher.pt", ("maskclip", "sclip", "clearclip")),
            ("random", None, ("sclip",)),
        ):
            torch.manual_seed(0)
            model, arch, mean, std = load_clip(
                model_config=ASSETS / "toy-teacher.json",
                pretrained=str(pretrained) if pretrained else None,
            )
            for mode in modes:
                path = f"{tmp}/{name}_{mode}.onnx"
                export_dense_clip(
                    model, arch, None, mean, std, mode, path, input_size=128, templates="imagenet"
                )
                r = scores(clips4rt.Segmenter(path))
                if name not in got or r["miou"] > got[name]["miou"]:
                    got[name] = r
    s, t = got["student"], got["teacher"]
    summary = {k: (round(v["miou"], 1), round(v["miou_known"], 1), round(v["miou_unknown"], 1))
               for k, v in got.items()}  # fmt: skip
    assert s["miou"] > t["miou"] > got["random"]["miou"] + 4, summary
    assert s["miou_known"] > t["miou_known"] and s["miou_unknown"] > t["miou_unknown"], summary
