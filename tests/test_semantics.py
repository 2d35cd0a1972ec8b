"""Semantic checks of training and evaluation, written from the maths rather than from
the code (issue 33): an optimiser that steps, the schedule's values, unsupervised and
probe evaluation on embeddings with a known answer, pinned config hashes, label PNG
background values, metadata bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest

import clips4rt

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from train.method.config import load_config  # noqa: E402
from train.method.loop import train  # noqa: E402

TINY = ["--toy_pool=12", "--batch=3", "--image_size=64", "--teacher_size=96", "--segments=4",
        "--log_every=1", "--ckpt_every=1", "--unknown_prototypes=2", "--unknown_refresh=1",
        "--warmup=1", "--keep=0"]  # fmt: skip


def test_every_step_moves_the_weights_by_about_the_learning_rate(tmp_path):
    """AdamW's update of a weight with a gradient is lr * m/(sqrt(v) + eps) - about lr
    in size for the first steps - plus lr * weight_decay * w. So between two checkpoints
    most weights move, and none by more than a few times the learning rate: a loop that
    never steps (or steps with 100x the rate) fails."""
    cfg = load_config("toy", [*TINY, f"--out={tmp_path}", "--steps=3", "--lr=1e-3"])
    train(cfg)
    a = torch.load(tmp_path / "step_0000002.pt", weights_only=True)
    b = torch.load(tmp_path / "step_0000003.pt", weights_only=True)
    lr_used = a["scheduler"]["_last_lr"][0]  # saved after step 2: the rate step 3 used
    assert lr_used > 0
    moved, total, biggest = 0, 0, 0.0
    for k, w in a["model"].items():
        if not w.is_floating_point() or "running" in k:
            continue
        d = (b["model"][k] - w).abs()
        moved += int((d > 1e-3 * lr_used).sum())
        total += d.numel()
        biggest = max(biggest, float(d.max()))
    assert moved > 0.5 * total, (moved, total)
    assert biggest < 5 * lr_used, (biggest, lr_used)


def test_gradient_clipping_below_one_changes_the_steps(tmp_path):
    """clip_grad = 1e-3 (far below the first steps' gradient norms) rescales every
    gradient, which AdamW's moments then see: the weights after two steps differ from an
    unclipped run's. clip_grad = 0 is no clipping."""
    runs = {}
    for clip in ("0", "0.001"):
        out = tmp_path / clip
        train(load_config("toy", [*TINY, f"--out={out}", "--steps=2", f"--clip_grad={clip}"]))
        runs[clip] = torch.load(out / "step_0000002.pt", weights_only=True)["model"]
    differ = [k for k, w in runs["0"].items()
              if w.is_floating_point() and not torch.equal(w, runs["0.001"][k])]  # fmt: skip
    assert len(differ) > len(runs["0"]) // 4, len(differ)


def test_the_teachers_crop_fill_is_mid_grey_in_its_own_normalisation():
    from train.method.loop import Teacher

    t = Teacher(load_config("toy"), torch.device("cpu"))
    pixel = t.grey * torch.tensor(t.std) + torch.tensor(t.mean)  # back to [0, 1] pixels
    torch.testing.assert_close(pixel, torch.full((3,), 0.5), atol=1e-6, rtol=0)  # ulps


def test_window_stride_zero_means_half_the_window():
    from clips4rt.window import check_window

    assert check_window(64, 0, 8) == check_window(64, None, 8) == (64, 32)


def test_warmup_cosine_values():
    """factor(s) = min(1, (s+1)/warmup) * (1 + cos(pi * s / steps)) / 2, reaching 0 at
    ``steps`` and staying there: values at chosen steps, from the formula."""
    from train.schedule import warmup_cosine

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = warmup_cosine(opt, warmup=4, steps=10)
    seen = []
    for _ in range(13):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    want = {0: 2.0 * 0.25, 1: 2.0 * 0.5 * 0.5 * (1 + math.cos(math.pi * 0.1)),
            3: 2.0 * 0.5 * (1 + math.cos(math.pi * 0.3)), 5: 1.0, 10: 0.0, 12: 0.0}  # fmt: skip
    for s, v in want.items():
        assert seen[s] == pytest.approx(v, abs=1e-12), s
    # the edges: one step is a valid schedule, none is not; no warmup = full rate at once
    with pytest.raises(ValueError, match="steps must be >= 1"):
        warmup_cosine(opt, warmup=0, steps=0)
    one = torch.optim.SGD([p], lr=2.0)
    warmup_cosine(one, warmup=0, steps=1)
    assert one.param_groups[0]["lr"] == 2.0  # factor(0) = 1 * (1 + cos 0) / 2


def test_unknown_prototypes_form_move_with_momentum_and_survive_old_checkpoints():
    """Prototypes form once the memory holds 4x their count, then move as
    normalize(m * old + (1 - m) * new), the new centroids matched to the old ones; text
    space adds the known-minus-image-mean gap, also for a checkpoint without the mean."""
    import torch.nn.functional as F

    from train.method.prototypes import UnknownPrototypes

    e = torch.eye(4)
    unk = UnknownPrototypes(2, 4, memory=64, explain_threshold=2.0, refresh_every=1,
                            momentum=0.25)  # fmt: skip
    known = e[2:]  # threshold 2: nothing is explained, every row is kept
    unk.observe(e[[0, 1, 0]], known, 10.0)  # 3 rows < 4 x 2: nothing forms
    assert len(unk.protos) == 0
    unk.observe(e[[1, 0, 1, 0, 1]], known, 10.0)  # 8 rows: two exact clusters
    got = sorted(unk.protos.tolist())
    assert torch.allclose(torch.tensor(got), e[[1, 0]], atol=1e-6)
    old = unk.protos.clone()
    moved = F.normalize(e[0] + e[2], dim=0)  # cluster of e0 moves towards e2
    unk.memory = torch.stack([moved] * 4 + [e[1]] * 4)
    unk.refresh()
    for i in range(2):  # each prototype from its matched new centroid
        new = moved if old[i, 0] > 0.5 else e[1]
        want = F.normalize(0.25 * old[i] + 0.75 * new, dim=0)
        torch.testing.assert_close(unk.protos[i], want, atol=1e-6, rtol=0)  # unit vectors: ulps
        # (exact here; k-means on another CPU may sum in another order)
    every2 = UnknownPrototypes(2, 4, explain_threshold=2.0, refresh_every=2)
    every2.observe(e[[0, 1] * 4], known, 10.0)  # enough rows, but the 1st observation
    assert len(every2.protos) == 0
    every2.observe(e[[0, 1]], known, 10.0)  # the 2nd: refresh_every = 2
    assert len(every2.protos) == 2
    text = UnknownPrototypes(2, 4, space="text")
    text.load_state_dict({"memory": unk.memory, "protos": unk.protos, "updates": 2})
    gap = known.mean(0)  # no image mean recorded: the gap is the known mean alone
    torch.testing.assert_close(text.prototypes(known), F.normalize(unk.protos + gap, dim=-1),
                               rtol=0, atol=0)  # the same arithmetic  # fmt: skip


class _FakeSeg:
    """Embeddings with a known answer: each pixel's embedding is a one-hot of a
    permuted class id (clusters and classes differ in order)."""

    def __init__(self, perm):
        self.perm = perm

    def embed_image(self, image, size=None, **kw):
        labels = image[..., 0].astype(int)
        d = len(self.perm)
        emb = np.zeros((d, *labels.shape), np.float32)
        for k, j in enumerate(self.perm):
            emb[j][labels == k] = 1.0
        return emb


class _FakeData:
    def __init__(self, n_images=6, n=4, size=12, seed=0):
        rng = np.random.default_rng(seed)
        self.items = []
        for _ in range(n_images):
            mask = rng.integers(0, n, (size, size)).repeat(2, 0).repeat(2, 1).astype(np.uint8)
            image = np.repeat(mask[..., None], 3, 2)
            self.items.append((image, mask))
        self.classes = [f"c{k}" for k in range(n)]

    def __len__(self):
        return len(self.items)

    def load(self, i):
        return self.items[i]


def test_unsupervised_and_probe_find_a_known_answer():
    """Embeddings that are one-hot codes of the true class (in a shuffled order): the
    clusters are exactly the classes, so with the Hungarian matching unsupervised mIoU is
    100 (without it, the shuffled order would score near 0); a linear probe separates
    them perfectly."""
    from train.evaluate.metrics import summarize
    from train.evaluate.modes import eval_probe, eval_unsupervised

    data, seg = _FakeData(), _FakeSeg([2, 0, 3, 1])
    conf = eval_unsupervised(seg, data, 4)
    assert conf.shape == (1, 4, 5)
    assert summarize(conf[0], data.classes, [])["miou"] == pytest.approx(100.0)
    # several runs: each clustering (its own seed, so its own cluster order) is matched on
    # its own; the first does not depend on how many follow
    runs = eval_unsupervised(seg, data, 4, runs=3)
    assert (runs[0] == conf[0]).all()
    for c in runs:
        assert summarize(c, data.classes, [])["miou"] == pytest.approx(100.0)
    for bad in (0, 101, 2.0):
        with pytest.raises(ValueError, match=r"runs must be an int in \[1, 100\]"):
            eval_unsupervised(seg, data, 4, runs=bad)
    conf = eval_probe(seg, data, 4, epochs=200)
    assert summarize(conf, data.classes, [])["miou"] == pytest.approx(100.0)


def test_probe_uses_the_sign_of_embeddings_and_the_report_marks_unknown_classes(monkeypatch):
    """Classes told apart by the sign of one coordinate only (+e0 / -e0, +e1 / -e1): a
    linear probe on the embeddings separates them; any even function of the embeddings
    could not. The markdown report labels each class's split."""
    from train.evaluate import modes
    from train.evaluate.metrics import summarize

    class Signed(_FakeSeg):
        def embed_image(self, image, size=None, **kw):
            labels = image[..., 0].astype(int)
            emb = np.zeros((2, *labels.shape), np.float32)
            for k in range(4):
                emb[k // 2][labels == k] = 1.0 if k % 2 == 0 else -1.0
            return emb

    data = _FakeData()
    conf = modes.eval_probe(Signed(None), data, 4, epochs=200)
    assert summarize(conf, data.classes, [])["miou"] == pytest.approx(100.0)
    report = {"mode": "probe", "miou": 1.0, "miou_known": 1.0, "miou_unknown": 1.0, "hm": 1.0,
              "pixel_accuracy": 1.0, "per_class": {"c0": 10.0, "c1": None},
              "unknown_classes": ["c1"]}  # fmt: skip
    text = modes.markdown(report)
    assert "| c0 | 10.0 | known |" in text and "| c1 | - | unknown |" in text
    # --templates simple reaches the evaluation as the one simple template
    seen = {}
    monkeypatch.setattr(modes, "evaluate", lambda *a, **k: seen.update(templates=a[5]) or report)
    modes.main(["--model", "m.onnx", "--data", "d", "--templates", "simple"])
    assert seen["templates"] == ["a photo of a {}."]  # evaluate(model, data, mode, unknown,
    modes.main(["--model", "m.onnx", "--data", "d"])  # size, templates, ...)
    assert seen["templates"] is None  # the bundle's own


def test_thresholds_are_probabilities_in_the_closed_interval():
    from clips4rt.background import class_thresholds

    assert class_thresholds(1.0, ["a"], 0.0) == (1.0, None)
    assert class_thresholds(0.0, ["a"], 0.5) == (0.0, None)
    _, per = class_thresholds({"a": 1.0, "b": 0}, ["a", "b", "c"], 0.25)
    assert per.tolist() == [1.0, 0.0, 0.25]
    for bad in (1.0000001, -1e-9, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="probability in \\[0, 1\\]"):
            class_thresholds(bad, ["a"], 0.0)


def test_windows_run_sixteen_crops_a_graph_call_and_name_their_count():
    from clips4rt.window import MAX_WINDOWS, embed_windows

    calls = []

    def embed(batch):  # a fake graph: stride 8, D = 2
        calls.append(len(batch))
        return np.ones((len(batch), 2, batch.shape[1] // 8, batch.shape[2] // 8), np.float32)

    img = np.zeros((40, 40, 3), np.uint8)
    out = embed_windows(embed, img, 16, 8, 8)  # origins 0, 8, 16, 24 per side: 16 crops
    assert calls == [16] and out.shape == (2, 5, 5) and np.all(out == 1)
    calls.clear()
    embed_windows(embed, np.zeros((40, 48, 3), np.uint8), 16, 8, 8)  # 4 x 5 = 20 crops
    assert calls == [16, 4]
    side = 8 * 33 + 8  # 33 x 33 = 1089 crops of 16 px at stride 8
    assert 33 * 33 > MAX_WINDOWS
    with pytest.raises(ValueError, match="^1089 windows of 16 px at stride 8 on a 272x272"):
        embed_windows(embed, np.zeros((side, side, 3), np.uint8), 16, 8, 8)


def test_graph_contract_names_dimensions_and_types():
    """check_graphs on stand-in sessions: each broken part of the contract is refused."""
    from types import SimpleNamespace as NS

    from clips4rt.bundle import check_graphs

    def port(name, shape, type="tensor(float)"):
        return NS(name=name, shape=shape, type=type)

    def sess(ins, outs):
        return NS(get_inputs=lambda: ins, get_outputs=lambda: outs)

    info = NS(embed_dim=8, context_length=77, stride=16)

    def check(img_in=("image", "tensor(uint8)"), img_out=("embeddings", 8),
              txt_out=("text_embeddings", 8)):  # fmt: skip
        image = sess([port(img_in[0], [None, None, None, 3], img_in[1])],
                     [port(img_out[0], [None, img_out[1], None, None])])  # fmt: skip
        text = sess([port("tokens", [None, 77], "tensor(int32)")],
                    [port(txt_out[0], [None, txt_out[1]])])  # fmt: skip
        check_graphs(image, text, info, "m.onnx", probe=False)

    check()  # the contract itself passes
    for kw, match in (
        ({"img_in": ("frame", "tensor(uint8)")}, "image graph has inputs \\['frame'\\]"),
        ({"img_in": ("pixels", "tensor(uint8)")}, "image graph has inputs \\['pixels'\\]"),
        ({"img_out": ("features", 8)}, "outputs \\['features'\\]"),
        ({"txt_out": ("text", 8)}, "text graph has inputs"),
        ({"img_out": ("embeddings", 4)}, "has 4 along axis 1 but the metadata says embed_dim = 8"),
        ({"img_out": ("embeddings", 16)}, "has 16 along axis 1"),
        ({"img_in": ("image", "tensor(float)")}, "takes tensor\\(float\\)"),
    ):
        with pytest.raises(clips4rt.BundleError, match=match):
            check(**kw)


def test_metadata_checks_do_not_depend_on_interned_keys():
    """Metadata keys come from onnxruntime as fresh strings: each field's check must run
    for them (an identity test of the key would skip it)."""
    from clips4rt.bundle import PREFIX, BundleInfo

    props = clips4rt.Segmenter().info.to_metadata()
    fresh = {"".join(list(k)): v for k, v in props.items()}
    assert BundleInfo.from_metadata(fresh, "m").precision == "fp32"
    fresh = {"".join(list(k)): v for k, v in props.items()}
    fresh[PREFIX + "precision"] = '"fp8"'  # JSON values, as the exporter writes them
    with pytest.raises(clips4rt.BundleError, match="precision.*fp32, fp16, int8"):
        BundleInfo.from_metadata(fresh, "m")


def test_metadata_normalisation_bounds_are_closed():
    """mean in [-10, 10], std in [1e-6, 100]: the ends are valid, one step past is not."""
    import json

    from clips4rt.bundle import PREFIX, BundleInfo

    props = clips4rt.Segmenter().info.to_metadata()
    for key, ok, bad in (("mean", [-10.0, 10.0, 0.0], [-10.5, 0.0, 0.0]),
                         ("std", [1e-6, 100.0, 1.0], [1.0, 100.5, 1.0])):  # fmt: skip
        BundleInfo.from_metadata({**props, PREFIX + key: json.dumps(ok)}, "m")
        with pytest.raises(clips4rt.BundleError, match=key):
            BundleInfo.from_metadata({**props, PREFIX + key: json.dumps(bad)}, "m")


def test_model_hash_is_pinned():
    """Checkpoints carry this hash and --resume / export compare it: a change of the
    formula or of the presets' model fields would orphan every checkpoint written."""
    assert load_config("toy", []).model_hash() == "7eeaa89915e72f9d"
    assert load_config("vit-b16", []).model_hash() == "59baa4f0294f1ef5"
    assert load_config("toy", ["--teacher_targets=dense", "--teacher_center=0"]).model_hash() == (
        "da62e2acc0aaa0d6"
    )
    assert load_config("toy", ["--lr=1e-2", "--steps=7"]).model_hash() == "7eeaa89915e72f9d"


def test_label_png_background_values():
    from PIL import Image

    from clips4rt.visualize import label_png

    labels = np.array([[0, 1, -1], [2, -1, 0]], np.int32)
    small = np.asarray(label_png(labels, 3))
    np.testing.assert_array_equal(small, [[0, 1, 255], [2, 255, 0]])
    big = label_png(labels, 300)
    assert big.mode.startswith("I")
    np.testing.assert_array_equal(np.asarray(big), [[0, 1, 65535], [2, 65535, 0]])
    assert isinstance(big, Image.Image)


def test_metadata_bounds_at_load():
    import json

    from clips4rt import bundle as B
    from clips4rt.errors import BundleError

    good = B.BundleInfo(kind="sclip", embed_dim=8, stride=16, input_size=64, logit_scale=100,
                        text_model="t.onnx", text_model_sha256="0" * 64).to_metadata()  # fmt: skip
    B.BundleInfo.from_metadata(good)
    for field, value, words in (("input_size", 8, "smaller than the stride"),
                                ("prompt_templates", [], "is empty"),
                                ("window", 24, "multiples of the stride"),
                                ("negative_max_cosine", 1.5, "outside"),
                                ("score_scale", float("nan"), "finite")):  # fmt: skip
        bad = {**good, B.PREFIX + field: json.dumps(value)}
        with pytest.raises(BundleError, match=words):
            B.BundleInfo.from_metadata(bad)


def test_contrastive_loss_with_several_positives_by_hand():
    """Two pixels, three segments, two positives for the first pixel (its segment and
    the other view's), one for the second, one pixel without positives (ignored):
    L_p = -log(sum_{S+} e^{k z.v} / sum_all e^{k z.v}), mean over pixels with positives."""
    from train.method.losses import contrastive_loss

    k = 3.0
    z = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2], [0.1, 1.0], [0.5, 0.5]]), dim=1)
    v = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]), dim=1)
    pos = torch.tensor([[0, 1], [2, -1], [-1, -1]])
    logits = (k * z @ v.T).double()
    want = []
    for p, row in zip(pos.tolist()[:2], logits[:2]):
        keep = [j for j in p if j >= 0]
        want.append(-(torch.logsumexp(row[keep], 0) - torch.logsumexp(row, 0)))
    # float32 log-sum-exps of O(k) values: a few ulp of 3, ~1e-6
    assert contrastive_loss(z, v, pos, k).item() == pytest.approx(
        float(torch.stack(want).mean()), abs=3e-6)  # fmt: skip
    assert contrastive_loss(z, v, pos, k, reduction="sum").item() == pytest.approx(
        float(torch.stack(want).sum()), abs=6e-6)  # fmt: skip


def test_semantic_consistency_with_unequal_scales_and_a_centre_by_hand():
    """CE(softmax(s_t * (cos(t, P) - c)), softmax(s_s * cos(v, P))): the teacher's
    temperature and centre act on the target only, the student's on its prediction."""
    from train.method.losses import semantic_consistency

    protos = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]),
                                           dim=1)  # fmt: skip
    v = torch.tensor([[0.3, 1.0], [1.0, 0.1]])
    t = torch.tensor([[1.0, 0.5], [0.2, 1.0]])
    center = torch.tensor([0.1, -0.2, 0.05])
    s_s, s_t = 7.0, 20.0
    got = semantic_consistency(v, t, protos, s_s, s_t, center=center).item()
    nv, nt = (torch.nn.functional.normalize(x, dim=1).double() for x in (v, t))
    q = torch.softmax(s_t * (nt @ protos.double().T - center.double()), dim=1)
    logp = torch.log_softmax(s_s * nv @ protos.double().T, dim=1)
    want = float(-(q * logp).sum(1).mean())
    assert got == pytest.approx(want, abs=1e-5)  # float32 softmax of logits up to 20
    swapped = semantic_consistency(v, t, protos, s_t, s_s, center=center).item()
    assert abs(swapped - want) > 0.05  # the two scales are not interchangeable


def test_resume_restores_every_piece_of_state(tmp_path):
    """Interrupted after step 5 of 8 - past the warmup (2 steps), with the unknown
    prototypes formed and refreshed every step - and resumed: the final weights equal an
    uninterrupted run's bit for bit (CPU), so the scheduler, the prototypes, the
    optimiser and the RNGs all came back."""
    extra = [
        "--steps=8",
        "--warmup=2",
        "--ckpt_every=1",
        "--unknown_refresh=1",
        "--unknown_threshold=0.99",
    ]  # most teacher features unexplained: prototypes form
    full = torch.load(train(load_config("toy", [*TINY, f"--out={tmp_path / 'a'}", *extra])),
                      weights_only=True)  # fmt: skip
    cfg = load_config("toy", [*TINY, f"--out={tmp_path / 'b'}", *extra])
    train(cfg, stop_after=5)
    cut = torch.load(tmp_path / "b" / "step_0000005.pt", weights_only=True)
    assert len(cut["unknown"]["protos"]) == 2  # the unknown prototypes have formed
    assert cut["scheduler"]["last_epoch"] == 5 > 2
    resumed = torch.load(train(cfg, resume=True), weights_only=True)
    assert resumed["step"] == 8
    for k, v in full["model"].items():
        torch.testing.assert_close(resumed["model"][k], v, rtol=0, atol=0, msg=k)


def test_truncated_png_as_bytes(tmp_path):
    """The truncation check reads the PNG's chunks from the bytes and must rewind before
    decoding: short PNG bytes are refused as a short file is, whole ones decode to the
    same pixels as the file."""
    import io

    from PIL import Image

    from clips4rt.errors import ImageError
    from clips4rt.images import load_image

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (120, 160, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    whole = buf.getvalue()
    short = whole[: len(whole) // 3]
    (tmp_path / "w.png").write_bytes(whole)
    np.testing.assert_array_equal(load_image(whole), img)
    np.testing.assert_array_equal(load_image(tmp_path / "w.png"), img)
    with pytest.raises(ImageError, match="truncated"):
        load_image(short)
    from tests.test_errors import _png

    # a header of 1200x900 with two rows of data: PIL alone decodes it into blank rows
    rows2 = _png(tmp_path / "two_rows.png", 1200, 900, 2).read_bytes()
    with pytest.raises(ImageError, match="truncated PNG"):
        load_image(rows2)


def test_prompt_cache_keeps_text_graphs_apart_and_refuses_non_unit_vectors(tmp_path):
    from clips4rt.textcache import TextCache

    v = np.zeros(8, np.float32)
    v[0] = 1.0
    a, b = TextCache(tmp_path, "a" * 64, 8), TextCache(tmp_path, "b" * 64, 8)
    a.put("cat", ("a {}",), v)
    np.testing.assert_array_equal(a.get("cat", ("a {}",)), v)
    assert b.get("cat", ("a {}",)) is None  # another text graph: never its entry
    assert a.get("cat", ("the {}",)) is None  # other templates: another entry
    a.put("dog", ("a {}",), 2 * v)  # not unit length: written, but refused on reading
    assert a.get("dog", ("a {}",)) is None
    a.put("fox", ("a {}",), np.full(8, np.nan, np.float32))
    assert a.get("fox", ("a {}",)) is None
    wide = TextCache(tmp_path, "a" * 64, 16)  # same graph hash, another width: refused
    assert wide.get("cat", ("a {}",)) is None
