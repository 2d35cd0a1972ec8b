"""clips4rt.kernels: the C++ matching and resize kernels against their numpy oracles."""

import numpy as np
import pytest

from clips4rt import kernels as cpu

native = pytest.mark.skipif(not cpu.HAVE_NATIVE, reason="clips4rt._cpu is not built")
ISAS = cpu.available_isas() or ["none"]


def _unit(rng, *shape, axis):
    a = rng.standard_normal(shape).astype(np.float32)
    return a / np.linalg.norm(a, axis=axis, keepdims=True)


def _smooth(rng, D, h, w, K):
    """Embeddings that vary slowly in space (like a real image's): most
    low-resolution cells have one winner, the kernel's decided path."""
    centres = _unit(rng, K, D, axis=1)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    weights = np.stack([np.cos(3 * yy + k) * np.sin(2 * xx + 0.5 * k) for k in range(K)])
    emb = np.einsum("khw,kd->dhw", weights, centres).astype(np.float32)
    emb += 0.05 * rng.standard_normal(emb.shape).astype(np.float32)
    return emb / np.linalg.norm(emb, axis=0), centres


def _upsampled(emb, protos, H, W):
    """(K, H, W) float64 upsampled cosines, as the oracle computes them."""
    d, h, w = emb.shape
    cos = (protos.astype(np.float64) @ emb.reshape(d, -1).astype(np.float64)).reshape(-1, h, w)
    y0, y1, ly = cpu.bilinear_taps(h, H)
    x0, x1, lx = cpu.bilinear_taps(w, W)
    a, b = cos[:, :, x0], cos[:, :, x1]
    rows = a + lx * (b - a)
    a, b = rows[:, y0], rows[:, y1]
    return a + ly[None, :, None] * (b - a)


def _check_against_oracle(emb, protos, H, W, scale, isa, **kw):
    """The kernel's results within its stated float32 error of the float64 oracle."""
    lab, sc, pr = cpu.match_upsample(emb, protos, (H, W), scale, native=True, isa=isa, **kw)
    rlab, rsc, rpr = cpu.match_upsample_reference(emb, protos, (H, W), scale, **kw)
    assert lab.dtype == np.int32 and sc.dtype == np.float32 and pr.dtype == np.float32
    assert lab.shape == sc.shape == pr.shape == (H, W)
    err = cpu.near_tie_bound(emb, protos) + 1e-6  # dot products + a few lerp roundings
    up = np.sort(_upsampled(emb, protos, H, W), axis=0)
    gap = up[-1] - up[-2] if up.shape[0] > 1 else np.full((H, W), np.inf)
    differ = lab != rlab
    assert (gap[differ] <= 2 * err).all(), "a label differs away from a near-tie"
    assert differ.mean() <= 1e-4 or (gap <= 2 * err).mean() > 0.5
    np.testing.assert_allclose(sc, rsc, rtol=0, atol=err)
    # probs: exp(scale * s) turns a cosine error into a relative one
    np.testing.assert_allclose(pr, rpr, rtol=2 * scale * err + 1e-5, atol=0)
    assert np.isfinite(pr).all() and (pr > 0).all() and (pr <= 1 + 1e-6).all()
    return lab, sc, pr


# (D, h, w, K, H, W): odd sizes, K = 1, K not a power of two, up- and down-sampling,
# huge upsampling factors, 1x1 and 1xN inputs and outputs
SHAPES = [
    (64, 7, 9, 5, 7, 9),
    (64, 7, 9, 1, 30, 41),
    (128, 5, 3, 21, 37, 23),
    (512, 12, 16, 21, 97, 128),
    (1024, 3, 4, 3, 2, 3),
    (96, 1, 1, 7, 5, 6),
    (64, 16, 16, 13, 8, 8),
    (1, 6, 5, 4, 50, 33),
    (32, 2, 2, 3, 700, 3),
    (32, 1, 9, 3, 1, 200),
    (32, 9, 1, 40, 300, 1),
    (16, 3, 70, 2, 1, 1),
]


@native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("D,h,w,K,H,W", SHAPES)
def test_native_matches_reference(rng, isa, D, h, w, K, H, W):
    emb, protos = _unit(rng, D, h, w, axis=0), _unit(rng, K, D, axis=1)
    _check_against_oracle(emb, protos, H, W, 100.0, isa)


@native
@pytest.mark.parametrize("isa", ISAS)
def test_smooth_embeddings_take_the_decided_path_exactly(rng, isa):
    emb, protos = _smooth(rng, 64, 20, 36, 12)
    lab, _, pr = _check_against_oracle(emb, protos, 480, 865, 100.0, isa)
    # logit scale 1: the softmax recurrence is checked at ~1e-5 relative
    _check_against_oracle(emb, protos, 480, 865, 1.0, isa)
    assert len(np.unique(lab)) > 3 and pr.min() < 0.9  # a real test, not one class


@native
@pytest.mark.parametrize("isa", ISAS)
def test_wide_logit_range_falls_back_to_direct_exps(rng, isa):
    """scale 1000: the band recurrence would underflow, each pixel takes K exps."""
    emb, protos = _smooth(rng, 32, 9, 11, 6)
    _check_against_oracle(emb, protos, 90, 121, 1000.0, isa)
    emb, protos = _unit(rng, 32, 9, 11, axis=0), _unit(rng, 6, 32, axis=1)
    _check_against_oracle(emb, protos, 90, 121, 1000.0, isa)


@native
@pytest.mark.parametrize("isa", ISAS)
def test_ties_take_the_first_index(rng, isa):
    emb = _unit(rng, 16, 5, 7, axis=0)
    p = _unit(rng, 1, 16, axis=1)
    same = np.repeat(p, 4, axis=0)  # every class ties everywhere
    lab, sc, pr = cpu.match_upsample(emb, same, (23, 31), 100.0, native=True, isa=isa)
    assert (lab == 0).all()
    np.testing.assert_allclose(pr, 0.25, rtol=1e-6)  # 4 equal logits: 1/4 up to the rounding
    # of their sum (an ulp or two; exact here)
    protos = _unit(rng, 5, 16, axis=1)
    protos[3] = protos[1]  # a duplicate never wins over its first copy
    lab, _, _ = cpu.match_upsample(emb, protos, (23, 31), 100.0, native=True, isa=isa)
    assert not (lab == 3).any() and (lab == 1).any()


@native
@pytest.mark.parametrize("isa", ISAS)
def test_background_rule_labels_only_and_out(rng, isa):
    emb, protos = _smooth(rng, 32, 10, 12, 7)
    kw = {"n_classes": 5, "threshold": 0.6}
    lab, sc, pr = _check_against_oracle(emb, protos, 77, 91, 30.0, isa, **kw)
    full, fsc, fpr = cpu.match_upsample(emb, protos, (77, 91), 30.0, native=True, isa=isa)
    expect = np.where((full >= 5) | (fpr < 0.6), -1, full)
    np.testing.assert_array_equal(lab, expect)
    assert (lab == -1).any() and (lab >= 0).any()
    only = cpu.match_upsample(emb, protos, (77, 91), 30.0, native=True, isa=isa, labels_only=True)
    assert only[1] is None and only[2] is None
    np.testing.assert_array_equal(only[0], full)
    out = (
        np.full((77, 91), 7, np.int32),
        np.empty((77, 91), np.float32),
        np.empty((77, 91), np.float32),
    )
    got = cpu.match_upsample(emb, protos, (77, 91), 30.0, native=True, isa=isa, out=out)
    assert all(g is o for g, o in zip(got, out))
    for a, b in zip(got, (full, fsc, fpr)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="labels_only"):
        cpu.match_upsample(emb, protos, (77, 91), 30.0, labels_only=True, threshold=0.5)
    with pytest.raises(ValueError, match="out must be"):
        cpu.match_upsample(emb, protos, (77, 91), 30.0, native=True, out=out[:2])
    with pytest.raises(ValueError, match="n_classes"):
        cpu.match_upsample(emb, protos, (77, 91), 30.0, n_classes=8)


@native
@pytest.mark.parametrize("isa", ISAS)
def test_streaming_stores_write_the_same_outputs(rng, isa):
    # >= 2^18 output pixels, W a multiple of every vector width: 64-byte aligned
    # outputs (the default ones) take the streaming-store path, outputs shifted by
    # one element the plain one; both must hold the same values, tails included.
    H, W = 520, 512
    emb, protos = _smooth(rng, 32, 65, 64, 6)
    emb[:, :20] = _unit(rng, 32, 20, 64, axis=0)  # some undecided bands as well
    for labels_only in (False, True):
        got = cpu.match_upsample(
            emb, protos, (H, W), 50.0, native=True, isa=isa, labels_only=labels_only
        )
        assert all(g is None or g.ctypes.data % 64 == 0 for g in got)
        shifted = []
        for dt, g in zip((np.int32, np.float32, np.float32), got):
            buf = np.zeros(H * W + 1, dt)
            shifted.append(None if g is None else buf[1:].reshape(H, W))
        plain = cpu.match_upsample(
            emb,
            protos,
            (H, W),
            50.0,
            native=True,
            isa=isa,
            labels_only=labels_only,
            out=tuple(shifted),
        )
        assert plain[0].ctypes.data % 64 != 0
        for a, b in zip(got, plain):
            if a is not None:
                np.testing.assert_array_equal(a, b)
    _check_against_oracle(emb, protos, H, W, 50.0, isa)  # aligned: the streaming path


@native
def test_instruction_sets_and_threads_agree(rng):
    emb, protos = _smooth(rng, 64, 19, 23, 9)
    base = cpu.match_upsample(emb, protos, (150, 181), 100.0, threads=1, native=True)
    for t in (2, 3, 7):
        many = cpu.match_upsample(emb, protos, (150, 181), 100.0, threads=t, native=True)
        for a, b in zip(base, many):
            np.testing.assert_array_equal(a, b)
    assert "generic" in cpu.available_isas()
    for isa in cpu.available_isas():
        other = cpu.match_upsample(emb, protos, (150, 181), 100.0, native=True, isa=isa)
        assert (other[0] == base[0]).mean() > 0.9999
    with pytest.raises(ValueError, match="not available"):
        cpu.match_upsample(emb, protos, (15, 18), 100.0, native=True, isa="sse9")


@native
def test_non_contiguous_inputs(rng):
    emb, protos = _unit(rng, 32, 14, 18, axis=0), _unit(rng, 6, 32, axis=1)
    view = np.asfortranarray(emb)[:, ::2, ::2]
    ref = cpu.match_upsample(np.ascontiguousarray(view), protos, (40, 50), 100.0, native=True)
    got = cpu.match_upsample(view, np.asfortranarray(protos), (40, 50), 100.0, native=True)
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("D,h,w,K,H,W", SHAPES[:4])
def test_reference_matches_torch(rng, D, h, w, K, H, W):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    emb, protos = _unit(rng, D, h, w, axis=0), _unit(rng, K, D, axis=1)
    lab, sc, pr = cpu.match_upsample_reference(emb, protos, (H, W), 50.0)
    cos = torch.einsum(
        "kd,dhw->khw", torch.from_numpy(protos).double(), torch.from_numpy(emb).double()
    )
    up = F.interpolate(cos[None], size=(H, W), mode="bilinear", align_corners=False)[0]
    np.testing.assert_array_equal(lab, up.argmax(0).numpy())
    np.testing.assert_allclose(sc, up.max(0).values.numpy(), atol=1e-6)
    prob = torch.softmax(50.0 * up, 0).max(0).values.numpy()
    np.testing.assert_allclose(pr, prob, rtol=1e-6, atol=1e-7)  # softmax at scale 50, C++ vs
    # torch float32: ulps (measured 6e-8 relative)


@pytest.mark.parametrize("native_flag", [False, pytest.param(True, marks=native)])
def test_bad_arrays_are_rejected(rng, native_flag):
    emb, protos = _unit(rng, 16, 4, 4, axis=0), _unit(rng, 3, 16, axis=1)
    with pytest.raises(TypeError, match="float32"):
        cpu.match_upsample(emb.astype(np.float64), protos, (4, 4), 1.0, native=native_flag)
    with pytest.raises(ValueError, match="dimensions"):
        cpu.match_upsample(emb[0], protos, (4, 4), 1.0, native=native_flag)
    with pytest.raises(ValueError, match="D differs"):
        cpu.match_upsample(emb, protos[:, :8], (4, 4), 1.0, native=native_flag)
    with pytest.raises(ValueError, match="out_size"):
        cpu.match_upsample(emb, protos, (0, 4), 1.0, native=native_flag)
    with pytest.raises(TypeError, match="numpy"):
        cpu.match_upsample(emb.tolist(), protos, (4, 4), 1.0, native=native_flag)
    for where in ((3, 1, 2), (0, 3, 3)):  # inside the vector tiles and in the scalar tail
        bad = emb.copy()
        bad[where] = np.nan
        with pytest.raises(ValueError, match="NaN"):
            cpu.match_upsample(bad, protos, (4, 4), 1.0, native=native_flag)
    bad = protos.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        cpu.match_upsample(emb, bad, (4, 4), 1.0, native=native_flag)
    big = _unit(rng, 16, 8, 8, axis=0)  # 64 pixels: whole AVX-512 tiles, no tail
    big[5, 7, 7] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        cpu.match_upsample(big, protos, (9, 9), 1.0, native=native_flag)


@native
def test_extension_checks_its_own_arguments(rng):
    from clips4rt import _cpu

    emb, protos = _unit(rng, 16, 4, 4, axis=0), _unit(rng, 3, 16, axis=1)
    out = [np.empty((4, 4), t) for t in (np.int32, np.float32, np.float32)]
    with pytest.raises(TypeError):  # non-contiguous layout
        _cpu.match_upsample(emb[:, ::2], protos, 1.0, *out)
    with pytest.raises(TypeError):  # wrong input dtype, no silent conversion
        _cpu.match_upsample(emb.astype(np.float64), protos, 1.0, *out)
    with pytest.raises(TypeError):  # wrong output dtype
        _cpu.match_upsample(emb, protos, 1.0, out[1], out[1], out[2])
    with pytest.raises(ValueError, match="D"):
        _cpu.match_upsample(emb, np.ascontiguousarray(protos[:, :8]), 1.0, *out)
    with pytest.raises(ValueError, match="H, W"):
        _cpu.match_upsample(emb, protos, 1.0, out[0], np.empty((3, 4), np.float32), out[2])
    with pytest.raises(ValueError, match="threshold"):
        _cpu.match_upsample(emb, protos, 1.0, out[0], None, None, 0, -1, 0.5)
    with pytest.raises(ValueError, match="n_classes"):
        _cpu.match_upsample(emb, protos, 1.0, *out, 0, 4)
    _cpu.match_upsample(emb, protos, 1.0, *out)
    assert ((out[0] >= 0) & (out[0] < 3)).all()


# ---------------------------------------------------------------------------- resize
RESIZES = [
    ((600, 1000), (107, 180)),
    ((45, 70), (45, 71)),
    ((7, 5), (300, 200)),
    ((33, 1), (5, 9)),
    ((1, 40), (1, 3)),
    ((64, 48), (1, 1)),
    ((30, 31), (60, 15)),
]


@native
@pytest.mark.parametrize("src,dst", RESIZES)
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_resize_matches_reference_and_pillow(rng, src, dst, channels):
    from PIL import Image

    small = rng.integers(0, 256, (max(1, src[0] // 8), max(1, src[1] // 8), channels), np.uint8)
    img = cpu.resize_rgb_reference(small, src)  # smooth content, plus noise
    img = np.clip(img.astype(int) + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)
    got = cpu.resize_rgb(img, dst)
    assert got.shape == (*dst, channels) and got.dtype == np.uint8
    ref = cpu.resize_rgb_reference(img, dst)
    assert np.abs(got.astype(int) - ref).max() <= 1  # float32 vs float64 at .5 boundaries
    assert (got != ref).mean() < 0.01
    mode = {1: "L", 3: "RGB", 4: "CMYK"}[channels]  # RGBA would be premultiplied
    pil = np.asarray(
        Image.fromarray(img.squeeze(-1) if channels == 1 else img, mode).resize(
            (dst[1], dst[0]), Image.BILINEAR
        )
    )
    assert np.abs(got.astype(int) - pil.reshape(got.shape)).max() <= 1
    np.testing.assert_array_equal(cpu.resize_rgb(img, dst, threads=3), got)


def test_resize_rejects_bad_arguments(rng):
    img = rng.integers(0, 256, (8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        cpu.resize_rgb(img.astype(np.float32), (4, 4))
    with pytest.raises(ValueError, match="size"):
        cpu.resize_rgb(img, (0, 4))
    assert cpu.resize_rgb(img, (8, 8)) is img


# --------------------------------------------------------------------------- overlay
@native
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_blend_labels_matches_reference(rng, alpha):
    img = rng.integers(0, 256, (37, 53, 3), np.uint8)
    labels = rng.integers(-2, 7, (37, 53)).astype(np.int32)  # -1/-2 background, 5-6 no colour
    colours = rng.integers(0, 256, (5, 3), np.uint8)
    got = cpu.blend_labels(img, labels, colours, alpha)
    np.testing.assert_array_equal(got, cpu.blend_labels_reference(img, labels, colours, alpha))
    keep = (labels < 0) | (labels >= 5)
    np.testing.assert_array_equal(got[keep], img[keep])
    exact = (1 - alpha) * img[~keep] + alpha * colours[labels[~keep]].astype(float)
    assert np.abs(got[~keep] - exact).max() <= 1  # fixed point, 1/256 steps
    with pytest.raises(ValueError, match="labels"):
        cpu.blend_labels(img, labels[:, :5], colours, alpha)
    with pytest.raises(ValueError, match="alpha"):
        cpu.blend_labels(img, labels, colours, 1.5)
