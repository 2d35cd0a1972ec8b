"""Toy world generator: determinism, mask/caption consistency, dataset folder, errors."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from train.toyworld import CLASSES, IGNORE, STUFF, THINGS, UNKNOWN_CLASSES, make_scene
from train.toyworld import world as toyworld


def test_class_lists_and_split():
    assert len(STUFF) >= 6 and len(THINGS) >= 14 and len(set(CLASSES)) == len(CLASSES)
    assert set(UNKNOWN_CLASSES) <= set(CLASSES)
    assert len(UNKNOWN_CLASSES) == round(len(CLASSES) / 4)
    assert any(c in STUFF for c in UNKNOWN_CLASSES) and any(c in THINGS for c in UNKNOWN_CLASSES)


def test_deterministic_by_seed_and_index():
    a, b = make_scene(3, 7), make_scene(3, 7)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.caption == b.caption
    c = make_scene(3, 8)
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.image, make_scene(4, 7).image)


@pytest.mark.parametrize("index", range(40))
def test_mask_and_caption_agree(index):
    s = make_scene(11, index)
    assert s.image.shape == (128, 128, 3) and s.image.dtype == np.uint8
    ids = {int(i) for i in np.unique(s.mask) if i != IGNORE}
    assert {CLASSES[i] for i in ids} == set(s.classes)
    stuff = [c for c in s.classes if c in STUFF]
    things = [c for c in s.classes if c in THINGS]
    assert 1 <= len(stuff) <= 2 and len(things) <= 4
    for c in s.classes:
        assert c in s.caption, (c, s.caption)
        assert (s.mask == CLASSES.index(c)).sum() >= toyworld.MIN_VISIBLE
    for c in CLASSES:
        if c not in s.classes:
            assert not re.search(rf"\b{c}\b", s.caption), (c, s.caption)


def test_no_single_colour_names_a_class():
    """Mean colours of a class overlap other classes': a nearest-mean-colour classifier
    (fit on 150 scenes, tested on 150 others) is far from perfect."""

    def stats(seed):
        feats, labels = [], []
        for i in range(150):
            s = make_scene(seed, i, 64)
            for c in s.classes:
                m = s.mask == CLASSES.index(c)
                feats.append(s.image[m].mean(0))
                labels.append(CLASSES.index(c))
        return np.array(feats), np.array(labels)

    xf, yf = stats(21)
    xt, yt = stats(22)
    means = np.stack([xf[yf == k].mean(0) for k in range(len(CLASSES))])
    pred = np.argmin(((xt[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == yt).mean() < 0.6


def test_write_dataset(tmp_path):
    out = toyworld.write_dataset(tmp_path / "toy", seed=5, count=6, size=64)
    assert (out / "classes.txt").read_text().splitlines() == list(CLASSES)
    ids = (out / "ImageSets/Segmentation/all.txt").read_text().split()
    assert len(ids) == 6
    caps = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert [c["image"] for c in caps] == ids
    split = json.loads((out / "split.json").read_text())
    assert split["unknown"] == list(UNKNOWN_CLASSES)
    assert split["world_version"] == toyworld.WORLD_VERSION == 3
    for i, cap in zip(ids, caps):
        img = Image.open(out / "JPEGImages" / f"{i}.jpg")
        mask = np.asarray(Image.open(out / "SegmentationClass" / f"{i}.png"))
        assert img.size == (64, 64) and mask.shape == (64, 64)
        scene = make_scene(5, int(i.split("_")[1]), 64)
        np.testing.assert_array_equal(mask, scene.mask)
        assert cap["caption"] == scene.caption


def test_bad_arguments(tmp_path, capsys):
    assert toyworld.main(["--count", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--count must be positive" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert toyworld.main(["--count", "1", "--out", str(blocker / "sub")]) == 2
    assert "cannot write to output folder" in capsys.readouterr().err


def test_region_crop_captions_name_what_the_crop_shows():
    """Teacher pretraining's region crops: square windows of the scene whose caption
    names exactly the classes covering enough of the crop (no class outside it)."""
    pytest.importorskip("torch")
    from train.toyworld.teacher import region_crop

    rng = np.random.default_rng(0)
    closeups = 0
    for i in range(60):
        s = make_scene(11, i)
        crop, caption, named_set, shown_set = region_crop(s, rng)
        side = crop.shape[0]
        assert crop.shape == (side, side, 3) and 24 <= side <= 128
        # find the window: crops are exact slices of the scene image
        hits = [
            (y, x)
            for y in range(129 - side)
            for x in range(129 - side)
            if np.array_equal(s.image[y : y + side, x : x + side], crop)
        ]
        assert hits, "the crop is not a window of the scene"
        y, x = hits[0]
        window = s.mask[y : y + side, x : x + side]
        need = max(0.02 * side * side, toyworld.MIN_VISIBLE * (side / 128) ** 2)
        ids, counts = np.unique(window, return_counts=True)
        shown = {CLASSES[c] for c, n in zip(ids, counts) if c != IGNORE and n >= need}
        named = {c for c in CLASSES if re.search(rf"\b{c}\b", caption)}
        assert named == shown == named_set == shown_set, (caption, shown)
        closeups += side < 64
    assert closeups >= 5  # thing close-ups are part of the mix


def test_average_precision_hand_checked():
    pytest.importorskip("torch")
    from train.toyworld.measure import average_precision

    pos = np.array([True, False, True, False])
    assert average_precision(np.array([4.0, 1, 3, 2]), pos) == 1.0  # both positives first
    # positives at ranks 2 and 4: (1/2 + 2/4) / 2
    assert average_precision(np.array([3.0, 4, 1, 2]), pos) == pytest.approx(0.5)
    assert average_precision(np.array([1.0, 2, 3, 4]), np.zeros(4, bool)) == 0.0
    rng = np.random.default_rng(0)  # a random ranking scores about the base rate
    y = rng.random(20000) < 0.2
    assert abs(average_precision(rng.random(20000), y) - 0.2) < 0.02


def test_probe_ap_tells_seen_from_unseen_classes():
    """The linear probe of the teacher report: classes written linearly in the
    features score ~1, classes the features do not carry score ~ their base rate."""
    pytest.importorskip("torch")
    from train.toyworld.measure import probe_ap

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 8))
    seen = np.stack([x[:, 0] + x[:, 1] > 1.0, x[:, 2] - x[:, 3] > 0.5], 1)
    unseen = rng.random((2000, 2)) < np.array([0.2, 0.5])
    ap = probe_ap(x, np.concatenate([seen, unseen], 1))
    assert (ap[:2] > 0.97).all(), ap
    assert abs(ap[2] - 0.2) < 0.06 and abs(ap[3] - 0.5) < 0.06, ap


def test_teacher_pretraining_refreshes_its_pool(tmp_path, capsys, monkeypatch):
    """--refresh N swaps N never-seen scenes into the pool each step (no fixed pool to
    memorise); the report counts the scenes seen. Scene generation in worker processes
    (--workers) trains the very same weights as generation in the training process."""
    pytest.importorskip("open_clip")
    import torch

    from train.toyworld import teacher as pretrain_teacher

    made = []
    make_scene = toyworld.make_scene

    def spy(seed, index, *a, **k):
        made.append((seed, index))
        return make_scene(seed, index, *a, **k)

    monkeypatch.setattr(toyworld, "make_scene", spy)  # seen in-process (--workers 0)
    args = ["--steps", "3", "--batch", "4", "--pool", "8", "--refresh", "5", "--crop-prob", "0.5"]
    args += ["--heldout", "40", "--measure-every", "2"]
    for workers in ("0", "2"):
        out = tmp_path / workers
        assert pretrain_teacher.main([*args, "--out", str(out), "--workers", workers]) == 0
        mid = torch.load(out / "toy-teacher.step2.pt", weights_only=True)["state_dict"]
        assert mid.keys() == torch.load(out / "toy-teacher.pt")["state_dict"].keys()
        report = json.loads((out / "toy-teacher.report.json").read_text())
        assert report["refresh"] == 5 and report["scenes_seen"] == 8 + 5 * 2
        assert 0.0 <= report["things_map"] <= 1.0
        if workers == "0":  # pool 0-7, then scenes 8-12 and 13-17 of the training stream
            train_seed = pretrain_teacher.TRAIN_SEED
            assert [i for sd, i in made if sd == train_seed] == list(range(18))
            monkeypatch.undo()  # worker processes get the real function
    a, b = (torch.load(tmp_path / w / "toy-teacher.pt")["state_dict"] for w in ("0", "2"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    assert pretrain_teacher.main([*args[:6], "--refresh", "9"]) == 2
    assert "--refresh <= --pool" in capsys.readouterr().err


def test_teacher_pretraining_continues_from_init(tmp_path, capsys):
    """--init starts from a teacher checkpoint: one step at a negligible learning rate
    saves the committed teacher's weights back unchanged (float16 storage); a checkpoint
    of another architecture is a clear error."""
    pytest.importorskip("open_clip")
    import torch

    from train.toyworld import teacher as pretrain_teacher

    assets = pretrain_teacher.ASSETS
    args = ["--steps", "1", "--batch", "4", "--pool", "8", "--refresh", "4", "--heldout", "20"]
    args += ["--lr", "1e-12", "--init", str(assets / "toy-teacher.pt")]
    args += ["--config", str(assets / "toy-teacher.json")]
    assert pretrain_teacher.main([*args, "--out", str(tmp_path / "a")]) == 0
    before = torch.load(assets / "toy-teacher.pt")["state_dict"]
    after = torch.load(tmp_path / "a" / "toy-teacher.pt")["state_dict"]
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    other = json.loads((assets / "toy-teacher.json").read_text())
    other["text_cfg"]["width"] = 64
    (tmp_path / "toy-teacher.json").write_text(json.dumps(other))
    args[args.index("--config") + 1] = str(tmp_path / "toy-teacher.json")
    capsys.readouterr()
    assert pretrain_teacher.main([*args, "--out", str(tmp_path / "b")]) == 2
    assert "does not fit --config" in capsys.readouterr().err
    assert pretrain_teacher.main(["--init", str(tmp_path / "missing.pt")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_sigmoid_loss_with_several_positives():
    """SigLIP's loss where a caption is a positive of every image showing all it names."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    from train.toyworld.teacher import sigmoid_loss, single_caption

    shown = [frozenset({"sky", "ball"}), frozenset({"sky", "tree"}), frozenset({"grass"})]
    named = [frozenset({"ball"}), frozenset({"sky", "tree"}), frozenset({"grass"})]
    positive = torch.tensor([[n <= s for n in named] for s in shown])
    assert positive.tolist() == [[True, False, False], [False, True, False],
                                 [False, False, True]]  # fmt: skip
    named[1] = frozenset({"sky"})  # "a photo of the sky." is true of images 0 and 1
    positive = torch.tensor([[n <= s for n in named] for s in shown])
    assert positive[:, 1].tolist() == [True, True, False]
    logits = torch.randn(3, 3, generator=torch.Generator().manual_seed(0))
    want = F.binary_cross_entropy_with_logits(logits, positive.float(), reduction="sum") / 3
    torch.testing.assert_close(sigmoid_loss(logits, positive), want)  # exact here; two
    # formulations of the same float32 sum (default tolerance)
    good = torch.where(positive, 5.0, -5.0)
    assert sigmoid_loss(good, positive) < sigmoid_loss(-good, positive)
    rng = np.random.default_rng(0)
    for _ in range(50):
        caption, one = single_caption(rng, shown[0])
        (c,) = one
        assert c in shown[0] and re.search(rf"\b{c}\b", caption)


def test_sigmoid_teacher_needs_a_bias_and_runs(tmp_path, capsys):
    """The recipe (sigmoid loss) needs the config's learnable bias: a config without one is
    an error naming the key; the committed config has it and trains; --stop-after ends a
    run early on the longer schedule (its learning rate is the schedule's at that step)."""
    pytest.importorskip("open_clip")
    import json

    from train.toyworld import teacher

    args = ["--steps", "4", "--batch", "4", "--pool", "8", "--refresh", "4", "--heldout", "10",
            "--loss", "sigmoid", "--single-p", "0.5", "--crop-prob", "0.5"]  # fmt: skip
    cfg = json.loads((teacher.CONFIGS / "toy-teacher.json").read_text())
    assert cfg["init_logit_bias"] == -10
    del cfg["init_logit_bias"]
    (tmp_path / "no-bias.json").write_text(json.dumps(cfg))
    no_bias = ["--config", str(tmp_path / "no-bias.json")]
    assert teacher.main([*args, *no_bias, "--out", str(tmp_path / "a")]) == 2
    assert "init_logit_bias" in capsys.readouterr().err
    assert teacher.main([*args, "--stop-after", "2", "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "step     1 " in out and "step     2 " not in out
    report = json.loads((tmp_path / "b" / "toy-teacher.report.json").read_text())
    assert report["loss"] == "sigmoid" and report["world_version"] == toyworld.WORLD_VERSION
    assert report["steps"] == 4 and report["stop_after"] == 2 and report["scenes_seen"] == 8 + 4
    assert teacher.main([*args, "--stop-after", "5"]) == 2
    assert "--stop-after <= --steps" in capsys.readouterr().err


def test_committed_teacher_knows_the_things():
    """The committed teacher: its report states world v3 and the recipe, and it knows the
    things (zero-shot presence mAP, issue 12: >= 0.45) on scenes of another seed."""
    from train import ASSETS

    report = json.loads((ASSETS / "toy-teacher.report.json").read_text())
    assert report["world_version"] == toyworld.WORLD_VERSION
    assert report["loss"] == "sigmoid" and (report["steps"], report["stop_after"]) == (4000, 2000)
    assert report["things_map"] >= 0.45 and report["stuff_map"] >= 0.8
    pytest.importorskip("open_clip")
    import open_clip

    from clips4rt.export.clip_loader import load_clip
    from train.toyworld.measure import measure

    model, name, _, _ = load_clip(
        model_config=ASSETS / "toy-teacher.json", pretrained=ASSETS / "toy-teacher.pt"
    )
    scenes = [toyworld.make_scene(7007, i) for i in range(160)]  # scenes no report used
    held = measure(model, open_clip.get_tokenizer(name), model.visual.image_size[0], scenes)
    assert held["things_map"] >= 0.45 and held["stuff_map"] >= 0.8, held
