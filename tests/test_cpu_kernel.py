"""kernels.cpu: the C++ matching kernel against its numpy reference and torch."""

import numpy as np
import pytest

from kernels import cpu

native = pytest.mark.skipif(not cpu.HAVE_NATIVE, reason="kernels._cpu is not built")


def _unit(rng, *shape, axis):
    a = rng.standard_normal(shape).astype(np.float32)
    return a / np.linalg.norm(a, axis=axis, keepdims=True)


# (D, h, w, K, H, W): odd sizes, K = 1, K not a power of two, up- and down-sampling
SHAPES = [
    (64, 7, 9, 5, 7, 9),
    (64, 7, 9, 1, 30, 41),
    (128, 5, 3, 21, 37, 23),
    (512, 12, 16, 21, 97, 128),
    (1024, 3, 4, 3, 2, 3),
    (96, 1, 1, 7, 5, 6),
    (64, 16, 16, 13, 8, 8),
]


@native
@pytest.mark.parametrize("D,h,w,K,H,W", SHAPES)
def test_native_matches_reference(rng, D, h, w, K, H, W):
    emb, protos = _unit(rng, D, h, w, axis=0), _unit(rng, K, D, axis=1)
    lab, sc, pr = cpu.match_upsample(emb, protos, (H, W), 100.0, native=True)
    rlab, rsc, rpr = cpu.match_upsample_reference(emb, protos, (H, W), 100.0)
    assert lab.dtype == np.int32 and sc.dtype == np.float32 and pr.dtype == np.float32
    assert lab.shape == sc.shape == pr.shape == (H, W)
    np.testing.assert_array_equal(lab, rlab)
    np.testing.assert_array_equal(sc, rsc)  # float64 math, one rounding to float32
    np.testing.assert_allclose(pr, rpr, rtol=1e-5, atol=1e-7)  # float32 softmax sum
    assert ((lab >= 0) & (lab < K)).all() and (pr > 0).all() and (pr <= 1 + 1e-6).all()


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
    np.testing.assert_allclose(sc, up.max(0).values.numpy(), rtol=0, atol=1e-6)
    prob = torch.softmax(50.0 * up, 0).max(0).values.numpy()
    np.testing.assert_allclose(pr, prob, rtol=1e-5, atol=1e-7)


@native
def test_threads_do_not_change_results(rng):
    emb, protos = _unit(rng, 64, 9, 11, axis=0), _unit(rng, 6, 64, axis=1)
    one = cpu.match_upsample(emb, protos, (45, 61), 100.0, threads=1, native=True)
    many = cpu.match_upsample(emb, protos, (45, 61), 100.0, threads=3, native=True)
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a, b)


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
    bad = emb.copy()
    bad[3, 1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cpu.match_upsample(bad, protos, (4, 4), 1.0, native=native_flag)
    bad = protos.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        cpu.match_upsample(emb, bad, (4, 4), 1.0, native=native_flag)


@native
def test_extension_checks_its_own_arguments(rng):
    from kernels import _cpu

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
    _cpu.match_upsample(emb, protos, 1.0, *out)
    assert ((out[0] >= 0) & (out[0] < 3)).all()
