"""CLIP-S4 training parts: augmentation geometry, segments, losses, config."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from train.kmeans import spherical_kmeans  # noqa: E402
from train.method import augment as A  # noqa: E402
from train.method.config import TrainConfig, load_config  # noqa: E402
from train.method.losses import contrastive_loss, embedding_consistency, semantic_consistency  # noqa: E402
from train.method.segments import segment_means  # noqa: E402


def test_identity_box_reproduces_the_image():
    x = torch.rand(2, 3, 16, 16)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0]] * 2)
    torch.testing.assert_close(A.warp(x, A.grids(boxes, 16, 16)), x, atol=1e-5, rtol=0)
    flipped = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0]] * 2)
    torch.testing.assert_close(A.warp(x, A.grids(flipped, 16, 16)), x.flip(-1), atol=1e-5, rtol=0)


def test_crop_box_is_the_expected_window():
    x = torch.arange(64.0).view(1, 1, 8, 8)
    # right half, full height: cx = 0.5, half width 0.5
    box = torch.tensor([[0.5, 0.0, 0.5, 1.0, 0.0]])
    out = A.warp(x, A.grids(box, 8, 4), mode="nearest")
    torch.testing.assert_close(out, x[..., :, 4:], rtol=0, atol=0)  # a crop: copied


def test_correspondence_points_to_the_same_image_point():
    """Each view-a pixel's partner in view b sees the same image point, up to half a
    view-b pixel (nearest-pixel rounding); pixels outside view b get -1."""
    gen = torch.Generator().manual_seed(0)
    cfg = A.AugmentConfig(scale=(0.3, 1.0), flip=0.5)
    ba, bb = A.sample_boxes(16, cfg, gen), A.sample_boxes(16, cfg, gen)
    h = w = 12
    pa = A.grids(ba, h, w).flatten(1, 2)  # image coords of view-a pixel centres
    pb = A.grids(bb, h, w).flatten(1, 2)
    corr = A.correspondence(ba, bb, h, w)
    matched = corr >= 0
    assert matched.float().mean() > 0.2
    partner = torch.gather(pb, 1, corr.clamp(min=0)[..., None].expand(-1, -1, 2))
    # half a view-b pixel in image coordinates, per axis
    half = torch.stack([bb[:, 2], bb[:, 3]], -1)[:, None, :] / w
    err = (partner - pa).abs()
    assert (err[matched] <= half.expand_as(err)[matched] + 1e-5).all()
    # unmatched pixels really lie outside view b's box
    cx, cy, hw, hh = (bb[:, i, None] for i in range(4))
    outside = ((pa[..., 0] - cx).abs() > hw) | ((pa[..., 1] - cy).abs() > hh)
    assert torch.equal(outside, ~matched)


def test_jitter_keeps_range_and_changes_colours():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(8, 3, 10, 10)
    y = A.jitter(x.clone(), A.jitter_params(8, A.AugmentConfig(), gen))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert not torch.allclose(x, y)
    still = {
        "brightness": torch.ones(8),
        "contrast": torch.ones(8),
        "saturation": torch.ones(8),
        "hue": torch.zeros(8),
        "blur": torch.zeros(8, dtype=torch.bool),
    }
    torch.testing.assert_close(A.jitter(x.clone(), still), x, atol=1e-6, rtol=0)  # identity
    # parameters: colour-space round trips in float32, values in [0, 1] (measured 5e-8)


def test_jitter_strength_scales_the_colour_draws_only():
    """--jitter: 0 leaves colours alone (blur still drawn), 1 is the default config, 2
    doubles each draw's distance from identity; the same random draws either way."""
    base = A.AugmentConfig()
    assert base.scaled(1.0) == base
    p = [A.jitter_params(64, base.scaled(j), torch.Generator().manual_seed(3)) for j in (0, 1, 2)]
    for k in ("brightness", "contrast", "saturation"):
        assert torch.all(p[0][k] == 1)
        torch.testing.assert_close(p[2][k] - 1, 2 * (p[1][k] - 1))
        assert (p[1][k] - 1).abs().max() > 0.2
    assert torch.all(p[0]["hue"] == 0) and torch.equal(p[0]["blur"], p[1]["blur"])
    torch.testing.assert_close(p[2]["hue"], 2 * p[1]["hue"])
    with pytest.raises(ValueError, match="jitter"):
        load_config("toy", ["--jitter=-1"])


def test_jitter_option_reaches_the_views(monkeypatch):
    from clips4rt.export.student import build_student
    from train.method import loop

    teacher = loop.Teacher(load_config("toy", ["--segments=4"]), torch.device("cpu"))
    student = build_student("resnet10t", teacher.embed_dim, None, 8, 32, top_stride=16).eval()
    images = torch.randint(0, 255, (2, 128, 128, 3), dtype=torch.uint8)
    seen, real = [], loop.A.jitter_params
    monkeypatch.setattr(loop.A, "jitter_params", lambda n, c, g: (seen.append(c), real(n, c, g))[1])
    for j in ("0", "0.5"):
        cfg = load_config("toy", ["--segments=4", "--batch=2", f"--jitter={j}"])
        with torch.no_grad():
            loop.step_losses(student, teacher, None, images, cfg, torch.Generator(),
                             torch.device("cpu"))  # fmt: skip
    assert [(c.brightness, c.hue) for c in seen] == [(0, 0), (0, 0), (0.15, 0.025), (0.15, 0.025)]


def test_kmeans_separates_clear_clusters():
    d = torch.nn.functional.normalize(torch.randn(3, 16), dim=1)
    lab = torch.randint(0, 3, (2, 60))
    z = torch.nn.functional.normalize(d[lab] + 0.05 * torch.randn(2, 60, 16), dim=-1)
    seg = spherical_kmeans(z, 3, gen=torch.Generator().manual_seed(0))[0]
    for b in range(2):  # same partition up to relabelling
        pairs = set(zip(lab[b].tolist(), seg[b].tolist()))
        assert len(pairs) == 3
    means, counts = segment_means(z, seg, 3)
    assert counts.sum() == 120 and torch.allclose(means.norm(dim=-1), torch.ones(2, 3))


def test_contrastive_loss_hand_checked():
    """One pixel on segment 0, orthogonal segment 1: loss = log(1 + e^-k); gradient
    d/dz = -k * (1 - p_0) * v_0 + k * p_1 * v_1 with p = softmax(k z.v)."""
    k = 10.0
    z = torch.tensor([[1.0, 0.0]], requires_grad=True)
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos = torch.tensor([[0]])
    loss = contrastive_loss(z, v, pos, k)
    # float32: a difference of two log-sum-exps near k = 10 (ulp ~1e-6)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-k)), abs=2e-6)
    loss.backward()
    p1 = 1 / (1 + math.exp(k))
    torch.testing.assert_close(z.grad, torch.tensor([[-k * p1, k * p1]]))


def test_embedding_and_semantic_consistency_hand_checked():
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    loss = embedding_consistency(v, t)  # (0 + 1) / 2
    assert loss.item() == pytest.approx(0.5)
    loss.backward()
    torch.testing.assert_close(v.grad, torch.tensor([[0.0, 0.0], [-0.5, 0.0]]))
    # three segments in two dimensions, unnormalised: cosines 1, 0, 1/sqrt(2)
    v3 = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    t3 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 5.0]])
    per = [0.0, 1.0, 1.0 - math.sqrt(0.5)]
    assert embedding_consistency(v3, t3).item() == pytest.approx(sum(per) / 3, abs=1e-6)
    assert embedding_consistency(v3, t3, "sum").item() == pytest.approx(sum(per), abs=1e-6)
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v2 = torch.tensor([[1.0, 0.0]], requires_grad=True)
    ce = semantic_consistency(v2, torch.tensor([[1.0, 0.0]]), protos, 1.0, 1.0)
    q = torch.softmax(torch.tensor([1.0, 0.0]), 0)
    assert ce.item() == pytest.approx(-(q * torch.log(q)).sum().item(), rel=1e-5)
    ce.backward()
    # d CE / d logits = p - q = 0 here (student equals teacher): the gradient vanishes
    torch.testing.assert_close(v2.grad, torch.zeros(1, 2), atol=1e-6, rtol=0)


def test_config_presets_and_overrides(tmp_path):
    cfg = load_config("toy", ["--steps=5", "--lr=0.01", "--clip=None", "--imagenet_init=true"])
    assert cfg.steps == 5 and cfg.lr == 0.01 and cfg.clip is None and cfg.imagenet_init is True
    assert isinstance(cfg, TrainConfig)
    with pytest.raises(ValueError, match="unknown config key 'stepz'"):
        load_config("toy", ["--stepz=5"])
    with pytest.raises(ValueError, match="preset 'nope' not found"):
        load_config("nope")
    with pytest.raises(ValueError, match="expected int"):
        load_config("toy", ["--steps=many"])
    with pytest.raises(ValueError, match="--key=value"):
        load_config("toy", ["--steps"])
    with pytest.raises(ValueError, match=r"--unknown_space='pixel': choose one of \['image'"):
        load_config("toy", ["--unknown_space=pixel", "--unknown_prototypes=0"])
    with pytest.raises(ValueError, match=r"--top_stride=8: choose one of \[16, 32\]"):
        load_config("toy", ["--top_stride=8"])
    assert load_config("toy").model_hash() != load_config("toy", ["--backbone=vit"]).model_hash()
    assert load_config("toy").model_hash() == load_config("toy", ["--steps=3"]).model_hash()


def test_presets_extend_other_presets_within_bounds(tmp_path):
    import json

    from train.method import config as C

    (tmp_path / "sub").mkdir()
    (tmp_path / "base.json").write_text(json.dumps({"extends": "toy-vit", "steps": 7, "lr": 0.01}))
    (tmp_path / "sub" / "child.json").write_text(json.dumps({"extends": "../base.json",
                                                              "steps": 9}))  # fmt: skip
    cfg = load_config(str(tmp_path / "sub" / "child.json"), ["--lr=0.02"])
    # the chain applies toy -> toy-vit -> base -> child -> overrides, each over the last
    assert (cfg.backbone, cfg.unknown_prototypes, cfg.steps, cfg.lr) == ("vit", 32, 9, 0.02)
    assert cfg.image_size == load_config("toy").image_size

    def bad(name, text, match):
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=match):
            load_config(str(tmp_path / name))

    (tmp_path / "b.json").write_text(json.dumps({"extends": "a.json"}))
    bad("a.json", json.dumps({"extends": "b.json"}), "circle")
    bad("self.json", json.dumps({"extends": "self.json"}), "circle")
    (tmp_path / f"c{C.MAX_EXTENDS + 1}.json").write_text("{}")
    for i in range(C.MAX_EXTENDS, 0, -1):
        (tmp_path / f"c{i}.json").write_text(json.dumps({"extends": f"c{i + 1}.json"}))
    assert load_config(str(tmp_path / "c2.json")).steps == 500  # 8 files: allowed
    with pytest.raises(ValueError, match="chain longer"):  # 9 files
        load_config(str(tmp_path / "c1.json"))
    bad("list.json", "[1, 2]", "JSON object")
    bad("typo.json", json.dumps({"extends": "toy", "stepz": 3}), r"unknown config keys \['stepz'\]")
    bad("gone.json", json.dumps({"extends": "nope"}), "preset 'nope' not found")
    bad("big.json", "{" + " " * C.MAX_PRESET_BYTES + "}", "at most")
    bad("junk.json", "{not json", "not JSON")
    bad("up.json", json.dumps({"extends": "../presets/toy"}), "a preset name")


def test_the_toy_vit_preset_is_the_measured_recipe():
    """BENCHMARKS.md ("the teacher's ViT as the student", "five seeds a recipe", then
    "a softer temperature on batches of 32") measured ``--preset toy`` with these six
    overrides; the preset must stay that run (its own out folder aside)."""
    from dataclasses import asdict

    vit = asdict(load_config("toy-vit"))
    measured = asdict(load_config("toy", ["--backbone=vit", "--false_negatives=positive",
                                          "--false_negative_cos=0.7",
                                          "--unknown_prototypes=32", "--batch=32",
                                          "--concentration=5"]))  # fmt: skip
    assert vit.pop("out") == "runs/toy-vit" and measured.pop("out") == "runs/toy"
    assert vit == measured


def test_unknown_prototypes_learn_the_unexplained_clusters():
    from train.method.prototypes import UnknownPrototypes

    g = torch.Generator().manual_seed(0)
    basis = torch.eye(8)
    known = basis[:4]  # four known classes on axes 0-3 (a feature none explains: p = 1/4)
    unk = UnknownPrototypes(count=2, dim=8, refresh_every=5, explain_threshold=0.5)

    def noisy(axis, n):
        return torch.nn.functional.normalize(
            basis[axis] + 0.05 * torch.randn(n, 8, generator=g), dim=1
        )

    for _ in range(10):
        batch = torch.cat([noisy(0, 10), noisy(1, 10), noisy(5, 10), noisy(6, 10)])
        unk.observe(batch, known, teacher_scale=5.0)  # logit noise ~0.25 << 5
    # only the features that no known class explains were remembered
    assert len(unk.memory) == 200 and (unk.memory[:, :4].abs() < 0.3).all()
    assert unk.protos.shape == (2, 8)
    hits = sorted(int(i) for i in unk.protos.argmax(1))
    assert hits == [5, 6]  # one prototype per unexplained cluster
    state = unk.state_dict()
    other = UnknownPrototypes(count=2, dim=8)
    other.load_state_dict(state)
    torch.testing.assert_close(other.protos, unk.protos, rtol=0, atol=0)  # the same computation


def test_unknown_prototypes_in_text_space_cross_the_modality_gap():
    """space="text": a centroid c is used as normalize(c - mean image feature + mean
    known text prototype). Hand-checked on axes: text prototypes lean on axis 6, image
    features on axis 7, and the one cluster no known class explains is axis 2."""
    from train.method.prototypes import UnknownPrototypes

    with pytest.raises(ValueError, match="'image' or 'text'"):
        UnknownPrototypes(count=1, dim=8, space="pixels")
    e, unit = torch.eye(8), lambda x: torch.nn.functional.normalize(x, dim=-1)
    known = unit(torch.stack([e[0] + e[6], e[1] + e[6], e[3] + e[6]]))
    feats = unit(torch.stack([e[0] + e[7], e[1] + e[7], e[2] + e[7], e[2] + e[7]]))
    for space in ("image", "text"):
        unk = UnknownPrototypes(count=1, dim=8, refresh_every=1, space=space)
        for _ in range(3):
            unk.observe(feats, known, teacher_scale=5.0)
        # only the axis-2 features were unexplained (p = 1/3); the others p = 0.86
        assert len(unk.memory) == 6
        torch.testing.assert_close(unk.memory, feats[2].expand(6, 8), atol=1e-6, rtol=0)  # ulps
        torch.testing.assert_close(unk.protos[0], feats[2], atol=1e-6, rtol=0)  # ulps
        got = unk.prototypes(known)
        if space == "image":
            torch.testing.assert_close(got, unk.protos, rtol=0, atol=0)  # returned as stored
        else:
            torch.testing.assert_close(got[0], unit(feats[2] - feats.mean(0) + known.mean(0)),
                                        atol=1e-6, rtol=0)  # unit vectors: ulps  # fmt: skip
            # by hand: axis 6 0.85, axis 2 0.43 (the cluster kept), axis 7 0 (gap removed)
            assert got[0, 6] > 0.8 and got[0, 2] > 0.4 and abs(got[0, 7]) < 1e-6
            assert (got[0] @ known.T).max() > (feats[2] @ known.T).max() + 0.3
    again = UnknownPrototypes(count=1, dim=8, space="text")
    again.load_state_dict(unk.state_dict())
    torch.testing.assert_close(again.prototypes(known), unk.prototypes(known), rtol=0, atol=0)


@pytest.mark.parametrize(
    "backbone,stride",
    [("resnet18", 8), ("mobilenetv4_conv_small", 8), ("lcnet_100", 4), ("vit", 4)],
)
def test_students_give_unit_embeddings_at_their_stride(backbone, stride):
    pytest.importorskip("timm")
    from clips4rt.export.student import build_student

    visual = None
    if backbone == "vit":
        pytest.importorskip("open_clip")
        from pathlib import Path

        from clips4rt.export.clip_loader import load_clip

        cfg = Path(__file__).resolve().parents[1] / "train" / "assets" / "toy-teacher.json"
        visual = load_clip(model_config=cfg)[0].visual  # patch 8 -> student stride 4
    torch.manual_seed(0)
    s = build_student(backbone, 64, visual, stride=stride, width=32)
    assert s.stride == stride
    x = torch.randn(2, 3, 96, 80, requires_grad=True)
    z = s(x)
    assert z.shape == (2, 64, 96 // stride, 80 // stride)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(2, 96 // stride, 80 // stride))
    z[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown backbone 'resnet9'"):
        build_student("resnet9", 64)


def test_cnn_student_top_stride_16_drops_the_last_stage():
    pytest.importorskip("timm")
    from clips4rt.export.student import build_student

    torch.manual_seed(0)
    full = build_student("resnet10t", 64, stride=8, width=32)
    short = build_student("resnet10t", 64, stride=8, width=32, top_stride=16)
    assert short.body.feature_info.reduction() == [2, 4, 8, 16]
    assert not any(n.startswith("layer4") for n, _ in short.body.named_parameters())
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # resnet10t's last stage: 256->512 and 512->512 3x3 convs + a 1x1 downsample
    assert count(full) - count(short) > 256 * 512 * 9 + 512 * 512 * 9
    x = torch.randn(2, 3, 96, 80)
    z = short(x)
    assert z.shape == full(x).shape == (2, 64, 12, 10)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(2, 12, 10))
    with pytest.raises(ValueError, match="top_stride must be 16 or 32"):
        build_student("resnet10t", 64, top_stride=8)


def test_segment_crops_cut_out_each_segment():
    """Each non-empty segment's crop shows its own pixels and the fill value around them
    (inside and outside the view), cut to the square box around the segment; crops come
    in segment_means' order."""
    from train.method.crops import segment_crops

    h = w = 4
    S = 32  # 8 px cells
    views = torch.arange(1, 3 * S * S + 1, dtype=torch.float32).view(1, 3, S, S).repeat(2, 1, 1, 1)
    views[1] *= -1
    lab = torch.zeros(2, h, w, dtype=torch.long)
    lab[0, :2, :2] = 2  # image 0: segment 2 = top-left 2x2 cells, segment 0 the rest
    lab[1] = 1  # image 1: one segment (1); segments 0, 2 empty
    lab = lab.view(2, h * w)
    crops = segment_crops(views, lab, 3, (h, w), size=S)  # fill 0
    grey = segment_crops(views, lab, 3, (h, w), size=S, fill=torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(grey[1, :, 8:24, 8:24], views[0, :, 0:16, 0:16])
    assert (grey[1, :, :8] == torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1)).all()
    _, counts = segment_means(torch.randn(2, h * w, 5), lab, 3)
    assert len(crops) == int((counts > 0).sum()) == 3  # (0, 0), (0, 2), (1, 1)
    # image 0, segment 2: its box is cells 0-1 plus one cell of margin: the crop spans
    # cells -1..2 of the view, i.e. pixels -8..24; the segment's 16x16 pixels sit at 8..24
    # of the 32x32 crop, scaled by 1 (box side 32 px = crop side)
    seg2 = crops[1]
    torch.testing.assert_close(seg2[:, 8:24, 8:24], views[0, :, 0:16, 0:16])
    assert seg2[:, :8].abs().max() == 0 and seg2[:, :, 24:].abs().max() == 0
    # image 0, segment 0 (the L-shaped rest): the whole view, its top-left block masked
    seg0 = crops[0]
    assert seg0[:, :16, :16].abs().max() == 0
    torch.testing.assert_close(seg0[:, 16:, 16:], views[0, :, 16:, 16:], rtol=0, atol=0)
    # image 1: one segment covering it all -> the whole (negated) view
    torch.testing.assert_close(crops[2], views[1], rtol=0, atol=0)  # copied
    # context: the view outside the segment blended into the fill (inside the view only)
    fill = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1)
    half = segment_crops(views, lab, 3, (h, w), size=S, fill=fill.view(3), context=0.5)
    torch.testing.assert_close(half[0, :, :16, :16], 0.5 * views[0, :, :16, :16] + 0.5 * fill)
    torch.testing.assert_close(half[0, :, 16:, 16:], views[0, :, 16:, 16:])
    assert (half[1, :, :8] == fill).all()  # outside the view: the fill
    torch.testing.assert_close(half[1, :, 8:24, 24:], 0.5 * views[0, :, 0:16, 16:24] + 0.5 * fill)


def test_centring_removes_a_class_that_wins_everything():
    """The teacher scores class 0 high on every segment: without centring it is every
    segment's target; centred, each segment's own class wins; a prototype that moves
    restarts its entry; the state round-trips."""
    import torch.nn.functional as F

    from train.method.crops import Centering

    protos = torch.eye(3)
    t = torch.tensor([[0.8, 0.6, 0.0], [0.8, 0.0, 0.6], [0.8, 0.45, 0.45]])
    raw = torch.softmax(10 * t @ protos.T, -1).argmax(-1)
    assert raw.tolist() == [0, 0, 0]
    c = Centering(momentum=0.5)
    assert c.get(3, "cpu").abs().max() == 0  # before the first update
    for _ in range(20):
        c.update((t @ protos.T).mean(0), protos)
    centred = (t @ protos.T - c.get(3, "cpu")).argmax(-1)
    assert centred[:2].tolist() == [1, 2]
    moved = protos.clone()
    moved[2] = torch.tensor([0.0, 0.6, 0.8])
    c.update(torch.tensor([0.1, 0.2, 0.3]), moved)
    assert c.center[2] == pytest.approx(0.3) and c.center[0] != pytest.approx(0.1)
    d = Centering(strength=0.5)
    d.load_state_dict(c.state_dict())
    torch.testing.assert_close(d.get(3, "cpu"), c.get(3, "cpu"), rtol=0, atol=0)  # restored
    assert d.strength == 1.0  # restored with the state
    half = Centering(strength=0.5, momentum=0.5)
    half.load_state_dict({**c.state_dict(), "strength": 0.5})
    torch.testing.assert_close(half.get(3, "cpu"), 0.5 * c.get(3, "cpu"), rtol=0, atol=0)  # x 0.5
    with pytest.raises(ValueError, match="momentum"):
        Centering(momentum=1.0)
    with pytest.raises(ValueError, match="strength"):
        Centering(strength=0.0)
    center = c.get(3, "cpu")
    loss = semantic_consistency(t, t, protos, 10.0, 10.0, center=center)
    target = torch.softmax(10 * (F.normalize(t, dim=-1) @ protos.T - center), -1)
    logp = torch.log_softmax(10 * F.normalize(t, dim=-1) @ protos.T, -1)
    torch.testing.assert_close(loss, -(target * logp).sum(-1).mean())  # exact here; the
    # default float32 tolerance covers another summation order
    assert not torch.allclose(loss, semantic_consistency(t, t, protos, 10.0, 10.0))


def test_pixel_distillation_term_is_the_mean_cosine_distance_to_the_teachers_map(monkeypatch):
    """--w_pixel: 1 - cos(student pixel, teacher dense feature at that point), averaged
    over every pixel of both views; it adds w_pixel x that to the total and changes no
    other loss."""
    import torch.nn.functional as F

    from clips4rt.export.student import build_student
    from train.method import loop

    cfg0 = load_config("toy", ["--batch=2", "--segments=4"])
    cfg1 = load_config("toy", ["--batch=2", "--segments=4", "--w_pixel=2"])
    teacher = loop.Teacher(cfg0, torch.device("cpu"))
    torch.manual_seed(0)
    student = build_student("resnet10t", teacher.embed_dim, None, 8, 32, top_stride=16).eval()
    images = torch.randint(0, 255, (2, 128, 128, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))  # fmt: skip
    seen = []  # (student pixels, teacher map at them) of each view, recomputed below
    warp = loop.A.warp

    def spy(x, grid):
        y = warp(x, grid)
        if x.shape[1] == teacher.embed_dim:  # the teacher's map, warped to a view's grid
            seen.append(F.normalize(y, dim=1).flatten(2).transpose(1, 2))
        return y

    monkeypatch.setattr(loop.A, "warp", spy)
    outs = []
    for cfg in (cfg0, cfg1):
        seen.clear()
        zs = []
        hook = student.register_forward_hook(lambda m, i, o, zs=zs: zs.append(o))
        gen = torch.Generator().manual_seed(0)
        outs.append(loop.step_losses(student, teacher, None, images, cfg, gen,
                                     torch.device("cpu")))  # fmt: skip
        hook.remove()
    z = torch.cat([F.normalize(v.flatten(2).transpose(1, 2), dim=-1) for v in zs])
    want = (1 - (z * torch.cat(seen)).sum(-1)).mean()
    assert outs[0]["pixel"].item() == 0.0
    assert outs[1]["pixel"].item() == pytest.approx(want.item(), rel=1e-5)
    for k in ("contrastive", "embedding", "semantic"):
        assert outs[1][k].item() == pytest.approx(outs[0][k].item(), rel=1e-6)
    assert outs[1]["total"].item() == pytest.approx(
        outs[0]["total"].item() + 2 * want.item(), rel=1e-5
    )


def test_best_kmeans_keeps_the_tightest_of_its_restarts():
    from train.kmeans import best_kmeans

    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(12, 16, generator=g), dim=1)
    z = torch.nn.functional.normalize(
        centres.repeat_interleave(30, 0) + 0.3 * torch.randn(360, 16, generator=g), dim=1
    )
    singles = []
    gen = torch.Generator().manual_seed(5)
    for _ in range(6):
        ids, cent = spherical_kmeans(z[None], 12, 30, "kmeans++", gen)
        singles.append(float((z * cent[0][ids[0]]).sum()))
    ids, cent, fit = best_kmeans(z, 12, 6, torch.Generator().manual_seed(5))
    assert fit == pytest.approx(max(singles), rel=1e-6)  # the same six runs, the best kept
    assert max(singles) > min(singles)  # the restarts differ: which one is kept matters
    assert fit == pytest.approx(float((z * cent[ids]).sum()), rel=1e-6)


def test_image_negatives_contrast_a_pixel_with_its_own_images_segments_only(monkeypatch):
    """--contrast_negatives=image: with one image it is the batch loss; with several it
    drops the other images' segments from each pixel's denominator (a smaller loss)."""
    from clips4rt.export.student import build_student
    from train.method import loop

    teacher = loop.Teacher(load_config("toy", ["--segments=4"]), torch.device("cpu"))
    torch.manual_seed(0)
    student = build_student("resnet10t", teacher.embed_dim, None, 8, 32, top_stride=16).eval()
    images = torch.randint(0, 255, (3, 128, 128, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))  # fmt: skip

    def loss(mode, imgs, seed=0):
        cfg = load_config("toy", ["--segments=4", f"--batch={len(imgs)}",
                                  f"--contrast_negatives={mode}"])  # fmt: skip
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            out = loop.step_losses(student, teacher, None, imgs, cfg, gen, torch.device("cpu"))
        return out["contrastive"].item()

    one = images[:1]
    assert loss("image", one) == pytest.approx(loss("batch", one), rel=1e-6)
    assert loss("image", images) < loss("batch", images) - 0.05
    # against a direct computation from the batch mode's pixels, segments and positives
    seen = []
    real = loop.contrastive_loss
    monkeypatch.setattr(loop, "contrastive_loss", lambda z, v, p, *a, **k: (
        seen.append((z, v, p)), real(z, v, p, *a, **k))[1])  # fmt: skip
    loss("batch", images)
    monkeypatch.setattr(loop, "contrastive_loss", real)
    z, v, pos = seen[0]
    pix_img = torch.arange(3).repeat_interleave(len(z) // 6).repeat(2)
    seg_img = torch.full((len(v),), -1)
    seg_img[pos[:, 0]] = pix_img  # a pixel's own segment is in its image
    logits = 10.0 * z @ v.T
    same = pix_img[:, None] == seg_img[None, :]
    pos_l = logits.gather(1, pos.clamp(min=0)).masked_fill(pos < 0, float("-inf"))
    per = torch.logsumexp(logits.masked_fill(~same, float("-inf")), 1) - torch.logsumexp(pos_l, 1)
    want = per[(pos >= 0).any(1)].sum() / (pos >= 0).any(1).sum()
    assert loss("image", images) == pytest.approx(want.item(), rel=1e-5)
    with pytest.raises(ValueError, match="contrast_negatives"):
        load_config("toy", ["--contrast_negatives=all"])


def test_false_negative_filter_hand_checked():
    """--false_negatives: one pixel, its own segment v0, a segment the teacher calls alike
    (v1) and one it does not (v2). drop: v1 leaves the denominator; positive: v1 joins the
    numerator; nothing alike: the plain loss, in both modes."""
    from train.method.losses import filtered_contrastive_loss, teacher_agreement

    k = 10.0
    z = torch.tensor([[1.0, 0.0]])
    v = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=-1)
    pos = torch.tensor([[0, -1]])
    t = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])  # the teacher's targets
    agree = teacher_agreement(t, 0.8)[pos[:, 0]]
    assert agree.tolist() == [[True, True, False]]
    s = k * (z @ v.T)[0]
    drop = filtered_contrastive_loss(z, v, pos, k, agree, "drop")
    assert drop.item() == pytest.approx((torch.logsumexp(s[[0, 2]], 0) - s[0]).item(), rel=1e-6)
    both = filtered_contrastive_loss(z, v, pos, k, agree, "positive")
    want = torch.logsumexp(s, 0) - torch.logsumexp(s[:2], 0)
    assert both.item() == pytest.approx(want.item(), rel=1e-6)
    plain = contrastive_loss(z, v, pos, k).item()
    assert drop.item() < plain and both.item() < plain
    none = torch.zeros_like(agree)
    for mode in ("drop", "positive"):
        got = filtered_contrastive_loss(z, v, pos, k, none, mode).item()
        assert got == pytest.approx(plain, rel=1e-6)
    with pytest.raises(ValueError, match="false_negatives"):
        load_config("toy", ["--false_negatives=ignore"])


@pytest.mark.parametrize("negatives", ["batch", "image"])
def test_false_negative_filter_reaches_the_training_loss(negatives):
    """Through step_losses: a threshold nothing passes gives the plain contrast; one
    everything passes leaves each pixel its positives alone (drop) or makes every segment
    a positive (positive): a zero loss either way. The other losses do not change."""
    from clips4rt.export.student import build_student
    from train.method import loop

    teacher = loop.Teacher(load_config("toy", ["--segments=4"]), torch.device("cpu"))
    torch.manual_seed(0)
    student = build_student("resnet10t", teacher.embed_dim, None, 8, 32, top_stride=16).eval()
    from train.toyworld.world import make_scene

    images = torch.from_numpy(np.stack([make_scene(7, i).image for i in range(3)]))

    def losses(*extra):
        cfg = load_config("toy", ["--segments=4", "--batch=3",
                                  f"--contrast_negatives={negatives}", *extra])  # fmt: skip
        with torch.no_grad():
            return loop.step_losses(student, teacher, None, images, cfg,
                                    torch.Generator().manual_seed(0), torch.device("cpu"))

    plain = losses()
    assert plain["contrastive"].item() > 0.1
    for mode in ("drop", "positive"):
        never = losses(f"--false_negatives={mode}", "--false_negative_cos=1")
        assert never["contrastive"].item() == pytest.approx(plain["contrastive"].item(), rel=1e-5)
        always = losses(f"--false_negatives={mode}", "--false_negative_cos=-1")
        assert always["contrastive"].item() == pytest.approx(0.0, abs=1e-5)
        some = losses(f"--false_negatives={mode}", "--false_negative_cos=0.8")
        assert 0 < some["contrastive"].item() < plain["contrastive"].item()
        # metrics.csv's alike: the share of (pixel, segment) pairs the teacher calls alike
        # (at cos 1 only a pixel's own segment, by rounding)
        assert never["alike"].item() < some["alike"].item() < always["alike"].item() == 1.0
        assert plain["alike"].item() == 0.0
        for key in ("embedding", "semantic"):
            assert some[key].item() == pytest.approx(plain[key].item(), rel=1e-6)
