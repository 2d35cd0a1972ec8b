"""Export: torch vs onnxruntime parity for every dense mode, and export errors."""

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from clips4rt import bundle as B  # noqa: E402
from clips4rt.export.dense_clip import DENSE_MODES, CLIPText, DenseCLIPImage, block_forward  # noqa: E402


def test_block_forward_matches_open_clip(tiny_clip):
    model = tiny_clip[0]
    x = torch.randn(2, 17, model.visual.transformer.width)
    for blk in model.visual.transformer.resblocks:
        torch.testing.assert_close(block_forward(blk, x), blk(x), rtol=1e-5, atol=1e-5)
    t = torch.randn(3, 77, model.transformer.width)
    blk = model.transformer.resblocks[0]
    torch.testing.assert_close(
        block_forward(blk, t, model.attn_mask),
        blk(t, attn_mask=model.attn_mask),
        rtol=1e-5,
        atol=1e-5,
    )


def test_text_module_matches_encode_text(tiny_clip):
    from clips4rt import tokenize

    model = tiny_clip[0]
    tokens = tokenize(["a photo of a cat.", "", "sky " * 50])
    ours = CLIPText(model)(torch.from_numpy(tokens))
    ref = model.encode_text(torch.from_numpy(tokens).long(), normalize=True)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_native_size_tokens_match_open_clip(tiny_clip):
    """At the native size, the interpolated positional embedding is the original
    one: every block but the last gives open_clip's own tokens."""
    model, _, mean, std = tiny_clip
    dense = DenseCLIPImage(model.visual, "maskclip", mean, std)
    v = model.visual
    x = torch.randn(2, 3, *v.image_size)
    ref = v.transformer(v._embeds(x))
    ours = v._embeds(x)
    torch.testing.assert_close(dense._pos_embed(*v.grid_size), v.positional_embedding,
                               rtol=0, atol=0)  # native grid: the raw embedding  # fmt: skip
    for blk in v.transformer.resblocks:
        ours = block_forward(blk, ours)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", DENSE_MODES)
def test_parity_torch_vs_onnxruntime(bundles, tiny_clip, mode):
    """The export's own check passed, and an independent run at two other sizes agrees."""
    import onnxruntime as ort

    errs = bundles[mode + ".errs"]
    assert set(errs) == {"image@56x72", "image@32x32", "text", "text@8"}  # text@8: cut
    assert all(0 <= e <= 1e-3 for e in errs.values()), errs
    model, _, mean, std = tiny_clip
    dense = DenseCLIPImage(model.visual, mode, mean, std).eval()
    sess = ort.InferenceSession(str(bundles[mode]), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(7)
    for h, w in [(40, 24), (96, 128)]:
        img = torch.randint(0, 256, (3, h, w, 3), dtype=torch.uint8, generator=g)
        with torch.no_grad():
            ref = dense(img).numpy()
        out = sess.run(None, {"image": img.numpy()})[0]
        assert out.shape == (3, 32, h // 8, w // 8) and out.dtype == np.float32
        assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-4
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_modes_differ(bundles):
    """The three dense modes are really different graphs (not one mode thrice)."""
    import onnxruntime as ort

    img = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    outs = [ort.InferenceSession(str(bundles[m])).run(None, {"image": img})[0] for m in DENSE_MODES]
    for i in range(3):
        for j in range(i + 1, 3):
            assert np.abs(outs[i] - outs[j]).max() > 1e-3


def test_metadata_written(bundles):
    model = onnx.load(str(bundles["sclip"]))
    props = {p.key: p.value for p in model.metadata_props}
    info = B.BundleInfo.from_metadata(props)
    assert info.kind == "sclip" and info.embed_dim == 32 and info.stride == 8
    assert info.text_model == "sclip.text.onnx"
    assert info.text_model_sha256 == B.sha256_file(bundles["sclip"].with_name("sclip.text.onnx"))
    assert info.provenance["teacher"] == "tiny-vit" and info.format_version == B.FORMAT_VERSION


def test_fp16_export(tmp_path, tiny_clip):
    from train.export import export_dense_clip

    model, name, mean, std = tiny_clip
    info, errs = export_dense_clip(
        model, name, None, mean, std, "clearclip", tmp_path / "h.onnx", fp16=True
    )
    assert info.precision == "fp16"
    assert all(e <= 2e-2 for e in errs.values()), errs
    init = onnx.load(str(tmp_path / "h.onnx")).graph.initializer
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in init)


def test_fp16_weight_storage(tmp_path, tiny_clip):
    """--fp16-weights: large initializers stored as float16 (about half the file), the
    graph still takes and gives float32 and agrees with torch within 5e-3, and the
    Segmenter reads it like any bundle."""
    import numpy as np

    import clips4rt
    from train.export import export_dense_clip

    model, name, mean, std = tiny_clip
    full, _ = export_dense_clip(model, name, None, mean, std, "sclip", tmp_path / "f.onnx")
    info, errs = export_dense_clip(
        model, name, None, mean, std, "sclip", tmp_path / "h.onnx", fp16_weights=True
    )
    assert info.precision == "fp32" and info.provenance["weights"] == "float16"
    assert all(e <= 5e-3 for e in errs.values()), errs
    for stem in ("{}.onnx", "{}.text.onnx"):
        f, h = (tmp_path / stem.format(x) for x in "fh")
        assert h.stat().st_size < 0.6 * f.stat().st_size, (h.stat().st_size, f.stat().st_size)
        g = onnx.load(str(h)).graph
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in g.initializer)
        assert g.input[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT16
    img = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    a = clips4rt.Segmenter(tmp_path / "f.onnx").run(img, ["cat", "dog", "sky"])
    b = clips4rt.Segmenter(tmp_path / "h.onnx").run(img, ["cat", "dog", "sky"])
    assert np.abs(a.similarity - b.similarity).max() < 1e-2
    with pytest.raises(ValueError, match="choose one of fp16"):
        export_dense_clip(
            model, name, None, mean, std, "sclip", tmp_path / "x.onnx", fp16=True,
            fp16_weights=True,
        )  # fmt: skip


def test_export_refuses_a_broken_graph(tmp_path, tiny_clip, monkeypatch):
    """The parity check can fail: a graph that differs from torch is refused."""
    from clips4rt.export import graphs as export

    model, name, mean, std = tiny_clip
    real = export._onnx_export

    def sabotage(module, example, path, names, axes):
        if names[0] == "image":
            module = DenseCLIPImage(model.visual, "clearclip", mean, std)  # not maskclip
        real(module, example, path, names, axes)

    monkeypatch.setattr(export, "_onnx_export", sabotage)
    with pytest.raises(RuntimeError, match="disagree"):
        export.export_dense_clip(model, name, None, mean, std, "maskclip", tmp_path / "x.onnx")


def test_cli_errors(tmp_path, tiny_config, capsys):
    from train.export import main

    out = str(tmp_path / "m.onnx")
    assert main(["--model-config", str(tiny_config), "--dense", "nope", "-o", out]) == 2
    assert "unknown --dense 'nope'" in capsys.readouterr().err
    assert main(["--clip", "ViT-Nope-99", "-o", out]) == 1
    assert "unknown open_clip model 'ViT-Nope-99'" in capsys.readouterr().err
    assert main(["--model-config", str(tmp_path / "missing.json"), "-o", out]) == 1
    assert "model config not found" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"embed_dim": 8}')
    assert main(["--model-config", str(bad), "-o", out]) == 1
    assert "needs keys" in capsys.readouterr().err
    assert (
        main(
            ["--model-config", str(tiny_config), "--pretrained", str(tmp_path / "no.pt"), "-o", out]
        )
        == 1
    )
    assert "checkpoint not found" in capsys.readouterr().err
    for thr in ("5", "nan", "-0.5"):  # used to write a bundle that failed on every run
        assert main(["--model-config", str(tiny_config), "--threshold", thr, "-o", out]) != 0
        assert "'background_threshold'" in capsys.readouterr().err
        assert not (tmp_path / "m.onnx").exists()


def test_cli_export_end_to_end(tmp_path, tiny_config, capsys):
    from train.export import main

    out = tmp_path / "cli.onnx"
    assert (
        main(
            [
                "--model-config",
                str(tiny_config),
                "--dense",
                "sclip",
                "-o",
                str(out),
                "--input-size",
                "48",
                "--background",
                "sky, ground",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "parity image@56x72: relative error" in text and out.is_file()
    info = B.BundleInfo.from_metadata({p.key: p.value for p in onnx.load(str(out)).metadata_props})
    assert info.input_size == 48 and info.background_classes == ("sky", "ground")


def test_unsupported_tower_is_refused(tiny_clip):
    model, _, mean, std = tiny_clip
    with pytest.raises(ValueError, match="unknown dense mode"):
        DenseCLIPImage(model.visual, "naclip!", mean, std)
    with pytest.raises(ValueError, match="not an open_clip VisionTransformer"):
        DenseCLIPImage(torch.nn.Linear(2, 2), "maskclip", mean, std)


def test_fp16_weight_storage_keeps_values_float16_cannot_hold(tmp_path):
    import numpy as np
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from train.export import store_weights_fp16

    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 2048])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 2048])
    rng = np.random.default_rng(0)
    small = rng.standard_normal(2048).astype(np.float32)
    big = small.copy()
    big[0] = 1e6  # beyond float16's 65504
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "a"], ["t"]), helper.make_node("Mul", ["t", "b"], ["y"])],
        "g",
        [x],
        [y],
        [numpy_helper.from_array(small, "a"), numpy_helper.from_array(big, "b")],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert store_weights_fp16(path) == 1
    inits = {t.name: t.data_type for t in onnx.load(str(path)).graph.initializer}
    assert inits == {"a__fp16": onnx.TensorProto.FLOAT16, "b": onnx.TensorProto.FLOAT}
    xv = rng.standard_normal((2, 2048)).astype(np.float32)
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": xv})
    ref = (xv + small.astype(np.float16).astype(np.float32)) * big
    np.testing.assert_allclose(out[0], ref, rtol=1e-6)  # exact here; ORT's fused add-mul
    # may round once less than numpy (an ulp)
